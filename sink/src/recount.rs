//! `sink recount`: a camera's stored tracks through rules, their events stored under those rules'
//! version beside the ones stored before. Each tracker session that has frames in the time range
//! is replayed whole, from its first frame (a presence open at the range's start began before
//! it), through `analytics::Counter`, the code the detector counts with live, fed what the live
//! counter was fed: every frame of the session in order, empty ones too, each track's stored box
//! and the keypoints of the detection it matched. So the same rules give the same events under
//! the same keys, and storing them again changes nothing.

use std::path::Path;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::SinkError;
use crate::events::{self, Carrier, Rows};

/// Frames read (and events stored) at a time.
const PAGE: i64 = 5000;

/// What a recount did.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub version: u64,
    pub sessions: u64,
    pub frames: u64,
    pub events: u64,
    /// Events not stored before (with the same rules: none).
    pub new_events: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recounted rule_version={:016x} (stored as {}) sessions={} frames={} events={} new_events={}",
            self.version, self.version as i64, self.sessions, self.frames, self.events, self.new_events
        )
    }
}

/// The rules in a TOML file with the keys of a camera's `[camera.rules]` (docs/analytics.md).
pub fn load_rules(path: &Path) -> Result<analytics::Rules, SinkError> {
    let in_file = |why: String| SinkError::Config(format!("--rules {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| in_file(format!("cannot read: {e}")))?;
    let config: analytics::RulesConfig = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| text[..s.start].matches('\n').count() + 1);
        in_file(format!("line {line}: {}", e.message()))
    })?;
    analytics::Rules::new(&config).map_err(|e| in_file(e.to_string()))
}

/// Recounts the sessions of `camera` with frames captured in `[from, to)` (no `from`: since the first).
pub async fn run(
    pool: &PgPool,
    camera: &str,
    rules: &analytics::Rules,
    from: Option<DateTime<Utc>>,
    to: DateTime<Utc>,
) -> Result<Report, SinkError> {
    let sessions: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT run_id, tracker_session FROM frames
         WHERE camera_id = $1 AND tracker_session IS NOT NULL AND ($2::timestamptz IS NULL OR captured_at >= $2) AND captured_at < $3
         GROUP BY run_id, tracker_session ORDER BY min(captured_at)",
    )
    .bind(camera)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut report = Report { version: rules.version(), ..Report::default() };
    for (run, session) in sessions {
        recount_session(pool, camera, run, session, rules, &mut report).await?;
        report.sessions += 1;
    }
    Ok(report)
}

type FrameRow = (i64, i64, DateTime<Utc>);
type TrackRow = (i64, i64, f32, f32, f32, f32, Option<Vec<f32>>);

async fn recount_session(
    pool: &PgPool,
    camera: &str,
    run: Uuid,
    session: Uuid,
    rules: &analytics::Rules,
    report: &mut Report,
) -> Result<(), SinkError> {
    let clock = wire::Clock::of_session(session);
    let mut counter = analytics::Counter::new(rules.clone());
    let mut after = -1_i64;
    let mut last: Option<FrameRow> = None;
    loop {
        let frames: Vec<FrameRow> = sqlx::query_as(
            "SELECT frame_seq, pts_ms, captured_at FROM frames
             WHERE camera_id = $1 AND run_id = $2 AND tracker_session = $3 AND frame_seq > $4
             ORDER BY frame_seq LIMIT $5",
        )
        .bind(camera)
        .bind(run)
        .bind(session)
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let (Some(first), Some(end)) = (frames.first(), frames.last()) else { break };
        // Each track's box and its detection's keypoints, flattened (x, y, score per keypoint).
        let tracks: Vec<TrackRow> = sqlx::query_as(
            "SELECT o.frame_seq, o.track_id, o.x1, o.y1, o.x2, o.y2,
                    CASE WHEN d.keypoints IS NULL THEN NULL ELSE ARRAY(SELECT unnest(d.keypoints)) END
             FROM track_observations o
             LEFT JOIN detections d ON d.camera_id = o.camera_id AND d.run_id = o.run_id AND d.frame_seq = o.frame_seq
                                   AND d.captured_at = o.captured_at AND d.det_index = o.det_index
             WHERE o.camera_id = $1 AND o.run_id = $2 AND o.tracker_session = $3 AND o.frame_seq BETWEEN $4 AND $5
             ORDER BY o.frame_seq, o.track_id",
        )
        .bind(camera)
        .bind(run)
        .bind(session)
        .bind(first.0)
        .bind(end.0)
        .fetch_all(pool)
        .await?;
        let mut rows = Rows::default();
        let mut tracks = tracks.into_iter().peekable();
        for &(seq, pts_ms, captured_at) in &frames {
            let mut seen = Vec::new();
            while let Some((_, id, x1, y1, x2, y2, kps)) = tracks.next_if(|t| t.0 == seq) {
                let kps: Option<Vec<[f32; 3]>> = kps.map(|k| k.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect());
                seen.push(analytics::Observation::from_f32(id as u64, [x1, y1, x2, y2], kps.as_deref()));
            }
            let at = analytics::FrameTime { seq: seq as u64, time: clock.time(pts_ms, captured_at) };
            let output = counter
                .update(at, &seen)
                .map_err(|e| SinkError::Schema(format!("the stored tracks of camera {camera}, run {run}, session {session}: {e}")))?;
            rows.add(&Carrier::new(camera, run, session, pts_ms, captured_at), &wire::RulesOutput::new(rules.version(), &output));
        }
        report.frames += frames.len() as u64;
        after = end.0;
        last = Some(*end);
        store(pool, &rows, report).await?;
    }
    // The session's end rides with its last frame, as the detector sends it.
    if let Some((_, pts_ms, captured_at)) = last {
        let mut rows = Rows::default();
        rows.add(&Carrier::new(camera, run, session, pts_ms, captured_at), &wire::RulesOutput::new(rules.version(), &counter.finish()));
        store(pool, &rows, report).await?;
    }
    Ok(())
}

async fn store(pool: &PgPool, rows: &Rows, report: &mut Report) -> Result<(), SinkError> {
    let mut conn = pool.acquire().await?;
    report.events += rows.events() as u64;
    report.new_events += events::add(&mut conn, rows).await?;
    Ok(())
}
