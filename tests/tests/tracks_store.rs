//! Tracks stored exactly once (migration 5), on the real broker and database, in each write mode
//! (`--write-mode copy`, `staging`, `unnest`): a topic of tracked v3 frames is stored once, with
//! every track of every frame; the same frames again (a replay) add no row, no observation and
//! nothing to `tracks`; a replay whose tracks differ is a conflict and changes nothing; a restarted
//! live detector (a new run and tracker session, its ids from 1 again) is a separate set of tracks;
//! and `tracks` always equals a GROUP BY over `track_observations`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use pipeline_tests::*;
use sqlx::PgConnection;
use uuid::Uuid;

const FRAMES: u64 = 40;

/// 1 to 3 people a frame.
fn people(seq: u64) -> usize {
    1 + (seq % 3) as usize
}

/// A run's frames as `detector --track` sends them: detection `i` is track `1 + i`, and one more
/// track is kept alive by a weak detection.
fn tracked_run(run: Uuid, session: Uuid, shift: chrono::Duration) -> Vec<wire::FrameMessage> {
    (0..FRAMES)
        .map(|seq| {
            let mut m = synthetic_frame("hall", seq, people(seq));
            m.run_id = run;
            m.captured_at += shift;
            tracked_frame(m, session, 1)
        })
        .collect()
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(conn).await?)
}

type Track = (String, Uuid, Uuid, i64, DateTime<Utc>, DateTime<Utc>, i64, f32);

/// `tracks` as stored, and as a GROUP BY over the observations says it should be.
async fn tracks_and_grouped(conn: &mut PgConnection) -> Result<(Vec<Track>, Vec<Track>)> {
    let stored = sqlx::query_as(
        "SELECT camera_id, run_id, tracker_session, track_id, first_seen, last_seen, frames::bigint, best_score FROM tracks ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&mut *conn)
    .await?;
    let grouped = sqlx::query_as(
        "SELECT camera_id, run_id, tracker_session, track_id, min(captured_at), max(captured_at), count(*), max(score)
         FROM track_observations GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((stored, grouped))
}

/// Everything the tracks are stored as, to tell that a replay changed nothing.
async fn snapshot(conn: &mut PgConnection) -> Result<(i64, i64, i64, Vec<Track>)> {
    Ok((
        count(conn, "SELECT count(*) FROM frames WHERE tracker_session IS NOT NULL").await?,
        count(conn, "SELECT count(*) FROM track_observations").await?,
        count(conn, "SELECT count(*) FROM detections WHERE track_id IS NOT NULL").await?,
        tracks_and_grouped(conn).await?.0,
    ))
}

async fn tracks_are_stored_once(mode: &str) -> Result<()> {
    let (topic, db) = fresh_topic_and_db(&format!("tracks_{mode}"), 1).await?;
    let mut conn = db.connect().await?;
    let (run, session) = (Uuid::now_v7(), Uuid::now_v7());
    let frames = tracked_run(run, session, chrono::Duration::zero());
    produce(&topic, frames.iter().map(|m| ("hall", m.to_json())))?;
    let sink = SinkProcess::start(&db.url, &topic, &unique("group"), &["--write-mode", mode])?;
    wait_accounted(&mut conn, &topic).await?;

    // Every frame tracked, every track of every frame observed once, each detection with its track.
    let persons: i64 = (0..FRAMES).map(|s| people(s) as i64).sum();
    assert_eq!(count(&mut conn, "SELECT count(*) FROM frames WHERE tracker_session IS NOT NULL").await?, FRAMES as i64);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM track_observations").await?, persons + FRAMES as i64);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM track_observations WHERE det_index IS NULL").await?, FRAMES as i64, "weak ones");
    let matched = count(
        &mut conn,
        "SELECT count(*) FROM detections d JOIN track_observations o USING (camera_id, run_id, frame_seq, captured_at)
         WHERE o.det_index = d.det_index AND o.track_id = d.track_id AND o.tracker_session = (SELECT tracker_session FROM frames f
               WHERE (f.camera_id, f.run_id, f.frame_seq) = (d.camera_id, d.run_id, d.frame_seq))",
    )
    .await?;
    assert_eq!(matched, persons, "each detection names the track the tracker matched to it");
    let boxes: Vec<(f32, f32, f32, f32, f32)> =
        sqlx::query_as("SELECT x1, y1, x2, y2, score FROM track_observations WHERE frame_seq = 2 AND track_id = 2")
            .fetch_all(&mut conn)
            .await?;
    let t = &frames[2].tracker.as_ref().unwrap().tracks[1];
    assert_eq!(boxes, [(t.bbox.x1, t.bbox.y1, t.bbox.x2, t.bbox.y2, t.score)], "the Kalman box as sent");
    let (tracks, grouped) = tracks_and_grouped(&mut conn).await?;
    assert_eq!(tracks.len(), 4, "ids 1 to 4: {tracks:?}");
    assert_eq!(tracks, grouped, "tracks is the GROUP BY of its observations");
    assert_eq!(tracks[0].6, FRAMES as i64, "track 1 is on every frame");
    let stored = snapshot(&mut conn).await?;

    // The same frames again: replays, nothing added.
    produce(&topic, frames.iter().map(|m| ("hall", m.to_json())))?;
    wait_accounted(&mut conn, &topic).await?;
    assert_eq!(snapshot(&mut conn).await?, stored, "a replay adds nothing");

    // Replays whose tracker differs: a Kalman box, no tracker at all, another session. Conflicts,
    // and the stored frames stay whole.
    let mut moved = frames[5].clone();
    moved.tracker.as_mut().unwrap().tracks[0].bbox.x2 += 1.0;
    let mut untracked = frames[6].clone();
    untracked.tracker = None;
    let mut other_session = frames[7].clone();
    other_session.tracker.as_mut().unwrap().session = Uuid::now_v7();
    let conflicting = [moved, untracked, other_session];
    produce(&topic, conflicting.iter().map(|m| ("hall", m.to_json())))?;
    wait_accounted(&mut conn, &topic).await?;
    assert_eq!(snapshot(&mut conn).await?, stored, "a conflicting replay changes nothing");

    // The camera's detector restarted: a new run and session, ids from 1 again, later frames.
    let again = tracked_run(Uuid::now_v7(), Uuid::now_v7(), chrono::Duration::minutes(5));
    produce(&topic, again.iter().map(|m| ("hall", m.to_json())))?;
    wait_accounted(&mut conn, &topic).await?;
    let log = sink.stop()?;
    let (tracks, grouped) = tracks_and_grouped(&mut conn).await?;
    assert_eq!(tracks.len(), 8, "the restarted tracker's ids 1 to 4 are other people: {tracks:?}");
    assert_eq!(tracks, grouped);
    assert_eq!(count(&mut conn, "SELECT count(DISTINCT (run_id, tracker_session)) FROM tracks").await?, 2);
    assert_eq!(count(&mut conn, "SELECT count(*) FROM track_observations").await?, 2 * (persons + FRAMES as i64));
    assert_eq!(log_field(&log, "progress", "replayed"), Some(FRAMES), "{log}");
    assert_eq!(log_field(&log, "progress", "conflicts"), Some(conflicting.len() as u64), "{log}");
    assert_eq!(log_field(&log, "progress", "dead_letters"), Some(0), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_are_stored_once_by_copy() -> Result<()> {
    tracks_are_stored_once("copy").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_are_stored_once_through_staging() -> Result<()> {
    tracks_are_stored_once("staging").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_are_stored_once_by_unnest() -> Result<()> {
    tracks_are_stored_once("unnest").await
}
