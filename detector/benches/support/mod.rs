//! What the detector benchmarks share: running the detector binary to its end and timing it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs the detector with `args` and `--output stdout`, from process start to exit (so model
/// loading and opening the sources count against it); returns the messages on its stdout and the
/// seconds it took. Fails on a non-zero exit.
pub fn run_detector(args: &[&str]) -> Result<(usize, f64), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_detector"))
        .args(args)
        .args(["--output", "stdout"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let messages = BufReader::new(child.stdout.take().ok_or("stdout")?).lines().count();
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("detector {args:?}: {status}").into());
    }
    Ok((messages, t.elapsed().as_secs_f64()))
}
