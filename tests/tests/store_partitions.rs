//! `frames`, `detections` and `track_observations` partitioned by capture day (migrations 3 to 5),
//! kept by the sink: days made ahead, rows of days not made in the default partition and moved out
//! when their day is made, frames from clocks far off refused with a reason, retention (the store's
//! policy) that drops whole days and forgets their keys, rollup minutes and tracks, and the natural
//! key holding across partitions (a replay with other capture times, as a file processed again,
//! adds no row).

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

/// `sink policy` or `sink maintain` against a database; its stdout.
fn sink_cmd(db_url: &str, args: &[&str]) -> Result<String> {
    let out = run(std::process::Command::new(bin("sink")).args(args).env("DATABASE_URL", db_url), Duration::from_secs(120))?;
    anyhow::ensure!(out.status.success(), "sink {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_go_to_their_day_and_retention_drops_whole_days_with_their_keys() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("parts", 2).await?;
    let mut conn = db.connect().await?;
    assert_eq!(sink_cmd(&db.url, &["policy", "--days-ahead", "3"])?.trim(), "days_ahead=3 retention_days=0");
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
    let days = |n: i64| now + chrono::Duration::days(n);
    // A day five days back made by hand, as an older sink with a longer retention would have.
    let (from, to) = (days(-5).date_naive(), days(-4).date_naive());
    for table in ["frames", "detections", "track_observations"] {
        let sql = format!(
            "CREATE TABLE {} PARTITION OF {table} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
            day(table, days(-5))
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    // Frames 0..6: now, yesterday, 5 and 6 days back (admitted: within a week), and three from
    // cameras whose clocks are wrong: 40 days ahead, 10 days back, 10 years ahead. Each tracked,
    // with tracks of its own (its person and a weak one): frame n's are tracks 2n + 1 and 2n + 2.
    let at = [days(0), days(-1), days(-5), days(-6), days(40), days(-10), days(3653)];
    let session = uuid::Uuid::now_v7();
    let frames: Vec<wire::FrameMessage> = at
        .iter()
        .enumerate()
        .map(|(seq, t)| {
            let mut m = synthetic_frame("yard", seq as u64, 1);
            m.captured_at = *t;
            tracked_frame(m, session, 2 * seq as u64 + 1)
        })
        .collect();
    produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;

    // The same static member each time, as a sink restarted on its host.
    let (group, id) = (unique("group"), unique("sink"));
    let sink = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &[])?;
    let next =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 7, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!(next, 7, "{log}");
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
            place(2, day("frames", days(-5)), day("detections", days(-5))),
            place(3, "frames_default".into(), "detections_default".into()),
        ],
        "{log}"
    );
    // The wrong clocks' frames are in the dead-letter topic, each with why.
    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(30))?;
    let mut refused: Vec<u64> = dead.iter().map(|d| wire::FrameMessage::from_json(&d.payload).unwrap().frame_seq).collect();
    refused.sort();
    assert_eq!(refused, [4, 5, 6], "{log}");
    assert!(dead.iter().all(|d| d.header("dlq.error").unwrap().contains("outside the admission window")), "{log}");

    // A pass makes the day the default partition holds a row of, and moves the row there.
    let report = sink_cmd(&db.url, &["maintain"])?;
    assert!(report.contains(&day("frames", days(-6))) && report.contains("moved_from_default=4"), "{report}");
    assert_eq!(places(&mut conn).await?[3], place(3, day("frames", days(-6)), day("detections", days(-6))));

    // Two days kept before today, from the next pass on (the sink's start).
    assert_eq!(sink_cmd(&db.url, &["policy", "--retention-days", "2"])?.trim(), "days_ahead=3 retention_days=2");
    let sink = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &[])?;
    let left = wait_for_count(&mut conn, "SELECT count(*) FROM frames", 2, Duration::from_secs(60)).await?;
    // Frame 0 again as it was (a replay), with another capture time, and in yesterday's partition
    // (a file processed again): the key is stored, so none adds a row.
    let mut again = [frames[0].clone(), frames[0].clone(), frames[0].clone()];
    again[1].captured_at += chrono::Duration::seconds(30);
    again[2].captured_at = days(-1);
    produce(&topic, again.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    let next: i64 = wait_for_count(&mut conn, "SELECT sum(next_offset)::bigint FROM sink_offsets", 10, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!((left, next), (2, 10), "{log}");
    assert_eq!(
        places(&mut conn).await?,
        [place(0, day("frames", days(0)), day("detections", days(0))), place(1, day("frames", days(-1)), day("detections", days(-1)))],
        "frames 2 and 3 are past retention:\n{log}"
    );
    for gone in [day("frames", days(-5)), day("frames", days(-6))] {
        let found: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT to_regclass('{gone}')::text"))).fetch_one(&mut conn).await?;
        assert_eq!(found, None, "{gone} is dropped whole");
    }
    let keys: Vec<i64> = sqlx::query_scalar("SELECT frame_seq FROM frame_keys ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(keys, [0, 1], "the keys of the frames retention dropped are forgotten, the others kept");
    let minutes: Vec<i64> = sqlx::query_scalar("SELECT frames::bigint FROM people_minutes ORDER BY minute").fetch_all(&mut conn).await?;
    assert_eq!(minutes, [1, 1], "the rollup keeps the days kept, each frame counted once:\n{log}");
    let observed: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT frame_seq FROM track_observations ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(observed, [0, 1], "the observations go with their days");
    let tracks: Vec<(i64, i32)> = sqlx::query_as("SELECT track_id, frames FROM tracks ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(tracks, [(1, 1), (2, 1), (3, 1), (4, 1)], "tracks last seen before the cutoff are forgotten, replays add nothing:\n{log}");
    assert_eq!(log_field(&log, "progress", "replayed"), Some(3), "{log}");
    assert_eq!(log_field(&log, "progress", "conflicts"), Some(0), "{log}");
    Ok(())
}

/// The dashboards' queries read the per-minute rollup or the zones' tables, never `frames` or
/// `detections`, and `track_observations` only for the days of their range; a query of `frames` by
/// capture time reads only the days it asks for. On a store of 30 daily partitions, by EXPLAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_read_the_rollup_and_time_queries_only_their_days() -> Result<()> {
    let db = TestDb::create("explain").await?;
    migrate(&db.url)?;
    let mut conn = db.connect().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
    for n in -28..=1 {
        let (from, to) = ((now + chrono::Duration::days(n)).date_naive(), (now + chrono::Duration::days(n + 1)).date_naive());
        for table in ["frames", "detections", "track_observations"] {
            let sql = format!(
                "CREATE TABLE {}_p{} PARTITION OF {table} FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
                table,
                from.format("%Y%m%d")
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        }
    }
    // A frame a minute for each of two cameras over the 29 days up to now, and the rollup of them.
    let series = format!(
        "FROM (SELECT i, 'cam-' || (i % 2) AS camera_id, '{}'::timestamptz - (i / 2) * interval '1 minute' AS captured_at
               FROM generate_series(0, 2 * 29 * 1440 - 1) i) s",
        now.to_rfc3339()
    );
    for sql in [
        format!("INSERT INTO frame_keys SELECT camera_id, '{SYNTHETIC_RUN}', i, captured_at {series}"),
        format!(
            "INSERT INTO frames (camera_id, run_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count, model_name,
                                 model_sha256, kafka_partition, kafka_offset)
             SELECT camera_id, '{SYNTHETIC_RUN}', i, captured_at, i, 640, 480, i % 4, 'm', 'sha', 0, i {series}"
        ),
        "INSERT INTO people_minutes SELECT camera_id, date_bin('1 minute', captured_at, '2000-01-01'), run_id, count(*), sum(person_count),
                max(person_count), min(captured_at), max(captured_at), min(model_name), min(model_sha256) FROM frames GROUP BY 1, 2, 3"
            .to_string(),
        "ANALYZE".to_string(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    }
    let mut checked = 0;
    for (dashboard, panel, sql) in dashboard_sql()? {
        let q = grafana_sql(&sql, &["cam-0", "cam-1"]);
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {q}"))).fetch_all(&mut conn).await?;
        let plan = plan.join("\n");
        // The rollup, the zones' tables, or the tracks' observations of the range's days (at most
        // 2 of the 30 for its 7 hours); never frames or detections.
        let observation_days = plan.matches(" on track_observations_p").count();
        assert!(
            plan.contains("on people_minutes") || plan.contains("on zone_") || observation_days > 0,
            "{dashboard}, {panel}: {q}\n{plan}"
        );
        assert!(observation_days <= 2, "{dashboard}, {panel} reads {observation_days} days of track_observations: {q}\n{plan}");
        assert!(!plan.contains(" on frames") && !plan.contains(" on detections"), "{dashboard}, {panel} reads the tables: {q}\n{plan}");
        checked += 1;
    }
    assert!(checked >= 3, "the dashboards' SQL panels: {checked}");
    // As docs/wire.md's examples ask: one camera's last hour. (With no upper bound the default
    // partition is read too: it may hold any time.)
    let q =
        "SELECT date_bin('1 minute', captured_at, '2000-01-01') AS minute, count(*) AS frames, round(avg(person_count), 2) AS avg_people
             FROM frames WHERE camera_id = 'cam-1' AND captured_at >= now() - interval '1 hour' AND captured_at < now()
             GROUP BY 1 ORDER BY 1";
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {q}"))).fetch_all(&mut conn).await?;
    // The tables scanned (a bitmap index scan names its index: its heap scan names the table).
    let read: std::collections::BTreeSet<&str> = plan
        .iter()
        .filter(|l| l.contains("Scan") && !l.contains("Bitmap Index Scan"))
        .filter_map(|l| l.split(" on ").nth(1)?.split_whitespace().next())
        .collect();
    let today = format!("frames_p{}", now.format("%Y%m%d"));
    let yesterday = format!("frames_p{}", (now - chrono::Duration::days(1)).format("%Y%m%d"));
    assert!(
        !read.is_empty() && read.iter().all(|r| *r == today || *r == yesterday),
        "reads {read:?}, not only {today} and {yesterday}:\n{}",
        plan.join("\n")
    );
    Ok(())
}
