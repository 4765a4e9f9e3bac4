//! The three tables the sink writes, each described once: its columns, their types, which of them
//! key a row and which are the frame's content, and how each value comes out of a message. The
//! binary COPY streams, the staging tables, the UNNEST insert, the SQL that compares a replayed
//! frame with the stored one, and the same comparison within a batch are all derived from these
//! lists, so a column is added in one place (and in a migration; a test checks the two agree).
//!
//! `frames` and `detections` are partitioned by `captured_at` (see `partitions`), and a
//! partitioned table's unique keys must include that column. The natural key must hold across
//! partitions, though: a file processed again is the same run with new capture times. So it is
//! `frame_keys`' primary key, an unpartitioned table of keys only, into which every frame's key
//! goes first, in the same transaction.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::message::Row;

/// A column's PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Uuid,
    Int4,
    Int8,
    Float4,
    Timestamptz,
    /// `real[n][3]`: x, y, score per keypoint; NULL for a model without keypoints.
    Keypoints,
}

impl Kind {
    /// The type as SQL names it (and `information_schema` reports it).
    pub fn sql(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Uuid => "uuid",
            Kind::Int4 => "integer",
            Kind::Int8 => "bigint",
            Kind::Float4 => "real",
            Kind::Timestamptz => "timestamp with time zone",
            Kind::Keypoints => "real[]",
        }
    }
}

/// One value of a row, borrowed from its message where it can be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(&'a str),
    Uuid(Uuid),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Timestamptz(DateTime<Utc>),
    Keypoints(Option<&'a [[f32; 3]]>),
}

/// What a column is to a replayed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of the natural key: the same frame has the same key.
    Key,
    /// What the detector found: a replay must carry the same, or it conflicts with the stored frame.
    Content,
    /// Differs between deliveries of one frame (where it was read, when a file was decoded).
    Delivery,
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub role: Role,
    /// The value for a frame (`index` 0) or for its `index`-th detection.
    pub value: for<'a> fn(&'a Row, usize) -> Value<'a>,
}

/// Which rows a table holds: one per frame message, or one per detection in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Frame,
    Detection,
}

pub struct Table {
    pub name: &'static str,
    pub per: Per,
    pub columns: &'static [Column],
}

