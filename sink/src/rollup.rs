//! The rollups the sink adds to in the transaction that stores the frames, from the frames that
//! transaction stores new (a replay adds nothing), so they are exactly as right as the rows they sum:
//! - `people_minutes` (migration 4): frames and people per camera, minute and run. The views
//!   `people_per_minute` and `runs` and the dashboards read it: a day of one camera is 1,440 rows,
//!   whatever the frame rate.
//! - `tracks` (migration 5): one row per track, `(camera_id, run_id, tracker_session, track_id)`,
//!   with its first and last capture times, frames and best score: equal to a `GROUP BY` over
//!   `track_observations`, at one row per person instead of one per person and frame.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::SinkError;
use crate::message::Row;

pub const MINUTES: &str = "people_minutes";
pub const TRACKS: &str = "tracks";

/// One row of the rollup, or what a batch adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Minute {
    pub camera_id: String,
    /// The UTC minute, as `date_bin('1 minute', captured_at, '2000-01-01')`.
    pub minute: DateTime<Utc>,
    pub run_id: Uuid,
    pub frames: i32,
    pub people: i64,
    pub max_people: i32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub model_name: String,
    pub model_sha256: String,
}

/// The minute a capture time falls in.
pub fn minute_of(t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(60_000)).expect("a minute of a valid time")
}

/// What these frames add to the rollup, one entry per (camera, minute, run).
pub fn minutes<'a>(frames: impl Iterator<Item = &'a Row>) -> Vec<Minute> {
    let mut by: BTreeMap<(&str, DateTime<Utc>, Uuid), Minute> = BTreeMap::new();
    for r in frames {
        let (at, people) = (r.msg.captured_at, r.people());
        by.entry((&r.msg.camera_id, minute_of(at), r.msg.run_id))
            .and_modify(|m| {
                m.frames += 1;
                m.people += people as i64;
                m.max_people = m.max_people.max(people as i32);
                m.first = m.first.min(at);
                m.last = m.last.max(at);
            })
            .or_insert_with(|| Minute {
                camera_id: r.msg.camera_id.clone(),
                minute: minute_of(at),
                run_id: r.msg.run_id,
                frames: 1,
                people: people as i64,
                max_people: people as i32,
                first: at,
                last: at,
                model_name: r.msg.model.name.clone(),
                model_sha256: r.msg.model.sha256.clone(),
            });
    }
    by.into_values().collect()
}

/// Adds to the rollup, in the caller's transaction.
pub async fn add(conn: &mut PgConnection, minutes: &[Minute]) -> Result<(), SinkError> {
    if minutes.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Minute) -> String| minutes.iter().map(f).collect::<Vec<_>>();
    let at = |f: fn(&Minute) -> DateTime<Utc>| minutes.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO people_minutes (camera_id, minute, run_id, frames, people, max_people, first_captured_at, last_captured_at,
                                     model_name, model_sha256)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::uuid[], $4::int[], $5::bigint[], $6::int[], $7::timestamptz[],
                              $8::timestamptz[], $9::text[], $10::text[])
         ON CONFLICT (camera_id, minute, run_id) DO UPDATE SET
             frames = people_minutes.frames + EXCLUDED.frames,
             people = people_minutes.people + EXCLUDED.people,
             max_people = greatest(people_minutes.max_people, EXCLUDED.max_people),
             first_captured_at = least(people_minutes.first_captured_at, EXCLUDED.first_captured_at),
             last_captured_at = greatest(people_minutes.last_captured_at, EXCLUDED.last_captured_at)",
    )
    .bind(col(|m| m.camera_id.clone()))
    .bind(at(|m| m.minute))
    .bind(minutes.iter().map(|m| m.run_id).collect::<Vec<_>>())
    .bind(minutes.iter().map(|m| m.frames).collect::<Vec<_>>())
    .bind(minutes.iter().map(|m| m.people).collect::<Vec<_>>())
    .bind(minutes.iter().map(|m| m.max_people).collect::<Vec<_>>())
    .bind(at(|m| m.first))
    .bind(at(|m| m.last))
    .bind(col(|m| m.model_name.clone()))
    .bind(col(|m| m.model_sha256.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// One row of `tracks`, or what a batch adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackSeen {
    pub camera_id: String,
    pub run_id: Uuid,
    pub session: Uuid,
    pub track_id: i64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub frames: i32,
    pub best_score: f32,
}

/// What these frames add to `tracks`, one entry per track.
pub fn tracks<'a>(frames: impl Iterator<Item = &'a Row>) -> Vec<TrackSeen> {
    let mut by: BTreeMap<(&str, Uuid, Uuid, u64), TrackSeen> = BTreeMap::new();
    for r in frames {
        let Some(tracker) = &r.msg.tracker else { continue };
        let at = r.msg.captured_at;
        for t in &tracker.tracks {
            by.entry((&r.msg.camera_id, r.msg.run_id, tracker.session, t.id))
                .and_modify(|s| {
                    s.first = s.first.min(at);
                    s.last = s.last.max(at);
                    s.frames += 1;
                    s.best_score = s.best_score.max(t.score);
                })
                .or_insert_with(|| TrackSeen {
                    camera_id: r.msg.camera_id.clone(),
                    run_id: r.msg.run_id,
                    session: tracker.session,
                    // Validation bounds ids to bigint.
                    track_id: t.id as i64,
                    first: at,
                    last: at,
                    frames: 1,
                    best_score: t.score,
                });
        }
    }
    // In key order, so that two transactions adding to the same tracks lock them in one order.
    by.into_values().collect()
}

