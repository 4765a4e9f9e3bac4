//! Every frame its own row, on the real broker and database: runs keep a restarted detector's frames
//! apart from the last run's, a file processed again with the same settings is a harmless replay,
//! other settings (or tracking it) make another run, and a replay with other content never mixes
//! two frames.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pipeline_tests::*;
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

/// Frames whose person_count is not the number of their person rows: a mixed frame.
const MIXED: &str = "SELECT count(*) FROM frames f WHERE person_count <> (SELECT count(*) FROM detections d
     WHERE (d.camera_id, d.run_id, d.frame_seq) = (f.camera_id, f.run_id, f.frame_seq) AND d.class = 'person')";

fn run_of(stderr: &[u8]) -> String {
    let log = String::from_utf8_lossy(stderr);
    log.split_whitespace().find_map(|w| w.strip_prefix("run=")).map(str::to_string).unwrap_or_else(|| panic!("no run= in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_make_runs_and_replays_never_mix_frames() -> Result<()> {
    let dir = TempDir::new("runs")?;
    // Two files for one camera: the first 8 s of the sample and the 27 s after them.
    let (first, second) = (dir.join("first.mp4"), dir.join("second.mp4"));
    h264_clip(&sample("vtest.avi"), &first, 0, Some(8))?;
    h264_clip(&sample("vtest.avi"), &second, 8, Some(27))?;
    let (n1, n2) = (ffprobe_frame_count(&first)? as i64, ffprobe_frame_count(&second)? as i64);
    ensure!(n1 > 50 && n2 > 200, "clips of {n1} and {n2} frames");

    let (topic, db) = fresh_topic_and_db("runs", 1).await?;
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--metrics-addr", &metrics_addr])?;
    let mut conn = db.connect().await?;

    // A second file under the same camera id adds its frames: it is another run.
    let run1 = run_of(&detect_to_kafka(&first, "door", &topic, &[])?.stderr);
    let run2 = run_of(&detect_to_kafka(&second, "door", &topic, &[])?.stderr);
    wait_accounted(&mut conn, &topic).await?;
    assert_ne!(run1, run2);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, n1 + n2, "both files' frames");
    assert_eq!(count(&mut conn, "SELECT count(*) FROM runs WHERE camera_id = 'door'").await?, 2);
    let detections = count(&mut conn, "SELECT count(*) FROM detections").await?;

    // The same file again with the same settings: the same run, and nothing added.
    let again = run_of(&detect_to_kafka(&first, "door", &topic, &[])?.stderr);
    assert_eq!(again, run1, "the same file and settings make the same run");
    wait_accounted(&mut conn, &topic).await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, n1 + n2);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections").await?, detections);
    let m = metrics_once(&metrics_addr, "sink_frames_replayed_total", n1 as f64, Duration::from_secs(30)).await?;
    assert_eq!(metric(&m, "sink_frames_replayed_total"), Some(n1 as f64), "{m}");

    // Another --conf: another run, with fewer people in it.
    let run3 = run_of(&detect_to_kafka(&first, "door", &topic, &["--conf", "0.5"])?.stderr);
    assert!(run3 != run1 && run3 != run2);
    wait_accounted(&mut conn, &topic).await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, 2 * n1 + n2);
    let people = |run: &str| format!("SELECT coalesce(sum(person_count), 0)::bigint FROM frames WHERE run_id = '{run}'");
    let (at_25, at_50): (i64, i64) = (
        sqlx::query_scalar(sqlx::AssertSqlSafe(people(&run1))).fetch_one(&mut conn).await?,
        sqlx::query_scalar(sqlx::AssertSqlSafe(people(&run3))).fetch_one(&mut conn).await?,
    );
    assert!(at_50 < at_25 && at_50 > 0, "{at_50} people at conf 0.5, {at_25} at 0.25");

    // The first file again with --track: another run, since its frames carry tracks (under the
    // same run they would be conflicting replays of the untracked frames, their tracks never
    // stored). Stored beside the first, with its tracks.
    let tracked = run_of(&detect_to_kafka(&first, "door", &topic, &["--track"])?.stderr);
    assert!(![&run1, &run2, &run3].contains(&&tracked), "{tracked}");
    wait_accounted(&mut conn, &topic).await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, 3 * n1 + n2);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE tracker_session IS NOT NULL").await?, n1);
    let observed = count(&mut conn, "SELECT count(*) FROM track_observations").await?;
    assert!(observed > n1, "{observed} track observations in {n1} frames of a busy scene");
    let matched = count(&mut conn, "SELECT count(*) FROM track_observations WHERE det_index IS NOT NULL").await?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM detections WHERE track_id IS NOT NULL").await?, matched);

    // Replays with other content, as a detector with changed code or a hostile producer would
    // send them: one takes a person out of a stored frame, one adds three people to another
    // (merged, their detections would sit beyond the stored count). The second comes twice,
    // once more with yet other content, so that it may also meet its twin inside one batch.
    let of_run1: Vec<wire::FrameMessage> = read_topic(&topic, Duration::from_secs(60))?
        .iter()
        .map(|r| wire::FrameMessage::from_json(&r.payload).unwrap())
        .filter(|m| m.run_id.to_string() == run1)
        .collect();
    let mut with_people = of_run1.iter().filter(|m| m.detections.len() >= 2);
    let mut fewer = with_people.next().expect("a frame with two people").clone();
    fewer.detections.pop();
    let mut more = with_people.find(|m| m.frame_seq != fewer.frame_seq).expect("another frame with people").clone();
    let extra = more.detections[0].clone();
    more.detections.extend(std::iter::repeat_n(extra, 3));
    let mut other_more = more.clone();
    other_more.detections.pop();
    let conflicting = [fewer.clone(), more, other_more];
    let before: Vec<(i64, i64)> = sqlx::query_as("SELECT frame_seq, person_count::bigint FROM frames WHERE run_id::text = $1 ORDER BY 1")
        .bind(&run1)
        .fetch_all(&mut conn)
        .await?;
    produce(&topic, conflicting.iter().map(|m| ("door", m.to_json())))?;
    wait_accounted(&mut conn, &topic).await?;
    let after: Vec<(i64, i64)> = sqlx::query_as("SELECT frame_seq, person_count::bigint FROM frames WHERE run_id::text = $1 ORDER BY 1")
        .bind(&run1)
        .fetch_all(&mut conn)
        .await?;
    assert_eq!(after, before, "the stored frames stay as they were");
    assert_eq!(count(&mut conn, MIXED).await?, 0, "every frame's person_count equals its person rows");
    let m = metrics_once(&metrics_addr, "sink_frames_conflicting_total", conflicting.len() as f64, Duration::from_secs(30)).await?;
    let log = sink.stop()?;
    assert_eq!(metric(&m, "sink_frames_conflicting_total"), Some(conflicting.len() as f64), "{m}\n{log}");
    let key = format!("(\"door\", {run1}, {})", fewer.frame_seq);
    assert!(log.contains("replayed frame with other content") && log.contains(&key), "{key} not logged:\n{log}");
    assert!(log_field(&log, "progress", "conflicts") == Some(conflicting.len() as u64), "{log}");
    Ok(())
}

