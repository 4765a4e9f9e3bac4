//! The sink's loop: consume -> validate -> batch -> write (one transaction per part) -> commit
//! offsets. A thin shell around three pieces that hold the rules: what to do next is
//! [`decide`](crate::decide::decide)'s, the offset protocol is [`offsets`]'s, and the write stage
//! is [`write`]'s own task, with one batch in flight while the next is gathered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backoff::Backoff;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::batch::Batch;
use crate::config::RunArgs;
use crate::consume::{self, Consumed, GroupConsumer};
use crate::decide::{decide, Policy, View, HOLD};
use crate::error::SinkError;
use crate::offsets::{self, Fence, Fences};
use crate::telemetry;
use crate::validate::{DeadLetters, Validator, Verdict};
use crate::write::{self, Done, Encoded, Writer};

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

#[derive(Default)]
struct Totals {
    frames: u64,
    detections: u64,
    replayed: u64,
    conflicts: u64,
    dead_letters: u64,
    refused: u64,
    fenced: u64,
    batches: u64,
    redone: u64,
    last_commit_ms: f64,
}

struct Sink<'a> {
    args: &'a RunArgs,
    pool: &'a PgPool,
    consumer: GroupConsumer,
    validator: Validator,
    dead_letters: Arc<DeadLetters>,
    writer: Writer,
    batch: Batch,
    /// What this sink believes is stored for each assigned partition (the offset protocol).
    fences: Fences,
    /// Messages held while the schema registry cannot be asked, in order per partition.
    held: BTreeMap<i32, VecDeque<Consumed>>,
    /// When to try again what waits (held messages, partitions to read again), and how long after.
    retry: Option<(Instant, Backoff)>,
    /// When the batch in flight went to the writer.
    writing: Option<Instant>,
    database_down: bool,
    stopping: bool,
    /// Why the sink must stop once what it holds is written (a message it can neither store nor
    /// dead-letter).
    failed: Option<SinkError>,
    /// Partitions paused now.
    paused: BTreeSet<i32>,
    totals: Totals,
    shutdown: watch::Receiver<bool>,
}

pub async fn run(args: &RunArgs, pool: &PgPool, shutdown: watch::Receiver<bool>) -> Result<(), SinkError> {
    let dead_letters = Arc::new(DeadLetters::connect(args)?);
    let target = write::Target {
        pool: pool.clone(),
        mode: args.write_mode,
        group: args.group_id.clone(),
        topic: args.kafka.topic.clone(),
        dead_letters: Arc::clone(&dead_letters),
    };
    let writer = write::spawn(target, shutdown.clone());
    let mut sink = Sink {
        args,
        pool,
        consumer: consume::connect(args, pool, writer.busy.clone())?,
        validator: Validator::new(args.registry()?),
        dead_letters,
        writer,
        batch: Batch::default(),
        fences: Fences::default(),
        held: BTreeMap::new(),
        retry: None,
        writing: None,
        database_down: false,
        stopping: false,
        failed: None,
        paused: BTreeSet::new(),
        totals: Totals::default(),
        shutdown,
    };
    tracing::info!(topic = %args.kafka.topic, group = %args.group_id, dlq = %args.dead_letter_topic(), mode = ?args.write_mode, "sink started");
    sink.run().await
}

