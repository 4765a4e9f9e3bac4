//! The sink's loop: consume -> validate -> batch -> write (one transaction) -> commit offsets.
//!
//! The write stage runs as its own task with at most one batch in flight: while the database
//! writes one batch, the next is consumed, validated and encoded, and Kafka commits stay in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::batch::Batch;
use crate::commit::commit;
use crate::config::RunArgs;
use crate::consume::{self, Consumed, GroupConsumer};
use crate::error::SinkError;
use crate::telemetry;
use crate::validate::{self, DeadLetters};
use crate::write::{write_part, Encoded, Part, WriteMode, Written};

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

/// A batch the writer has made durable.
struct Done {
    next_offsets: BTreeMap<i32, i64>,
    frames: usize,
    rows: usize,
    written: Written,
    took: Duration,
}

/// What every part's write needs besides its rows.
#[derive(Clone)]
struct WriteTarget {
    pool: PgPool,
    mode: WriteMode,
    group: String,
    topic: String,
}

/// The write stage: the parts of a batch are written in parallel, one connection and transaction
/// each. Retries a part while the database is away, saying so on the returned watch (so the
/// consumer can pause), and stops retrying once shutdown is asked. The batch is done when all its
/// parts are durable.
fn spawn_writer(
    target: WriteTarget,
    shutdown: watch::Receiver<bool>,
) -> (mpsc::Sender<Encoded>, mpsc::Receiver<Result<Done, SinkError>>, watch::Receiver<bool>) {
    let (batch_tx, mut batch_rx) = mpsc::channel::<Encoded>(1);
    let (done_tx, done_rx) = mpsc::channel(1);
    let (down_tx, down_rx) = watch::channel(false);
    let down_tx = std::sync::Arc::new(down_tx);
    tokio::spawn(async move {
        while let Some(enc) = batch_rx.recv().await {
            let t = Instant::now();
            let mut writes = tokio::task::JoinSet::new();
            for part in enc.parts {
                writes.spawn(write_with_retry(target.clone(), part, shutdown.clone(), down_tx.clone()));
            }
            let mut done = Ok(Done { next_offsets: BTreeMap::new(), frames: 0, rows: 0, written: Written::default(), took: Duration::ZERO });
            while let Some(joined) = writes.join_next().await {
                let part = joined.expect("a part's write does not panic");
                if let (Ok(d), Ok((batch, written))) = (&mut done, &part) {
                    d.next_offsets.extend(batch.next_offsets.iter().map(|(p, o)| (*p, *o)));
                    d.frames += batch.frames.len();
                    d.rows += batch.rows();
                    d.written += *written;
                }
                if let Err(e) = part {
                    done = Err(e);
                }
            }
            down_tx.send_if_modified(|down| std::mem::replace(down, false));
            let failed = done.is_err();
            let done = done.map(|d| Done { took: t.elapsed(), ..d });
            if done_tx.send(done).await.is_err() || failed {
                break;
            }
        }
    });
    (batch_tx, done_rx, down_rx)
}

