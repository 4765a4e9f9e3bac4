//! Store-size benchmark against the real broker and database (services running, release binaries
//! built):
//!   cargo bench -p pipeline-tests --bench store_size [-- DETECTIONS [MESSAGES]]
//! The sink's rows/s into an empty store and into one already holding DETECTIONS detection rows
//! (default 20 million, a third as many frames, 50 cameras over the last 7 days in daily
//! partitions), draining the same topic of MESSAGES frame messages (default 100,000; 3 people each)
//! each time; the empty store is measured before and after the large one, side by side. Then the
//! README's two time queries on the large store, and people per minute of one camera over a day
//! from the rollup (`people_per_minute`, what the dashboards read), each run 5 times with EXPLAIN
//! ANALYZE: the median execution time and the last plan. Last, one pass of the store's upkeep
//! (`sink maintain`) with a retention of 5 days: the days it makes and drops, and the longest
//! transaction that held a lock on the tables. The last line:
//!   empty_rows_per_s=<f> large_rows_per_s=<f> large_over_empty=<f> per_minute_ms=<f> time_range_ms=<f> rollup_day_ms=<f> longest_lock_ms=<n> pass_s=<f>

use std::time::Instant;

use anyhow::Result;
use chrono::{DateTime, Days, Utc};
use pipeline_tests::*;
use sqlx::PgConnection;

