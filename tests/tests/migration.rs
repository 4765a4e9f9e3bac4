//! Migrations 2 to 5 on a database that holds data from before them, and a topic an older detector
//! wrote: old rows keep working (in the nil run, in the history partition, untracked), the keys and
//! the view are right, and the sink drains v1 and current (v3) messages side by side. Also: a
//! database whose tables do not match the sink's description of them is refused at start.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pipeline_tests::*;
use sqlx::{Connection, PgConnection};

/// Applies only the first `n` migrations, as a database set up by an older release is.
async fn migrate_to(db: &TestDb, n: usize) -> Result<()> {
    let dir = TempDir::new("mig")?;
    let mut all = std::fs::read_dir(repo_root().join("migrations"))?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>()?;
    all.sort();
    ensure!(all.len() >= n, "only {} migrations", all.len());
    for m in &all[..n] {
        std::fs::copy(m, dir.join(&m.file_name().context("a file")?.to_string_lossy()))?;
    }
    let migrator = sqlx::migrate::Migrator::new(dir.join("").as_path()).await?;
    migrator.run(&mut db.connect().await?).await?;
    Ok(())
}

/// A frame's row as SQL would write it around the sink (a backfill), with the columns of
/// migration 2 on: no key in frame_keys, no detections.
async fn insert_frame_row(conn: &mut PgConnection, m: &wire::FrameMessage) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO frames (camera_id, run_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count,
                             model_name, model_sha256, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0)",
    )
    .bind(&m.camera_id)
    .bind(m.run_id)
    .bind(m.frame_seq as i64)
    .bind(m.captured_at)
    .bind(m.pts_ms)
    .bind(m.frame_width as i32)
    .bind(m.frame_height as i32)
    .bind(m.detections.len() as i32)
    .bind(&m.model.name)
    .bind(&m.model.sha256)
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

/// `sink migrate`, its exit code and stderr.
fn sink_migrate(db: &TestDb) -> Result<(Option<i32>, String)> {
    let out = run(Command::new(bin("sink")).arg("migrate").env("DATABASE_URL", &db.url), Duration::from_secs(120))?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Migration 4 on a store with rows written around frame_keys after migration 3: a frame without
/// its key gets it; a second row under one key (another capture time) stops the migration with
/// how to find it; once that row is gone the migration runs, and from then on the database itself
/// refuses a frame row without its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_4_keys_every_frame_and_refuses_a_frame_stored_twice() -> Result<()> {
    let db = TestDb::create("mig4keys").await?;
    migrate_to(&db, 3).await?;
    let mut conn = db.connect().await?;
    let keyed = synthetic_frame("gate", 1, 1);
    sqlx::query("INSERT INTO frame_keys VALUES ($1, $2, $3, $4)")
        .bind(&keyed.camera_id)
        .bind(keyed.run_id)
        .bind(keyed.frame_seq as i64)
        .bind(keyed.captured_at)
        .execute(&mut conn)
        .await?;
    insert_frame_row(&mut conn, &keyed).await?;
    let keyless = synthetic_frame("gate", 2, 1);
    insert_frame_row(&mut conn, &keyless).await?;
    let mut twice = keyed.clone();
    twice.captured_at += chrono::Duration::hours(1);
    insert_frame_row(&mut conn, &twice).await?;

    let (code, stderr) = sink_migrate(&db)?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("1 frames rows repeat a stored frame's key") && stderr.contains("See them with"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains(" ERROR ")).count(), 1, "{stderr}");
    sqlx::query("DELETE FROM frames WHERE frame_seq = 1 AND captured_at = $1").bind(twice.captured_at).execute(&mut conn).await?;
    let (code, stderr) = sink_migrate(&db)?;
    assert_eq!(code, Some(0), "{stderr}");
    let keys: Vec<i64> = sqlx::query_scalar("SELECT frame_seq FROM frame_keys ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(keys, [1, 2], "the keyless frame has its key");
    let refused = insert_frame_row(&mut conn, &synthetic_frame("gate", 3, 1)).await.unwrap_err();
    assert_eq!(refused.as_database_error().and_then(|e| e.code()).as_deref(), Some("23503"), "{refused}");
    let again = insert_frame_row(&mut conn, &twice).await.unwrap_err();
    assert_eq!(again.as_database_error().and_then(|e| e.code()).as_deref(), Some("23503"), "a second row under one key: {again}");
    // The rollup was filled from the frames stored.
    assert_eq!(count(&mut conn, "SELECT sum(frames)::bigint FROM people_minutes").await?, 2);
    Ok(())
}

