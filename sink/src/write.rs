//! Writes one batch in one transaction: frames, detections, and the next offsets it covers.
//!
//! The normal path is COPY straight into the tables. A key conflict (a detector re-sent frames it
//! had sent before) aborts that transaction; the batch is then redone through staging tables with
//! INSERT ... ON CONFLICT DO NOTHING, so the rows already there stay as they are and no row is
//! written twice. `--write-mode` selects the alternatives measured against it.

use std::fmt::Write as _;

use clap::ValueEnum;
use sqlx::{PgConnection, PgPool};

mod binary;

use crate::batch::Batch;
use binary::CopyBinary;
use crate::error::SinkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    /// COPY into the tables; on a key conflict, redo the batch through staging (default).
    Copy,
    /// Always COPY into staging tables, then INSERT ... ON CONFLICT DO NOTHING.
    Staging,
    /// Multi-row INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT DO NOTHING.
    Unnest,
}

/// What a write changed. Rows that were already present (a re-sent frame) are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Written {
    pub frames: u64,
    pub detections: u64,
    /// Parts whose COPY hit a key conflict and went through staging.
    pub redone: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.frames += other.frames;
        self.detections += other.detections;
        self.redone += other.redone;
    }
}

const FRAME_COLUMNS: &str = "camera_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, \
                             person_count, model_name, model_sha256, kafka_partition, kafka_offset";
const DETECTION_COLUMNS: &str = "camera_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at";

/// A batch ready for the writer: split into parts of whole partitions that are written in
/// parallel transactions (one connection each), with their binary COPY data already made (for the
/// COPY and staging modes), so that encoding overlaps the previous batch's write.
pub struct Encoded {
    pub parts: Vec<Part>,
}

pub struct Part {
    pub batch: Batch,
    copy_data: Option<CopyData>,
}

/// COPY streams for the two tables; `None` when the part has no row for that table.
struct CopyData {
    frames: Option<Vec<u8>>,
    detections: Option<Vec<u8>>,
}

impl Encoded {
    pub fn new(batch: Batch, mode: WriteMode, writers: usize) -> Self {
        let parts = batch
            .split(writers)
            .into_iter()
            .map(|batch| {
                let copy_data = (mode != WriteMode::Unnest)
                    .then(|| CopyData { frames: frames_copy(&batch), detections: detections_copy(&batch) });
                Part { batch, copy_data }
            })
            .collect();
        Encoded { parts }
    }
}

impl Part {
    fn copy_data(&self) -> &CopyData {
        self.copy_data.as_ref().expect("COPY data is made for the copy and staging modes")
    }
}

/// Writes one part in one transaction with its partitions' next offsets.
pub async fn write_part(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, part: &Part) -> Result<Written, SinkError> {
    match write_in_transaction(pool, mode, group, topic, part).await {
        Err(e) if mode == WriteMode::Copy && is_unique_violation(&e) => {
            tracing::debug!("key conflict in COPY; redoing the batch through staging");
            let w = write_in_transaction(pool, WriteMode::Staging, group, topic, part).await?;
            Ok(Written { redone: 1, ..w })
        }
        other => other,
    }
}

fn is_unique_violation(e: &SinkError) -> bool {
    matches!(e, SinkError::Database(db) if db.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23505")))
}

async fn write_in_transaction(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, part: &Part) -> Result<Written, SinkError> {
    let mut tx = pool.begin().await?;
    let (frames, detections) = match mode {
        WriteMode::Copy => {
            let data = part.copy_data();
            (copy(&mut tx, "frames", FRAME_COLUMNS, &data.frames).await?, copy(&mut tx, "detections", DETECTION_COLUMNS, &data.detections).await?)
        }
        WriteMode::Staging => stage(&mut tx, part.copy_data()).await?,
        WriteMode::Unnest => unnest(&mut tx, &part.batch).await?,
    };
    store_offsets(&mut tx, group, topic, &part.batch).await?;
    tx.commit().await?;
    Ok(Written { frames, detections, redone: 0 })
}

async fn copy(conn: &mut PgConnection, table: &str, columns: &str, data: &Option<Vec<u8>>) -> Result<u64, SinkError> {
    let Some(data) = data else { return Ok(0) };
    let mut copy = conn.copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)")).await?;
    copy.send(data.as_slice()).await?;
    Ok(copy.finish().await?)
}

async fn stage(conn: &mut PgConnection, data: &CopyData) -> Result<(u64, u64), SinkError> {
    // Per-connection temporary tables, emptied at every commit.
    for create in [
        "CREATE TEMP TABLE IF NOT EXISTS frames_stage (LIKE frames INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        "CREATE TEMP TABLE IF NOT EXISTS detections_stage (LIKE detections INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    ] {
        sqlx::query(create).execute(&mut *conn).await?;
    }
    copy(conn, "frames_stage", FRAME_COLUMNS, &data.frames).await?;
    copy(conn, "detections_stage", DETECTION_COLUMNS, &data.detections).await?;
    let frames = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO frames ({FRAME_COLUMNS}) SELECT {FRAME_COLUMNS} FROM frames_stage ON CONFLICT DO NOTHING"
    )))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let detections = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO detections ({DETECTION_COLUMNS}) SELECT {DETECTION_COLUMNS} FROM detections_stage ON CONFLICT DO NOTHING"
    )))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((frames, detections))
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

/// A 2-D real[] literal for the UNNEST mode: `{{x,y,s},{x,y,s}}`.
fn push_keypoints(out: &mut String, kps: &[[f32; 3]]) {
    out.push('{');
    for (i, [x, y, s]) in kps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{{x},{y},{s}}}");
    }
    out.push('}');
}

