//! The sink's loop: consume -> validate -> batch -> write (one transaction) -> commit offsets.
//!
//! The write stage runs as its own task with at most one batch in flight: while the database
//! writes one batch, the next is consumed, validated and encoded, and Kafka commits stay in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
use crate::validate::{DeadLetters, Validator, Verdict};
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
            let mut done = Ok(Done { next_offsets: BTreeMap::new(), rows: 0, written: Written::default(), took: Duration::ZERO });
            while let Some(joined) = writes.join_next().await {
                match (&mut done, joined.expect("a part's write does not panic")) {
                    (Ok(d), Ok((batch, written))) => {
                        d.next_offsets.extend(batch.next_offsets.iter().map(|(p, o)| (*p, *o)));
                        d.rows += batch.rows();
                        d.written += written;
                    }
                    (_, Err(e)) => done = Err(e),
                    (Err(_), Ok(_)) => {}
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
    conflicts: u64,
    dead_letters: u64,
    batches: u64,
    redone: u64,
    last_commit_ms: f64,
}

struct Sink<'a> {
    args: &'a RunArgs,
    consumer: GroupConsumer,
    validator: Validator,
    dead_letters: DeadLetters,
    batch: Batch,
    totals: Totals,
    shutdown: watch::Receiver<bool>,
    to_writer: mpsc::Sender<Encoded>,
    from_writer: mpsc::Receiver<Result<Done, SinkError>>,
    in_flight: bool,
    pauses: Pauses,
    /// Messages held while the schema registry cannot be asked, in order per partition.
    held: BTreeMap<i32, VecDeque<Consumed>>,
    /// When to ask the registry again, and how long to wait after that.
    registry_retry: Option<(Instant, Backoff)>,
}

/// Why partitions are paused, and which are. Consumption stops for a partition while the database
/// is away (all of them) or while its next message waits for the schema registry; the consumer
/// is still polled, so the group keeps this member.
#[derive(Default)]
struct Pauses {
    database_down: bool,
    /// Partitions paused now.
    paused: BTreeSet<i32>,
}

/// The partitions to pause: all assigned ones while the database is away, else those whose next
/// message waits for the registry.
fn to_pause(assigned: &BTreeSet<i32>, database_down: bool, held: &BTreeSet<i32>) -> BTreeSet<i32> {
    if database_down {
        assigned.clone()
    } else {
        assigned.intersection(held).copied().collect()
    }
}

