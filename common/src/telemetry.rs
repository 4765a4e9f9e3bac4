//! What both services share for being watched: the tracing set-up of their logs, and the HTTP
//! endpoint `--metrics-addr` serves:
//!
//! - `/metrics`: Prometheus text format;
//! - `/livez`: liveness, 200 while every work loop of the process beats ([`Heartbeat`]), 503 naming
//!   a loop that has stopped: restarting the process is what helps;
//! - `/readyz`, and `/healthz` (its older name): readiness, 200 while the service can do its work,
//!   503 with the reason when it cannot (a camera away, the database down): a restart would not
//!   help, the service recovers by itself when the outside does.
//!
//! A slow or hostile client must not hold a probe: each connection is served on a thread of its
//! own, at most [`MAX_CONNECTIONS`] at once (more are told 503 at once), and its request must come
//! whole within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST_BYTES`] (else 408 or 431, and closed).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::secret;

/// Connections served at once; Prometheus and a prober or two need a handful.
pub const MAX_CONNECTIONS: usize = 32;
/// A request line and its headers: a probe's are some hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// From accepting a connection to having its request whole.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Logs to standard error, with `RUST_LOG` (default `info`), in colour on a terminal; and
/// standard error itself, whoever writes to it (our logs, librdkafka, OpenCV, FFmpeg, a panic),
/// through [`secret::redact`]: the process's file descriptor 2 becomes a pipe whose lines a thread
/// redacts and writes to the real standard error. Call it first; end the process with [`exit`],
/// which forwards what is still in the pipe.
pub fn init_logs() {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    if let Err(e) = redact_stderr() {
        eprintln!("cannot route standard error through the redaction ({e}); nothing is logged");
        exit(1);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}

/// The thread that forwards standard error, once [`init_logs`] has started it.
static FORWARDER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

fn redact_stderr() -> std::io::Result<()> {
    use std::io::BufRead;
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: dup of the open descriptor 2 returns a new descriptor that only this File owns.
    let real = unsafe { libc::dup(2) };
    if real < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `real` is a fresh descriptor owned by nobody else (above).
    let mut real = unsafe { std::fs::File::from_raw_fd(real) };
    let (reader, writer) = std::io::pipe()?;
    // SAFETY: both descriptors are open; dup2 makes 2 a copy of the pipe's writing end.
    if unsafe { libc::dup2(writer.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(writer);
    let panic_out = real.try_clone()?;
    // A panic's message goes straight out (redacted), not through the pipe: the process may end
    // before the thread forwards it.
    std::panic::set_hook(Box::new(move |info| {
        let _ = writeln!(&panic_out, "{}", secret::redact(&info.to_string()));
    }));
    let forwarder = std::thread::Builder::new().name("stderr".into()).spawn(move || {
        let mut lines = std::io::BufReader::new(reader);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = real.write_all(secret::redact(&String::from_utf8_lossy(&line)).as_bytes());
            line.clear();
        }
    })?;
    *FORWARDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(forwarder);
    Ok(())
}

/// Ends the process with `code` once every line written to standard error so far is out.
pub fn exit(code: u8) -> ! {
    if let Some(forwarder) = FORWARDER.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // Closing the pipe's one writing end (descriptor 2 now points at /dev/null: what is written
        // from here on is dropped, never shown unredacted) ends the thread at the pipe's end.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: both descriptors are open.
            unsafe { libc::dup2(null.as_raw_fd(), 2) };
            let _ = forwarder.join();
        }
    }
    std::process::exit(code.into())
}

/// `--metrics-addr`: `host:port`, the host a name (`localhost:9188`) or an address.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = text.to_socket_addrs().map_err(|e| format!("expected HOST:PORT ({e})"))?;
    addrs.next().ok_or_else(|| format!("{text} resolves to no address"))
}

/// The service's answer to `/readyz`: `Ok(detail)` while it can work, `Err(why)` when not.
pub type Readiness = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A work loop's sign of life for `/livez`: the loop calls [`Heartbeat::beat`] each time round
/// (and while it waits, at least every second or so); the process is live while no loop has been
/// silent longer than its timeout. Clones share the beat.
#[derive(Clone)]
pub struct Heartbeat(Arc<Beats>);

struct Beats {
    name: String,
    timeout: Duration,
    origin: Instant,
    /// Milliseconds from `origin` to the latest beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat that has just beaten, for the loop called `name` in `/livez`'s answer.
    pub fn new(name: &str, timeout: Duration) -> Self {
        Heartbeat(Arc::new(Beats { name: name.to_string(), timeout, origin: Instant::now(), last_ms: AtomicU64::new(0) }))
    }

    pub fn beat(&self) {
        self.0.last_ms.store(self.0.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.0.origin.elapsed().saturating_sub(Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed)))
    }
}

/// Prometheus text a service renders itself, appended to `/metrics`: series that must vanish
/// when what they describe is no longer the service's (the metrics recorder cannot remove one).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the health endpoints answer from, and what `/metrics` adds to the recorder's series.
pub struct Probes {
    pub ready: Readiness,
    /// Every work loop whose stop makes the process dead.
    pub live: Vec<Heartbeat>,
    pub extra: Option<ExtraMetrics>,
}