const fn col(name: &'static str, kind: Kind, role: Role, value: for<'a> fn(&'a Row, usize) -> Value<'a>) -> Column {
    Column { name, kind, role, value }
}

use Kind::*;
use Role::*;

// Validation bounds frame_seq and the frame size to PostgreSQL's bigint and integer, and the
// detections to MAX_DETECTIONS, so the casts below cannot wrap.
const CAMERA_ID: Column = col("camera_id", Text, Key, |r, _| Value::Text(&r.msg.camera_id));
const RUN_ID: Column = col("run_id", Uuid, Key, |r, _| Value::Uuid(r.msg.run_id));
const FRAME_SEQ: Column = col("frame_seq", Int8, Key, |r, _| Value::Int8(r.msg.frame_seq as i64));
const CAPTURED_AT: Column = col("captured_at", Timestamptz, Delivery, |r, _| Value::Timestamptz(r.msg.captured_at));

pub static FRAME_KEYS: Table = Table { name: "frame_keys", per: Per::Frame, columns: &[CAMERA_ID, RUN_ID, FRAME_SEQ, CAPTURED_AT] };

pub static FRAMES: Table = Table {
    name: "frames",
    per: Per::Frame,
    columns: &[
        CAMERA_ID,
        RUN_ID,
        FRAME_SEQ,
        CAPTURED_AT,
        col("pts_ms", Int8, Content, |r, _| Value::Int8(r.msg.pts_ms)),
        col("frame_width", Int4, Content, |r, _| Value::Int4(r.msg.frame_width as i32)),
        col("frame_height", Int4, Content, |r, _| Value::Int4(r.msg.frame_height as i32)),
        col("person_count", Int4, Content, |r, _| Value::Int4(r.people() as i32)),
        col("model_name", Text, Delivery, |r, _| Value::Text(&r.msg.model.name)),
        col("model_sha256", Text, Content, |r, _| Value::Text(&r.msg.model.sha256)),
        col("kafka_partition", Int4, Delivery, |r, _| Value::Int4(r.partition)),
        col("kafka_offset", Int8, Delivery, |r, _| Value::Int8(r.offset)),
    ],
};

pub static DETECTIONS: Table = Table {
    name: "detections",
    per: Per::Detection,
    columns: &[
        CAMERA_ID,
        RUN_ID,
        FRAME_SEQ,
        col("det_index", Int4, Key, |_, i| Value::Int4(i as i32)),
        col("class", Text, Content, |r, i| Value::Text(&r.msg.detections[i].class)),
        col("score", Float4, Content, |r, i| Value::Float4(r.msg.detections[i].score)),
        col("x1", Float4, Content, |r, i| Value::Float4(r.msg.detections[i].bbox.x1)),
        col("y1", Float4, Content, |r, i| Value::Float4(r.msg.detections[i].bbox.y1)),
        col("x2", Float4, Content, |r, i| Value::Float4(r.msg.detections[i].bbox.x2)),
        col("y2", Float4, Content, |r, i| Value::Float4(r.msg.detections[i].bbox.y2)),
        col("keypoints", Keypoints, Content, |r, i| Value::Keypoints(r.msg.detections[i].keypoints.as_deref())),
        CAPTURED_AT,
    ],
};

impl Table {
    /// `a, b, c` (optionally each prefixed `p.`), for the columns with these roles.
    pub fn list(&self, prefix: &str, roles: &[Role]) -> String {
        self.columns.iter().filter(|c| roles.contains(&c.role)).map(|c| format!("{prefix}{}", c.name)).collect::<Vec<_>>().join(", ")
    }

    /// Every column, in order.
    pub fn all(&self) -> String {
        self.list("", &[Key, Content, Delivery])
    }

    /// The table's rows in a batch's frames: `(frame, index)` pairs.
    pub fn rows<'a>(&self, frames: &'a [Row]) -> Box<dyn Iterator<Item = (&'a Row, usize)> + 'a> {
        match self.per {
            Per::Frame => Box::new(frames.iter().map(|r| (r, 0))),
            Per::Detection => Box::new(frames.iter().flat_map(|r| (0..r.msg.detections.len()).map(move |i| (r, i)))),
        }
    }

    fn content_of<'a>(&'a self, row: &'a Row, index: usize) -> impl Iterator<Item = Value<'a>> + 'a {
        self.columns.iter().filter(|c| c.role == Content).map(move |c| (c.value)(row, index))
    }
}

/// Whether two deliveries of one frame carry the same content: the frame's content columns and
/// every detection's.
pub fn same_content(a: &Row, b: &Row) -> bool {
    FRAMES.content_of(a, 0).eq(FRAMES.content_of(b, 0))
        && a.msg.detections.len() == b.msg.detections.len()
        && (0..a.msg.detections.len()).all(|i| DETECTIONS.content_of(a, i).eq(DETECTIONS.content_of(b, i)))
}

