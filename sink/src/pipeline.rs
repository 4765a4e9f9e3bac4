//! The sink's loop: consume -> validate -> batch -> write (one transaction) -> commit offsets.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::batch::Batch;
use crate::commit::commit;
use crate::config::RunArgs;
use crate::consume::{self, Consumed, GroupConsumer};
use crate::error::SinkError;
use crate::validate::{self, DeadLetters};
use crate::write::write_batch;

/// Exponential backoff from 100 ms, doubling to 10 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Backoff(Self::FIRST)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
}

#[derive(Default)]
struct Totals {
    frames: u64,
    detections: u64,
    replayed: u64,
    dead_letters: u64,
    batches: u64,
    redone: u64,
    last_commit_ms: f64,
}

struct Sink<'a> {
    args: &'a RunArgs,
    pool: &'a PgPool,
    consumer: GroupConsumer,
    dead_letters: DeadLetters,
    batch: Batch,
    totals: Totals,
    shutdown: watch::Receiver<bool>,
}

pub async fn run(args: &RunArgs, pool: &PgPool, shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
    let mut sink = Sink {
        args,
        pool,
        consumer: consume::connect(args, pool)?,
        dead_letters: DeadLetters::connect(args)?,
        batch: Batch::default(),
        totals: Totals::default(),
        shutdown,
    };
    tracing::info!(topic = %args.topic, group = %args.group_id, dlq = %args.dead_letter_topic(), mode = ?args.write_mode, "sink started");
    let started = Instant::now();
    let report_every = Duration::from_secs(args.report_every_s);
    let mut next_report = Instant::now() + report_every;
    let batch_age = Duration::from_millis(args.batch_ms);
    let mut backoff = Backoff::new();

    loop {
        let deadline = sink.batch.deadline(batch_age);
        tokio::select! {
            _ = sink.shutdown.changed() => break,
            _ = sleep_until_opt(deadline), if deadline.is_some() => sink.flush().await?,
            msg = consume::next(&sink.consumer) => match msg {
                Ok(msg) => {
                    backoff = Backoff::new();
                    sink.handle(msg).await?;
                    // Partitions handed to another sink: write what we hold for them now.
                    if sink.batch.rows() >= args.batch_rows || sink.consumer.context().take_revoked() {
                        sink.flush().await?;
                    }
                }
                Err(e) => {
                    let delay = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "kafka consume error");
                    tokio::time::sleep(delay).await;
                }
            },
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + report_every;
            sink.report(started.elapsed());
        }
    }

    // Shutdown: finish the batch, commit synchronously, leave the group.
    tracing::info!("shutting down: writing the last batch");
    sink.flush().await?;
    sink.consumer.unsubscribe();
    sink.report(started.elapsed());
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

impl Sink<'_> {
    /// Validates one message into the batch, or sends it to the dead-letter topic.
    async fn handle(&mut self, msg: Consumed) -> Result<(), SinkError> {
        match validate::check(msg.payload.as_deref()) {
            Ok(frame) => self.batch.push(frame, msg.partition, msg.offset),
            Err(reason) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, %reason, "invalid message to dead-letter topic");
                let mut backoff = Backoff::new();
                loop {
                    match self.dead_letters.send(&msg, &reason).await {
                        Ok(()) => break,
                        Err(e) if e.retryable() && !*self.shutdown.borrow() => {
                            let delay = backoff.next();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "dead-letter send failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.totals.dead_letters += 1;
                self.batch.account(msg.partition, msg.offset);
            }
        }
        Ok(())
    }

    /// Writes the batch in one transaction, then commits its offsets to Kafka. While the database
    /// is away the partitions are paused (the consumer is still polled, so the group keeps this
    /// member) and the write is retried with backoff; nothing is committed meanwhile.
    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let mut backoff = Backoff::new();
        let mut paused = None;
        let mut held = Vec::new();
        let written = loop {
            match write_batch(self.pool, self.args.write_mode, &self.args.group_id, &self.args.topic, &self.batch).await {
                Ok(w) => break w,
                Err(e) if e.retryable() && !*self.shutdown.borrow() => {
                    if paused.is_none() {
                        let assignment = self.consumer.assignment()?;
                        self.consumer.pause(&assignment)?;
                        tracing::warn!(partitions = assignment.count(), "database unavailable: partitions paused");
                        paused = Some(assignment);
                    }
                    let delay = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = self.shutdown.changed() => break,
                            // Fetched before the pause: keep in order, handle after this batch.
                            Ok(m) = consume::next(&self.consumer) => held.push(m),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        };
        self.totals.last_commit_ms = t.elapsed().as_secs_f64() * 1e3;
        self.totals.frames += written.frames;
        self.totals.detections += written.detections;
        self.totals.replayed += self.batch.frames.len() as u64 - written.frames;
        self.totals.redone += u64::from(written.redone);
        self.totals.batches += 1;
        // The rows are durable: now Kafka may learn the offsets. A failure here only means a
        // replay, which the stored offsets and natural keys absorb.
        let mode = if *self.shutdown.borrow() { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = commit(&self.consumer, &self.args.topic, &self.batch.next_offsets, mode) {
            tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored");
        }
        tracing::debug!(frames = self.batch.frames.len(), rows = self.batch.rows(), ms = self.totals.last_commit_ms, "batch written");
        self.batch = Batch::default();
        if let Some(assignment) = paused {
            self.consumer.resume(&assignment)?;
            tracing::info!("database back: partitions resumed");
        }
        for m in held {
            self.handle(m).await?;
        }
        Ok(())
    }

    fn report(&self, elapsed: Duration) {
        let t = &self.totals;
        let secs = elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            frames = t.frames,
            detections = t.detections,
            replayed = t.replayed,
            dead_letters = t.dead_letters,
            batches = t.batches,
            redone_through_staging = t.redone,
            avg_batch_frames = if t.batches > 0 { (t.frames + t.replayed) / t.batches } else { 0 },
            rows_per_s = format!("{:.0}", (t.frames + t.detections) as f64 / secs),
            last_commit_ms = format!("{:.1}", t.last_commit_ms),
            "progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new();
        let seen: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }
}
