//! Writes one part of a batch in one transaction: its frames, their detections, and the next
//! offsets of its partitions.
//!
//! The normal path writes straight into the tables (binary COPY, or INSERT from UNNEST). A key
//! conflict (a frame delivered again: a file processed again, a partition read again) aborts that
//! transaction, and the part is redone through staging: loaded by COPY into temporary tables, then
//! merged in one statement that inserts the frames not stored yet with their detections only, and
//! returns the stored frames whose content differs from the new delivery. So a frame's detections
//! are stored with its frame row or not at all, and a stored frame is never changed or added to.
//! Every statement is derived from the table descriptions in `tables`.

use clap::ValueEnum;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

mod binary;

use crate::batch::{Batch, FrameKey};
use crate::error::SinkError;
use crate::tables::{conflicts_sql, Kind, Role, Table, Value, DETECTIONS, FRAMES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    /// COPY into the tables; on a key conflict, redo the part through staging (default).
    Copy,
    /// Always COPY into staging tables, then merge.
    Staging,
    /// Multi-row INSERT ... SELECT FROM UNNEST(arrays); on a key conflict, redo through staging.
    Unnest,
}

/// What a write did. Rows that were already present are not counted as written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    pub frames: u64,
    pub detections: u64,
    /// Frames delivered again with the content already stored (or already in the batch).
    pub replayed: u64,
    /// Frames delivered again with other content: the stored frame was kept whole.
    pub conflicts: Vec<FrameKey>,
    /// Parts whose direct write hit a key conflict and went through staging.
    pub redone: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.frames += other.frames;
        self.detections += other.detections;
        self.replayed += other.replayed;
        self.conflicts.extend(other.conflicts);
        self.redone += other.redone;
    }
}

/// A batch ready for the writer: split into parts of whole partitions that are written in
/// parallel transactions (one connection each), with their binary COPY data already made (for the
/// COPY and staging modes), so that encoding overlaps the previous batch's write.
pub struct Encoded {
    pub parts: Vec<Part>,
}

pub struct Part {
    pub batch: Batch,
    /// COPY streams of the frames and detections; `None` for a table with no row.
    copy_data: Option<[Option<Vec<u8>>; 2]>,
}

impl Encoded {
    pub fn new(batch: Batch, mode: WriteMode, writers: usize) -> Self {
        let parts = batch
            .split(writers)
            .into_iter()
            .map(|batch| {
                let copy_data = (mode != WriteMode::Unnest).then(|| copy_streams(&batch));
                Part { batch, copy_data }
            })
            .collect();
        Encoded { parts }
    }
}

fn copy_streams(batch: &Batch) -> [Option<Vec<u8>>; 2] {
    [binary::encode(&FRAMES, &batch.frames), binary::encode(&DETECTIONS, &batch.frames)]
}

/// Writes one part in one transaction with its partitions' next offsets.
pub async fn write_part(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, part: &Part) -> Result<Written, SinkError> {
    if mode == WriteMode::Staging {
        return merge(pool, group, topic, part).await;
    }
    match direct(pool, mode, group, topic, part).await {
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!("key conflict in a direct write; redoing the part through staging");
            let w = merge(pool, group, topic, part).await?;
            Ok(Written { redone: 1, ..w })
        }
        other => other,
    }
}

fn is_unique_violation(e: &SinkError) -> bool {
    matches!(e, SinkError::Database(db) if db.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23505")))
}

/// What the batch found by itself, before the database had a say.
fn within_batch(batch: &Batch) -> Written {
    Written { replayed: batch.replayed, conflicts: batch.conflicts.clone(), ..Written::default() }
}

/// Every row straight into the tables: fails whole on a key that is already stored.
async fn direct(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, part: &Part) -> Result<Written, SinkError> {
    let mut tx = pool.begin().await?;
    let mut written = within_batch(&part.batch);
    if mode == WriteMode::Copy {
        let [frames, detections] = part.copy_data.as_ref().expect("COPY data is made for the copy mode");
        written.frames = copy(&mut tx, FRAMES.name, &FRAMES, frames).await?;
        written.detections = copy(&mut tx, DETECTIONS.name, &DETECTIONS, detections).await?;
    } else {
        written.frames = unnest(&mut tx, &FRAMES, &part.batch).await?;
        written.detections = unnest(&mut tx, &DETECTIONS, &part.batch).await?;
    }
    store_offsets(&mut tx, group, topic, &part.batch).await?;
    tx.commit().await?;
    Ok(written)
}

/// Through staging: only frames not stored yet are inserted, with their detections; stored frames
/// with other content are reported.
async fn merge(pool: &PgPool, group: &str, topic: &str, part: &Part) -> Result<Written, SinkError> {
    let encoded;
    let [frames, detections] = match &part.copy_data {
        Some(data) => data,
        None => {
            encoded = copy_streams(&part.batch);
            &encoded
        }
    };
    let mut tx = pool.begin().await?;
    for (table, data) in [(&FRAMES, frames), (&DETECTIONS, detections)] {
        // Per-connection temporary tables, emptied at every commit.
        let create = format!("CREATE TEMP TABLE IF NOT EXISTS {0}_stage (LIKE {0} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS", table.name);
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *tx).await?;
        copy(&mut tx, &format!("{}_stage", table.name), table, data).await?;
    }
    let (new_frames, new_detections, cameras, runs, seqs): (i64, i64, Vec<String>, Vec<Uuid>, Vec<i64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(merge_sql())).fetch_one(&mut *tx).await?;
    store_offsets(&mut tx, group, topic, &part.batch).await?;
    tx.commit().await?;
    let mut written = within_batch(&part.batch);
    let conflicts: Vec<FrameKey> =
        cameras.into_iter().zip(runs).zip(seqs).map(|((camera_id, run_id), frame_seq)| FrameKey { camera_id, run_id, frame_seq }).collect();
    written.replayed += (part.batch.frames.len() - new_frames as usize - conflicts.len()) as u64;
    written.frames = new_frames as u64;
    written.detections = new_detections as u64;
    written.conflicts.extend(conflicts);
    Ok(written)
}

