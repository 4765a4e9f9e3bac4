//! The broker goes away while the detector publishes. A file's frames wait (backpressure) and,
//! once the broker is back, every frame arrives exactly once. A live camera stays real time: once
//! the producer's queue is full it keeps only the newest frames, counts the ones it drops, and
//! publishes again when the broker is back. These tests are alone in their file because they stop
//! the shared broker (scripts/services.sh keeps its data), which would disturb any test running
//! beside them; a lock keeps the two apart.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;

static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the topic to hold `at_least` messages. Right after the broker starts its partitions
/// may have no leader yet: asking again is part of waiting.
fn wait_for_topic_size(topic: &str, at_least: i64, what: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = topic_size(topic);
        if let Ok(n) = n {
            if n >= at_least {
                return Ok(n);
            }
        }
        ensure!(Instant::now() < deadline, "{what}: {n:?} messages, expected at least {at_least}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_waits_for_the_broker_and_loses_nothing() -> Result<()> {
    let _broker = BROKER.lock().await;
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
    let before = wait_for_topic_size(&topic, 30, "before the restart")?;
    services(&["restart", "kafka"], false)?;

    let out = wait_output(detector, Duration::from_secs(600))?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    assert!(out.status.success(), "detector exited with {:?}:\n{log}", out.status);
    assert!((before as u64) < frames, "the restart came after the last frame ({before} of {frames})");

    let records = read_topic(&topic, Duration::from_secs(60))?;
    let mut seqs: Vec<u64> =
        records.iter().map(|r| wire::FrameMessage::from_json(&r.payload).map(|m| m.frame_seq)).collect::<Result<_, _>>()?;
    assert_eq!(seqs.len() as u64, frames, "one message per frame, none twice:\n{log}");
    seqs.sort_unstable();
    assert_eq!(seqs, (0..frames).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_camera_drops_its_oldest_frames_while_the_broker_is_away() -> Result<()> {
    let _broker = BROKER.lock().await;
    let dir = TempDir::new("livebroker")?;
    let mp4 = dir.join("vtest.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    let topic = unique("livebrokerdown");
    create_topic(&topic, 1).await?;
    // A small local queue, so that it is full a few seconds into the outage.
    let detector = |camera: &str, extra: &[&str]| {
        Spawned::start(
            Command::new(bin("detector"))
                .args(["--source", &format!("rtsp://127.0.0.1:{port}/stream"), "--model", model().to_str().unwrap()])
                .args(["--camera-id", camera, "--topic", &topic, "--brokers", &brokers(), "-X", "queue.buffering.max.messages=20"])
                .args(extra),
        )
    };
    let det = detector("gate", &[])?;
    // A second camera is stopped during the outage: it must not wait for a broker that is away
    // longer than its flush timeout.
    let stopped = detector("yard", &["--flush-timeout-s", "2"])?;
    let before = wait_for_topic_size(&topic, 40, "before the outage")?;
    services(&["stop", "kafka"], false)?;
    // The stream plays at 10 frames/s: 20 queued, a few in the pipeline, the rest of ~80 dropped.
    std::thread::sleep(Duration::from_secs(6));
    stopped.signal("TERM");
    let (status, _, stopped_log) = stopped.finish(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    services(&["start", "kafka"], true)?;
    // The world's failure (exit 3), said in one line; frames were lost, so no success. Whether
    // the local queue had filled by the signal (so a send was waiting) or not (so the final flush
    // timed out) depends on how fast this machine inferred meanwhile; both say so.
    assert_eq!(status.code(), Some(3), "{stopped_log}");
    let errors: Vec<&str> = stopped_log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.len() == 1 && errors[0].contains("not delivered"), "{stopped_log}");
    assert!(!stopped_log.contains("panicked"), "{stopped_log}");

    // Publishing resumes: the queue drains, then frames captured after the outage follow.
    wait_for_topic_size(&topic, before + 40, "after the outage")?;
    det.signal("TERM");
    let (status, _, stderr) = det.finish(Duration::from_secs(60))?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");
    ensure!(!stderr.contains("panicked") && !stderr.lines().any(|l| l.contains(" ERROR ")), "{stderr}");

    let msgs: Vec<wire::FrameMessage> =
        read_topic(&topic, Duration::from_secs(60))?.iter().map(|r| wire::FrameMessage::from_json(&r.payload)).collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = msgs.iter().filter(|m| m.camera_id == "gate").map(|m| m.frame_seq).collect();
    let field = |key| log_field(&stderr, "detector finished", key).unwrap_or_else(|| panic!("no {key} in:\n{stderr}"));
    let (read, dropped, skipped, messages) = (field("frames"), field("dropped"), field("skipped"), field("messages"));
    eprintln!("live camera through the outage: read={read} dropped={dropped} skipped={skipped} messages={messages}");
    assert!(dropped > 0, "nothing was dropped during the outage:\n{stderr}");
    assert_eq!(read, messages + dropped + skipped, "every frame read is published, dropped or skipped");
    assert_eq!(seqs.len() as u64, messages, "every message published arrived, once");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "frames in order, none twice");
    assert!(seqs.last().is_some_and(|last| *last < read));
    // The drops are a gap in the middle: the frames after the outage were kept, not the oldest.
    assert!(seqs.windows(2).any(|w| w[1] - w[0] > 1), "no gap in {seqs:?}");
    Ok(())
}

/// A live camera with the default producer queue while the broker is away for 60 s: what it
/// queued expires as stale instead of going out a minute late, so the frames the broker appends
/// once it is back are at most twice `--max-frame-age-s` (2 s) old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_live_camera_publishes_fresh_frames() -> Result<()> {
    let _broker = BROKER.lock().await;
    let dir = TempDir::new("stale")?;
    let mp4 = dir.join("vtest.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    let topic = unique("stale");
    // The broker stamps each message when it appends it.
    create_topic_with(&topic, 1, &[("message.timestamp.type", "LogAppendTime")]).await?;
    let det = Spawned::start(
        Command::new(bin("detector"))
            .args(["--source", &format!("rtsp://127.0.0.1:{port}/stream"), "--model", model().to_str().unwrap(), "--max-fps", "5"])
            .args(["--camera-id", "gate", "--topic", &topic, "--brokers", &brokers()]),
    )?;
    let before = wait_for_topic_size(&topic, 10, "before the outage")?;
    services(&["stop", "kafka"], false)?;
    std::thread::sleep(Duration::from_secs(60));
    // Taken before the start, not after its readiness wait: the broker appends what comes in as
    // soon as it listens, and those first frames are the likeliest to be stale.
    let back_ms = chrono::Utc::now().timestamp_millis();
    services(&["start", "kafka"], true)?;
    wait_for_topic_size(&topic, before + 20, "after the outage")?;
    det.signal("TERM");
    let (status, _, stderr) = det.finish(Duration::from_secs(60))?;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{stderr}");

    let ages: Vec<f64> = read_topic(&topic, Duration::from_secs(60))?
        .iter()
        .filter(|r| r.timestamp_ms.is_some_and(|t| t >= back_ms))
        .map(|r| {
            let m = wire::FrameMessage::from_json(&r.payload).expect("a frame message");
            (r.timestamp_ms.unwrap() - m.captured_at.timestamp_millis()) as f64 / 1000.0
        })
        .collect();
    let oldest = ages.iter().cloned().fold(0.0, f64::max);
    eprintln!("after the outage: {} frames appended, the oldest {oldest:.2} s after capture (bound 4 s)", ages.len());
    assert!(ages.len() >= 15, "{stderr}");
    assert!(oldest < 4.0, "a frame {oldest:.1} s old went out after the outage:\n{stderr}");
    let dropped = log_field(&stderr, "detector finished", "dropped").unwrap_or(0);
    assert!(dropped > 100, "the outage's frames were dropped as stale ({dropped}):\n{stderr}");
    Ok(())
}
