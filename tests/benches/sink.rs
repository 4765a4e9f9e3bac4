//! Sink benchmark against the real broker and database (services running, release binaries built):
//!   cargo bench -p pipeline-tests --bench sink [-- MESSAGES]
//! Pre-fills a 4-partition topic with MESSAGES frame messages (3 people each, 17 keypoints), times
//! the sink draining it into PostgreSQL in each write mode, and in the same run times a raw
//! `psql \copy` of the same rows from files. Copy mode runs twice, with batches written as soon as
//! the writer is idle (the default) and with batches that wait to fill (`--write-when-idle
//! false`, the earlier default). The last lines:
//!   idle_rows_per_s=<f> waiting_rows_per_s=<f> idle_over_waiting=<f>
//!   sink_rows_per_s=<f> copy_rows_per_s=<f> ratio=<f>
//! for the default settings. Rows are frames + detections.
//!
//! Then the cost of what the store enforces (migration 4: the foreign key from `frames` to
//! `frame_keys`, the per-minute rollup written in the same transaction), in alternating rounds:
//! the default mode as built, the same without the foreign key, and (with BASELINE_BIN_DIR set to
//! a directory holding an older build's `sink`) that build on its own schema. The last line:
//!   fk_rows_per_s=<f> no_fk_rows_per_s=<f> fk_over_no_fk=<f> [baseline_rows_per_s=<f> current_over_baseline=<f>]

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Result};
use pipeline_tests::*;

const PERSONS: usize = 3;
const ROWS_PER_MESSAGE: u64 = 1 + PERSONS as u64;

#[tokio::main]
async fn main() -> Result<()> {
    let messages: u64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).map(|a| a.parse()).transpose()?.unwrap_or(50_000);
    let frames: Vec<wire::FrameMessage> = (0..messages).map(|s| synthetic_frame(&format!("cam-{}", s % 16), s / 16, PERSONS)).collect();
    let bytes: usize = frames.iter().map(|m| m.to_json().len()).sum();
    println!("messages={messages} rows={} payload_mb={:.1}", messages * ROWS_PER_MESSAGE, bytes as f64 / 1e6);

    let topic = unique("bench");
    create_topic(&topic, 4).await?;
    let t = Instant::now();
    produce(&topic, frames.iter().map(|m| (m.camera_id.as_str(), m.to_json())))?;
    println!("prefill_s={:.2}", t.elapsed().as_secs_f64());

    let mut rates = Vec::new();
    for (mode, idle) in [("unnest", "true"), ("staging", "true"), ("copy", "false"), ("copy", "true")] {
        let rate = drain(&topic, messages, mode, idle).await?;
        println!(
            "mode={mode} write_when_idle={idle} sink_rows_per_s={rate:.0} detection_rows_per_s={:.0}",
            rate * PERSONS as f64 / ROWS_PER_MESSAGE as f64
        );
        rates.push(rate);
    }
    let (waiting, idle) = (rates[2], rates[3]);
    let psql_rate = psql_copy(&frames).await?;
    println!("psql_copy_rows_per_s={psql_rate:.0}");
    println!("idle_rows_per_s={idle:.0} waiting_rows_per_s={waiting:.0} idle_over_waiting={:.2}", idle / waiting);
    println!("sink_rows_per_s={idle:.0} copy_rows_per_s={psql_rate:.0} ratio={:.2}", idle / psql_rate);

    let baseline = std::env::var_os("BASELINE_BIN_DIR");
    let current = std::env::var_os("PIPELINE_BIN_DIR");
    let (mut fk, mut no_fk, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..2 {
        if let Some(dir) = &baseline {
            std::env::set_var("PIPELINE_BIN_DIR", dir);
            base.push(drain_with(&topic, messages, &format!("round={round} build=baseline"), "").await?);
            match &current {
                Some(c) => std::env::set_var("PIPELINE_BIN_DIR", c),
                None => std::env::remove_var("PIPELINE_BIN_DIR"),
            }
        }
        fk.push(drain_with(&topic, messages, &format!("round={round} build=current foreign_key=true"), "").await?);
        let drop = "ALTER TABLE frames DROP CONSTRAINT frames_key_fkey";
        no_fk.push(drain_with(&topic, messages, &format!("round={round} build=current foreign_key=false"), drop).await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (fk, no_fk) = (mean(&fk), mean(&no_fk));
    let mut last = format!("fk_rows_per_s={fk:.0} no_fk_rows_per_s={no_fk:.0} fk_over_no_fk={:.3}", fk / no_fk);
    if !base.is_empty() {
        write!(last, " baseline_rows_per_s={:.0} current_over_baseline={:.3}", mean(&base), fk / mean(&base))?;
    }
    println!("{last}");
    Ok(())
}

/// Rows per second of one default sink draining the topic into a fresh database, after `sql` (if
/// any) ran on it.
async fn drain_with(topic: &str, messages: u64, label: &str, sql: &str) -> Result<f64> {
    let db = TestDb::create("bench").await?;
    migrate(&db.url)?;
    if !sql.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut db.connect().await?).await?;
    }
    let rate = drain_rate(&db.url, topic, messages, label, &[]).await? * ROWS_PER_MESSAGE as f64;
    println!("{label} sink_rows_per_s={rate:.0}");
    Ok(rate)
}