impl Probes {
    /// `/livez`: `Ok(detail)` while every loop beats, `Err(why)` naming those that stopped.
    fn liveness(&self) -> Result<String, String> {
        let lines: Vec<String> =
            self.live.iter().map(|h| format!("{}: beat {:.1} s ago", h.0.name, h.silent_for().as_secs_f64())).collect();
        let stopped: Vec<&str> = self.live.iter().filter(|h| h.silent_for() > h.0.timeout).map(|h| h.0.name.as_str()).collect();
        if stopped.is_empty() {
            Ok(lines.join("\n"))
        } else {
            Err(format!("stopped: {}\n{}", stopped.join(", "), lines.join("\n")))
        }
    }
}

/// The installed metrics recorder. Install it before any metric is made: a metric made without a
/// recorder stays a no-op.
pub struct Metrics(PrometheusHandle);

impl Metrics {
    /// Histograms get these buckets, by metric name.
    pub fn install(buckets: &[(&str, &[f64])]) -> Result<Self, String> {
        let mut builder = PrometheusBuilder::new();
        for (name, b) in buckets {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), b).map_err(|e| format!("{name}: {e}"))?;
        }
        builder.install_recorder().map(Metrics).map_err(|e| format!("metrics recorder: {e}"))
    }

    /// Serves the endpoint at `addr`: a thread of its own accepts, and each connection gets one.
    pub fn serve(self, addr: SocketAddr, probes: Probes) -> Result<(), String> {
        let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        // The port the system chose for port 0.
        let addr = listener.local_addr().map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        let endpoint = Arc::new(Endpoint { handle: self.0, probes });
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept(&listener, &endpoint))
            .map_err(|e| format!("metrics thread: {e}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics, liveness at /livez, readiness at /readyz (and /healthz)");
        Ok(())
    }
}

struct Endpoint {
    handle: PrometheusHandle,
    probes: Probes,
}

/// Connections being served; one is given back when its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept(listener: &TcpListener, endpoint: &Arc<Endpoint>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: do not spin on it.
                tracing::debug!(error = %e, "metrics endpoint: accept");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::Relaxed);
            // Written into a fresh socket's empty buffer: it does not block this thread.
            let _ = answer(&stream, "503 Service Unavailable", "text/plain", "busy: too many connections\n");
            continue;
        }
        let (slot, endpoint) = (Slot(Arc::clone(&active)), Arc::clone(endpoint));
        let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
            let _slot = slot;
            if let Err(e) = respond(stream, &endpoint) {
                tracing::debug!(error = %e, "metrics request");
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "metrics endpoint: no thread for a connection");
        }
    }
}

fn respond(stream: TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let path = match read_request(&stream, Instant::now() + REQUEST_TIMEOUT) {
        Ok(path) => path,
        Err(Request::TimedOut) => return answer(&stream, "408 Request Timeout", "text/plain", "request not sent in time\n"),
        Err(Request::TooLarge) => return answer(&stream, "431 Request Header Fields Too Large", "text/plain", "request too large\n"),
        Err(Request::Io(e)) => return Err(e),
    };
    let probe = |result: Result<String, String>| match result {
        Ok(detail) => ("200 OK", "text/plain", format!("ok\n{detail}\n")),
        Err(why) => ("503 Service Unavailable", "text/plain", format!("unhealthy: {why}\n")),
    };
    let (status, kind, body) = match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            endpoint.handle.run_upkeep();
            let extra = endpoint.probes.extra.as_ref().map(|f| f()).unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4", endpoint.handle.render() + &extra)
        }
        "/livez" => probe(endpoint.probes.liveness()),
        "/readyz" | "/healthz" => probe((endpoint.probes.ready)()),
        _ => ("404 Not Found", "text/plain", "not found: try /metrics, /livez or /readyz\n".to_string()),
    };
    answer(&stream, status, kind, &body)
}

fn answer(mut stream: &TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    stream.flush()
}

/// Why no request was read.
enum Request {
    TimedOut,
    TooLarge,
    Io(std::io::Error),
}

/// Reads a request's line and headers (the body of a GET is none) by `deadline`, at most
/// [`MAX_REQUEST_BYTES`] of them; the path it asks for.
fn read_request(mut stream: &TcpStream, deadline: Instant) -> Result<String, Request> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            let line = String::from_utf8_lossy(&head[..end]);
            return Ok(line.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string());
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Err(Request::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Request::TimedOut);
        }
        stream.set_read_timeout(Some(left)).map_err(Request::Io)?;
        let room = chunk.len().min(MAX_REQUEST_BYTES - head.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(Request::Io(ErrorKind::UnexpectedEof.into())),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(Request::TimedOut),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Request::Io(e)),
        }
    }
}

/// Where the headers end (the blank line; bare newlines taken too), if they have.
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"), Some(28));
        assert_eq!(head_end(b"GET /livez HTTP/1.0\n\n"), Some(19));
        assert_eq!(head_end(b"GET /livez HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn liveness_names_the_loops_that_stopped() {
        let (beating, silent) = (Heartbeat::new("infer", Duration::from_secs(60)), Heartbeat::new("publish", Duration::ZERO));
        std::thread::sleep(Duration::from_millis(5));
        beating.beat();
        let probes = |live| Probes { ready: Arc::new(|| Ok(String::new())), live, extra: None };
        assert!(probes(vec![beating.clone()]).liveness().unwrap().starts_with("infer: beat 0.0 s ago"));
        let why = probes(vec![beating, silent]).liveness().unwrap_err();
        assert!(why.starts_with("stopped: publish\n"), "{why}");
        assert!(probes(vec![]).liveness().is_ok(), "no loop to watch: live while it answers");
    }
}
