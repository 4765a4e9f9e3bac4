//! Writes one batch in one transaction: frames, detections, and the next offsets it covers.
//!
//! The normal path is COPY straight into the tables. A key conflict (a detector re-sent frames it
//! had sent before) aborts that transaction; the batch is then redone through staging tables with
//! INSERT ... ON CONFLICT DO NOTHING, so the rows already there stay as they are and no row is
//! written twice. `--write-mode` selects the alternatives measured against it.

use std::fmt::Write as _;

use clap::ValueEnum;
use sqlx::{PgConnection, PgPool};

use crate::batch::Batch;
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
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub frames: u64,
    pub detections: u64,
    /// The COPY hit a key conflict and the batch went through staging.
    pub redone: bool,
}

const FRAME_COLUMNS: &str = "camera_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, \
                             person_count, model_name, model_sha256, kafka_partition, kafka_offset";
const DETECTION_COLUMNS: &str = "camera_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at";

/// A batch ready for the writer, with its COPY text already made (for the COPY and staging
/// modes), so that encoding overlaps the previous batch's write instead of adding to it.
pub struct Encoded {
    pub batch: Batch,
    copy_text: Option<(String, String)>,
}

impl Encoded {
    pub fn new(batch: Batch, mode: WriteMode) -> Self {
        let copy_text = (mode != WriteMode::Unnest).then(|| (frames_text(&batch), detections_text(&batch)));
        Encoded { batch, copy_text }
    }

    fn copy_text(&self) -> (&str, &str) {
        let (frames, detections) = self.copy_text.as_ref().expect("COPY text is made for the copy and staging modes");
        (frames, detections)
    }
}

pub async fn write_batch(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, enc: &Encoded) -> Result<Written, SinkError> {
    match write_in_transaction(pool, mode, group, topic, enc).await {
        Err(e) if mode == WriteMode::Copy && is_unique_violation(&e) => {
            tracing::debug!("key conflict in COPY; redoing the batch through staging");
            let w = write_in_transaction(pool, WriteMode::Staging, group, topic, enc).await?;
            Ok(Written { redone: true, ..w })
        }
        other => other,
    }
}

fn is_unique_violation(e: &SinkError) -> bool {
    matches!(e, SinkError::Database(db) if db.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23505")))
}

async fn write_in_transaction(pool: &PgPool, mode: WriteMode, group: &str, topic: &str, enc: &Encoded) -> Result<Written, SinkError> {
    let mut tx = pool.begin().await?;
    let (frames, detections) = match mode {
        WriteMode::Copy => {
            let (frames, detections) = enc.copy_text();
            (
                copy(&mut tx, &format!("COPY frames ({FRAME_COLUMNS}) FROM STDIN"), frames).await?,
                copy(&mut tx, &format!("COPY detections ({DETECTION_COLUMNS}) FROM STDIN"), detections).await?,
            )
        }
        WriteMode::Staging => stage(&mut tx, enc.copy_text()).await?,
        WriteMode::Unnest => unnest(&mut tx, &enc.batch).await?,
    };
    store_offsets(&mut tx, group, topic, &enc.batch).await?;
    tx.commit().await?;
    Ok(Written { frames, detections, redone: false })
}

async fn copy(conn: &mut PgConnection, statement: &str, data: &str) -> Result<u64, SinkError> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data.as_bytes()).await?;
    Ok(copy.finish().await?)
}

async fn stage(conn: &mut PgConnection, (frames_text, detections_text): (&str, &str)) -> Result<(u64, u64), SinkError> {
    // Per-connection temporary tables, emptied at every commit.
    for create in [
        "CREATE TEMP TABLE IF NOT EXISTS frames_stage (LIKE frames INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
        "CREATE TEMP TABLE IF NOT EXISTS detections_stage (LIKE detections INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    ] {
        sqlx::query(create).execute(&mut *conn).await?;
    }
    copy(conn, &format!("COPY frames_stage ({FRAME_COLUMNS}) FROM STDIN"), frames_text).await?;
    copy(conn, &format!("COPY detections_stage ({DETECTION_COLUMNS}) FROM STDIN"), detections_text).await?;
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

/// Appends a value in COPY's text format: backslash, tab, newline and carriage return escaped.
fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A 2-D real[] literal: `{{x,y,s},{x,y,s}}`.
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

fn captured_at(m: &wire::FrameMessage) -> String {
    m.captured_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn frames_text(batch: &Batch) -> String {
    let mut out = String::with_capacity(batch.frames.len() * 128);
    for row in &batch.frames {
        let m = &row.msg;
        let people = m.detections.iter().filter(|d| d.class == "person").count();
        push_text(&mut out, &m.camera_id);
        let _ = write!(out, "\t{}\t{}\t{}\t{}\t{}\t{people}\t", m.frame_seq, captured_at(m), m.pts_ms, m.frame_width, m.frame_height);
        push_text(&mut out, &m.model.name);
        out.push('\t');
        push_text(&mut out, &m.model.sha256);
        let _ = writeln!(out, "\t{}\t{}", row.partition, row.offset);
    }
    out
}

fn detections_text(batch: &Batch) -> String {
    let mut out = String::with_capacity(batch.detections() * 160);
    for row in &batch.frames {
        let m = &row.msg;
        let at = captured_at(m);
        for (i, d) in m.detections.iter().enumerate() {
            push_text(&mut out, &m.camera_id);
            let _ = write!(out, "\t{}\t{i}\t", m.frame_seq);
            push_text(&mut out, &d.class);
            // f32's Display is the shortest text that parses back to the same value.
            let _ = write!(out, "\t{}\t{}\t{}\t{}\t{}\t", d.score, d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2);
            match &d.keypoints {
                Some(k) => push_keypoints(&mut out, k),
                None => out.push_str("\\N"),
            }
            let _ = writeln!(out, "\t{at}");
        }
    }
    out
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
    .bind(frames().map(|m| m.detections.iter().filter(|d| d.class == "person").count() as i32).collect::<Vec<_>>())
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
    fn copy_text_escapes_and_nulls() {
        let mut s = String::new();
        push_text(&mut s, "a\tb\\c\nd\re");
        assert_eq!(s, "a\\tb\\\\c\\nd\\re");

        let mut batch = Batch::default();
        let msg = wire::FrameMessage {
            schema_version: 1,
            camera_id: "cam\t1".into(),
            frame_seq: 5,
            captured_at: chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123Z").unwrap().into(),
            pts_ms: 500,
            frame_width: 640,
            frame_height: 480,
            model: wire::ModelInfo { name: "m".into(), sha256: "0123abcd".into() },
            detections: vec![wire::Detection {
                class: "person".into(),
                score: 0.1,
                bbox: wire::BBox { x1: 1.5, y1: 2.0, x2: 3.25, y2: 4.0 },
                keypoints: None,
            }],
        };
        batch.push(msg, 2, 41);
        assert_eq!(frames_text(&batch), "cam\\t1\t5\t2026-11-22T10:00:00.123000Z\t500\t640\t480\t1\tm\t0123abcd\t2\t41\n");
        assert_eq!(detections_text(&batch), "cam\\t1\t5\t0\tperson\t0.1\t1.5\t2\t3.25\t4\t\\N\t2026-11-22T10:00:00.123000Z\n");
        let mut k = String::new();
        push_keypoints(&mut k, &[[1.5, 2.0, 0.25], [3.0, 4.125, 1.0]]);
        assert_eq!(k, "{{1.5,2,0.25},{3,4.125,1}}");
    }
}