/// The frames of `stage` whose stored twin in `frames` has other content. Run in the statement
/// that inserts the new keys, it sees `frame_keys` as it was before them: only frames that were
/// already stored join, and each is looked up at its stored capture time, so that a lookup reads
/// one daily partition of `frames` and of `detections`, however many there are. (The `LIMIT`
/// keeps the planner from turning the lookups into one join that reads every partition.) The
/// staged detections are gathered per frame once, in one pass over the stage.
pub fn conflicts_sql(stage_frames: &str, stage_detections: &str) -> String {
    let key = FRAMES.list("", &[Key]);
    let content = |t: &Table, p: &str| t.list(&format!("{p}."), &[Content]);
    let same_key = |a: &str, b: &str| {
        FRAMES.columns.iter().filter(|c| c.role == Key).map(|c| format!("{a}.{0} = {b}.{0}", c.name)).collect::<Vec<_>>().join(" AND ")
    };
    let gathered = format!("array_agg(ROW({}) ORDER BY d.det_index)", content(&DETECTIONS, "d"));
    format!(
        "SELECT s.camera_id, s.run_id, s.frame_seq FROM {stage_frames} s JOIN {keys} k USING ({key})
             LEFT JOIN (SELECT {key}, {gathered} AS detections FROM {stage_detections} d GROUP BY {key}) sd USING ({key}),
             LATERAL (SELECT * FROM {frames} f WHERE {f_is_s} AND f.captured_at = k.captured_at LIMIT 1) f
         WHERE ROW({fc}) IS DISTINCT FROM ROW({sc})
            OR (SELECT {gathered} FROM {detections} d WHERE {d_is_f} AND d.captured_at = f.captured_at) IS DISTINCT FROM sd.detections",
        keys = FRAME_KEYS.name,
        frames = FRAMES.name,
        detections = DETECTIONS.name,
        f_is_s = same_key("f", "s"),
        d_is_f = same_key("d", "f"),
        fc = content(&FRAMES, "f"),
        sc = content(&FRAMES, "s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(persons: usize, score: f32) -> Row {
        let d = wire::Detection {
            class: wire::PERSON_CLASS.into(),
            score,
            bbox: wire::BBox { x1: 0.0, y1: 0.0, x2: 1.0, y2: 1.0 },
            keypoints: Some(vec![[1.0, 2.0, 0.5]; 17]),
        };
        let msg = wire::FrameMessage {
            schema_version: 2,
            camera_id: "c".into(),
            run_id: Uuid::from_u128(7),
            frame_seq: 3,
            captured_at: Utc::now(),
            pts_ms: 300,
            frame_width: 2,
            frame_height: 2,
            model: wire::ModelInfo { name: "m".into(), sha256: "00000000".into(), keypoints: 17 },
            detections: vec![d; persons],
            tracker: None,
        };
        Row { msg, partition: 0, offset: 0, key: None, payload: Vec::new() }
    }

    #[test]
    fn rows_come_per_frame_or_per_detection() {
        let frames = vec![row(2, 0.5), row(0, 0.5), row(3, 0.5)];
        assert_eq!(FRAMES.rows(&frames).count(), 3);
        let dets: Vec<usize> = DETECTIONS.rows(&frames).map(|(_, i)| i).collect();
        assert_eq!(dets, [0, 1, 0, 1, 2]);
        assert_eq!((FRAMES.columns.len(), DETECTIONS.columns.len()), (12, 12));
        assert_eq!(FRAMES.list("s.", &[Key]), "s.camera_id, s.run_id, s.frame_seq");
    }

    #[test]
    fn content_ignores_how_a_frame_was_delivered() {
        let a = row(2, 0.5);
        let mut b = row(2, 0.5);
        (b.partition, b.offset, b.msg.captured_at) = (3, 99, a.msg.captured_at + chrono::Duration::hours(1));
        b.msg.model.name = "renamed".into();
        assert!(same_content(&a, &b), "delivery columns are not content");
        assert!(!same_content(&a, &row(2, 0.6)), "a score");
        assert!(!same_content(&a, &row(3, 0.5)), "another detection");
        let mut c = row(2, 0.5);
        c.msg.detections[1].keypoints.as_mut().unwrap()[16][0] = 1.5;
        assert!(!same_content(&a, &c), "one keypoint");
        let mut d = row(2, 0.5);
        d.msg.pts_ms += 1;
        assert!(!same_content(&a, &d), "pts");
    }

    #[test]
    fn the_conflict_query_compares_content_only_and_reads_one_day() {
        let sql = conflicts_sql("frames_stage", "detections_stage");
        assert!(sql.contains("ROW(f.pts_ms, f.frame_width, f.frame_height, f.person_count, f.model_sha256)"), "{sql}");
        assert!(sql.contains("ROW(d.class, d.score, d.x1, d.y1, d.x2, d.y2, d.keypoints)"), "{sql}");
        assert!(!sql.contains("kafka_offset"), "{sql}");
        // Stored rows are found at the key's capture time: one partition each.
        assert!(sql.contains("JOIN frame_keys k USING (camera_id, run_id, frame_seq)"), "{sql}");
        assert!(sql.contains("f.captured_at = k.captured_at") && sql.contains("d.captured_at = f.captured_at"), "{sql}");
    }
}
