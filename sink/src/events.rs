//! The zone and line rules' output into `zone_events` and `zone_occupancy`: from the frames the
//! write transaction accepts (wire v3's `tracker.rules`), and from `recount`. Rows are keyed as
//! the migration says (camera, run, session, rule version, track, rule, kind, frame) and inserted
//! with `ON CONFLICT DO NOTHING`: the rules are deterministic, so a key seen again (a replayed
//! frame, a recount with the same rules) is the same event, and the first stored stays.
//!
//! Events come from every accepted frame, a replayed one too: a file processed again with edited
//! rules stores the new version's events beside the old, as a recount would.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::SinkError;
use crate::message::Row;

/// The tables, for retention: their rows go by `captured_at`.
pub const TABLES: [&str; 2] = ["zone_events", "zone_occupancy"];

/// Where a frame's rules' output belongs: its camera, run, session and time.
pub struct Carrier<'a> {
    pub camera_id: &'a str,
    pub run_id: Uuid,
    pub session: Uuid,
    /// The frame's time on the session's clock, and its capture time: an event's capture time is
    /// derived from them (`wire::captured_at_of`).
    pub time: f64,
    pub captured_at: DateTime<Utc>,
}

impl<'a> Carrier<'a> {
    pub fn new(camera_id: &'a str, run_id: Uuid, session: Uuid, pts_ms: i64, captured_at: DateTime<Utc>) -> Self {
        let time = wire::Clock::of_session(session).time(pts_ms, captured_at);
        Carrier { camera_id, run_id, session, time, captured_at }
    }
}

/// The columns of both tables' rows, in a batch.
#[derive(Debug, Default)]
pub struct Rows {
    events: Vec<EventRow>,
    occupancy: Vec<OccupancyRow>,
}

#[derive(Debug, Clone, PartialEq)]
struct EventRow {
    camera_id: String,
    run_id: Uuid,
    session: Uuid,
    version: i64,
    captured_at: DateTime<Utc>,
    event: wire::Event,
}

#[derive(Debug, Clone, PartialEq)]
struct OccupancyRow {
    camera_id: String,
    run_id: Uuid,
    session: Uuid,
    version: i64,
    captured_at: DateTime<Utc>,
    sample: wire::Occupancy,
}

impl Rows {
    /// Adds one frame's rules' output.
    pub fn add(&mut self, at: &Carrier, rules: &wire::RulesOutput) {
        // Stored as the bigint of the same 64 bits.
        let version = rules.version as i64;
        for e in &rules.events {
            self.events.push(EventRow {
                camera_id: at.camera_id.to_string(),
                run_id: at.run_id,
                session: at.session,
                version,
                captured_at: wire::captured_at_of(e.time, at.time, at.captured_at),
                event: e.clone(),
            });
        }
        for o in &rules.occupancy {
            self.occupancy.push(OccupancyRow {
                camera_id: at.camera_id.to_string(),
                run_id: at.run_id,
                session: at.session,
                version,
                captured_at: wire::captured_at_of(o.second as f64, at.time, at.captured_at),
                sample: o.clone(),
            });
        }
    }

    /// The rules' output these frames carry.
    pub fn of<'a>(frames: impl Iterator<Item = &'a Row>) -> Rows {
        let mut rows = Rows::default();
        for r in frames {
            let m = &r.msg;
            if let Some((t, rules)) = m.tracker.as_ref().and_then(|t| Some((t, t.rules.as_ref()?))) {
                rows.add(&Carrier::new(&m.camera_id, m.run_id, t.session, m.pts_ms, m.captured_at), rules);
            }
        }
        rows
    }

    pub fn events(&self) -> usize {
        self.events.len()
    }
}