/// A store migrated from version 2 holding a frame from a camera whose clock was ten years ahead:
/// migration 3 stretches the history partition to that day, migration 4 ends it at today's end
/// again (the row goes to the default partition), so the daily partitions are made from tomorrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_from_the_future_does_not_stretch_history_over_the_coming_days() -> Result<()> {
    let (topic, db) = (unique("mig4future"), TestDb::create("mig4future").await?);
    create_topic(&topic, 1).await?;
    migrate_to(&db, 2).await?;
    let mut conn = db.connect().await?;
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut conn).await?;
    let mut frames = vec![synthetic_frame("gate", 0, 1), synthetic_frame("gate", 1, 1)];
    frames[0].captured_at = now - chrono::Duration::days(3);
    frames[1].captured_at = now + chrono::Duration::days(3653);
    for m in &frames {
        insert_frame_row(&mut conn, m).await?;
    }
    migrate(&db.url)?;
    let bound: String = sqlx::query_scalar("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'frames_history'")
        .fetch_one(&mut conn)
        .await?;
    let tomorrow = (now + chrono::Duration::days(1)).date_naive();
    assert!(bound.contains("MINVALUE") && bound.contains(&tomorrow.to_string()), "{bound}");
    let places: Vec<(i64, String)> =
        sqlx::query_as("SELECT frame_seq, tableoid::regclass::text FROM frames ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(places, [(0, "frames_history".to_string()), (1, "frames_default".to_string())]);
    // The sink makes today's and the coming days' partitions, and says the default one holds a row.
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--metrics-addr", &metrics_addr])?;
    let body = metrics_once(&metrics_addr, "sink_store_default_partition_rows{table=\"frames\"}", 1.0, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!(metric(&body, "sink_store_default_partition_rows{table=\"frames\"}"), Some(1.0), "{body}\n{log}");
    let made = count(&mut conn, "SELECT count(*) FROM pg_class WHERE relname LIKE 'frames_p%'").await?;
    assert!(made >= 7, "daily partitions made after history: {made}\n{log}");
    assert!(log.contains("rows in the default partitions"), "{log}");
    Ok(())
}

/// A frame's detections as SQL would write them with the columns of migration 2 on.
async fn insert_detection_rows(conn: &mut PgConnection, m: &wire::FrameMessage) -> Result<()> {
    for (i, d) in m.detections.iter().enumerate() {
        let kps: Vec<String> = d.keypoints.iter().flatten().map(|[x, y, s]| format!("{{{x},{y},{s}}}")).collect();
        sqlx::query(
            "INSERT INTO detections (camera_id, run_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::real[], $12)",
        )
        .bind(&m.camera_id)
        .bind(m.run_id)
        .bind(m.frame_seq as i64)
        .bind(i as i32)
        .bind(&d.class)
        .bind(d.score)
        .bind(d.bbox.x1)
        .bind(d.bbox.y1)
        .bind(d.bbox.x2)
        .bind(d.bbox.y2)
        .bind(format!("{{{}}}", kps.join(",")))
        .bind(m.captured_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Migration 5 on a store holding frames and detections: they stay, untracked (NULL session and
/// track), and read as such: the same frame delivered again without a tracker is a replay. Tracked
/// frames after it are stored with their tracks, the days of `track_observations` made beside the
/// others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_5_keeps_stored_frames_as_untracked() -> Result<()> {
    let (topic, db) = (unique("mig5"), TestDb::create("mig5").await?);
    create_topic(&topic, 1).await?;
    migrate_to(&db, 4).await?;
    let mut conn = db.connect().await?;
    let old = synthetic_frame("gate", 0, 2);
    sqlx::query("INSERT INTO frame_keys VALUES ($1, $2, $3, $4)")
        .bind(&old.camera_id)
        .bind(old.run_id)
        .bind(old.frame_seq as i64)
        .bind(old.captured_at)
        .execute(&mut conn)
        .await?;
    insert_frame_row(&mut conn, &old).await?;
    insert_detection_rows(&mut conn, &old).await?;

    migrate(&db.url)?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE tracker_session IS NULL").await?, 1);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections WHERE track_id IS NULL").await?, 2);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM track_observations").await?, 0);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM tracks").await?, 0);

    // The stored frame again as it was (no tracker), and a tracked frame after it.
    let tracked = tracked_frame(synthetic_frame("gate", 1, 2), uuid::Uuid::now_v7(), 1);
    produce(&topic, [("gate", old.to_json()), ("gate", tracked.to_json())])?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    wait_accounted(&mut conn, &topic).await?;
    let log = sink.stop()?;
    assert_eq!(log_field(&log, "progress", "replayed"), Some(1), "{log}");
    assert_eq!(log_field(&log, "progress", "conflicts"), Some(0), "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE tracker_session IS NULL").await?, 1);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections WHERE track_id IS NOT NULL").await?, 2, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM track_observations").await?, 3, "two people and a weak track");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM tracks").await?, 3);
    // The sink's first pass made the observations' days: the frame's holds them.
    let places: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM track_observations").fetch_all(&mut conn).await?;
    assert_eq!(places, [format!("track_observations_p{}", tracked.captured_at.format("%Y%m%d"))]);
    Ok(())
}

