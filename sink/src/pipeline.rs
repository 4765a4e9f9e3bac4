//! The sink's loop: consume -> validate -> batch -> write (one transaction) -> commit offsets.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::batch::Batch;
use crate::commit::commit;
use crate::config::RunArgs;
use crate::consume::{self, GroupConsumer};
use crate::error::SinkError;
use crate::validate::{self, DeadLetters};
use crate::write::{write_batch, Written};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Totals {
    frames: u64,
    detections: u64,
    replayed: u64,
    dead_letters: u64,
    batches: u64,
    last_commit_ms: f64,
}

pub async fn run(args: &RunArgs, pool: &PgPool, mut shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
    let consumer = consume::connect(args)?;
    let dead_letters = DeadLetters::connect(args)?;
    let batch_age = Duration::from_millis(args.batch_ms);
    let mut batch = Batch::default();
    let mut totals = Totals::default();
    let mut backoff = Duration::from_millis(100);
    let started = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(args.report_every_s);
    tracing::info!(topic = %args.topic, group = %args.group_id, dlq = %args.dead_letter_topic(), "sink started");

    loop {
        let deadline = batch.deadline(batch_age);
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                flush(args, pool, &consumer, &mut batch, &mut totals, &mut shutdown).await?;
            }
            msg = consume::next(&consumer) => match msg {
                Ok(msg) => {
                    backoff = Duration::from_millis(100);
                    match validate::check(msg.payload.as_deref()) {
                        Ok(frame) => batch.push(frame, msg.partition, msg.offset),
                        Err(reason) => {
                            tracing::warn!(partition = msg.partition, offset = msg.offset, %reason, "invalid message to dead-letter topic");
                            retry(&mut shutdown, "dead-letter send", || dead_letters.send(&msg, &reason)).await?;
                            totals.dead_letters += 1;
                            batch.account(msg.partition, msg.offset);
                        }
                    }
                    if batch.rows() >= args.batch_rows {
                        flush(args, pool, &consumer, &mut batch, &mut totals, &mut shutdown).await?;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "kafka consume error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(args.report_every_s);
            report(&totals, started.elapsed());
        }
    }

    // Shutdown: finish the batch, commit synchronously, leave the group.
    tracing::info!("shutting down: writing the last batch");
    flush(args, pool, &consumer, &mut batch, &mut totals, &mut shutdown).await?;
    consumer.unsubscribe();
    report(&totals, started.elapsed());
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Writes the batch (retrying while the database is away), then commits its offsets to Kafka.
async fn flush(
    args: &RunArgs,
    pool: &PgPool,
    consumer: &GroupConsumer,
    batch: &mut Batch,
    totals: &mut Totals,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SinkError> {
    if batch.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    let written: Written = retry(shutdown, "database write", || write_batch(pool, &args.group_id, &args.topic, batch)).await?;
    totals.last_commit_ms = t.elapsed().as_secs_f64() * 1e3;
    totals.frames += written.frames;
    totals.detections += written.detections;
    totals.replayed += batch.frames.len() as u64 - written.frames;
    totals.batches += 1;
    // The rows are durable: now Kafka may learn the offsets. A failure here only means a replay,
    // which the natural keys absorb.
    let mode = if *shutdown.borrow() { CommitMode::Sync } else { CommitMode::Async };
    if let Err(e) = commit(consumer, &args.topic, &batch.next_offsets, mode) {
        tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored, a replay would be absorbed");
    }
    tracing::debug!(frames = batch.frames.len(), rows = batch.rows(), ms = totals.last_commit_ms, "batch written");
    *batch = Batch::default();
    Ok(())
}

/// Retries `op` with exponential backoff while its error is retryable and no shutdown is asked.
async fn retry<T, F, Fut>(shutdown: &mut watch::Receiver<bool>, what: &str, mut op: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && !*shutdown.borrow() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

fn report(t: &Totals, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    tracing::info!(
        frames = t.frames,
        detections = t.detections,
        replayed = t.replayed,
        dead_letters = t.dead_letters,
        batches = t.batches,
        avg_batch_frames = if t.batches > 0 { (t.frames + t.replayed) / t.batches } else { 0 },
        rows_per_s = format!("{:.0}", (t.frames + t.detections) as f64 / secs),
        last_commit_ms = format!("{:.1}", t.last_commit_ms),
        "progress"
    );
}