fn person_count(m: &wire::FrameMessage) -> usize {
    m.detections.iter().filter(|d| d.class == "person").count()
}

// Validation bounds frame_seq and the frame size to PostgreSQL's bigint and integer, so the casts
// below cannot wrap.
fn frames_copy(batch: &Batch) -> Option<Vec<u8>> {
    let mut c = CopyBinary::with_capacity(batch.frames.len() * 160);
    for row in &batch.frames {
        let m = &row.msg;
        c.row(11);
        c.text(&m.camera_id);
        c.int8(m.frame_seq as i64);
        c.timestamptz(&m.captured_at);
        c.int8(m.pts_ms);
        c.int4(m.frame_width as i32);
        c.int4(m.frame_height as i32);
        c.int4(person_count(m) as i32);
        c.text(&m.model.name);
        c.text(&m.model.sha256);
        c.int4(row.partition);
        c.int8(row.offset);
    }
    c.finish()
}

fn detections_copy(batch: &Batch) -> Option<Vec<u8>> {
    let mut c = CopyBinary::with_capacity(batch.detections() * 340);
    for row in &batch.frames {
        let m = &row.msg;
        for (i, d) in m.detections.iter().enumerate() {
            c.row(11);
            c.text(&m.camera_id);
            c.int8(m.frame_seq as i64);
            c.int4(i as i32);
            c.text(&d.class);
            for v in [d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2] {
                c.float4(v);
            }
            match &d.keypoints {
                Some(k) => c.float4_rows(k),
                None => c.null(),
            }
            c.timestamptz(&m.captured_at);
        }
    }
    c.finish()
}

/// The array-binding alternative: every column as one array parameter.
async fn unnest(conn: &mut PgConnection, batch: &Batch) -> Result<(u64, u64), SinkError> {
    let frames = || batch.frames.iter().map(|r| &r.msg);
    let dets = || frames().flat_map(|m| m.detections.iter().enumerate().map(move |(i, d)| (m, i, d)));
    let f = sqlx::query(
        "INSERT INTO frames (camera_id, frame_seq, captured_at, pts_ms, frame_width, frame_height,
                             person_count, model_name, model_sha256, kafka_partition, kafka_offset)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[], $4::bigint[], $5::int[],
                              $6::int[], $7::int[], $8::text[], $9::text[], $10::int[], $11::bigint[])
         ON CONFLICT (camera_id, frame_seq) DO NOTHING",
    )
    .bind(frames().map(|m| m.camera_id.as_str()).collect::<Vec<_>>())
    .bind(frames().map(|m| m.frame_seq as i64).collect::<Vec<_>>())
    .bind(frames().map(|m| m.captured_at).collect::<Vec<_>>())
    .bind(frames().map(|m| m.pts_ms).collect::<Vec<_>>())
    .bind(frames().map(|m| m.frame_width as i32).collect::<Vec<_>>())
    .bind(frames().map(|m| m.frame_height as i32).collect::<Vec<_>>())
    .bind(frames().map(|m| person_count(m) as i32).collect::<Vec<_>>())
    .bind(frames().map(|m| m.model.name.as_str()).collect::<Vec<_>>())
    .bind(frames().map(|m| m.model.sha256.as_str()).collect::<Vec<_>>())
    .bind(batch.frames.iter().map(|r| r.partition).collect::<Vec<_>>())
    .bind(batch.frames.iter().map(|r| r.offset).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let d = sqlx::query(
        "INSERT INTO detections (camera_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at)
         SELECT c, s, i, cl, sc, a, b, e, f, k::real[], t
         FROM UNNEST($1::text[], $2::bigint[], $3::int[], $4::text[], $5::real[], $6::real[], $7::real[],
                     $8::real[], $9::real[], $10::text[], $11::timestamptz[]) AS u(c, s, i, cl, sc, a, b, e, f, k, t)
         ON CONFLICT (camera_id, frame_seq, det_index) DO NOTHING",
    )
    .bind(dets().map(|(m, _, _)| m.camera_id.as_str()).collect::<Vec<_>>())
    .bind(dets().map(|(m, _, _)| m.frame_seq as i64).collect::<Vec<_>>())
    .bind(dets().map(|(_, i, _)| i as i32).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.class.as_str()).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.score).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.bbox.x1).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.bbox.y1).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.bbox.x2).collect::<Vec<_>>())
    .bind(dets().map(|(_, _, d)| d.bbox.y2).collect::<Vec<_>>())
    .bind(
        dets()
            .map(|(_, _, d)| {
                d.keypoints.as_ref().map(|k| {
                    let mut s = String::new();
                    push_keypoints(&mut s, k);
                    s
                })
            })
            .collect::<Vec<_>>(),
    )
    .bind(dets().map(|(m, _, _)| m.captured_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((f, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypoint_literals_and_counts() {
        let mut k = String::new();
        push_keypoints(&mut k, &[[1.5, 2.0, 0.25], [3.0, 4.125, 1.0]]);
        assert_eq!(k, "{{1.5,2,0.25},{3,4.125,1}}");

        let mut batch = Batch::default();
        assert!(frames_copy(&batch).is_none() && detections_copy(&batch).is_none());
        let msg = wire::FrameMessage {
            schema_version: 1,
            camera_id: "cam".into(),
            frame_seq: 5,
            captured_at: chrono::Utc::now(),
            pts_ms: 500,
            frame_width: 640,
            frame_height: 480,
            model: wire::ModelInfo { name: "m".into(), sha256: "0123abcd".into() },
            detections: vec![],
        };
        batch.push(msg, 2, 41);
        // A frame with nobody in it is a frames row and no detections stream at all.
        assert!(frames_copy(&batch).is_some() && detections_copy(&batch).is_none());
    }
}
