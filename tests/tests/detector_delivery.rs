//! Deliveries that can never succeed surface: a live camera whose every message Kafka refuses (the
//! topic takes at most 200 bytes a message, as a misconfigured or shrunk topic would) reports it in
//! an ERROR line and on /metrics, and exits 3 once deliveries have failed for
//! `--delivery-failure-timeout-s`, rather than logging warnings forever.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_refuses_every_message_ends_a_live_camera_run() -> Result<()> {
    let dir = TempDir::new("refused")?;
    let mp4 = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    let topic = unique("refused");
    create_topic_with(&topic, 1, &[("max.message.bytes", "200")]).await?;
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let started = Instant::now();
    let det = Spawned::start(
        Command::new(bin("detector"))
            .args(["--source", &format!("rtsp://127.0.0.1:{port}/stream"), "--model", model().to_str().unwrap(), "--camera-id", "gate"])
            .args(["--topic", &topic, "--brokers", &brokers(), "--delivery-failure-timeout-s", "5", "--metrics-addr", &metrics_addr]),
    )?;
    det.wait_stderr("the first refusal", Duration::from_secs(90), |e| e.contains("kafka refuses"))?;
    let metrics = http_get(&metrics_addr, "/metrics")?;
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("detector_delivery_failures_total ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0);
    let (status, _, stderr) = det.finish(Duration::from_secs(90))?;
    let took = started.elapsed();
    assert!(failures >= 1.0, "failures counted on /metrics:\n{metrics}");
    assert_eq!(status.code(), Some(3), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    ensure!(errors.iter().any(|l| l.contains("MessageSizeTooLarge") || l.contains("too large")), "the reason is named:\n{stderr}");
    ensure!(errors.last().is_some_and(|l| l.contains("deliveries have failed for")), "{stderr}");
    ensure!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("refused deliveries ended the run after {:.1} s", took.as_secs_f64());
    assert_eq!(topic_size(&topic)?, 0, "nothing got through");
    Ok(())
}
