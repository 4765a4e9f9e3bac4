//! Sink drills against the real broker and database: scale-out, a crash, malformed input.
//! (PostgreSQL going away is in sink_postgres_restart.rs, alone, since it restarts the server.)

use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

/// Frames from `cameras` cameras, `per_camera` each, 1 to 5 people (3 on average).
fn frames(cameras: usize, per_camera: u64) -> Vec<(String, wire::FrameMessage)> {
    (0..cameras)
        .flat_map(|c| (0..per_camera).map(move |s| (format!("cam-{c}"), synthetic_frame(&format!("cam-{c}"), s, 1 + (s % 5) as usize))))
        .collect()
}

fn publish(topic: &str, frames: &[(String, wire::FrameMessage)]) -> Result<usize> {
    produce(topic, frames.iter().map(|(k, m)| (k.as_str(), m.to_json())))
}

fn detections_in(frames: &[(String, wire::FrameMessage)]) -> i64 {
    frames.iter().map(|(_, m)| m.detections.len() as i64).sum()
}

/// Two sinks in one group share a 4-partition topic; every row lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_share_four_partitions() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("scale", 4).await?;
    let group = unique("group");
    let a = SinkProcess::start(&db.url, &topic, &group, &[])?;
    let b = SinkProcess::start(&db.url, &topic, &group, &[])?;
    // Produce only once both members hold partitions, so the split is the group's doing.
    let holds_partitions =
        |log: String| log.lines().any(|l| l.contains("partitions assigned partitions=[") && !l.contains("partitions=[]"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(holds_partitions(a.log()) && holds_partitions(b.log())) {
        assert!(std::time::Instant::now() < deadline, "group did not settle:\n{}\n{}", a.log(), b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data = frames(8, 1500);
    publish(&topic, &data)?;

    let mut conn = db.connect().await?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", data.len() as i64, Duration::from_secs(120)).await?;
    let (log_a, log_b) = (a.stop()?, b.stop()?);
    assert_eq!(stored, data.len() as i64);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections").await?, detections_in(&data));
    assert_eq!(count(&mut conn, "SELECT count(DISTINCT camera_id) FROM frames").await?, 8);
    // Both members worked: each wrote frames, and together exactly the topic's content.
    let (fa, fb) = (log_field(&log_a, "progress", "frames").unwrap(), log_field(&log_b, "progress", "frames").unwrap());
    assert!(fa > 0 && fb > 0, "a wrote {fa}, b wrote {fb}\n--- a:\n{log_a}\n--- b:\n{log_b}");
    assert_eq!(fa + fb, data.len() as u64, "--- a:\n{log_a}\n--- b:\n{log_b}");
    let next: i64 = count(&mut conn, "SELECT sum(next_offset)::bigint FROM sink_offsets").await?;
    assert_eq!(next, data.len() as i64);
    Ok(())
}

/// kill -9 mid-stream, restart: each frame and detection exactly once, and the restarted sink
/// starts where the database says, re-writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sink_resumes_exactly_where_the_database_ends() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("crash", 2).await?;
    let data = frames(4, 15_000);
    publish(&topic, &data)?;
    let group = unique("group");
    let mut conn = db.connect().await?;

    // Small batches, so the kill lands between many commits. The same static member id for the
    // restart, as a supervisor restarting it on its host would give it.
    let id = unique("sink");
    let sink = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &["--batch-rows", "500"])?;
    let mut at_kill = 0;
    for _ in 0..3000 {
        at_kill = count(&mut conn, "SELECT count(*) FROM frames").await?;
        if at_kill > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sink.kill9()?;
    let at_kill = at_kill.max(count(&mut conn, "SELECT count(*) FROM frames").await?);
    assert!(at_kill > 0 && at_kill < data.len() as i64, "killed at {at_kill} of {} frames", data.len());

    let sink = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id, &[])?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", data.len() as i64, Duration::from_secs(180)).await?;
    let log = sink.stop()?;
    assert_eq!(stored, data.len() as i64, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections").await?, detections_in(&data));
    // Started at the stored offsets: no message was consumed twice across the crash.
    assert_eq!(log_field(&log, "progress", "replayed"), Some(0), "{log}");
    assert_eq!(log_field(&log, "progress", "frames"), Some(data.len() as u64 - at_kill as u64), "{log}");
    Ok(())
}

/// The partitions a sink holds by its log: what the (incremental) assignments gave it, less what
/// revocations took.
fn held(log: &str) -> std::collections::BTreeSet<i32> {
    let list = |l: &str, what: &str| -> Vec<i32> {
        l.split(what)
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(|r| r.trim_start_matches('['))
            .unwrap_or("")
            .split(", ")
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut held = std::collections::BTreeSet::new();
    for l in log.lines() {
        held.extend(list(l, "partitions assigned partitions="));
        for p in list(l, "partitions revoked partitions=") {
            held.remove(&p);
        }
    }
    held
}

/// Static membership: of two sinks in a group, one is killed and started again under the same
/// `--instance-id`. It gets the same partitions back without a rebalance: the other sink's log
/// shows no assignment or revocation after the kill, and nothing is stored twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_restarted_under_its_instance_id_gets_its_partitions_back_without_a_rebalance() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("static", 4).await?;
    let group = unique("group");
    let (id_a, id_b) = (unique("a"), unique("b"));
    let a = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id_a, &[])?;
    let b = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id_b, &[])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held(&a.log()).is_empty() || held(&b.log()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "group did not settle:\n{}\n{}", a.log(), b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_had = held(&a.log());
    let first = frames(8, 300);
    publish(&topic, &first)?;
    let mut conn = db.connect().await?;
    wait_for_count(&mut conn, "SELECT count(*) FROM frames", first.len() as i64, Duration::from_secs(60)).await?;

    let b_before = b.log().len();
    a.kill9()?;
    let killed = std::time::Instant::now();
    let a = SinkProcess::start_as(&brokers(), &db.url, &topic, &group, &id_a, &[])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while held(&a.log()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the restarted sink got nothing:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("static_membership restart_to_assignment_s={:.2}", killed.elapsed().as_secs_f64());
    let second = frames(8, 600);
    let rest: Vec<(String, wire::FrameMessage)> = second.iter().filter(|(_, m)| m.frame_seq >= 300).cloned().collect();
    publish(&topic, &rest)?;
    let stored = wait_for_count(&mut conn, "SELECT count(*) FROM frames", second.len() as i64, Duration::from_secs(120)).await?;
    let (log_a, log_b) = (a.stop()?, b.stop()?);
    let both = format!("--- a (restarted):\n{log_a}\n--- b:\n{log_b}");
    assert_eq!(stored, second.len() as i64, "{both}");
    let a_back = held(&log_a[..log_a.find("shutting down").unwrap_or(log_a.len())]);
    assert_eq!(a_back, a_had, "the same partitions back:\n{both}");
    let after_kill = &log_b[b_before..log_b.find("shutting down").unwrap_or(log_b.len())];
    assert!(!after_kill.contains("partitions assigned") && !after_kill.contains("partitions revoked"), "b saw a rebalance:\n{both}");
    assert_eq!(log_field(&log_a, "progress", "replayed"), Some(0), "{both}");
    assert_eq!(log_field(&log_b, "progress", "replayed"), Some(0), "{both}");
    Ok(())
}

/// 1,000 malformed messages among 3,000 good ones: every bad one in the dead-letter topic with
/// its reason and source, every good one in the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_topic() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("dlq", 4).await?;
    let good = frames(3, 1000);
    let mut messages: Vec<(String, Vec<u8>, Option<&str>)> = Vec::new();
    for (i, (key, m)) in good.iter().enumerate() {
        messages.push((key.clone(), m.to_json(), None));
        if i % 3 == 0 {
            let mut v: serde_json::Value = serde_json::from_slice(&m.to_json())?;
            let (payload, reason) = match (i / 3) % 6 {
                0 => (b"{\"truncated".to_vec(), "not a frame message"),
                1 => {
                    v["schema_version"] = 7.into();
                    (v.to_string().into_bytes(), "unsupported schema_version 7")
                }
                2 => {
                    v.as_object_mut().unwrap().remove("frame_seq");
                    (v.to_string().into_bytes(), "missing field `frame_seq`")
                }
                3 => {
                    v["detections"] = serde_json::json!([{"class": "person", "score": 0.5, "bbox": {"x1": 9, "y1": 0, "x2": 1, "y2": 1}}]);
                    (v.to_string().into_bytes(), "detections[0].bbox")
                }
                4 => {
                    // Valid JSON for the type, but beyond PostgreSQL's bigint.
                    v["frame_seq"] = u64::MAX.into();
                    (v.to_string().into_bytes(), "invalid field frame_seq")
                }
                _ => (Vec::new(), "empty message"),
            };
            messages.push((key.clone(), payload, Some(reason)));
        }
    }
    let bad = messages.iter().filter(|m| m.2.is_some()).count();
    assert_eq!(bad, 1000);
    produce(&topic, messages.iter().map(|(k, p, _)| (k.as_str(), p.clone())))?;

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--metrics-addr", &metrics_addr])?;
    let mut conn = db.connect().await?;
    let next = wait_for_count(
        &mut conn,
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets",
        messages.len() as i64,
        Duration::from_secs(120),
    )
    .await?;
    // The Prometheus endpoint counts what the tables and the dead-letter topic hold.
    let metrics = metrics_once(&metrics_addr, "sink_frames_written_total", good.len() as f64, Duration::from_secs(30)).await?;
    let log = sink.stop()?;
    for (name, want) in [
        ("sink_frames_written_total", good.len() as i64),
        ("sink_detections_written_total", detections_in(&good)),
        ("sink_dead_letters_total", 1000),
        ("sink_database_up", 1),
    ] {
        assert!(metrics.lines().any(|l| l == format!("{name} {want}")), "{name} {want} not in:\n{metrics}");
    }
    assert_eq!(next, messages.len() as i64, "{log}");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, good.len() as i64);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections").await?, detections_in(&good));

    let dead = read_topic(&format!("{topic}.dlq"), Duration::from_secs(60))?;
    assert_eq!(dead.len(), 1000);
    // Each dead letter carries the original bytes and a reason naming its defect.
    let source = read_topic(&topic, Duration::from_secs(60))?;
    for d in &dead {
        assert_eq!(d.header("dlq.source.topic"), Some(topic.as_str()));
        let p: i32 = d.header("dlq.source.partition").unwrap().parse()?;
        let o: i64 = d.header("dlq.source.offset").unwrap().parse()?;
        let original = source.iter().find(|r| r.partition == p && r.offset == o).expect("source message");
        assert_eq!(original.payload, d.payload);
        let (_, _, reason) = messages.iter().find(|m| m.1 == d.payload && m.2.is_some()).expect("a malformed message");
        assert!(d.header("dlq.error").unwrap().contains(reason.unwrap()), "{:?} vs {reason:?}", d.header("dlq.error"));
    }
    Ok(())
}
