//! The statements a part's transaction runs, every one derived from the table descriptions in
//! `tables`: binary COPY or INSERT from UNNEST straight into the tables, and the staging merge that
//! inserts only frames not stored yet, each with its own detections and tracks, and reports the
//! stored frames whose content differs. Either way a frame's key goes into `frame_keys` first: that
//! is where a stored key makes the direct path fail and the merge skip the frame.

use sqlx::PgConnection;
use uuid::Uuid;

use super::binary;
use crate::batch::Batch;
use crate::error::SinkError;
use crate::message::{FrameKey, Row};
use crate::tables::{conflicts_sql, Kind, Role, Table, Value, DETECTIONS, FRAMES, FRAME_KEYS, PARTS, TRACK_OBSERVATIONS};

/// COPY streams of a batch's rows, one per table; `None` for a table with no row.
#[derive(Debug, PartialEq)]
pub struct Streams {
    pub keys: Option<Vec<u8>>,
    pub frames: Option<Vec<u8>>,
    /// One per table of [`PARTS`], in its order.
    pub parts: [Option<Vec<u8>>; 2],
}

pub fn copy_streams(frames: &[Row]) -> Streams {
    Streams {
        keys: binary::encode(&FRAME_KEYS, frames),
        frames: binary::encode(&FRAMES, frames),
        parts: PARTS.map(|t| binary::encode(t, frames)),
    }
}

/// What a merge did: frames and detections inserted, the keys of the frames inserted, and stored
/// frames with other content.
pub struct Merged {
    pub frames: u64,
    pub detections: u64,
    pub new: Vec<FrameKey>,
    pub conflicts: Vec<FrameKey>,
}

/// Every row by COPY straight into the tables: fails whole on a key that is already stored.
/// Frames and detections written (track observations go with them, uncounted).
pub async fn copy_direct(conn: &mut PgConnection, streams: &Streams) -> Result<(u64, u64), SinkError> {
    copy(conn, FRAME_KEYS.name, &FRAME_KEYS, &streams.keys).await?;
    let frames = copy(conn, FRAMES.name, &FRAMES, &streams.frames).await?;
    let [detections, observations] = &streams.parts;
    let detections = copy(conn, DETECTIONS.name, &DETECTIONS, detections).await?;
    copy(conn, TRACK_OBSERVATIONS.name, &TRACK_OBSERVATIONS, observations).await?;
    Ok((frames, detections))
}

/// Every row by INSERT from UNNEST straight into the tables: fails whole on a stored key.
pub async fn unnest_direct(conn: &mut PgConnection, batch: &Batch) -> Result<(u64, u64), SinkError> {
    unnest(conn, &FRAME_KEYS, batch).await?;
    let frames = unnest(conn, &FRAMES, batch).await?;
    let detections = unnest(conn, &DETECTIONS, batch).await?;
    unnest(conn, &TRACK_OBSERVATIONS, batch).await?;
    Ok((frames, detections))
}

/// Through the staging tables: loads them, then inserts the frames not stored yet with their own
/// detections and track observations, in one statement that also returns the stored frames whose
/// content differs.
pub async fn merge(conn: &mut PgConnection, streams: &Streams) -> Result<Merged, SinkError> {
    for (table, data) in std::iter::once((&FRAMES, &streams.frames)).chain(PARTS.iter().copied().zip(&streams.parts)) {
        // Per-connection temporary tables, emptied at every commit (and here, for a retry within
        // one transaction). Emptied by DELETE, not TRUNCATE: a TRUNCATE gives the table a new file,
        // which invalidates the merge's cached plan, and planning it again at every batch costs
        // in proportion to the daily partitions (it reads them all, to prune at run time).
        let create = format!("CREATE TEMP TABLE IF NOT EXISTS {0}_stage (LIKE {0} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS", table.name);
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *conn).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}_stage", table.name))).execute(&mut *conn).await?;
        copy(conn, &format!("{}_stage", table.name), table, data).await?;
    }
    type Keys = (Vec<String>, Vec<Uuid>, Vec<i64>);
    let (frames, detections, c1, c2, c3, n1, n2, n3): (i64, i64, _, _, _, _, _, _) =
        sqlx::query_as(sqlx::AssertSqlSafe(merge_sql())).fetch_one(&mut *conn).await?;
    let keys = |(cameras, runs, seqs): Keys| -> Vec<FrameKey> {
        cameras.into_iter().zip(runs).zip(seqs).map(|((camera_id, run_id), frame_seq)| FrameKey { camera_id, run_id, frame_seq }).collect()
    };
    Ok(Merged { frames: frames as u64, detections: detections as u64, new: keys((n1, n2, n3)), conflicts: keys((c1, c2, c3)) })
}

