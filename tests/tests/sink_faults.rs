//! Sink faults found by review, each on the real broker and database: a rebalance under load,
//! rows the database refuses, a table locked for longer than the poll interval, a dead-letter topic
//! that refuses a message. (The database away with 200,000 messages waiting is in
//! sink_memory.rs, alone: it stops the shared server.)

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pipeline_tests::*;
use sqlx::{Connection, PgConnection};

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

fn wait_log(sink: &SinkProcess, what: &str, timeout: Duration, ready: impl Fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready(&sink.log()) {
        ensure!(Instant::now() < deadline, "waited {timeout:?} for {what}:\n{}", sink.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One sink under continuous load; a second joins mid-stream, then leaves. The partitions move
/// twice while batches are in flight: across both sinks nothing is read twice (no replay, no
/// batch redone through staging) and every frame is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_joining_and_leaving_under_load_repeats_nothing() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("rebalance", 4).await?;
    let group = unique("group");
    // Static members do not leave the group when they stop: b's partitions go back to a after
    // the session timeout, shortened here.
    let small = ["--batch-rows", "400", "--batch-ms", "50", "-X", "session.timeout.ms=6000"];
    let a = SinkProcess::start(&db.url, &topic, &group, &small)?;
    let total = 30_000;
    let producer = spawn_producer(&topic, 8, total, 500, Duration::from_millis(100));
    let mut conn = db.connect().await?;
    wait_for_count(&mut conn, "SELECT least(count(*), 2000) FROM frames", 2000, Duration::from_secs(60)).await?;

    let b = SinkProcess::start(&db.url, &topic, &group, &small)?;
    wait_log(&b, "the second sink's first rows", Duration::from_secs(60), |l| log_field(l, "progress", "frames").is_some_and(|n| n > 500))?;
    let b_log = b.stop()?;
    let sent = producer.join().expect("producer")?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", sent as i64, Duration::from_secs(120)).await?;
    let a_log = a.stop()?;
    let both = format!("--- a:\n{a_log}\n--- b:\n{b_log}");
    assert_eq!(stored, sent as i64, "{both}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections").await?, 3 * sent as i64);
    assert!(a_log.contains("partitions revoked") && a_log.matches("partitions assigned").count() >= 2, "the partitions moved:\n{both}");
    for (name, log) in [("a", &a_log), ("b", &b_log)] {
        assert_eq!(log_field(log, "progress", "replayed"), Some(0), "{name} read a stored frame again:\n{both}");
        assert_eq!(log_field(log, "progress", "redone_through_staging"), Some(0), "{name}:\n{both}");
        assert!(!log.contains(" ERROR "), "{both}");
    }
    let (fa, fb) = (log_field(&a_log, "progress", "frames").unwrap(), log_field(&b_log, "progress", "frames").unwrap());
    assert_eq!(fa + fb, sent, "{both}");
    let next: i64 = count(&mut conn, "SELECT sum(next_offset)::bigint FROM sink_offsets").await?;
    assert_eq!(next, sent as i64);
    Ok(())
}

/// A tracked frame carrying one zone event under `rule`.
fn with_zone_event(m: wire::FrameMessage, rule: &str) -> wire::FrameMessage {
    let mut m = tracked_frame(m, uuid::Uuid::new_v8([9; 16]), 1);
    let event = serde_json::json!({"kind": "zone_enter", "track": 1, "rule": rule, "frame": m.frame_seq,
        "time": m.pts_ms as f64 / 1000.0, "confirmed_frame": m.frame_seq});
    let event: wire::Event = serde_json::from_value(event).expect("a zone event");
    m.tracker.as_mut().expect("tracked").rules = Some(wire::RulesOutput { version: 7, events: vec![event], occupancy: vec![] });
    m
}

/// Rows the database refuses for what they hold, in the middle of good ones: a CHECK constraint a
/// DBA added while the sink runs, and characters the database's encoding (LATIN1) cannot hold, in
/// a frame or in its zone events (a rule's name). Only those messages go to the dead-letter topic,
/// with the database's error; the rest is stored, the good events with their frames, and the sink
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_database_refuses_are_dead_lettered_and_the_rest_stored() -> Result<()> {
    let topic = unique("poison");
    create_topic(&topic, 2).await?;
    let db = TestDb::create_with("poison", "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").await?;
    migrate(&db.url)?;
    let mut conn = db.connect().await?;
    sqlx::query("ALTER TABLE detections ADD CONSTRAINT plausible_score CHECK (score < 0.95)").execute(&mut conn).await?;

    let mut messages = Vec::new();
    let mut bad = Vec::new();
    for s in 0..3000u64 {
        let mut m = synthetic_frame(&format!("cam-{}", s % 3), s, 2);
        if s % 250 == 7 {
            m.detections[1].score = 0.97; // the constraint refuses it
            bad.push((m.camera_id.clone(), s, "plausible_score"));
        } else if s % 400 == 9 {
            m.camera_id = format!("カメラ-{}", s % 3); // not in LATIN1
            bad.push((m.camera_id.clone(), s, "has no equivalent in encoding"));
        } else if s % 500 == 11 {
            m = with_zone_event(m, "入口"); // a rule name not in LATIN1
            bad.push((m.camera_id.clone(), s, "has no equivalent in encoding"));
        } else if s % 500 == 13 {
            m = with_zone_event(m, "door");
        }
        messages.push(m);
    }
    produce(&topic, messages.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--metrics-addr", &metrics_addr])?;
    let done =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 3000, Duration::from_secs(120)).await?;
    let metrics = metrics_once(&metrics_addr, "sink_rows_refused_total", bad.len() as f64, Duration::from_secs(30)).await?;
    let log = sink.stop()?;
    assert_eq!(done, 3000, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, 3000 - bad.len() as i64, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM zone_events WHERE rule = 'door'").await?, 6, "the good events, with their frames");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM zone_events").await?, 6, "{log}");
    assert_eq!(metric(&metrics, "sink_rows_refused_total"), Some(bad.len() as f64), "{metrics}");
    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(30))?;
    assert_eq!(dead.len(), bad.len(), "{log}");
    for (camera, seq, why) in &bad {
        let d = dead
            .iter()
            .find(|d| wire::FrameMessage::from_json(&d.payload).is_ok_and(|m| &m.camera_id == camera && m.frame_seq == *seq))
            .unwrap_or_else(|| panic!("frame {camera} {seq} not dead-lettered"));
        let reason = d.header("dlq.error").unwrap();
        assert!(reason.contains("the database refused") && reason.contains(why), "{reason}");
    }
    assert!(!log.contains(" ERROR "), "{log}");
    Ok(())
}

