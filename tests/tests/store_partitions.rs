//! `frames` and `detections` partitioned by capture day (migration 3), kept by the sink: days made
//! ahead, rows outside them in the default partition and moved out when their day is made,
//! retention that drops whole days and forgets their keys, and the natural key holding across
//! partitions (a replay with other capture times, as a file processed again, adds no row).

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use pipeline_tests::*;
use sqlx::PgConnection;

fn day(table: &str, t: DateTime<Utc>) -> String {
    format!("{table}_p{}", t.format("%Y%m%d"))
}

/// The partition each frame's row is in, by frame_seq, and the same for its detections.
async fn places(conn: &mut PgConnection) -> Result<Vec<(i64, String, String)>> {
    Ok(sqlx::query_as(
        "SELECT f.frame_seq, f.tableoid::regclass::text, d.tableoid::regclass::text
         FROM frames f JOIN detections d USING (camera_id, run_id, frame_seq) ORDER BY 1",
    )
    .fetch_all(conn)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_go_to_their_day_and_retention_drops_whole_days_with_their_keys() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("parts", 2).await?;
    let mut conn = db.connect().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
    let days = |n: i64| now + chrono::Duration::days(n);
    // A day five days back made by hand, as an older sink with a longer retention would have.
    let (from, to) = (days(-5).date_naive(), days(-4).date_naive());
    for table in ["frames", "detections"] {
        let sql = format!(
            "CREATE TABLE {} PARTITION OF {table} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
            day(table, days(-5))
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    // Frames 0..4: now, yesterday, 40 days ahead, 5 and 10 days back.
    let at = [days(0), days(-1), days(40), days(-5), days(-10)];
    let frames: Vec<wire::FrameMessage> = at
        .iter()
        .enumerate()
        .map(|(seq, t)| {
            let mut m = synthetic_frame("yard", seq as u64, 1);
            m.captured_at = *t;
            m
        })
        .collect();
    produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;

    let group = unique("group");
    let sink = SinkProcess::start(&db.url, &topic, &group, &["--partition-days-ahead", "3"])?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM detections", 5, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!(stored, 5, "{log}");
    let made: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'frames'::regclass ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut want: Vec<String> = (-1..=3).map(|n| day("frames", days(n))).collect();
    want.extend([day("frames", days(-5)), "frames_default".into()]);
    want.sort();
    assert_eq!(made, want, "{log}");
    let place = |seq: i64, frames: String, detections: String| (seq, frames, detections);
    assert_eq!(
        places(&mut conn).await?,
        [
            place(0, day("frames", days(0)), day("detections", days(0))),
            place(1, day("frames", days(-1)), day("detections", days(-1))),
            place(2, "frames_default".into(), "detections_default".into()),
            place(3, day("frames", days(-5)), day("detections", days(-5))),
            place(4, "frames_default".into(), "detections_default".into()),
        ]
    );

    // Again with the day 40 ahead within reach and two days kept before today.
    let sink = SinkProcess::start(&db.url, &topic, &group, &["--partition-days-ahead", "45", "--retention-days", "2"])?;
    let left = wait_for_count(&mut conn, "SELECT count(*) FROM frames", 3, Duration::from_secs(60)).await?;
    // Frame 0 again as it was (a replay), with another capture time, and in tomorrow's partition
    // (a file processed again): the key is stored, so none adds a row.
    let mut again = [frames[0].clone(), frames[0].clone(), frames[0].clone()];
    again[1].captured_at += chrono::Duration::seconds(30);
    again[2].captured_at = days(1);
    produce(&topic, again.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    let next: i64 = wait_for_count(&mut conn, "SELECT sum(next_offset)::bigint FROM sink_offsets", 8, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!((left, next), (3, 8), "{log}");
    assert_eq!(
        places(&mut conn).await?,
        [
            place(0, day("frames", days(0)), day("detections", days(0))),
            place(1, day("frames", days(-1)), day("detections", days(-1))),
            place(2, day("frames", days(40)), day("detections", days(40))),
        ],
        "frame 2 moved out of the default partition into its day, frames 3 and 4 are past retention:\n{log}"
    );
    let gone: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT to_regclass('{}')::text", day("frames", days(-5)))))
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(gone, None, "the day five days back is dropped whole");
    let keys: Vec<i64> = sqlx::query_scalar("SELECT frame_seq FROM frame_keys ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(keys, [0, 1, 2], "the keys of the frames retention dropped are forgotten, the others kept");
    assert_eq!(log_field(&log, "progress", "replayed"), Some(3), "{log}");
    assert_eq!(log_field(&log, "progress", "conflicts"), Some(0), "{log}");
    Ok(())
}