pub async fn run(args: &RunArgs, pool: &PgPool, shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
    let target = WriteTarget { pool: pool.clone(), mode: args.write_mode, group: args.group_id.clone(), topic: args.topic.clone() };
    let (to_writer, from_writer, mut db_down) = spawn_writer(target, shutdown.clone());
    let mut sink = Sink {
        args,
        consumer: consume::connect(args, pool)?,
        validator: Validator::new(args.registry()?),
        dead_letters: DeadLetters::connect(args)?,
        batch: Batch::default(),
        totals: Totals::default(),
        shutdown,
        to_writer,
        from_writer,
        in_flight: false,
        pauses: Pauses::default(),
        held: BTreeMap::new(),
        registry_retry: None,
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
        let consume = !(capped && sink.in_flight) || sink.pauses.database_down;
        let retry_registry = sink.registry_retry.as_ref().map(|(at, _)| *at);
        tokio::select! {
            biased;
            _ = sink.shutdown.changed() => break,
            done = sink.from_writer.recv() => sink.on_done(done.expect("the writer outlives the loop")?),
            Ok(()) = db_down.changed() => {
                sink.pauses.database_down = *db_down.borrow_and_update();
                sink.reconcile_pauses()?;
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && !sink.in_flight => {}
            _ = sleep_until_opt(retry_registry), if retry_registry.is_some() => sink.retry_held().await?,
            msg = consume::next(&sink.consumer), if consume => match msg {
                Ok(msg) => {
                    backoff = Backoff::new();
                    // A rebalance runs inside the poll that returned this message.
                    let changes = sink.consumer.context().take_changes();
                    if changes.any() {
                        for p in &changes.revoked {
                            sink.held.remove(p);
                        }
                        sink.reconcile_pauses()?;
                    }
                    // Partitions handed to another sink: write what we hold for them now.
                    revoked |= !changes.revoked.is_empty();
                    sink.handle(msg).await?;
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
    /// Validates one message into the batch, or sends it to the dead-letter topic, or holds it
    /// (pausing its partition) while the schema registry cannot be asked.
    async fn handle(&mut self, msg: Consumed) -> Result<(), SinkError> {
        if let Some(waiting) = self.held.get_mut(&msg.partition) {
            // Behind a held message of its partition: order is kept.
            waiting.push_back(msg);
            return Ok(());
        }
        match self.validator.check(msg.payload.as_deref()).await {
            Verdict::RegistryAway(why) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, error = %why, "schema registry unavailable: partition paused, message held");
                self.held.entry(msg.partition).or_default().push_back(msg);
                self.registry_retry.get_or_insert_with(|| {
                    let mut b = Backoff::new();
                    (Instant::now() + b.next(), b)
                });
                self.reconcile_pauses()
            }
            verdict => self.apply(msg, verdict).await,
        }
    }

    /// Asks the registry again for the held messages, in order per partition; resumes the
    /// partitions whose messages are all through.
    async fn retry_held(&mut self) -> Result<(), SinkError> {
        let partitions: Vec<i32> = self.held.keys().copied().collect();
        let mut away = None;
        'partitions: for p in partitions {
            while let Some(msg) = self.held.get_mut(&p).and_then(VecDeque::pop_front) {
                match self.validator.check(msg.payload.as_deref()).await {
                    Verdict::RegistryAway(why) => {
                        self.held.get_mut(&p).expect("still held").push_front(msg);
                        away = Some(why);
                        break 'partitions;
                    }
                    verdict => self.apply(msg, verdict).await?,
                }
            }
            self.held.remove(&p);
        }
        match away {
            Some(why) => {
                let (at, backoff) = self.registry_retry.as_mut().expect("a retry was due");
                let delay = backoff.next();
                *at = Instant::now() + delay;
                tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, held = self.held.values().map(VecDeque::len).sum::<usize>(), "schema registry still unavailable");
            }
            None => {
                self.registry_retry = None;
                tracing::info!("schema registry back: partitions resumed");
            }
        }
        self.reconcile_pauses()
    }

    /// A frame into the batch, or a refusal to the dead-letter topic.
    async fn apply(&mut self, msg: Consumed, verdict: Verdict) -> Result<(), SinkError> {
        match verdict {
            Verdict::Frame(frame) => self.batch.push(frame, msg.partition, msg.offset),
            Verdict::Invalid(reason) => {
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
            Verdict::RegistryAway(_) => unreachable!("held by the caller"),
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
        let w = &done.written;
        t.frames += w.frames;
        t.detections += w.detections;
        t.replayed += w.replayed;
        t.conflicts += w.conflicts.len() as u64;
        t.redone += w.redone;
        t.batches += 1;
        metrics::counter!(telemetry::FRAMES).increment(w.frames);
        metrics::counter!(telemetry::DETECTIONS).increment(w.detections);
        metrics::counter!(telemetry::REPLAYED).increment(w.replayed);
        metrics::counter!(telemetry::CONFLICTS).increment(w.conflicts.len() as u64);
        metrics::counter!(telemetry::REDONE).increment(w.redone);
        // Each one by its key, but a flood of them as a count.
        const SHOWN: usize = 20;
        for key in w.conflicts.iter().take(SHOWN) {
            tracing::warn!(frame = %key, "replayed frame with other content: the stored frame is kept whole, the new one is not merged");
        }
        if w.conflicts.len() > SHOWN {
            tracing::warn!(more = w.conflicts.len() - SHOWN, "more conflicting replays in this batch");
        }
        metrics::counter!(telemetry::BATCHES).increment(1);
        metrics::histogram!(telemetry::BATCH_ROWS).record(done.rows as f64);
        metrics::histogram!(telemetry::BATCH_SECONDS).record(done.took.as_secs_f64());
        let mode = if *self.shutdown.borrow() { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = commit(&self.consumer, &self.args.topic, &done.next_offsets, mode) {
            tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored");
        }
        tracing::debug!(rows = done.rows, ms = t.last_commit_ms, "batch written");
    }

    /// Pauses and resumes partitions so that exactly those [`to_pause`] names are paused.
    fn reconcile_pauses(&mut self) -> Result<(), SinkError> {
        let assigned: BTreeSet<i32> = self.consumer.assignment()?.elements().iter().map(|e| e.partition()).collect();
        let held: BTreeSet<i32> = self.held.keys().copied().collect();
        let want = to_pause(&assigned, self.pauses.database_down, &held);
        // All of `want` is paused every time: pausing a paused partition is harmless, and one
        // revoked and assigned again comes back unpaused.
        let was: BTreeSet<i32> = self.pauses.paused.intersection(&assigned).copied().collect();
        let list = |ps: &mut dyn Iterator<Item = &i32>| {
            let mut tpl = TopicPartitionList::new();
            ps.for_each(|p| {
                tpl.add_partition(&self.args.topic, *p);
            });
            tpl
        };
        let pause = list(&mut want.iter());
        let resume = list(&mut was.difference(&want));
        if pause.count() > 0 {
            self.consumer.pause(&pause)?;
        }
        if resume.count() > 0 {
            self.consumer.resume(&resume)?;
        }
        let database_up = if self.pauses.database_down { 0.0 } else { 1.0 };
        metrics::gauge!(telemetry::DATABASE_UP).set(database_up);
        if want != was {
            match (self.pauses.database_down, want.is_empty()) {
                (true, _) => tracing::warn!(partitions = ?want, "database unavailable: partitions paused"),
                (false, true) => tracing::info!("partitions resumed"),
                (false, false) => tracing::info!(paused = ?want, "partitions paused while their messages wait for the schema registry"),
            }
        }
        self.pauses.paused = want;
        Ok(())
    }

    fn report(&self, elapsed: Duration) {
        let t = &self.totals;
        let secs = elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            frames = t.frames,
            detections = t.detections,
            replayed = t.replayed,
            conflicts = t.conflicts,
            dead_letters = t.dead_letters,
            batches = t.batches,
            redone_through_staging = t.redone,
            avg_batch_frames = (t.frames + t.replayed + t.conflicts).checked_div(t.batches).unwrap_or(0),
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
    fn what_is_paused() {
        let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
        let assigned = set(&[0, 1, 2, 3]);
        assert_eq!(to_pause(&assigned, true, &set(&[])), assigned, "the database away pauses everything");
        assert_eq!(to_pause(&assigned, false, &set(&[])), set(&[]));
        assert_eq!(to_pause(&assigned, false, &set(&[2, 7])), set(&[2]), "held, and still ours");
        assert_eq!(to_pause(&assigned, true, &set(&[2])), assigned);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut b = Backoff::new();
        let seen: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seen, vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }
}