/// Rows per second of one sink draining the topic into a fresh database.
async fn drain(topic: &str, messages: u64, mode: &str, write_when_idle: &str) -> Result<f64> {
    let db = TestDb::create("bench").await?;
    migrate(&db.url)?;
    let label = format!("mode={mode} write_when_idle={write_when_idle}");
    let rate = drain_rate(&db.url, topic, messages, &label, &["--write-mode", mode, "--write-when-idle", write_when_idle]).await?;
    Ok(rate * ROWS_PER_MESSAGE as f64)
}

fn keypoints_literal(kps: &[[f32; 3]]) -> String {
    let inner: Vec<String> = kps.iter().map(|[x, y, s]| format!("{{{x},{y},{s}}}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Rows per second of `psql \copy` of the same rows into a fresh database with the same schema.
async fn psql_copy(frames: &[wire::FrameMessage]) -> Result<f64> {
    let db = TestDb::create("benchcopy").await?;
    migrate(&db.url)?;
    let dir = std::env::temp_dir().join(unique("benchcopy"));
    std::fs::create_dir_all(&dir)?;
    let (mut k, mut f, mut d) = (String::new(), String::new(), String::new());
    for (i, m) in frames.iter().enumerate() {
        let at = m.captured_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        writeln!(k, "{}\t{}\t{}\t{at}", m.camera_id, m.run_id, m.frame_seq)?;
        writeln!(
            f,
            "{}\t{}\t{}\t{at}\t{}\t{}\t{}\t{}\t{}\t{}\t0\t{i}",
            m.camera_id,
            m.run_id,
            m.frame_seq,
            m.pts_ms,
            m.frame_width,
            m.frame_height,
            m.detections.len(),
            m.model.name,
            m.model.sha256
        )?;
        for (j, det) in m.detections.iter().enumerate() {
            let b = det.bbox;
            writeln!(
                d,
                "{}\t{}\t{}\t{j}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{at}",
                m.camera_id,
                m.run_id,
                m.frame_seq,
                det.class,
                det.score,
                b.x1,
                b.y1,
                b.x2,
                b.y2,
                keypoints_literal(det.keypoints.as_ref().unwrap())
            )?;
        }
    }
    let (kp, fp, dp) = (dir.join("keys.tsv"), dir.join("frames.tsv"), dir.join("detections.tsv"));
    std::fs::write(&kp, k)?;
    std::fs::write(&fp, f)?;
    std::fs::write(&dp, d)?;
    let t = Instant::now();
    let out = Command::new("psql")
        .arg(&db.url)
        .args(["-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("\\copy frame_keys (camera_id, run_id, frame_seq, captured_at) FROM '{}'", kp.display()))
        .arg("-qc")
        .arg(format!("\\copy frames (camera_id, run_id, frame_seq, captured_at, pts_ms, frame_width, frame_height, person_count, model_name, model_sha256, kafka_partition, kafka_offset) FROM '{}'", fp.display()))
        .arg("-qc")
        .arg(format!("\\copy detections (camera_id, run_id, frame_seq, det_index, class, score, x1, y1, x2, y2, keypoints, captured_at) FROM '{}'", dp.display()))
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir)?;
    ensure!(out.status.success(), "psql \\copy failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(frames.len() as f64 * ROWS_PER_MESSAGE as f64 / secs)
}