/// Inserts the rows not stored yet, in the caller's transaction; how many events were new.
pub async fn add(conn: &mut PgConnection, rows: &Rows) -> Result<u64, SinkError> {
    let mut new = 0;
    if !rows.events.is_empty() {
        let e = &rows.events;
        let col = |f: fn(&EventRow) -> Option<f64>| e.iter().map(f).collect::<Vec<_>>();
        let frame = |f: fn(&wire::Event) -> Option<u64>| e.iter().map(|r| f(&r.event).map(|v| v as i64)).collect::<Vec<_>>();
        new = sqlx::query(
            "INSERT INTO zone_events (camera_id, run_id, tracker_session, rule_version, track_id, rule, kind, frame_seq, captured_at,
                 stream_time, from_frame, confirmed_frame, dwell_s, before_x, before_y, after_x, after_y)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::bigint[],
                 $9::timestamptz[], $10::float8[], $11::bigint[], $12::bigint[], $13::float8[], $14::float8[], $15::float8[],
                 $16::float8[], $17::float8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(e.iter().map(|r| r.camera_id.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.run_id).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.session).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.version).collect::<Vec<_>>())
        // Validation bounds tracks and frames to bigint.
        .bind(e.iter().map(|r| r.event.track as i64).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.rule.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.kind.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.frame as i64).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.captured_at).collect::<Vec<_>>())
        .bind(e.iter().map(|r| r.event.time).collect::<Vec<_>>())
        .bind(frame(|e| e.from_frame))
        .bind(frame(|e| e.confirmed_frame))
        .bind(col(|r| r.event.dwell_s))
        .bind(col(|r| r.event.before.map(|p| p[0])))
        .bind(col(|r| r.event.before.map(|p| p[1])))
        .bind(col(|r| r.event.after.map(|p| p[0])))
        .bind(col(|r| r.event.after.map(|p| p[1])))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    if !rows.occupancy.is_empty() {
        let o = &rows.occupancy;
        sqlx::query(
            "INSERT INTO zone_occupancy (camera_id, run_id, tracker_session, rule_version, zone, second, captured_at, people)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::bigint[], $7::timestamptz[], $8::int[])
             ON CONFLICT DO NOTHING",
        )
        .bind(o.iter().map(|r| r.camera_id.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.run_id).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.session).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.sample.zone.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.sample.second).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.captured_at).collect::<Vec<_>>())
        // Validation bounds counts to integer.
        .bind(o.iter().map(|r| r.sample.count as i32).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_captured_when_its_frame_was() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T10:00:10Z").unwrap().with_timezone(&Utc);
        let file = Uuid::new_v8([1; 16]);
        // A file's frame at pts 12.5 s reports an exit dated at 10.5 s and the occupancy of second 11.
        let carrier = Carrier::new("c", Uuid::from_u128(1), file, 12_500, at);
        let exit = wire::Event {
            kind: analytics::EventKind::ZoneExit,
            track: 3,
            rule: "queue".into(),
            frame: 105,
            time: 10.5,
            from_frame: Some(90),
            confirmed_frame: None,
            dwell_s: Some(1.5),
            before: None,
            after: None,
        };
        let rules = wire::RulesOutput {
            version: u64::MAX - 1,
            events: vec![exit],
            occupancy: vec![wire::Occupancy { zone: "queue".into(), second: 11, count: 2 }],
        };
        let mut rows = Rows::default();
        rows.add(&carrier, &rules);
        assert_eq!(rows.events[0].captured_at, at - chrono::Duration::seconds(2));
        assert_eq!(rows.events[0].version, -2, "the same 64 bits");
        assert_eq!(rows.occupancy[0].captured_at, at - chrono::Duration::milliseconds(1500));
        // A live camera's clock is its capture time: the event's own.
        let live = Uuid::now_v7();
        let carrier = Carrier::new("c", Uuid::from_u128(1), live, 0, at);
        let mut rows = Rows::default();
        let t = at.timestamp() as f64 - 4.0;
        rows.add(&carrier, &wire::RulesOutput { events: vec![wire::Event { time: t, ..rules.events[0].clone() }], ..rules.clone() });
        assert_eq!(rows.events[0].captured_at, at - chrono::Duration::seconds(4));
    }
}