/// One statement: the keys not stored yet in, their frames, detections and track observations in,
/// and the stored frames that conflict.
fn merge_sql() -> String {
    let (keys, frames, detections, observations) = (FRAME_KEYS.name, FRAMES.name, DETECTIONS.name, TRACK_OBSERVATIONS.name);
    let key = FRAMES.list("", &[Role::Key]);
    let ordered = |c: &str, from: &str| format!("ARRAY(SELECT {c} FROM {from} ORDER BY {key})");
    format!(
        "WITH new AS (INSERT INTO {keys} ({kcols}) SELECT {kcols} FROM {frames}_stage ON CONFLICT DO NOTHING RETURNING {key}),
              fr AS (INSERT INTO {frames} ({fcols}) SELECT {fstage} FROM {frames}_stage f JOIN new USING ({key}) RETURNING 1),
              dets AS (INSERT INTO {detections} ({dcols}) SELECT {dstage} FROM {detections}_stage d JOIN new USING ({key}) RETURNING 1),
              obs AS (INSERT INTO {observations} ({ocols}) SELECT {ostage} FROM {observations}_stage o JOIN new USING ({key})),
              conflicts AS ({conflicts})
         SELECT (SELECT count(*) FROM fr), (SELECT count(*) FROM dets), {c}, {r}, {s}, {nc}, {nr}, {ns}",
        kcols = FRAME_KEYS.all(),
        fcols = FRAMES.all(),
        fstage = FRAMES.list("f.", &[Role::Key, Role::Content, Role::Delivery]),
        dcols = DETECTIONS.all(),
        dstage = DETECTIONS.list("d.", &[Role::Key, Role::Content, Role::Delivery]),
        ocols = TRACK_OBSERVATIONS.all(),
        ostage = TRACK_OBSERVATIONS.list("o.", &[Role::Key, Role::Content, Role::Delivery]),
        conflicts = conflicts_sql("_stage"),
        c = ordered("camera_id", "conflicts"),
        r = ordered("run_id", "conflicts"),
        s = ordered("frame_seq", "conflicts"),
        nc = ordered("camera_id", "new"),
        nr = ordered("run_id", "new"),
        ns = ordered("frame_seq", "new"),
    )
}

async fn copy(conn: &mut PgConnection, into: &str, table: &Table, data: &Option<Vec<u8>>) -> Result<u64, SinkError> {
    let Some(data) = data else { return Ok(0) };
    let mut copy = conn.copy_in_raw(&format!("COPY {into} ({}) FROM STDIN (FORMAT binary)", table.all())).await?;
    copy.send(data.as_slice()).await?;
    Ok(copy.finish().await?)
}

/// One column's values as one array parameter; `None` is NULL (a nullable column's).
enum ColumnArray<'a> {
    Text(Vec<Option<&'a str>>),
    Uuid(Vec<Option<Uuid>>),
    Int4(Vec<Option<i32>>),
    Int8(Vec<Option<i64>>),
    Float4(Vec<Option<f32>>),
    Timestamptz(Vec<Option<chrono::DateTime<chrono::Utc>>>),
    /// As `{{x,y,s},...}` literals: a 2-D array cannot be bound as an element of UNNEST's arrays.
    Keypoints(Vec<Option<String>>),
}