/// One statement: the new frames in, their detections in, and the stored frames that conflict.
fn merge_sql() -> String {
    let (frames, detections) = (FRAMES.name, DETECTIONS.name);
    let key = FRAMES.list("", &[Role::Key]);
    let ordered = |c: &str| format!("ARRAY(SELECT {c} FROM conflicts ORDER BY {key})");
    format!(
        "WITH new AS (INSERT INTO {frames} ({fcols}) SELECT {fcols} FROM {frames}_stage ON CONFLICT DO NOTHING RETURNING {key}),
              dets AS (INSERT INTO {detections} ({dcols}) SELECT {dstage} FROM {detections}_stage d JOIN new USING ({key}) RETURNING 1),
              conflicts AS ({conflicts})
         SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM dets), {c}, {r}, {s}",
        fcols = FRAMES.all(),
        dcols = DETECTIONS.all(),
        dstage = DETECTIONS.list("d.", &[Role::Key, Role::Content, Role::Delivery]),
        conflicts = conflicts_sql(&format!("{frames}_stage"), &format!("{detections}_stage")),
        c = ordered("camera_id"),
        r = ordered("run_id"),
        s = ordered("frame_seq"),
    )
}

async fn copy(conn: &mut PgConnection, into: &str, table: &Table, data: &Option<Vec<u8>>) -> Result<u64, SinkError> {
    let Some(data) = data else { return Ok(0) };
    let mut copy = conn.copy_in_raw(&format!("COPY {into} ({}) FROM STDIN (FORMAT binary)", table.all())).await?;
    copy.send(data.as_slice()).await?;
    Ok(copy.finish().await?)
}

async fn store_offsets(conn: &mut PgConnection, group: &str, topic: &str, batch: &Batch) -> Result<(), SinkError> {
    let (parts, next): (Vec<i32>, Vec<i64>) = batch.next_offsets.iter().map(|(p, o)| (*p, *o)).unzip();
    sqlx::query(
        "INSERT INTO sink_offsets (consumer_group, topic, kafka_partition, next_offset)
         SELECT $1, $2, p, o FROM UNNEST($3::int[], $4::bigint[]) AS u(p, o)
         ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE
         SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind(group)
    .bind(topic)
    .bind(&parts)
    .bind(&next)
    .execute(conn)
    .await?;
    Ok(())
}

/// One column's values as one array parameter.
enum ColumnArray<'a> {
    Text(Vec<&'a str>),
    Uuid(Vec<Uuid>),
    Int4(Vec<i32>),
    Int8(Vec<i64>),
    Float4(Vec<f32>),
    Timestamptz(Vec<chrono::DateTime<chrono::Utc>>),
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
            (ColumnArray::Text(a), Value::Text(x)) => a.push(x),
            (ColumnArray::Uuid(a), Value::Uuid(x)) => a.push(x),
            (ColumnArray::Int4(a), Value::Int4(x)) => a.push(x),
            (ColumnArray::Int8(a), Value::Int8(x)) => a.push(x),
            (ColumnArray::Float4(a), Value::Float4(x)) => a.push(x),
            (ColumnArray::Timestamptz(a), Value::Timestamptz(x)) => a.push(x),
            (ColumnArray::Keypoints(a), Value::Keypoints(x)) => a.push(x.map(keypoints_literal)),
            (_, v) => unreachable!("a column's values are of its kind, got {v:?}"),
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
    fn keypoint_literals_and_empty_streams() {
        assert_eq!(keypoints_literal(&[[1.5, 2.0, 0.25], [3.0, 4.125, 1.0]]), "{{1.5,2,0.25},{3,4.125,1}}");
        let mut batch = Batch::default();
        assert_eq!(copy_streams(&batch), [None, None]);
        let msg = wire::FrameMessage {
            schema_version: 2,
            camera_id: "cam".into(),
            run_id: Uuid::from_u128(9),
            frame_seq: 5,
            captured_at: chrono::Utc::now(),
            pts_ms: 500,
            frame_width: 640,
            frame_height: 480,
            model: wire::ModelInfo { name: "m".into(), sha256: "0123abcd".into(), keypoints: 0 },
            detections: vec![],
        };
        batch.push(msg, 2, 41);
        // A frame with nobody in it is a frames row and no detections stream at all.
        let [frames, detections] = copy_streams(&batch);
        assert!(frames.is_some() && detections.is_none());
    }

    #[test]
    fn the_merge_inserts_detections_of_new_frames_only() {
        let sql = merge_sql();
        assert!(sql.contains("FROM detections_stage d JOIN new USING (camera_id, run_id, frame_seq)"), "{sql}");
        assert!(sql.contains("INSERT INTO frames (camera_id, run_id, frame_seq, captured_at,"), "{sql}");
    }
}