/// A table locked for longer than the poll interval while messages flow: the writes time out on
/// the lock and retry, the partitions are paused while the consumer keeps being polled, so the
/// group keeps the sink (no revoke), and nothing is lost once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_past_the_poll_interval_costs_no_rebalance() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("locked", 2).await?;
    let interval = [
        "-X",
        "max.poll.interval.ms=8000",
        "-X",
        "session.timeout.ms=6000",
        "--lock-timeout-ms",
        "1000",
        "--batch-rows",
        "500",
        "--batch-max-rows",
        "2000",
    ];
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &interval)?;
    wait_log(&sink, "the assignment", Duration::from_secs(60), |l| l.contains("partitions assigned partitions=[0, 1]"))?;
    let mut conn = db.connect().await?;
    let first: Vec<wire::FrameMessage> = (0..500).map(|s| synthetic_frame("door", s, 2)).collect();
    produce(&topic, first.iter().map(|m| ("door", m.to_json())))?;
    wait_for_count(&mut conn, "SELECT count(*) FROM frames", 500, Duration::from_secs(60)).await?;

    let mut locker = PgConnection::connect(&db.url).await?;
    sqlx::query("BEGIN").execute(&mut locker).await?;
    sqlx::query("LOCK TABLE frames IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await?;
    let producer = spawn_producer(&topic, 4, 20_000, 1000, Duration::from_millis(300));
    // Locked for twice the poll interval.
    tokio::time::sleep(Duration::from_secs(16)).await;
    sqlx::query("COMMIT").execute(&mut locker).await?;
    let sent = producer.join().expect("producer")?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", 500 + sent as i64, Duration::from_secs(120)).await?;
    let log = sink.stop()?;
    assert_eq!(stored, 500 + sent as i64, "{log}");
    assert!(log.contains("lock timeout") && log.contains("database write failed; retrying"), "the lock was met:\n{log}");
    assert!(log.contains("database unavailable: partitions paused"), "{log}");
    // Leaving the group at shutdown revokes; before that, nothing may have.
    let before_stop = &log[..log.find("shutting down").unwrap_or(log.len())];
    assert!(!before_stop.contains("partitions revoked") && !log.contains("MAXPOLL"), "the group kept the sink:\n{log}");
    assert_eq!(log.matches("partitions assigned").count(), 1, "{log}");
    assert_eq!(log_field(&log, "progress", "replayed"), Some(0), "{log}");
    Ok(())
}