const PERSONS: u64 = 3;
const CAMERAS: u64 = 50;
const DAYS: u64 = 7;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let detections: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000_000);
    let messages: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100_000);

    let now = Utc::now();
    let frames: Vec<wire::FrameMessage> = (0..messages)
        .map(|s| {
            let mut m = synthetic_frame(&format!("live-{}", s % 16), s / 16, PERSONS as usize);
            m.run_id = uuid::Uuid::now_v7();
            m.captured_at = now + chrono::Duration::milliseconds(s as i64);
            m
        })
        .collect();
    let topic = unique("store");
    create_topic(&topic, 4).await?;
    produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    println!("messages={messages} rows={}", messages * (1 + PERSONS));

    let empty_before = drain_into(&TestDb::create("store").await?, &topic, messages, "store=empty_before").await?;

    let large = TestDb::create("store").await?;
    migrate(&large.url)?;
    let mut conn = large.connect().await?;
    let t = Instant::now();
    fill(&mut conn, detections / PERSONS, now).await?;
    println!("fill_s={:.0} store_detections={detections}", t.elapsed().as_secs_f64());
    let size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))").fetch_one(&mut conn).await?;
    println!("store_size={size}");
    let large_rate = drain_into(&large, &topic, messages, "store=large").await?;
    let empty_after = drain_into(&TestDb::create("store").await?, &topic, messages, "store=empty_after").await?;
    let empty = (empty_before + empty_after) / 2.0;

    // An hour and ten minutes three days back, well inside the filled days.
    let hour = (now.date_naive() - Days::new(3)).and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let per_minute = format!(
        "SELECT date_trunc('minute', captured_at) AS minute, count(*) AS frames, round(avg(person_count), 2) AS avg_people,
                max(person_count) AS max_people
         FROM frames WHERE camera_id = 'cam-7' AND captured_at >= '{hour}' AND captured_at < '{hour}'::timestamptz + interval '1 hour'
         GROUP BY 1 ORDER BY 1"
    );
    let time_range = format!(
        "SELECT captured_at, score, x1, y1, x2, y2 FROM detections
         WHERE camera_id = 'cam-7' AND captured_at BETWEEN '{hour}' AND '{hour}'::timestamptz + interval '10 minutes' AND score > 0.5"
    );
    let day = hour.date_naive();
    let rollup_day = format!(
        "SELECT minute, frames, avg_people, max_people FROM people_per_minute
         WHERE camera_id = 'cam-7' AND minute >= '{day}' AND minute < '{}' ORDER BY minute",
        day + Days::new(1)
    );
    let per_minute_ms = timed(&mut conn, "per_minute", &per_minute).await?;
    let time_range_ms = timed(&mut conn, "time_range", &time_range).await?;
    let rollup_day_ms = timed(&mut conn, "rollup_day", &rollup_day).await?;

    // The upkeep at a retention of 5 days: the filled days before that go, the days ahead come.
    let sink = |args: &[&str]| -> Result<String> {
        let out =
            run(std::process::Command::new(bin("sink")).args(args).env("DATABASE_URL", &large.url), std::time::Duration::from_secs(3600))?;
        anyhow::ensure!(out.status.success(), "sink {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    sink(&["policy", "--retention-days", "5"])?;
    let t = Instant::now();
    let report = sink(&["maintain"])?;
    let pass_s = t.elapsed().as_secs_f64();
    println!("maintain_s={pass_s:.1} report={}", report.trim());
    let longest_lock_ms = log_field(&report, "store maintained", "longest_lock_ms").unwrap_or(u64::MAX);
    println!(
        "empty_rows_per_s={empty:.0} large_rows_per_s={large_rate:.0} large_over_empty={:.2} per_minute_ms={per_minute_ms:.2} time_range_ms={time_range_ms:.2} rollup_day_ms={rollup_day_ms:.2} longest_lock_ms={longest_lock_ms} pass_s={pass_s:.1}",
        large_rate / empty
    );
    Ok(())
}

/// Rows (frames + detections) per second of a sink draining the topic into `db`.
async fn drain_into(db: &TestDb, topic: &str, messages: u64, label: &str) -> Result<f64> {
    migrate(&db.url)?;
    let rate = drain_rate(&db.url, topic, messages, label, &[]).await? * (1 + PERSONS) as f64;
    println!("{label} sink_rows_per_s={rate:.0}");
    Ok(rate)
}

/// `frames` frames of 50 cameras, evenly over the 7 days before `now` (a frame every few seconds
/// per camera), 3 detections each with 17 keypoints, and their keys; in the daily partitions the
/// sink makes (made here for the days before yesterday, as the sink would have made them then).
async fn fill(conn: &mut PgConnection, frames: u64, now: DateTime<Utc>) -> Result<()> {
    let start = (now.date_naive() - Days::new(DAYS)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    for d in 0..=DAYS + 1 {
        let day = start.date_naive() + Days::new(d);
        for table in ["frames", "detections"] {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {table}_p{} PARTITION OF {table} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{} 00:00:00+00')",
                day.format("%Y%m%d"),
                day + Days::new(1)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
        }
    }
    let step_ms = (now - start).num_milliseconds() as f64 / (frames / CAMERAS) as f64;
    let keypoints =
        format!("'{{{}}}'::real[]", (0..17).map(|k| format!("{{{},{},0.9}}", 100 + k, 200 + 10 * k)).collect::<Vec<_>>().join(","));
    let chunk = 500_000u64;
    for lo in (0..frames).step_by(chunk as usize) {
        let hi = (lo + chunk).min(frames);
        let series = format!(
            "FROM (SELECT i, 'cam-' || (i % {CAMERAS}) AS camera_id, md5('cam-' || (i % {CAMERAS}))::uuid AS run_id, i / {CAMERAS} AS frame_seq,
                          '{start}'::timestamptz + (i / {CAMERAS}) * interval '{step_ms} milliseconds' AS captured_at
                   FROM generate_series({lo}::bigint, {hi}::bigint - 1) i) s"
        );
        let statements = [
            format!("INSERT INTO frame_keys (camera_id, run_id, frame_seq, captured_at) SELECT camera_id, run_id, frame_seq, captured_at {series}"),
            format!(
                "INSERT INTO frames (camera_id, run_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count, model_name,
                                     model_sha256, kafka_partition, kafka_offset)
                 SELECT camera_id, run_id, frame_seq, captured_at, frame_seq * 200, 768, 576, {PERSONS}, 'synthetic', '0123456789ab', 0, i {series}"
            ),
            format!(
                "INSERT INTO detections (camera_id, run_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at)
                 SELECT camera_id, run_id, frame_seq, k, 'person', 0.4 + 0.1 * k, 10 + 90 * k, 50, 70 + 90 * k, 230, {keypoints}, captured_at
                 {series}, generate_series(0, {PERSONS} - 1) k"
            ),
        ];
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
        }
        eprintln!("filled {hi} of {frames} frames");
    }
    // The rollup, as the sink keeps it and migration 4 first fills it.
    sqlx::query(
        "INSERT INTO people_minutes SELECT camera_id, date_bin('1 minute', captured_at, '2000-01-01'), run_id, count(*), sum(person_count),
                max(person_count), min(captured_at), max(captured_at), min(model_name), min(model_sha256) FROM frames GROUP BY 1, 2, 3",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("VACUUM (ANALYZE) frame_keys, frames, detections, people_minutes").execute(&mut *conn).await?;
    Ok(())
}

/// The median execution time of 5 runs of `sql` under EXPLAIN ANALYZE, printing the last plan.
async fn timed(conn: &mut PgConnection, name: &str, sql: &str) -> Result<f64> {
    let mut times = Vec::new();
    let mut plan = Vec::new();
    for _ in 0..5 {
        plan =
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))).fetch_all(&mut *conn).await?;
        let ms = plan
            .iter()
            .find_map(|l| l.trim().strip_prefix("Execution Time: ")?.strip_suffix(" ms")?.parse::<f64>().ok())
            .expect("EXPLAIN ANALYZE prints the execution time");
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let runs: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!("query={name} median_ms={:.2} runs_ms={}", times[2], runs.join("/"));
    for line in &plan {
        println!("  | {line}");
    }
    Ok(times[2])
}
