//! Writes one batch in one transaction: frames, detections, and the next offsets it covers.
//! Natural keys with ON CONFLICT DO NOTHING make a replayed message harmless.

use sqlx::PgPool;

use crate::batch::Batch;
use crate::error::SinkError;

/// What a write changed; rows already present (a replay) are not counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub frames: u64,
    pub detections: u64,
}

pub async fn write_batch(pool: &PgPool, group: &str, topic: &str, batch: &Batch) -> Result<Written, SinkError> {
    let n = batch.frames.len();
    let mut f_camera = Vec::with_capacity(n);
    let mut f_seq = Vec::with_capacity(n);
    let mut f_at = Vec::with_capacity(n);
    let mut f_pts = Vec::with_capacity(n);
    let mut f_w = Vec::with_capacity(n);
    let mut f_h = Vec::with_capacity(n);
    let mut f_people = Vec::with_capacity(n);
    let mut f_model = Vec::with_capacity(n);
    let mut f_sha = Vec::with_capacity(n);
    let mut f_part = Vec::with_capacity(n);
    let mut f_off = Vec::with_capacity(n);
    let d = batch.detections();
    let mut d_camera = Vec::with_capacity(d);
    let mut d_seq = Vec::with_capacity(d);
    let mut d_idx = Vec::with_capacity(d);
    let mut d_class = Vec::with_capacity(d);
    let mut d_score = Vec::with_capacity(d);
    let (mut x1, mut y1, mut x2, mut y2) =
        (Vec::with_capacity(d), Vec::with_capacity(d), Vec::with_capacity(d), Vec::with_capacity(d));
    let mut d_kps: Vec<Option<String>> = Vec::with_capacity(d);
    let mut d_at = Vec::with_capacity(d);

    for row in &batch.frames {
        let m = &row.msg;
        let seq = m.frame_seq as i64;
        f_camera.push(m.camera_id.as_str());
        f_seq.push(seq);
        f_at.push(m.captured_at);
        f_pts.push(m.pts_ms);
        f_w.push(m.frame_width as i32);
        f_h.push(m.frame_height as i32);
        f_people.push(m.detections.iter().filter(|d| d.class == "person").count() as i32);
        f_model.push(m.model.name.as_str());
        f_sha.push(m.model.sha256.as_str());
        f_part.push(row.partition);
        f_off.push(row.offset);
        for (i, det) in m.detections.iter().enumerate() {
            d_camera.push(m.camera_id.as_str());
            d_seq.push(seq);
            d_idx.push(i as i32);
            d_class.push(det.class.as_str());
            d_score.push(det.score);
            x1.push(det.bbox.x1);
            y1.push(det.bbox.y1);
            x2.push(det.bbox.x2);
            y2.push(det.bbox.y2);
            d_kps.push(det.keypoints.as_ref().map(|k| serde_json::to_string(k).expect("keypoints serialize")));
            d_at.push(m.captured_at);
        }
    }
    let (parts, next): (Vec<i32>, Vec<i64>) = batch.next_offsets.iter().map(|(p, o)| (*p, *o)).unzip();

    let mut tx = pool.begin().await?;
    let frames = sqlx::query(
        "INSERT INTO frames (camera_id, frame_seq, captured_at, pts_ms, frame_width, frame_height,
                             person_count, model_name, model_sha256, kafka_partition, kafka_offset)
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[], $4::bigint[], $5::int[],
                              $6::int[], $7::int[], $8::text[], $9::text[], $10::int[], $11::bigint[])
         ON CONFLICT (camera_id, frame_seq) DO NOTHING",
    )
    .bind(&f_camera)
    .bind(&f_seq)
    .bind(&f_at)
    .bind(&f_pts)
    .bind(&f_w)
    .bind(&f_h)
    .bind(&f_people)
    .bind(&f_model)
    .bind(&f_sha)
    .bind(&f_part)
    .bind(&f_off)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let detections = sqlx::query(
        "INSERT INTO detections (camera_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at)
         SELECT c, s, i, cl, sc, a, b, e, f, k::jsonb, t
         FROM UNNEST($1::text[], $2::bigint[], $3::int[], $4::text[], $5::real[], $6::real[], $7::real[],
                     $8::real[], $9::real[], $10::text[], $11::timestamptz[]) AS u(c, s, i, cl, sc, a, b, e, f, k, t)
         ON CONFLICT (camera_id, frame_seq, det_index) DO NOTHING",
    )
    .bind(&d_camera)
    .bind(&d_seq)
    .bind(&d_idx)
    .bind(&d_class)
    .bind(&d_score)
    .bind(&x1)
    .bind(&y1)
    .bind(&x2)
    .bind(&y2)
    .bind(&d_kps)
    .bind(&d_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
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
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Written { frames, detections })
}