/// A live camera's detector stopped and started again under the same camera id: the second run
/// counts frame_seq from 0 again, and every frame of both runs is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_live_camera_keeps_every_frame_of_both_runs() -> Result<()> {
    let dir = TempDir::new("liverun")?;
    let mp4 = dir.join("clip.mp4");
    h264_mp4(&sample("vtest.avi"), &mp4, None)?;
    let port = free_port()?;
    let _server = start_rtsp_server(&mp4, port)?;
    let url = format!("rtsp://127.0.0.1:{port}/stream");
    let (topic, db) = fresh_topic_and_db("liverun", 1).await?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &[])?;
    let mut conn = db.connect().await?;

    let published = restarted_detector(&topic, 2, 15, || {
        let mut cmd = Command::new(bin("detector"));
        cmd.args(["--source", &url, "--model", model().to_str().unwrap(), "--camera-id", "door", "--max-fps", "5"]).args([
            "--topic",
            &topic,
            "--brokers",
            &brokers(),
        ]);
        cmd
    })?;
    wait_accounted(&mut conn, &topic).await?;
    let log = sink.stop()?;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames").await?, published, "every published frame is a row\n{log}");
    assert_eq!(count(&mut conn, "SELECT count(DISTINCT run_id) FROM frames").await?, 2);
    // Both runs counted from 0: under a (camera_id, frame_seq) key these would have collided.
    let shared = count(&mut conn, "SELECT count(*) FROM (SELECT frame_seq FROM frames GROUP BY 1 HAVING count(*) = 2) s").await?;
    assert!(shared > 0, "the two runs share frame_seq values");
    // Live runs sort by time: the second run's id is the greater.
    let order: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT run_id, first_captured_at FROM runs ORDER BY run_id").fetch_all(&mut conn).await?;
    assert!(order[0].1 < order[1].1, "{order:?}");
    assert_eq!(count(&mut conn, MIXED).await?, 0);
    assert_eq!(log_field(&log, "progress", "replayed"), Some(0), "{log}");
    Ok(())
}
