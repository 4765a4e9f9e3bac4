//! Capture-to-row latency of a live camera, against the real broker and database (services
//! running, release binaries built):
//!   cargo bench -p pipeline-tests --bench live_latency [-- SECONDS]
//! An H.264 copy of `vtest.avi` (10 fps) served over RTSP by `scripts/rtsp_server.py`; one
//! detector with `--max-fps 5` publishes it; two sinks read the same topic side by side, each into
//! its own database: one with the default (`--write-when-idle true`), one with batches that wait to
//! fill (`--write-when-idle false`, the earlier default). After a 10 s warm-up, every stored
//! frame's `ingested_at - captured_at` (its transaction's start minus its capture, both this
//! machine's clock) gives the percentiles; the detector's mean inference time gives the goal's
//! bound (one inference + 100 ms). The last line:
//!   idle_p99_ms=<f> waiting_p99_ms=<f> inference_ms=<f> bound_ms=<f>

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use chrono::{DateTime, Utc};
use pipeline_tests::*;

const WARM_UP: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(|a| a.parse()).transpose()?.unwrap_or(60);
    let dir = TempDir::new("latency")?;
    let clip = dir.join("live.mp4");
    h264_mp4(&sample("vtest.avi"), &clip, None)?;
    let port = free_port()?;
    let server = start_rtsp_server(&clip, port)?;

    let (topic, idle_db) = fresh_topic_and_db("latency", 4).await?;
    let waiting_db = TestDb::create("latency").await?;
    migrate(&waiting_db.url)?;
    let idle = SinkProcess::start(&idle_db.url, &topic, &unique("idle"), &[])?;
    let waiting = SinkProcess::start(&waiting_db.url, &topic, &unique("waiting"), &["--write-when-idle", "false"])?;

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let started: DateTime<Utc> = Utc::now();
    let detector = Spawned::start(Command::new(bin("detector")).arg("--model").arg(model()).args([
        "--source",
        &format!("rtsp://127.0.0.1:{port}/stream"),
        "--camera-id",
        "live",
        "--max-fps",
        "5",
        "--topic",
        &topic,
        "--brokers",
        &brokers(),
        "--metrics-addr",
        &metrics_addr,
    ]))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let body = http_get(&metrics_addr, "/metrics")?;
    let inference_ms = 1000.0 * metric(&body, "detector_inference_seconds_sum").unwrap_or(f64::NAN)
        / metric(&body, "detector_inference_seconds_count").unwrap_or(f64::NAN);
    detector.signal("TERM");
    let (status, _, log) = detector.finish(Duration::from_secs(60))?;
    ensure!(status.success(), "detector: {log}");
    drop(server);
    // What the detector published has reached both tables by now.
    std::thread::sleep(Duration::from_secs(3));
    idle.stop()?;
    waiting.stop()?;

    let warm = started + chrono::Duration::from_std(WARM_UP)?;
    let mut p99s = Vec::new();
    for (name, db) in [("idle", &idle_db), ("waiting", &waiting_db)] {
        let mut conn = db.connect().await?;
        let (n, p50, p99, max): (i64, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
             FROM (SELECT extract(epoch FROM ingested_at - captured_at)::float8 * 1000 AS ms FROM frames WHERE captured_at >= $1) t",
        )
        .bind(warm)
        .fetch_one(&mut conn)
        .await?;
        ensure!(n > 0, "{name}: no frames stored after the warm-up");
        let (p50, p99, max) = (p50.unwrap_or(f64::NAN), p99.unwrap_or(f64::NAN), max.unwrap_or(f64::NAN));
        println!("write_when_idle={} frames={n} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}", name == "idle");
        p99s.push(p99);
    }
    println!(
        "idle_p99_ms={:.1} waiting_p99_ms={:.1} inference_ms={inference_ms:.1} bound_ms={:.1}",
        p99s[0],
        p99s[1],
        inference_ms + 100.0
    );
    Ok(())
}
