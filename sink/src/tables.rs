//! The four tables the sink writes a frame into, each described once: its columns, their types,
//! which of them key a row and which are the frame's content, and how each value comes out of a
//! message. The binary COPY streams, the staging tables, the UNNEST insert, the SQL that compares a
//! replayed frame with the stored one, and the same comparison within a batch are all derived from
//! these lists, so a column is added in one place (and in a migration; a test checks the two
//! agree). The rollups the write transaction adds to (`people_minutes`, `tracks`) are `rollup`'s.
//!
//! `frames`, `detections` and `track_observations` are partitioned by `captured_at` (see
//! `partitions`), and a partitioned table's unique keys must include that column. The natural key
//! must hold across partitions, though: a file processed again is the same run with new capture
//! times. So it is `frame_keys`' primary key, an unpartitioned table of keys only, into which every
//! frame's key goes first, in the same transaction.

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
    /// SQL NULL, in a nullable column of any kind (a frame not tracked, a detection without track).
    Null,
}

impl<'a> Value<'a> {
    /// The value, or NULL.
    fn or_null<T>(v: Option<T>, f: impl FnOnce(T) -> Value<'a>) -> Value<'a> {
        v.map_or(Value::Null, f)
    }
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
    /// The value for a frame (`index` 0), for its `index`-th detection or its `index`-th track.
    pub value: for<'a> fn(&'a Row, usize) -> Value<'a>,
}

/// Which rows a table holds: one per frame message, one per detection in it, or one per track of
/// its tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Frame,
    Detection,
    Track,
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
        col("tracker_session", Uuid, Content, |r, _| Value::or_null(r.msg.tracker.as_ref(), |t| Value::Uuid(t.session))),
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
        // A linear search: a frame has at most 300 tracks, and the detector lists them in the
        // order of its detections, so the match is near the front.
        col("track_id", Int8, Content, |r, i| {
            let track = r.msg.tracker.as_ref().and_then(|t| t.tracks.iter().find(|k| k.detection == Some(i)));
            Value::or_null(track, |k| Value::Int8(k.id as i64))
        }),
    ],
};

/// The `index`-th track of a tracked frame (`rows` yields only indexes of tracks that exist).
fn track(r: &Row, index: usize) -> &wire::Track {
    &r.msg.tracker.as_ref().expect("a tracked frame").tracks[index]
}

// Validation bounds track ids to bigint and a detection index to MAX_DETECTIONS.
pub static TRACK_OBSERVATIONS: Table = Table {
    name: "track_observations",
    per: Per::Track,
    columns: &[
        CAMERA_ID,
        RUN_ID,
        FRAME_SEQ,
        col("track_id", Int8, Key, |r, i| Value::Int8(track(r, i).id as i64)),
        col("tracker_session", Uuid, Content, |r, _| Value::Uuid(r.msg.tracker.as_ref().expect("a tracked frame").session)),
        col("x1", Float4, Content, |r, i| Value::Float4(track(r, i).bbox.x1)),
        col("y1", Float4, Content, |r, i| Value::Float4(track(r, i).bbox.y1)),
        col("x2", Float4, Content, |r, i| Value::Float4(track(r, i).bbox.x2)),
        col("y2", Float4, Content, |r, i| Value::Float4(track(r, i).bbox.y2)),
        col("score", Float4, Content, |r, i| Value::Float4(track(r, i).score)),
        col("det_index", Int4, Content, |r, i| Value::or_null(track(r, i).detection, |d| Value::Int4(d as i32))),
        CAPTURED_AT,
    ],
};