async fn write_with_retry(
    target: WriteTarget,
    part: Part,
    mut shutdown: watch::Receiver<bool>,
    down: std::sync::Arc<watch::Sender<bool>>,
) -> Result<(crate::batch::Batch, Written), SinkError> {
    let mut backoff = Backoff::new();
    loop {
        match write_part(&target.pool, target.mode, &target.group, &target.topic, &part).await {
            Ok(w) => return Ok((part.batch, w)),
            Err(e) if e.retryable() && !*shutdown.borrow() => {
                down.send_if_modified(|down| !std::mem::replace(down, true));
                let delay = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => return Err(e),
        }
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
    consumer: GroupConsumer,
    dead_letters: DeadLetters,
    batch: Batch,
    totals: Totals,
    shutdown: watch::Receiver<bool>,
    to_writer: mpsc::Sender<Encoded>,
    from_writer: mpsc::Receiver<Result<Done, SinkError>>,
    in_flight: bool,
    paused: Option<TopicPartitionList>,
}

pub async fn run(args: &RunArgs, pool: &PgPool, shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
    let target = WriteTarget { pool: pool.clone(), mode: args.write_mode, group: args.group_id.clone(), topic: args.topic.clone() };
    let (to_writer, from_writer, mut db_down) = spawn_writer(target, shutdown.clone());
    let mut sink = Sink {
        args,
        consumer: consume::connect(args, pool)?,
        dead_letters: DeadLetters::connect(args)?,
        batch: Batch::default(),
        totals: Totals::default(),
        shutdown,
        to_writer,
        from_writer,
        in_flight: false,
        paused: None,
    };
    tracing::info!(topic = %args.topic, group = %args.group_id, dlq = %args.dead_letter_topic(), mode = ?args.write_mode, "sink started");
    let started = Instant::now();
    let report_every = Duration::from_secs(args.report_every_s);
    let mut next_report = Instant::now() + report_every;
    let batch_age = Duration::from_millis(args.batch_ms);
    let mut backoff = Backoff::new();
    let mut revoked = false;

    loop {
        let deadline = sink.batch.deadline(batch_age);
        let full = sink.batch.rows() >= args.batch_rows;
        let due = full || revoked || deadline.is_some_and(|d| Instant::now() >= d);
        if due && !sink.batch.is_empty() && !sink.in_flight {
            sink.send_batch().await;
            revoked = false;
            continue;
        }
        revoked &= !sink.batch.is_empty();
        // While a batch is in flight the next one grows up to the cap, then waits (backpressure),
        // except while paused: then the consumer is still polled, so the group keeps this member,
        // and stragglers join the batch.
        let capped = sink.batch.rows() >= args.batch_max_rows;
        let consume = !(capped && sink.in_flight) || sink.paused.is_some();
        tokio::select! {
            biased;
            _ = sink.shutdown.changed() => break,
            done = sink.from_writer.recv() => sink.on_done(done.expect("the writer outlives the loop")?),
            Ok(()) = db_down.changed() => {
                let down = *db_down.borrow_and_update();
                sink.set_paused(down)?;
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && !sink.in_flight => {}
            msg = consume::next(&sink.consumer), if consume => match msg {
                Ok(msg) => {
                    backoff = Backoff::new();
                    sink.handle(msg).await?;
                    // Partitions handed to another sink: write what we hold for them now.
                    revoked |= sink.consumer.context().take_revoked();
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

    // Shutdown: finish the batch in flight and the one being gathered, commit, leave the group.
    tracing::info!("shutting down: writing the last batches");
    sink.drain().await?;
    if !sink.batch.is_empty() {
        sink.send_batch().await;
        sink.drain().await?;
    }
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
                metrics::counter!(telemetry::DEAD_LETTERS).increment(1);
                self.batch.account(msg.partition, msg.offset);
            }
        }
        Ok(())
    }

    /// Encodes the batch here, beside the write in flight, and hands it to the writer.
    async fn send_batch(&mut self) {
        let enc = Encoded::new(std::mem::take(&mut self.batch), self.args.write_mode, self.args.writers);
        self.to_writer.send(enc).await.expect("the writer outlives the loop");
        self.in_flight = true;
    }

    /// Waits for the batch in flight, if any.
    async fn drain(&mut self) -> Result<(), SinkError> {
        if self.in_flight {
            let done = self.from_writer.recv().await.expect("the writer outlives the loop")?;
            self.on_done(done);
        }
        Ok(())
    }

    /// A batch is durable: now Kafka may learn its offsets. A failed commit only means a replay,
    /// which the stored offsets and natural keys absorb.
    fn on_done(&mut self, done: Done) {
        self.in_flight = false;
        let t = &mut self.totals;
        t.last_commit_ms = done.took.as_secs_f64() * 1e3;
        t.frames += done.written.frames;
        t.detections += done.written.detections;
        t.replayed += done.frames as u64 - done.written.frames;
        t.redone += done.written.redone;
        t.batches += 1;
        metrics::counter!(telemetry::FRAMES).increment(done.written.frames);
        metrics::counter!(telemetry::DETECTIONS).increment(done.written.detections);
        metrics::counter!(telemetry::REPLAYED).increment(done.frames as u64 - done.written.frames);
        metrics::counter!(telemetry::REDONE).increment(done.written.redone);
        metrics::counter!(telemetry::BATCHES).increment(1);
        metrics::histogram!(telemetry::BATCH_ROWS).record(done.rows as f64);
        metrics::histogram!(telemetry::BATCH_SECONDS).record(done.took.as_secs_f64());
        let mode = if *self.shutdown.borrow() { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = commit(&self.consumer, &self.args.topic, &done.next_offsets, mode) {
            tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored");
        }
        tracing::debug!(frames = done.frames, rows = done.rows, ms = t.last_commit_ms, "batch written");
    }

    /// Pauses every assigned partition while the database is away; resumes when it is back.
    fn set_paused(&mut self, down: bool) -> Result<(), SinkError> {
        match (down, self.paused.take()) {
            (true, None) => {
                let assignment = self.consumer.assignment()?;
                self.consumer.pause(&assignment)?;
                metrics::gauge!(telemetry::DATABASE_UP).set(0.0);
                tracing::warn!(partitions = assignment.count(), "database unavailable: partitions paused");
                self.paused = Some(assignment);
            }
            (false, Some(assignment)) => {
                self.consumer.resume(&assignment)?;
                metrics::gauge!(telemetry::DATABASE_UP).set(1.0);
                tracing::info!("database back: partitions resumed");
            }
            (_, still) => self.paused = still,
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
            avg_batch_frames = (t.frames + t.replayed).checked_div(t.batches).unwrap_or(0),
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