/// librdkafka reconnects by itself and reports each failed connection attempt as a consume error:
/// news about the broker, not an attempt of ours that failed, so polling goes on at once. (Sleeping
/// after each one left the errors queued during an outage to be drained one sleep at a time after
/// it: minutes without a row.) A fatal error leaves the consumer unusable and ends the sink.
fn on_consume_error(e: SinkError) -> Result<(), SinkError> {
    if matches!(e, SinkError::Kafka(KafkaError::MessageConsumptionFatal(_))) {
        return Err(e);
    }
    tracing::warn!(error = %e, "kafka consume error");
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

impl Sink<'_> {
    async fn run(&mut self) -> Result<(), SinkError> {
        let policy = Policy {
            write_when_idle: self.args.write_when_idle,
            batch_rows: self.args.batch_rows,
            batch_age: Duration::from_millis(self.args.batch_ms),
            batch_max_rows: self.args.batch_max_rows,
        };
        let started = Instant::now();
        let report_every = Duration::from_secs(self.args.report_every_s);
        let mut next_report = Instant::now() + report_every;
        loop {
            let d = decide(&self.view(), &policy);
            self.apply_pauses(&d.pause)?;
            if d.done {
                break;
            }
            if d.write {
                let enc = Encoded::new(std::mem::take(&mut self.batch), self.args.write_mode, self.args.writers, &self.fences);
                self.writer.batches.send(enc).await.expect("the writer outlives the loop");
                self.writing = Some(Instant::now());
                continue;
            }
            let deadline = self.batch.deadline(policy.batch_age).filter(|_| self.writing.is_none());
            // Waiting for a quick write without taking messages: look again once it is no longer quick.
            let hold_until = self.writing.filter(|_| !d.consume).map(|t| t + HOLD);
            let retry_at = self.retry.as_ref().map(|(at, _)| *at);
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if !self.stopping => {
                    tracing::info!("shutting down: writing the last batches");
                    self.stopping = true;
                }
                done = self.writer.done.recv() => self.on_done(done.expect("the writer outlives the loop")?)?,
                Ok(()) = self.writer.down.changed() => {
                    self.database_down = *self.writer.down.borrow_and_update();
                    if self.database_down {
                        tracing::warn!("database unavailable: partitions paused");
                    } else {
                        tracing::info!("database back: partitions resumed");
                    }
                    telemetry::set_database_up(!self.database_down);
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {}
                _ = sleep_until_opt(hold_until), if hold_until.is_some() => {}
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    if let Err(e) = self.retry_waiting().await {
                        self.fail(e)?;
                    }
                }
                // Polled, paused or not, but for the brief wait for a quick write: past
                // max.poll.interval.ms without a poll the group would throw this sink out.
                msg = consume::next(&self.consumer), if d.consume => match msg {
                    Ok(msg) => {
                        // A rebalance runs inside the poll that returned this message.
                        self.apply_changes();
                        if let Err(e) = self.handle(msg).await {
                            self.fail(e)?;
                        }
                    }
                    Err(e) => on_consume_error(e)?,
                },
            }
            if Instant::now() >= next_report {
                next_report = Instant::now() + report_every;
                self.report(started.elapsed());
            }
        }
        self.consumer.unsubscribe();
        self.report(started.elapsed());
        self.failed.take().map_or(Ok(()), Err)
    }

    /// A message that cannot be dealt with ends the sink, after what it holds before that message
    /// is written (the message's offset is not accounted for: it is read again at the next start).
    /// Any other error ends it at once.
    fn fail(&mut self, e: SinkError) -> Result<(), SinkError> {
        match e {
            SinkError::DeadLetterRefused { .. } => {
                tracing::warn!("stopping: writing what is held, then exiting");
                self.stopping = true;
                self.failed = Some(e);
                Ok(())
            }
            e => Err(e),
        }
    }

    /// What [`decide`] sees.
    fn view(&self) -> View {
        let assigned: BTreeSet<i32> = self.fences.partitions().collect();
        let waiting = self.held.keys().copied().chain(self.fences.unknown()).collect();
        View {
            batch_rows: self.batch.rows(),
            batch_age: self.batch.age(),
            writing: self.writing.map(|t| t.elapsed()),
            database_down: self.database_down,
            stopping: self.stopping,
            assigned,
            waiting,
        }
    }

    /// Pauses and resumes partitions so that exactly `want` are paused.
    fn apply_pauses(&mut self, want: &BTreeSet<i32>) -> Result<(), SinkError> {
        let list = |ps: &mut dyn Iterator<Item = &i32>| {
            let mut tpl = TopicPartitionList::new();
            ps.for_each(|p| {
                tpl.add_partition(&self.args.kafka.topic, *p);
            });
            tpl
        };
        let pause = list(&mut want.difference(&self.paused));
        let resume = list(&mut self.paused.difference(want));
        if pause.count() > 0 {
            self.consumer.pause(&pause)?;
        }
        if resume.count() > 0 {
            self.consumer.resume(&resume)?;
        }
        self.paused = want.clone();
        Ok(())
    }

    /// Carries out what the last rebalance changed: revoked partitions are forgotten (their rows
    /// not yet written are left to the next owner), assigned ones get their fences.
    fn apply_changes(&mut self) {
        let changes = self.consumer.context().take_changes();
        let gone: BTreeSet<i32> = changes.revoked.iter().copied().collect();
        for p in &gone {
            self.fences.revoke(*p);
            self.held.remove(p);
        }
        self.batch.remove_partitions(&gone);
        for (p, fence) in changes.assigned {
            self.fences.assign(p, fence);
            // Assigned again, a partition comes back unpaused.
            self.paused.remove(&p);
            if !fence.known() {
                self.retry_now();
            }
        }
        for p in &gone {
            self.paused.remove(p);
        }
    }

    /// Validates one message into the batch, or sends it to the dead-letter topic, or holds it
    /// while the schema registry cannot be asked.
    async fn handle(&mut self, msg: Consumed) -> Result<(), SinkError> {
        // Not ours (any more), or waiting to be read again from the stored offset, or no longer
        // wanted: its offset is not accounted for, so it will be read again.
        if self.stopping || !self.fences.get(msg.partition).is_some_and(Fence::known) {
            return Ok(());
        }
        if let Some(waiting) = self.held.get_mut(&msg.partition) {
            // Behind a held message of its partition: order is kept.
            waiting.push_back(msg);
            return Ok(());
        }
        match self.validator.check(msg.payload.as_deref()).await {
            Verdict::RegistryAway(why) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, error = %why, "schema registry unavailable: partition paused, message held");
                self.held.entry(msg.partition).or_default().push_back(msg);
                self.retry.get_or_insert_with(|| {
                    let mut b = backoff();
                    (Instant::now() + b.next_delay(), b)
                });
                Ok(())
            }
            verdict => self.apply(msg, verdict).await,
        }
    }

    /// A frame into the batch, or a refusal to the dead-letter topic.
    async fn apply(&mut self, msg: Consumed, verdict: Verdict) -> Result<(), SinkError> {
        match verdict {
            Verdict::Frame(frame) => self.batch.push(frame, msg),
            Verdict::Invalid(reason) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, %reason, "invalid message to dead-letter topic");
                let mut b = backoff();
                loop {
                    let payload = msg.payload.as_deref().unwrap_or_default();
                    match self.dead_letters.send(msg.partition, msg.offset, msg.key.as_deref(), payload, &reason).await {
                        Ok(()) => break,
                        Err(e) if e.retryable() && !*self.shutdown.borrow() => {
                            let delay = b.next_delay();
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

    fn retry_now(&mut self) {
        self.retry = Some((Instant::now(), backoff()));
    }

    /// Tries again what waits: partitions whose stored offset must be read (and sought to), then
    /// the messages held for the registry, in order per partition.
    async fn retry_waiting(&mut self) -> Result<(), SinkError> {
        let mut still = None;
        for p in self.fences.unknown().collect::<Vec<_>>() {
            match offsets::resync(&self.consumer, self.pool, &self.args.group_id, &self.args.kafka.topic, p).await {
                Ok(fence) => self.fences.assign(p, fence),
                Err(e) => still = Some(format!("partition {p}'s stored offset: {e}")),
            }
        }
        'partitions: for p in self.held.keys().copied().collect::<Vec<_>>() {
            while let Some(msg) = self.held.get_mut(&p).and_then(VecDeque::pop_front) {
                match self.validator.check(msg.payload.as_deref()).await {
                    Verdict::RegistryAway(why) => {
                        self.held.get_mut(&p).expect("still held").push_front(msg);
                        still = Some(why);
                        break 'partitions;
                    }
                    verdict => self.apply(msg, verdict).await?,
                }
            }
            self.held.remove(&p);
            tracing::info!(partition = p, "schema registry back: partition resumed");
        }
        match still {
            Some(why) => {
                let (at, b) = self.retry.get_or_insert_with(|| (Instant::now(), backoff()));
                let delay = b.next_delay();
                *at = Instant::now() + delay;
                tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "still waiting");
            }
            None => self.retry = None,
        }
        Ok(())
    }

    /// A batch is durable: the fences advance, and Kafka may learn the offsets. A failed Kafka
    /// commit only leaves Kafka's offsets behind the database's, which is what positions the sink.
    fn on_done(&mut self, done: Done) -> Result<(), SinkError> {
        self.writing = None;
        self.fences.advance(&done.stored);
        let mode = if self.stopping { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = offsets::commit(&self.consumer, &self.args.kafka.topic, &done.stored, &self.fences, mode) {
            tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored");
        }
        // Partitions another sink wrote: read them again, from the offset it stored.
        for p in &done.fenced {
            if self.fences.get(*p).is_some() {
                self.fences.assign(*p, Fence::Unknown);
                self.held.remove(p);
                self.retry_now();
            }
        }
        self.batch.remove_partitions(&done.fenced);

        let w = &done.written;
        let t = &mut self.totals;
        t.last_commit_ms = done.took.as_secs_f64() * 1e3;
        t.frames += w.frames;
        t.detections += w.detections;
        t.replayed += w.replayed;
        t.conflicts += w.conflicts.len() as u64;
        t.refused += w.refused;
        t.dead_letters += w.refused;
        t.fenced += done.fenced.len() as u64;
        t.redone += w.redone;
        t.batches += 1;
        metrics::counter!(telemetry::FRAMES).increment(w.frames);
        metrics::counter!(telemetry::DETECTIONS).increment(w.detections);
        metrics::counter!(telemetry::REPLAYED).increment(w.replayed);
        metrics::counter!(telemetry::CONFLICTS).increment(w.conflicts.len() as u64);
        metrics::counter!(telemetry::REFUSED).increment(w.refused);
        metrics::counter!(telemetry::DEAD_LETTERS).increment(w.refused);
        metrics::counter!(telemetry::FENCED).increment(done.fenced.len() as u64);
        metrics::counter!(telemetry::REDONE).increment(w.redone);
        metrics::counter!(telemetry::BATCHES).increment(1);
        metrics::histogram!(telemetry::BATCH_ROWS).record(done.rows as f64);
        metrics::histogram!(telemetry::BATCH_SECONDS).record(done.took.as_secs_f64());
        // Each one by its key, but a flood of them as a count.
        const SHOWN: usize = 20;
        for key in w.conflicts.iter().take(SHOWN) {
            tracing::warn!(frame = %key, "replayed frame with other content: the stored frame is kept whole, the new one is not merged");
        }
        if w.conflicts.len() > SHOWN {
            tracing::warn!(more = w.conflicts.len() - SHOWN, "more conflicting replays in this batch");
        }
        tracing::debug!(rows = done.rows, ms = t.last_commit_ms, "batch written");
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
            refused = t.refused,
            fenced = t.fenced,
            batches = t.batches,
            redone_through_staging = t.redone,
            avg_batch_frames = (t.frames + t.replayed + t.conflicts).checked_div(t.batches).unwrap_or(0),
            rows_per_s = format!("{:.0}", (t.frames + t.detections) as f64 / secs),
            last_commit_ms = format!("{:.1}", t.last_commit_ms),
            "progress"
        );
    }
}