/// The tables of a frame's parts, written with its frame row or not at all.
pub static PARTS: [&Table; 2] = [&DETECTIONS, &TRACK_OBSERVATIONS];

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
            Per::Track => {
                Box::new(frames.iter().flat_map(|r| (0..r.msg.tracker.as_ref().map_or(0, |t| t.tracks.len())).map(move |i| (r, i))))
            }
        }
    }

    /// The key columns that tell one frame's rows apart (`det_index`, `track_id`).
    fn own_key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.role == Key && !FRAMES.columns.iter().any(|f| f.name == c.name))
    }

    /// Those columns, each prefixed, as a list.
    fn own_key(&self, prefix: &str) -> String {
        self.own_key_columns().map(|c| format!("{prefix}{}", c.name)).collect::<Vec<_>>().join(", ")
    }

    fn content_of<'a>(&'a self, row: &'a Row, index: usize) -> Vec<Value<'a>> {
        self.columns.iter().filter(|c| c.role == Content).map(|c| (c.value)(row, index)).collect()
    }

    /// A frame's rows of this table: each one's own key and content.
    fn keyed<'a>(&'a self, frame: &'a Row) -> Vec<(Vec<Value<'a>>, Vec<Value<'a>>)> {
        self.rows(std::slice::from_ref(frame))
            .map(|(r, i)| (self.own_key_columns().map(|c| (c.value)(r, i)).collect(), self.content_of(r, i)))
            .collect()
    }

    /// Whether two deliveries of one frame carry the same rows of this table: the same own keys,
    /// each with the same content, in whatever order the message lists them.
    fn same_rows(&self, a: &Row, b: &Row) -> bool {
        let (ra, rb) = (self.keyed(a), self.keyed(b));
        // Own keys are unique within a frame (validation), so equal counts and every row of one
        // among the other's are the same set.
        ra.len() == rb.len() && ra.iter().all(|x| rb.contains(x))
    }
}

/// Whether two deliveries of one frame carry the same content: the frame's content columns, and
/// every detection's and every track's.
pub fn same_content(a: &Row, b: &Row) -> bool {
    FRAMES.content_of(a, 0) == FRAMES.content_of(b, 0) && PARTS.iter().all(|t| t.same_rows(a, b))
}

