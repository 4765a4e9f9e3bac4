//! The metrics and health endpoint (`common::telemetry`, which the sink serves too), on a real
//! detector whose only camera is an RTSP address where nothing listens: the process works (it
//! keeps trying the camera), so it is live, but no frame comes, so it is not ready. Liveness and
//! readiness answer apart, and clients that hold connections open without a word, or send a
//! header that never ends, do not keep a probe from its answer.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use pipeline_tests::*;

/// A detector serving its endpoint at the returned address, live but not ready.
fn live_but_not_ready() -> Result<(Spawned, String)> {
    let camera = format!("rtsp://127.0.0.1:{}/nothing-here", free_port()?);
    let addr = format!("127.0.0.1:{}", free_port()?);
    let det = Spawned::start(Command::new(bin("detector")).args([
        "--source",
        &camera,
        "--model",
        model().to_str().unwrap(),
        "--output",
        "stdout",
        "--metrics-addr",
        &addr,
    ]))?;
    det.wait_stderr("the endpoint", Duration::from_secs(60), |e| e.contains("metrics at http://"))?;
    Ok((det, addr))
}

#[test]
fn liveness_and_readiness_answer_apart() -> Result<()> {
    let (det, addr) = live_but_not_ready()?;
    let (live, body) = http_status(&addr, "/livez")?;
    assert_eq!(live, 200, "{body}");
    let (ready, body) = http_status(&addr, "/readyz")?;
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("no camera delivers frames") && body.contains("camera cam0: down"), "{body}");
    // /healthz stays what it was: readiness.
    assert_eq!(http_status(&addr, "/healthz")?, (ready, body));
    ensure!(!det.stderr().contains("panicked"), "{}", det.stderr());
    Ok(())
}

/// Twenty connections that send nothing: a probe sent after them is answered while they are all
/// still open, and then the server closes each of them, as it would a client that stalls.
#[test]
fn idle_connections_do_not_hold_a_probe() -> Result<()> {
    let (_det, addr) = live_but_not_ready()?;
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&addr)).collect::<std::io::Result<_>>()?;
    let (status, body) = http_status(&addr, "/readyz")?;
    assert_eq!(status, 503, "{body}");
    for (i, mut c) in idle.iter().enumerate() {
        c.set_nonblocking(true)?;
        match c.read(&mut [0; 512]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => bail!("idle connection {i} was given up before the probe was answered: {other:?}"),
        }
    }
    // Each is ended by the server's request deadline (the bound is generous: a busy machine).
    for (i, mut c) in idle.into_iter().enumerate() {
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut answer = Vec::new();
        let ended = c.read_to_end(&mut answer);
        ensure!(ended.is_ok() || matches!(&ended, Err(e) if e.kind() == ErrorKind::ConnectionReset), "idle connection {i}: {ended:?}");
        let answer = String::from_utf8_lossy(&answer);
        ensure!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "idle connection {i}: {answer}");
    }
    Ok(())
}

/// A request header that never ends is cut off after a bounded size, and the endpoint goes on.
#[test]
fn an_endless_header_is_cut_off() -> Result<()> {
    let (_det, addr) = live_but_not_ready()?;
    let mut c = TcpStream::connect(&addr)?;
    c.set_write_timeout(Some(Duration::from_secs(60)))?;
    c.write_all(b"GET /livez HTTP/1.1\r\nX-Endless: ")?;
    let chunk = [b'a'; 64 * 1024];
    const LIMIT: usize = 64 * 1024 * 1024;
    let mut sent = 0;
    let started = Instant::now();
    let cut = loop {
        if sent >= LIMIT {
            break None;
        }
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let Some(cut) = cut else { bail!("the endpoint took {sent} bytes of one header in {:?}", started.elapsed()) };
    assert!(matches!(cut.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe), "{cut}");
    assert_eq!(http_status(&addr, "/livez")?.0, 200);
    Ok(())
}