/// A message that fails validation and that the dead-letter topic will not take (larger than its
/// max.message.bytes): no retry forever, but one error line, a non-zero exit within a bound, and
/// the messages before it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_topic_refuses_stops_the_sink_with_one_error() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("dlqrefuses", 1).await?;
    create_topic_with(&format!("{topic}.dlq"), 1, &[("max.message.bytes", "2000")]).await?;
    let good: Vec<Vec<u8>> = (0..100).map(|s| synthetic_frame("cam-0", s, 1).to_json()).collect();
    // Invalid (a misspelt field) and far larger than the dead-letter topic takes.
    let big = format!("{{\"schema_version\": 2, \"padding\": \"{}\"}}", "x".repeat(20_000)).into_bytes();
    produce(&topic, good.iter().cloned().chain([big]).map(|p| ("cam-0", p)))?;
    let (group, id) = (unique("group"), unique("sink"));
    let sink = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &[])?;
    let (status, log) = sink.wait_exit(Duration::from_secs(120))?;
    assert_eq!(status.code(), Some(3), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("dead-letter topic")
            && errors[0].contains("partition 0, offset 100")
            && errors[0].contains("MessageSizeTooLarge"),
        "{}",
        errors[0]
    );
    // What came before it is stored; it is not accounted for, so it is read again at the next start.
    let mut conn = db.connect().await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, 100, "{log}");
    assert_eq!(count(&mut conn, "SELECT sum(next_offset)::bigint FROM sink_offsets").await?, 100);
    let again = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &[])?;
    let (status, log) = again.wait_exit(Duration::from_secs(120))?;
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("offset 100"), "{log}");
    Ok(())
}

/// A row written around the sink (a detection backfilled by SQL) makes a frame's rows conflict in
/// the merge itself: that frame alone is refused, to the dead-letter topic with the database's
/// error, and the rest is stored. (A 23505 in the merge once ended the sink, and every restart
/// met it again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_conflict_in_the_merge_is_bisected_like_any_refused_row() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("mergeconflict", 1).await?;
    let frames: Vec<wire::FrameMessage> = (0..20).map(|s| synthetic_frame("door", s, 2)).collect();
    let mut conn = db.connect().await?;
    let f = &frames[5];
    sqlx::query(
        "INSERT INTO detections (camera_id, run_id, frame_seq, det_index, class, score, x1, y1, x2, y2, captured_at)
         VALUES ($1, $2, $3, 0, 'person', 0.5, 0, 0, 1, 1, $4)",
    )
    .bind(&f.camera_id)
    .bind(f.run_id)
    .bind(f.frame_seq as i64)
    .bind(f.captured_at)
    .execute(&mut conn)
    .await?;
    produce(&topic, frames.iter().map(|m| ("door", m.to_json())))?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let next =
        wait_for_count(&mut conn, "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets", 20, Duration::from_secs(60)).await?;
    let log = sink.stop()?;
    assert_eq!(next, 20, "{log}");
    let stored: Vec<i64> = sqlx::query_scalar("SELECT frame_seq FROM frames ORDER BY 1").fetch_all(&mut conn).await?;
    assert_eq!(stored, (0..20).filter(|s| *s != 5).collect::<Vec<i64>>(), "{log}");
    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(30))?;
    assert_eq!(dead.len(), 1, "{log}");
    let reason = dead[0].header("dlq.error").unwrap();
    assert!(reason.contains("the database refused") && reason.contains("duplicate key"), "{reason}");
    assert!(!log.contains(" ERROR "), "{log}");
    Ok(())
}
