//! Replay cost against the number of daily partitions (issue 16, item 5), on the real broker and
//! database (services running, release binaries built):
//!   cargo bench -p pipeline-tests --bench replay_partitions [-- FRAMES [PARTITIONS]]
//! A topic of FRAMES frame messages (default 20,000; 16 cameras, 3 people each) is stored into two
//! stores, then replayed into each by a second consumer group, so that every message is a frame
//! already stored and goes through the staging merge, whose conflict check looks each one up. One
//! store has a single partition (yesterday to tomorrow); the other PARTITIONS daily partitions
//! (default 400), each holding a day of two cameras' frames (one a minute, with their keys). The
//! replay into each is timed from its first batch to its last; then the merge statement's plan
//! is printed, from PostgreSQL's auto_explain during one more replay. The last line:
//!   one_partition_replay_s=<f> many_partitions_replay_s=<f> many_over_one=<f>

use std::time::Instant;

use anyhow::{ensure, Result};
use chrono::{DateTime, Days, Utc};
use pipeline_tests::*;
use sqlx::PgConnection;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let frames: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let partitions: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(400);
    let messages: Vec<wire::FrameMessage> = (0..frames).map(|s| synthetic_frame(&format!("cam-{}", s % 16), s / 16, 3)).collect();
    let topic = unique("replay");
    create_topic(&topic, 4).await?;
    produce(&topic, messages.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    println!("frames={frames} partitions={partitions}");

    let one = store(frames, &topic, 1).await?;
    let many = store(frames, &topic, partitions).await?;
    println!("one_partition_replay_s={:.2} many_partitions_replay_s={:.2} many_over_one={:.2}", one.0, many.0, many.0 / one.0);
    for (label, plan) in [("one partition", one.1), ("many partitions", many.1)] {
        println!("merge plan, {label}:");
        for line in plan.lines() {
            println!("  | {line}");
        }
    }
    Ok(())
}

/// A store with `partitions` daily partitions: the topic stored into it, then replayed; the
/// replay's seconds and the merge's plan during a further replay.
async fn store(frames: u64, topic: &str, partitions: u64) -> Result<(f64, String)> {
    let db = TestDb::create("replay").await?;
    migrate(&db.url)?;
    let mut conn = db.connect().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
    let today = now.date_naive();
    let t = Instant::now();
    if partitions == 1 {
        make(&mut conn, today - Days::new(1), today + Days::new(2)).await?;
    } else {
        for back in (0..partitions - 1).rev() {
            let day = today - Days::new(back);
            make(&mut conn, day, day + Days::new(1)).await?;
            if back > 0 {
                fill_day(&mut conn, midnight(day)).await?;
            }
        }
        make(&mut conn, today + Days::new(1), today + Days::new(2)).await?;
    }
    sqlx::query("VACUUM (ANALYZE) frame_keys, frames, detections").execute(&mut conn).await?;
    // The fill's writes flushed now, not by a checkpoint in the middle of the timed replay.
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM frames").fetch_one(&mut conn).await?;
    println!("partitions={partitions} frames_held={held} fill_s={:.1}", t.elapsed().as_secs_f64());
    // Stored once, then replayed: every message a frame already stored.
    let no_upkeep = ["--maintain", "false"];
    drain_rate(&db.url, topic, frames, &format!("partitions={partitions} pass=first"), &no_upkeep).await?;
    let rate = drain_rate(&db.url, topic, frames, &format!("partitions={partitions} pass=replay"), &no_upkeep).await?;
    let replayed: i64 = sqlx::query_scalar("SELECT count(*) FROM frames").fetch_one(&mut conn).await?;
    ensure!(replayed == held + frames as i64, "the replay stored rows: {replayed} against {held} + {frames}");
    // Once more, with the plans of its statements in the server's log.
    for setting in ["session_preload_libraries = 'auto_explain'", "auto_explain.log_min_duration = 0"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{}\" SET {setting}", db.name))).execute(&mut conn).await?;
    }
    let log = state_dir().join("postgres.log");
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    drain_rate(&db.url, topic, frames, &format!("partitions={partitions} pass=explained"), &no_upkeep).await?;
    Ok((frames as f64 / rate, merge_plan(&log, from)?))
}

fn midnight(d: chrono::NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

async fn make(conn: &mut PgConnection, from: chrono::NaiveDate, to: chrono::NaiveDate) -> Result<()> {
    for table in ["frames", "detections"] {
        let sql = format!(
            "CREATE TABLE {table}_p{} PARTITION OF {table} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
            from.format("%Y%m%d")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A day of two cameras, a frame a minute with 3 detections, and their keys.
async fn fill_day(conn: &mut PgConnection, start: DateTime<Utc>) -> Result<()> {
    let series = format!(
        "FROM (SELECT i, 'old-' || (i % 2) AS camera_id, md5('{start}')::uuid AS run_id, i AS frame_seq,
                      '{start}'::timestamptz + (i / 2) * interval '1 minute' AS captured_at
               FROM generate_series(0, 2 * 1440 - 1) i) s"
    );
    for sql in [
        format!("INSERT INTO frame_keys SELECT camera_id, run_id, frame_seq, captured_at {series}"),
        format!(
            "INSERT INTO frames (camera_id, run_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count, model_name,
                                 model_sha256, kafka_partition, kafka_offset)
             SELECT camera_id, run_id, frame_seq, captured_at, i * 1000, 768, 576, 3, 'synthetic', '0123456789ab', 0, i {series}"
        ),
        format!(
            "INSERT INTO detections (camera_id, run_id, frame_seq, det_index, class, score, x1, y1, x2, y2, captured_at)
             SELECT camera_id, run_id, frame_seq, k, 'person', 0.5, 10, 50, 70, 230, captured_at {series}, generate_series(0, 2) k"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The plan auto_explain logged for the slowest merge statement after byte `from` of the log.
fn merge_plan(log: &std::path::Path, from: u64) -> Result<String> {
    let text = std::fs::read(log)?;
    let text = String::from_utf8_lossy(&text[from as usize..]);
    // Each entry: "<time> [pid] LOG:  duration: <ms> ms  plan:", then its lines, indented by a tab.
    let mut slowest: Option<(f64, String)> = None;
    for entry in text.split("LOG:  duration: ").skip(1) {
        let Some((ms, rest)) = entry.split_once(" ms  plan:") else { continue };
        if !rest.contains("Query Text: WITH new AS (INSERT INTO frame_keys") {
            continue;
        }
        let lines: Vec<&str> = rest.lines().skip(1).take_while(|l| l.starts_with('\t')).collect();
        let plan = lines.iter().skip_while(|l| !l.contains("(cost=")).map(|l| l.trim_start_matches('\t')).collect::<Vec<_>>().join("\n");
        let ms: f64 = ms.trim().parse().unwrap_or(0.0);
        if slowest.as_ref().is_none_or(|(m, _)| ms > *m) {
            slowest = Some((ms, format!("duration {ms:.1} ms\n{plan}")));
        }
    }
    slowest.map(|(_, p)| p).ok_or_else(|| anyhow::anyhow!("no merge plan in {}", log.display()))
}
