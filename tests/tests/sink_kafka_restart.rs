//! The Kafka broker restarted while the sink ingests: the sink retries, rejoins its group, and
//! every frame and detection is stored exactly once. Alone in its file: it restarts the shared
//! broker (scripts/services.sh keeps its data), which would disturb any test running beside it.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_restart_mid_ingest_loses_and_duplicates_nothing() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("kafkarestart", 4).await?;
    let total = 40_000u64;
    let frames: Vec<wire::FrameMessage> = (0..total).map(|s| synthetic_frame(&format!("cam-{}", s % 8), s / 8, 2)).collect();
    produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;

    // Small batches, so the restart falls mid-ingest.
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--batch-rows", "300", "--batch-max-rows", "300"])?;
    let mut conn = db.connect().await?;
    wait_for_count(&mut conn, "SELECT least(count(*), 1) FROM frames", 1, Duration::from_secs(60)).await?;
    let status = Command::new("bash").arg(repo_root().join("scripts/services.sh")).args(["restart", "kafka"]).status()?;
    ensure!(status.success(), "restarting Kafka failed");
    let after_restart: i64 = sqlx::query_scalar("SELECT count(*) FROM frames").fetch_one(&mut conn).await?;

    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", total as i64, Duration::from_secs(300)).await?;
    let log = sink.stop()?;
    assert!((after_restart as u64) < total, "the sink was done before the broker came back; nothing was tested");
    assert_eq!(stored, total as i64, "{log}");
    let detections: i64 = sqlx::query_scalar("SELECT count(*) FROM detections").fetch_one(&mut conn).await?;
    assert_eq!(detections, total as i64 * 2, "{log}");
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT DISTINCT camera_id, frame_seq FROM frames) f").fetch_one(&mut conn).await?;
    assert_eq!(distinct, total as i64);
    let next: i64 = sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM sink_offsets").fetch_one(&mut conn).await?;
    assert_eq!(next, total as i64, "the stored offsets cover every message");
    assert!(!log.contains("panicked") && !log.lines().any(|l| l.contains(" ERROR ")), "{log}");
    Ok(())
}