/// What the previous sink wrote for a v1 message: the old columns, no run.
async fn store_as_v1(conn: &mut PgConnection, m: &wire::FrameMessage, offset: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO frames (camera_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count,
                             model_name, model_sha256, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)",
    )
    .bind(&m.camera_id)
    .bind(m.frame_seq as i64)
    .bind(m.captured_at)
    .bind(m.pts_ms)
    .bind(m.frame_width as i32)
    .bind(m.frame_height as i32)
    .bind(m.detections.len() as i32)
    .bind(&m.model.name)
    .bind(&m.model.sha256)
    .bind(offset)
    .execute(&mut *conn)
    .await?;
    for (i, d) in m.detections.iter().enumerate() {
        let kps: Vec<String> = d.keypoints.iter().flatten().map(|[x, y, s]| format!("{{{x},{y},{s}}}")).collect();
        sqlx::query(
            "INSERT INTO detections (camera_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::real[], $11)",
        )
        .bind(&m.camera_id)
        .bind(m.frame_seq as i64)
        .bind(i as i32)
        .bind(&d.class)
        .bind(d.score)
        .bind(d.bbox.x1)
        .bind(d.bbox.y1)
        .bind(d.bbox.x2)
        .bind(d.bbox.y2)
        .bind(format!("{{{}}}", kps.join(",")))
        .bind(m.captured_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

type Minute = (String, chrono::DateTime<chrono::Utc>, i64, String, i32);

async fn per_minute(conn: &mut PgConnection) -> Result<Vec<Minute>> {
    Ok(sqlx::query_as("SELECT camera_id, minute, frames, avg_people::text, max_people FROM people_per_minute ORDER BY 1, 2")
        .fetch_all(conn)
        .await?)
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_keep_old_rows_and_the_sink_drains_v1_and_v3() -> Result<()> {
    let db = TestDb::create("mig").await?;
    migrate_to(&db, 1).await?;
    let mut conn = db.connect().await?;
    // 100 frames of an older detector, already stored, 1 to 3 people each, over two minutes.
    let old: Vec<wire::FrameMessage> = (0..100).map(|s| synthetic_frame("door", s, 1 + (s % 3) as usize)).collect();
    for (i, m) in old.iter().enumerate() {
        store_as_v1(&mut conn, m, i as i64).await?;
    }
    let minutes_before = per_minute(&mut conn).await?;
    ensure!(!minutes_before.is_empty(), "{minutes_before:?}");

    migrate(&db.url)?;
    let mut conn = PgConnection::connect(&db.url).await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE run_id = '00000000-0000-0000-0000-000000000000'").await?, 100);
    let old_detections: i64 = old.iter().map(|m| m.detections.len() as i64).sum();
    assert_eq!(
        count(&mut conn, "SELECT count(*) FROM detections WHERE run_id = '00000000-0000-0000-0000-000000000000'").await?,
        old_detections
    );
    assert_eq!(per_minute(&mut conn).await?, minutes_before, "the view says what it said");
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname IN ('frames_pkey', 'detections_pkey', 'frame_keys_pkey') ORDER BY indexname",
    )
    .fetch_all(&mut conn)
    .await?;
    assert!(keys[0].ends_with("(camera_id, run_id, frame_seq, det_index, captured_at)"), "{keys:?}");
    assert!(keys[1].ends_with("(camera_id, run_id, frame_seq)"), "the natural key: {keys:?}");
    assert!(keys[2].ends_with("(camera_id, run_id, frame_seq, captured_at)"), "{keys:?}");
    // Migration 3: the old rows are one partition, attached rather than copied, and their keys are
    // in frame_keys.
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames_history").await?, 100);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frame_keys").await?, 100);
    let parent: String =
        sqlx::query_scalar("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = 'detections_history'::regclass")
            .fetch_one(&mut conn)
            .await?;
    assert_eq!(parent, "detections");
    let defaults =
        count(&mut conn, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'run_id' AND column_default IS NOT NULL")
            .await?;
    assert_eq!(defaults, 0, "no default hides a run the sink forgot");

    // The topic the older detector was writing to still holds those 100 (and 50 more), and a new
    // detector has started a run for the same camera.
    let topic = unique("mig");
    create_topic(&topic, 1).await?;
    let v1_more: Vec<wire::FrameMessage> = (0..150).map(|s| synthetic_frame("door", s, 1 + (s % 3) as usize)).collect();
    let run = uuid::Uuid::now_v7();
    let v3: Vec<wire::FrameMessage> = (0..50)
        .map(|s| {
            let mut m = synthetic_frame("door", s, 2);
            m.run_id = run;
            m.captured_at += chrono::Duration::hours(1);
            m
        })
        .collect();
    produce(&topic, v1_more.iter().map(|m| ("door", v1_json(m))).chain(v3.iter().map(|m| ("door", m.to_json()))))?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let done =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 200, Duration::from_secs(120)).await?;
    let log = sink.stop()?;
    assert_eq!(done, 200, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE run_id = '00000000-0000-0000-0000-000000000000'").await?, 150, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE run_id <> '00000000-0000-0000-0000-000000000000'").await?, 50);
    // The 100 v1 messages already stored were replays of their rows, not new rows or conflicts.
    assert_eq!(log_field(&log, "progress", "replayed"), Some(100), "{log}");
    assert_eq!(log_field(&log, "progress", "conflicts"), Some(0), "{log}");
    assert_eq!(log_field(&log, "progress", "dead_letters"), Some(0), "{log}");
    let minutes_after = per_minute(&mut conn).await?;
    let frames_in_view: i64 = minutes_after.iter().map(|m| m.2).sum();
    assert_eq!(frames_in_view, 200, "{minutes_after:?}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frame_keys").await?, 200, "every stored frame has its key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_match_the_sink_is_refused_at_start() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("mismatch", 1).await?;
    let mut conn = db.connect().await?;
    sqlx::query("ALTER TABLE frames DROP COLUMN pts_ms, ADD COLUMN note text NOT NULL").execute(&mut conn).await?;
    sqlx::query("ALTER TABLE detections ALTER COLUMN score TYPE double precision").execute(&mut conn).await?;
    let out = run(
        Command::new(bin("sink")).args(["run", "--topic", &topic, "--brokers", &brokers()]).env("DATABASE_URL", &db.url),
        Duration::from_secs(60),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in ["table frames does not match this sink", "column pts_ms is missing", "column note needs a value the sink does not write"]
    {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
    assert_eq!(stderr.lines().filter(|l| l.contains(" ERROR ")).count(), 1, "one error line:\n{stderr}");
    // Fixed frames, the detections table is next in line.
    sqlx::query("ALTER TABLE frames DROP COLUMN note, ADD COLUMN pts_ms bigint NOT NULL").execute(&mut conn).await?;
    let out = run(
        Command::new(bin("sink")).args(["run", "--topic", &topic, "--brokers", &brokers()]).env("DATABASE_URL", &db.url),
        Duration::from_secs(60),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("table detections does not match this sink: column score is double precision, the sink writes real"),
        "{stderr}"
    );
    Ok(())
}
