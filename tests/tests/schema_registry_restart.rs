//! The schema registry goes away while the sink needs it: the messages wait (their partitions
//! paused), nothing is dead-lettered or lost, and all of them are stored once it is back. Alone in
//! its file: it stops the shared registry (scripts/services.sh), which would disturb any test
//! running beside it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;
use wire::envelope::frame;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_away_mid_stream_loses_and_dead_letters_nothing() -> Result<()> {
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
    while !sink.log().contains("schema registry unavailable") {
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
