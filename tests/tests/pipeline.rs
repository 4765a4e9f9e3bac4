//! The whole pipeline on real parts: the detector on the sample video publishes to the real Kafka
//! broker, the sink writes to the real PostgreSQL, and the rows equal what was published.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;
use sqlx::{PgConnection, Row};
use wire::FrameMessage;

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

fn run_detector(source: &std::path::Path, camera: &str, topic: &str) -> Result<()> {
    detect_to_kafka(source, camera, topic, &[]).map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_of_the_sample_video_reaches_postgres_as_published() -> Result<()> {
    let video = sample("vtest.avi");
    let frames_in_video = ffprobe_frame_count(&video)?;
    let (topic, db) = fresh_topic_and_db("e2e", 4).await?;
    // The sink runs while the detector publishes, as in production.
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    run_detector(&video, "e2e-cam", &topic)?;

    // What the detector published, read back from the broker.
    let published = read_topic(&topic, Duration::from_secs(60))?;
    let mut by_seq: BTreeMap<i64, (i32, i64, FrameMessage)> = BTreeMap::new();
    for r in &published {
        let msg = FrameMessage::from_json(&r.payload)?;
        assert_eq!(msg.camera_id, "e2e-cam");
        let prev = by_seq.insert(msg.frame_seq as i64, (r.partition, r.offset, msg));
        assert!(prev.is_none(), "frame published twice");
    }
    assert_eq!(published.len() as u64, frames_in_video, "one message per decoded frame");
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (0..frames_in_video as i64).collect::<Vec<_>>());

    let mut conn = db.connect().await?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", frames_in_video as i64, Duration::from_secs(120)).await?;
    let log = sink.stop()?;
    assert_eq!(stored as u64, frames_in_video, "frames in the table; sink log:\n{log}");

    // Frames: every column equals the message it came from, and where it was read.
    let rows = sqlx::query(
        "SELECT frame_seq, camera_id, captured_at, pts_ms, frame_width, frame_height, person_count,
                model_name, model_sha256, kafka_partition, kafka_offset FROM frames ORDER BY frame_seq",
    )
    .fetch_all(&mut conn)
    .await?;
    for row in &rows {
        let seq: i64 = row.get("frame_seq");
        let (partition, offset, msg) = &by_seq[&seq];
        assert_eq!(row.get::<String, _>("camera_id"), msg.camera_id);
        assert_eq!(row.get::<chrono::DateTime<chrono::Utc>, _>("captured_at"), msg.captured_at);
        assert_eq!(row.get::<i64, _>("pts_ms"), msg.pts_ms);
        assert_eq!(row.get::<i32, _>("frame_width") as u32, msg.frame_width);
        assert_eq!(row.get::<i32, _>("frame_height") as u32, msg.frame_height);
        assert_eq!(row.get::<i32, _>("person_count") as usize, msg.detections.len());
        assert_eq!(row.get::<String, _>("model_name"), msg.model.name);
        assert_eq!(row.get::<String, _>("model_sha256"), msg.model.sha256);
        assert_eq!((row.get::<i32, _>("kafka_partition"), row.get::<i64, _>("kafka_offset")), (*partition, *offset));
    }

    // Detections: one row per published detection, equal to the float.
    let rows = sqlx::query(
        "SELECT frame_seq, det_index, class, score, x1, y1, x2, y2, array_to_json(keypoints)::text AS kps, captured_at
         FROM detections ORDER BY frame_seq, det_index",
    )
    .fetch_all(&mut conn)
    .await?;
    let published_detections: usize = by_seq.values().map(|(_, _, m)| m.detections.len()).sum();
    assert!(published_detections > 0, "the sample video has people in it");
    assert_eq!(rows.len(), published_detections);
    for row in &rows {
        let (_, _, msg) = &by_seq[&row.get::<i64, _>("frame_seq")];
        let d = &msg.detections[row.get::<i32, _>("det_index") as usize];
        assert_eq!(row.get::<String, _>("class"), d.class);
        assert_eq!(row.get::<f32, _>("score"), d.score);
        let bbox = [row.get::<f32, _>("x1"), row.get("y1"), row.get("x2"), row.get("y2")];
        assert_eq!(bbox, [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]);
        let kps: Option<Vec<[f32; 3]>> = row.get::<Option<String>, _>("kps").map(|s| serde_json::from_str(&s)).transpose()?;
        assert_eq!(kps, d.keypoints);
        assert_eq!(row.get::<chrono::DateTime<chrono::Utc>, _>("captured_at"), msg.captured_at);
    }

    // The stored offsets cover every message: per partition, one past the last.
    let mut high: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &published {
        let e = high.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    let stored: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, next_offset FROM sink_offsets ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(stored, high.into_iter().collect::<Vec<_>>());
    Ok(())
}

/// A frame sent twice makes one row; malformed messages go to the dead-letter topic with their
/// reason, and the good ones around them are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_absorbed_and_bad_messages_are_dead_lettered() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("replay", 1).await?;
    let image = sample("basketball1.png");
    run_detector(&image, "still", &topic)?;
    let good = read_topic(&topic, Duration::from_secs(30))?.remove(0).payload;
    let mut v4: serde_json::Value = serde_json::from_slice(&good)?;
    v4["schema_version"] = 4.into();
    let v4 = v4.to_string();
    produce(&topic, [("still", b"{not json".to_vec()), ("still", v4.clone().into_bytes())])?;
    // The same frame again, as a detector re-processing its file after a restart would send it.
    run_detector(&image, "still", &topic)?;

    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let mut conn = db.connect().await?;
    let next =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 4, Duration::from_secs(60)).await?;
    sink.stop()?;
    assert_eq!(next, 4, "all four messages accounted for");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, 1);
    let detections = count(&mut conn, "SELECT count(*) FROM detections").await?;
    assert_eq!(detections, FrameMessage::from_json(&good)?.detections.len() as i64);

    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(30))?;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload, b"{not json");
    assert_eq!(dead[1].payload, v4.as_bytes());
    assert!(dead[0].header("dlq.error").unwrap().contains("not a frame message"));
    assert!(dead[1].header("dlq.error").unwrap().contains("schema_version 4"));
    assert_eq!(dead[1].header("dlq.source.topic"), Some(topic.as_str()));
    assert_eq!(dead[1].header("dlq.source.offset"), Some("2"));
    Ok(())
}
