//! The schema registry goes away while the sink needs it: the messages wait (their partitions
//! paused), nothing is dead-lettered or lost, and all of them are stored once it is back; and a
//! message among them that the dead-letter topic refuses stops the sink before anything after it
//! counts. Alone in its file, one test at a time: they stop the shared registry
//! (scripts/services.sh), which would disturb any test running beside them.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;
use wire::envelope::frame;

/// The registry is stopped by one test at a time.
static REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn wait_log(sink: &SinkProcess, what: &str, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.log().contains(needle) {
        ensure!(Instant::now() < deadline, "waited for {what}:\n{}", sink.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Messages held for the registry, the second of which is invalid and too large for the
/// dead-letter topic: once the registry is back, the first is stored, the second stops the sink
/// (exit 3), and the third is neither stored nor accounted for: the stored offset is the refused
/// message's, so it is read again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_after_a_registry_outage_skips_nothing() -> Result<()> {
    let _one = REGISTRY.lock().await;
    let (topic, db) = fresh_topic_and_db("regrefused", 1).await?;
    create_topic_with(&format!("{topic}.dlq"), 1, &[("max.message.bytes", "2000")]).await?;
    let id = registry().register(&format!("{topic}-value"), wire::JSON_SCHEMA)?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--schema-registry", &registry_url()])?;
    wait_log(&sink, "the assignment", "partitions assigned partitions=[0]")?;

    services(&["stop", "registry"], false)?;
    let good = |seq| frame(id, &synthetic_frame("door", seq, 1).to_json());
    // Framed with a known id, but not a frame message (a field the schema does not have).
    let invalid = frame(id, format!("{{\"schema_version\": 2, \"padding\": \"{}\"}}", "x".repeat(20_000)).as_bytes());
    produce_to(&brokers(), &topic, 0, &[good(0), invalid, good(1)])?;
    let waited = wait_log(&sink, "the message to wait for the registry", "partition paused");
    services(&["start", "registry"], false)?;
    waited?;

    let (status, log) = sink.wait_exit(Duration::from_secs(120))?;
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("offset 1") && log.contains("MessageSizeTooLarge"), "{log}");
    let mut conn = db.connect().await?;
    let next: i64 = sqlx::query_scalar("SELECT next_offset FROM sink_offsets").fetch_one(&mut conn).await?;
    let frames: Vec<i64> = sqlx::query_scalar("SELECT frame_seq FROM frames ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!((next, frames), (1, vec![0]), "stored up to the refused message, nothing after it:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_away_mid_stream_loses_and_dead_letters_nothing() -> Result<()> {
    let _one = REGISTRY.lock().await;
    let (topic, db) = fresh_topic_and_db("regdown", 2).await?;
    // Two schemas: the sink meets the second only once the registry is away.
    let first = registry().register(&format!("{topic}-value"), wire::JSON_SCHEMA)?;
    let mut other: serde_json::Value = serde_json::from_str(wire::JSON_SCHEMA)?;
    other["title"] = format!("{topic}: the same contract, another schema id").into();
    let second = registry().register(&format!("{topic}-second"), &other.to_string())?;
    ensure!(first != second, "two ids");

    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--schema-registry", &registry_url()])?;
    let mut conn = db.connect().await?;
    let batch = |from: u64, id: u32| {
        (from..from + 50)
            .map(move |s| synthetic_frame(&format!("cam-{}", s % 4), s, 2))
            .map(move |m| (m.camera_id.clone(), frame(id, &m.to_json())))
    };
    let before: Vec<(String, Vec<u8>)> = batch(0, first).collect();
    produce(&topic, before.iter().map(|(k, p)| (k.as_str(), p.clone())))?;
    assert_eq!(wait_for_count(&mut conn, "SELECT count(*) FROM frames", 50, Duration::from_secs(60)).await?, 50);

    services(&["stop", "registry"], false)?;
    let during: Vec<(String, Vec<u8>)> = batch(50, second).chain(batch(100, first)).collect();
    produce(&topic, during.iter().map(|(k, p)| (k.as_str(), p.clone())))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.log().contains("waits for the schema registry") {
        ensure!(Instant::now() < deadline, "the sink did not notice:\n{}", sink.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let dead_while_away = topic_size(&format!("{topic}.dlq")).unwrap_or(0);
    services(&["start", "registry"], false)?;

    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", 150, Duration::from_secs(120)).await?;
    let log = sink.stop()?;
    assert_eq!(stored, 150, "{log}");
    assert_eq!(dead_while_away, 0, "{log}");
    assert_eq!(topic_size(&format!("{topic}.dlq")).unwrap_or(0), 0, "{log}");
    assert_eq!(log_field(&log, "progress", "dead_letters"), Some(0), "{log}");
    assert!(log.contains("schema registry back"), "{log}");
    let detections: i64 = sqlx::query_scalar("SELECT count(*) FROM detections").fetch_one(&mut conn).await?;
    assert_eq!(detections, 300);
    Ok(())
}