/// Adds to `tracks`, in the caller's transaction.
pub async fn add_tracks(conn: &mut PgConnection, tracks: &[TrackSeen]) -> Result<(), SinkError> {
    if tracks.is_empty() {
        return Ok(());
    }
    let at = |f: fn(&TrackSeen) -> DateTime<Utc>| tracks.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO tracks (camera_id, run_id, tracker_session, track_id, first_seen, last_seen, frames, best_score)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::bigint[], $5::timestamptz[], $6::timestamptz[], $7::int[], $8::real[])
         ON CONFLICT (camera_id, run_id, tracker_session, track_id) DO UPDATE SET
             first_seen = least(tracks.first_seen, EXCLUDED.first_seen),
             last_seen = greatest(tracks.last_seen, EXCLUDED.last_seen),
             frames = tracks.frames + EXCLUDED.frames,
             best_score = greatest(tracks.best_score, EXCLUDED.best_score)",
    )
    .bind(tracks.iter().map(|t| t.camera_id.as_str()).collect::<Vec<_>>())
    .bind(tracks.iter().map(|t| t.run_id).collect::<Vec<_>>())
    .bind(tracks.iter().map(|t| t.session).collect::<Vec<_>>())
    .bind(tracks.iter().map(|t| t.track_id).collect::<Vec<_>>())
    .bind(at(|t| t.first))
    .bind(at(|t| t.last))
    .bind(tracks.iter().map(|t| t.frames).collect::<Vec<_>>())
    .bind(tracks.iter().map(|t| t.best_score).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::row;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn minutes_are_utc_minutes_before_1970_too() {
        assert_eq!(minute_of(at("2026-12-02T13:45:59.999Z")), at("2026-12-02T13:45:00Z"));
        assert_eq!(minute_of(at("2026-12-02T13:45:00Z")), at("2026-12-02T13:45:00Z"));
        assert_eq!(minute_of(at("1969-12-31T23:59:30.5Z")), at("1969-12-31T23:59:00Z"));
    }

    #[test]
    fn frames_add_up_per_camera_minute_and_run() {
        let mut rows = [row(0, 2, 0, 0), row(1, 5, 0, 1), row(2, 0, 0, 2), row(3, 1, 0, 3)];
        rows[0].msg.captured_at = at("2026-12-02T10:00:10Z");
        rows[1].msg.captured_at = at("2026-12-02T10:00:50Z");
        rows[2].msg.captured_at = at("2026-12-02T10:01:00Z");
        rows[3].msg.captured_at = at("2026-12-02T10:00:30Z");
        rows[3].msg.run_id = Uuid::from_u128(2);
        let m = minutes(rows.iter());
        let got: Vec<(DateTime<Utc>, u128, i32, i64, i32)> =
            m.iter().map(|m| (m.minute, m.run_id.as_u128(), m.frames, m.people, m.max_people)).collect();
        assert_eq!(
            got,
            [(at("2026-12-02T10:00:00Z"), 1, 2, 7, 5), (at("2026-12-02T10:00:00Z"), 2, 1, 1, 1), (at("2026-12-02T10:01:00Z"), 1, 1, 0, 0)]
        );
        assert_eq!((m[0].first, m[0].last), (at("2026-12-02T10:00:10Z"), at("2026-12-02T10:00:50Z")));
    }

    #[test]
    fn tracks_add_up_per_camera_run_session_and_id() {
        let track =
            |id: u64, score: f32| wire::Track { id, bbox: wire::BBox { x1: 0.0, y1: 0.0, x2: 1.0, y2: 1.0 }, score, detection: None };
        let session = |s: u128, tracks: Vec<wire::Track>| Some(wire::Tracker { session: Uuid::from_u128(s), tracks, rules: None });
        let mut rows = [row(0, 0, 0, 0), row(1, 0, 0, 1), row(2, 0, 0, 2), row(3, 0, 0, 3)];
        rows[0].msg.captured_at = at("2026-12-02T10:00:10Z");
        rows[0].msg.tracker = session(7, vec![track(1, 0.3), track(2, 0.9)]);
        rows[1].msg.captured_at = at("2026-12-02T10:00:11Z");
        rows[1].msg.tracker = session(7, vec![track(1, 0.8)]);
        // A restarted tracker's id 1 is another person.
        rows[2].msg.captured_at = at("2026-12-02T10:00:12Z");
        rows[2].msg.tracker = session(8, vec![track(1, 0.5)]);
        // Not tracked: nothing.
        rows[3].msg.captured_at = at("2026-12-02T10:00:13Z");
        let t = tracks(rows.iter());
        let got: Vec<(u128, i64, i32, f32)> = t.iter().map(|t| (t.session.as_u128(), t.track_id, t.frames, t.best_score)).collect();
        assert_eq!(got, [(7, 1, 2, 0.8), (7, 2, 1, 0.9), (8, 1, 1, 0.5)]);
        assert_eq!((t[0].first, t[0].last), (at("2026-12-02T10:00:10Z"), at("2026-12-02T10:00:11Z")));
        assert!(tracks(rows[3..].iter()).is_empty());
    }
}
