//! What both services share for being watched: the tracing set-up of their logs, and the HTTP
//! endpoint `--metrics-addr` serves: `/metrics` (Prometheus text format) and `/healthz` (200 while
//! the service can do its work, 503 with the reason when it cannot).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Logs to standard error, with `RUST_LOG` (default `info`), in colour on a terminal.
pub fn init_logs() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}

/// The service's answer to `/healthz`: `Ok(detail)` while it can work, `Err(why)` when not.
pub type Health = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

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

    /// Serves the endpoint at `addr` from a thread of its own.
    pub fn serve(self, addr: SocketAddr, health: Health) -> Result<(), String> {
        let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
        let handle = self.0;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Err(e) = respond(stream, &handle, &health) {
                        tracing::debug!(error = %e, "metrics request");
                    }
                }
            })
            .map_err(|e| format!("metrics thread: {e}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics, health at http://{addr}/healthz");
        Ok(())
    }
}

fn respond(stream: TcpStream, handle: &PrometheusHandle, health: &Health) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers: read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            handle.run_upkeep();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        "/healthz" => match health() {
            Ok(detail) => ("200 OK", "text/plain", format!("ok\n{detail}")),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("unhealthy: {why}\n")),
        },
        _ => ("404 Not Found", "text/plain", "not found: try /metrics or /healthz\n".to_string()),
    };
    let mut out = stream;
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()
}
