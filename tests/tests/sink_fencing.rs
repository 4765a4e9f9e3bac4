//! Fencing by epoch (issue 19) on the real broker and database: frames of a camera's older epoch
//! (a fleet host that has lost the camera) that come after a newer one are refused: not stored,
//! dead-lettered with the reason, counted; the newest epoch is kept per camera; and reading the
//! topic again in another group stores nothing twice and fences the same frames.

use std::time::Duration;

use anyhow::Result;
use pipeline_tests::*;
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

/// `n` frames of `camera` from `first`, in `run`, under `epoch`.
fn frames(camera: &str, run: uuid::Uuid, first: u64, n: u64, epoch: Option<u64>) -> Vec<wire::FrameMessage> {
    (first..first + n)
        .map(|s| {
            let mut m = synthetic_frame(camera, s, 2);
            m.run_id = run;
            m.epoch = epoch;
            m
        })
        .collect()
}

/// Waits until `group` has accounted for `want` messages.
async fn accounted(conn: &mut PgConnection, group: &str, want: i64) -> Result<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT coalesce(sum(next_offset), 0)::bigint FROM sink_offsets WHERE consumer_group = $1")
            .bind(group)
            .fetch_one(&mut *conn)
            .await?;
        if n == want || std::time::Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What must be stored, after the first reading and after the second alike.
async fn stored_once(conn: &mut PgConnection, run_a: uuid::Uuid, run_b: uuid::Uuid) -> Result<()> {
    let of_run = |run| sqlx::query_scalar::<_, i64>("SELECT count(*) FROM frames WHERE run_id = $1").bind(run);
    assert_eq!(of_run(run_a).fetch_one(&mut *conn).await?, 10, "epoch 1 before epoch 2: stored; after it: not");
    assert_eq!(of_run(run_b).fetch_one(&mut *conn).await?, 10);
    let detections_a: i64 =
        sqlx::query_scalar("SELECT count(*) FROM detections WHERE run_id = $1").bind(run_a).fetch_one(&mut *conn).await?;
    assert_eq!(detections_a, 20);
    assert_eq!(count(conn, "SELECT count(*) FROM frames WHERE camera_id = 'yard'").await?, 5, "no epoch: never fenced");
    assert_eq!(count(conn, "SELECT count(*) FROM frames").await?, 25);
    assert_eq!(count(conn, "SELECT count(*) FROM detections").await?, 50);
    let epochs: Vec<(String, i64)> = sqlx::query_as("SELECT camera_id, epoch FROM camera_epochs").fetch_all(&mut *conn).await?;
    assert_eq!(epochs, [("door".to_string(), 2)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_an_older_epoch_after_a_newer_one_are_fenced() -> Result<()> {
    let (topic, db) = fresh_topic_and_db("fencing", 2).await?;
    let mut conn = db.connect().await?;
    let (run_a, run_b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    // Host A runs "door" under epoch 1; it moves to host B under epoch 2.
    let early = [frames("door", run_a, 0, 10, Some(1)), frames("door", run_b, 0, 10, Some(2))].concat();
    // Then host A, paused through the move, sends more under epoch 1; "yard" is run by no fleet.
    let late = frames("door", run_a, 10, 5, Some(1));
    let yard = frames("yard", uuid::Uuid::now_v7(), 0, 5, None);
    let total = (early.len() + late.len() + yard.len()) as i64;

    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let group = unique("group");
    let sink = SinkProcess::start(&db.url, &topic, &group, &["--metrics-addr", &metrics_addr])?;
    // Epoch 2 stored first, so the late frames meet it in the table (the second reading below
    // meets them all in a batch).
    produce(&topic, early.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    wait_for_count(&mut conn, "SELECT count(*) FROM frames", 20, Duration::from_secs(60)).await?;
    produce(&topic, late.iter().chain(&yard).map(|m| (m.camera_id.as_str(), m.to_json())))?;
    let done = accounted(&mut conn, &group, total).await?;
    let metrics = metrics_once(&metrics_addr, "sink_fenced_frames_total{camera=\"door\"}", 5.0, Duration::from_secs(30)).await?;
    let log = sink.stop()?;
    assert_eq!(done, total, "{log}");

    stored_once(&mut conn, run_a, run_b).await?;
    assert_eq!(metric(&metrics, "sink_fenced_frames_total{camera=\"door\"}"), Some(5.0), "{metrics}");
    assert_eq!(log_field(&log, "progress", "frames_fenced"), Some(5), "{log}");
    assert_eq!(log_field(&log, "progress", "dead_letters"), Some(5), "{log}");
    assert!(log.contains("fenced, to the dead-letter topic") && log.contains("camera=\"door\" frames=5 epochs={1} newest=2"), "{log}");

    // The dead letters: the late frames, with the reason.
    let dlq = format!("{topic}.dlq");
    let fenced_letters = |dead: &[Record]| {
        let mut seqs: Vec<u64> = dead
            .iter()
            .map(|d| {
                let reason = d.header("dlq.error").unwrap_or_default();
                assert!(reason.contains("epoch 1 is older than the camera's newest, 2") && reason.contains("fenced"), "{reason}");
                let m = wire::FrameMessage::from_json(&d.payload).expect("the original message");
                assert_eq!((m.camera_id.as_str(), m.run_id, m.epoch), ("door", run_a, Some(1)));
                m.frame_seq
            })
            .collect();
        seqs.sort();
        seqs
    };
    let dead = read_topic(&dlq, Duration::from_secs(30))?;
    assert_eq!(fenced_letters(&dead), (10..15).collect::<Vec<_>>(), "{log}");

    // The topic read again from its start, by another group: the frames stored are replays (those
    // of epoch 1 too), and the late ones are fenced again.
    let again = unique("group");
    let sink = SinkProcess::start(&db.url, &topic, &again, &[])?;
    let done = accounted(&mut conn, &again, total).await?;
    let log = sink.stop()?;
    assert_eq!(done, total, "{log}");
    stored_once(&mut conn, run_a, run_b).await?;
    assert_eq!(log_field(&log, "progress", "frames"), Some(0), "{log}");
    assert_eq!(log_field(&log, "progress", "replayed"), Some(25), "{log}");
    assert_eq!(log_field(&log, "progress", "frames_fenced"), Some(5), "{log}");
    let dead = read_topic(&dlq, Duration::from_secs(30))?;
    assert_eq!(fenced_letters(&dead), [10, 10, 11, 11, 12, 12, 13, 13, 14, 14], "{log}");
    Ok(())
}