/// The frames of the staging tables (each table's name followed by `stage`) whose stored twin in
/// `frames` has other content. Run in the statement that inserts the new keys, it sees
/// `frame_keys` as it was before them: only frames that were already stored join, and each is
/// looked up at its stored capture time, so that a lookup reads one daily partition of `frames`
/// and of each part's table, however many there are. (The `LIMIT` keeps the planner from turning
/// the lookups into one join that reads every partition.) The staged parts are gathered per frame
/// once, in one pass over each stage, with their own keys, in the order of those keys.
pub fn conflicts_sql(stage: &str) -> String {
    let key = FRAMES.list("", &[Key]);
    let content = |t: &Table, p: &str| t.list(&format!("{p}."), &[Content]);
    let same_key = |a: &str, b: &str| {
        FRAMES.columns.iter().filter(|c| c.role == Key).map(|c| format!("{a}.{0} = {b}.{0}", c.name)).collect::<Vec<_>>().join(" AND ")
    };
    let gathered = |t: &Table| format!("array_agg(ROW({}, {}) ORDER BY {})", t.own_key("d."), content(t, "d"), t.own_key("d."));
    let staged: String = PARTS
        .iter()
        .map(|t| {
            format!(
                "\n             LEFT JOIN (SELECT {key}, {} AS gathered FROM {}{stage} d GROUP BY {key}) s_{} USING ({key})",
                gathered(t),
                t.name,
                t.name
            )
        })
        .collect();
    let differs: String = PARTS
        .iter()
        .map(|t| {
            format!(
                "\n            OR (SELECT {} FROM {} d WHERE {} AND d.captured_at = f.captured_at) IS DISTINCT FROM s_{}.gathered",
                gathered(t),
                t.name,
                same_key("d", "f"),
                t.name
            )
        })
        .collect();
    format!(
        "SELECT s.camera_id, s.run_id, s.frame_seq FROM {frames}{stage} s JOIN {keys} k USING ({key}){staged},
             LATERAL (SELECT * FROM {frames} f WHERE {f_is_s} AND f.captured_at = k.captured_at LIMIT 1) f
         WHERE ROW({fc}) IS DISTINCT FROM ROW({sc}){differs}",
        keys = FRAME_KEYS.name,
        frames = FRAMES.name,
        f_is_s = same_key("f", "s"),
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
            epoch: None,
        };
        Row { msg, partition: 0, offset: 0, key: None, payload: Vec::new() }
    }

    /// A tracker session 5 with tracks of these ids and detections.
    fn tracker(tracks: &[(u64, Option<usize>)]) -> wire::Tracker {
        let tracks = tracks
            .iter()
            .map(|&(id, detection)| wire::Track { id, bbox: wire::BBox { x1: 0.5, y1: 0.5, x2: 1.0, y2: 1.5 }, score: 0.4, detection })
            .collect();
        wire::Tracker { session: Uuid::from_u128(5), tracks, rules: None }
    }

    #[test]
    fn rows_come_per_frame_per_detection_or_per_track() {
        let frames = vec![row(2, 0.5), row(0, 0.5), row(3, 0.5)];
        assert_eq!(FRAMES.rows(&frames).count(), 3);
        let dets: Vec<usize> = DETECTIONS.rows(&frames).map(|(_, i)| i).collect();
        assert_eq!(dets, [0, 1, 0, 1, 2]);
        assert_eq!((FRAMES.columns.len(), DETECTIONS.columns.len(), TRACK_OBSERVATIONS.columns.len()), (13, 13, 12));
        let mut tracked = vec![row(2, 0.5), row(1, 0.5)];
        tracked[0].msg.tracker = Some(tracker(&[(4, Some(1)), (9, None), (2, Some(0))]));
        let tracks: Vec<usize> = TRACK_OBSERVATIONS.rows(&tracked).map(|(_, i)| i).collect();
        assert_eq!(tracks, [0, 1, 2], "the untracked frame has none");
        let track_ids: Vec<Value> = DETECTIONS.rows(&tracked).map(|(r, i)| (DETECTIONS.columns[12].value)(r, i)).collect();
        assert_eq!(track_ids, [Value::Int8(2), Value::Int8(4), Value::Null], "each detection's track, none untracked");
        assert_eq!((FRAMES.columns[12].value)(&tracked[1], 0), Value::Null, "a frame not tracked");
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
    fn the_tracker_is_content() {
        let tracked = |tracks: &[(u64, Option<usize>)]| {
            let mut r = row(2, 0.5);
            r.msg.tracker = Some(tracker(tracks));
            r
        };
        let a = tracked(&[(1, Some(0)), (3, None)]);
        assert!(same_content(&a, &tracked(&[(1, Some(0)), (3, None)])));
        assert!(same_content(&a, &tracked(&[(3, None), (1, Some(0))])), "the order tracks are listed in is not content");
        assert!(!same_content(&a, &row(2, 0.5)), "tracked, then not");
        assert!(!same_content(&row(2, 0.5), &a), "not tracked, then tracked");
        assert!(!same_content(&a, &tracked(&[(1, Some(0))])), "a track fewer");
        assert!(!same_content(&a, &tracked(&[(1, Some(0)), (4, None)])), "another id");
        assert!(!same_content(&a, &tracked(&[(1, Some(1)), (3, None)])), "another detection");
        assert!(!same_content(&a, &tracked(&[(1, Some(0)), (3, Some(1))])), "a low-score track that now names a detection");
        let mut b = tracked(&[(1, Some(0)), (3, None)]);
        b.msg.tracker.as_mut().unwrap().session = Uuid::from_u128(6);
        assert!(!same_content(&a, &b), "another session");
        let mut c = tracked(&[(1, Some(0)), (3, None)]);
        c.msg.tracker.as_mut().unwrap().tracks[1].bbox.x2 = 1.25;
        assert!(!same_content(&a, &c), "a Kalman box");
        assert!(same_content(&tracked(&[]), &tracked(&[])), "tracked with nobody");
        assert!(!same_content(&tracked(&[]), &row(2, 0.5)), "tracked with nobody is not untracked");
    }

    #[test]
    fn the_conflict_query_compares_content_only_and_reads_one_day() {
        let sql = conflicts_sql("_stage");
        assert!(sql.contains("ROW(f.pts_ms, f.frame_width, f.frame_height, f.person_count, f.model_sha256, f.tracker_session)"), "{sql}");
        assert!(
            sql.contains("ROW(d.det_index, d.class, d.score, d.x1, d.y1, d.x2, d.y2, d.keypoints, d.track_id) ORDER BY d.det_index"),
            "{sql}"
        );
        assert!(
            sql.contains("ROW(d.track_id, d.tracker_session, d.x1, d.y1, d.x2, d.y2, d.score, d.det_index) ORDER BY d.track_id"),
            "{sql}"
        );
        assert!(sql.contains("FROM detections_stage d GROUP BY") && sql.contains("FROM track_observations_stage d GROUP BY"), "{sql}");
        assert!(!sql.contains("kafka_offset"), "{sql}");
        // Stored rows are found at the key's capture time: one partition each.
        assert!(sql.contains("JOIN frame_keys k USING (camera_id, run_id, frame_seq)"), "{sql}");
        assert!(sql.contains("f.captured_at = k.captured_at") && sql.matches("d.captured_at = f.captured_at").count() == 2, "{sql}");
    }
}
