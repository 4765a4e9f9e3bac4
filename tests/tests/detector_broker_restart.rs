//! The broker goes away while the detector publishes a file: the file's frames wait (backpressure)
//! and, once the broker is back, every frame arrives exactly once. Alone in its file: it restarts
//! the shared broker (scripts/services.sh restart keeps its data), which would disturb any test
//! running beside it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_waits_for_the_broker_and_loses_nothing() -> Result<()> {
    let video = sample("vtest.avi");
    let frames = ffprobe_frame_count(&video)?;
    let topic = unique("brokerdown");
    create_topic(&topic, 1).await?;
    let log_path = std::env::temp_dir().join(format!("{}.log", unique("detector")));
    let detector = Command::new(bin("detector"))
        .arg("--source")
        .arg(&video)
        .arg("--model")
        .arg(model())
        .args(["--camera-id", "door", "--topic", &topic, "--brokers", &brokers()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;

    // Some frames are out; then the broker goes away (SIGTERM, then a start on the same data).
    let deadline = Instant::now() + Duration::from_secs(120);
    while topic_size(&topic)? < 30 {
        ensure!(Instant::now() < deadline, "the detector published nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = topic_size(&topic)?;
    let status = Command::new("bash").arg(repo_root().join("scripts/services.sh")).args(["restart", "kafka"]).status()?;
    ensure!(status.success(), "restarting Kafka failed");

    let out = wait_output(detector, Duration::from_secs(600))?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert!(out.status.success(), "detector exited with {:?}:\n{log}", out.status);
    assert!((before as u64) < frames, "the restart came after the last frame ({before} of {frames})");

    let records = read_topic(&topic, Duration::from_secs(60))?;
    let mut seqs: Vec<u64> = records.iter().map(|r| wire::FrameMessage::from_json(&r.payload).map(|m| m.frame_seq)).collect::<Result<_, _>>()?;
    assert_eq!(seqs.len() as u64, frames, "one message per frame, none twice:\n{log}");
    seqs.sort_unstable();
    assert_eq!(seqs, (0..frames).collect::<Vec<_>>());
    Ok(())
}
