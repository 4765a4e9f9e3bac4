//! PostgreSQL restarted while the sink ingests: nothing lost, nothing duplicated, the sink rides
//! it out. Alone in its file: it restarts the shared server (scripts/services.sh), which would
//! disturb any test running beside it.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_ingest_loses_and_duplicates_nothing() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("pgrestart", 4).await?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;

    // A camera that keeps sending while the database goes away and comes back.
    let chunks = 20u64;
    let per_chunk = 1000u64;
    let topic_for_producer = topic.clone();
    let producer = std::thread::spawn(move || -> Result<()> {
        for c in 0..chunks {
            let frames: Vec<wire::FrameMessage> = (c * per_chunk..(c + 1) * per_chunk).map(|s| synthetic_frame("door", s, 3)).collect();
            produce(&topic_for_producer, frames.iter().map(|m| ("door", m.to_json())))?;
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    });

    let mut conn = db.connect().await?;
    let first = wait_for_count(&mut conn, "SELECT least(count(*), 1) FROM frames", 1, Duration::from_secs(60)).await?;
    ensure!(first == 1, "no rows before the restart");
    drop(conn);
    // Down for longer than the sink's 3 s connection timeout while the camera keeps sending.
    let script = repo_root().join("scripts/services.sh");
    let status = Command::new("bash").arg(&script).args(["stop", "postgres"]).status()?;
    ensure!(status.success(), "stopping PostgreSQL failed");
    std::thread::sleep(Duration::from_secs(6));
    let status = Command::new("bash").arg(&script).args(["start", "postgres"]).status()?;
    ensure!(status.success(), "starting PostgreSQL failed");
    producer.join().expect("producer thread")?;

    let total = (chunks * per_chunk) as i64;
    let mut conn = db.connect().await?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", total, Duration::from_secs(180)).await?;
    let log = sink.stop()?;
    assert_eq!(stored, total, "{log}");
    let detections: i64 = sqlx::query_scalar("SELECT count(*) FROM detections").fetch_one(&mut conn).await?;
    assert_eq!(detections, total * 3);
    let seqs: i64 = sqlx::query_scalar("SELECT count(DISTINCT frame_seq) FROM frames").fetch_one(&mut conn).await?;
    assert_eq!(seqs, total);
    // The sink noticed, held its partitions, and carried on.
    assert!(log.contains("database write failed; retrying"), "{log}");
    assert!(log.contains("database unavailable: partitions paused"), "{log}");
    assert!(log.contains("partitions resumed"), "{log}");
    Ok(())
}