impl<'a> ColumnArray<'a> {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Text => ColumnArray::Text(Vec::new()),
            Kind::Uuid => ColumnArray::Uuid(Vec::new()),
            Kind::Int4 => ColumnArray::Int4(Vec::new()),
            Kind::Int8 => ColumnArray::Int8(Vec::new()),
            Kind::Float4 => ColumnArray::Float4(Vec::new()),
            Kind::Timestamptz => ColumnArray::Timestamptz(Vec::new()),
            Kind::Keypoints => ColumnArray::Keypoints(Vec::new()),
        }
    }

    fn push(&mut self, v: Value<'a>) {
        match (self, v) {
            (ColumnArray::Text(a), Value::Text(x)) => a.push(Some(x)),
            (ColumnArray::Uuid(a), Value::Uuid(x)) => a.push(Some(x)),
            (ColumnArray::Int4(a), Value::Int4(x)) => a.push(Some(x)),
            (ColumnArray::Int8(a), Value::Int8(x)) => a.push(Some(x)),
            (ColumnArray::Float4(a), Value::Float4(x)) => a.push(Some(x)),
            (ColumnArray::Timestamptz(a), Value::Timestamptz(x)) => a.push(Some(x)),
            (ColumnArray::Keypoints(a), Value::Keypoints(x)) => a.push(x.map(keypoints_literal)),
            (array, Value::Null) => array.push_null(),
            (_, v) => unreachable!("a column's values are of its kind, got {v:?}"),
        }
    }

    fn push_null(&mut self) {
        match self {
            ColumnArray::Text(a) => a.push(None),
            ColumnArray::Uuid(a) => a.push(None),
            ColumnArray::Int4(a) => a.push(None),
            ColumnArray::Int8(a) => a.push(None),
            ColumnArray::Float4(a) => a.push(None),
            ColumnArray::Timestamptz(a) => a.push(None),
            ColumnArray::Keypoints(a) => a.push(None),
        }
    }
}

/// The array-binding alternative: every column as one array parameter, unnested into rows.
async fn unnest(conn: &mut PgConnection, table: &Table, batch: &Batch) -> Result<u64, SinkError> {
    let mut arrays: Vec<ColumnArray> = table.columns.iter().map(|c| ColumnArray::new(c.kind)).collect();
    for (row, i) in table.rows(&batch.frames) {
        for (array, col) in arrays.iter_mut().zip(table.columns) {
            array.push((col.value)(row, i));
        }
    }
    let params = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, if c.kind == Kind::Keypoints { "text" } else { c.kind.sql() }))
        .collect::<Vec<_>>()
        .join(", ");
    let select = table
        .columns
        .iter()
        .map(|c| if c.kind == Kind::Keypoints { format!("u.{}::real[]", c.name) } else { format!("u.{}", c.name) })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO {t} ({cols}) SELECT {select} FROM UNNEST({params}) AS u({cols})", t = table.name, cols = table.all());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for array in arrays {
        query = match array {
            ColumnArray::Text(a) => query.bind(a),
            ColumnArray::Uuid(a) => query.bind(a),
            ColumnArray::Int4(a) => query.bind(a),
            ColumnArray::Int8(a) => query.bind(a),
            ColumnArray::Float4(a) => query.bind(a),
            ColumnArray::Timestamptz(a) => query.bind(a),
            ColumnArray::Keypoints(a) => query.bind(a),
        };
    }
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

/// A 2-D real[] literal: `{{x,y,s},{x,y,s}}`.
fn keypoints_literal(kps: &[[f32; 3]]) -> String {
    let rows: Vec<String> = kps.iter().map(|[x, y, s]| format!("{{{x},{y},{s}}}")).collect();
    format!("{{{}}}", rows.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypoint_literals() {
        assert_eq!(keypoints_literal(&[[1.5, 2.0, 0.25], [3.0, 4.125, 1.0]]), "{{1.5,2,0.25},{3,4.125,1}}");
    }

    #[test]
    fn the_merge_inserts_detections_of_new_frames_only() {
        let sql = merge_sql();
        assert!(sql.contains("FROM detections_stage d JOIN new USING (camera_id, run_id, frame_seq)"), "{sql}");
        assert!(sql.contains("INSERT INTO frame_keys (camera_id, run_id, frame_seq, captured_at) SELECT"), "{sql}");
        assert!(sql.contains("FROM frames_stage f JOIN new USING (camera_id, run_id, frame_seq)"), "{sql}");
        assert!(sql.contains("FROM track_observations_stage o JOIN new USING (camera_id, run_id, frame_seq)"), "{sql}");
    }
}
