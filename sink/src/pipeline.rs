//! The sink's loop: consume -> validate -> batch -> write (one transaction per part) -> commit
//! offsets. A thin shell around three pieces that hold the rules: what to do next is
//! [`decide`](crate::decide::decide)'s, the offset protocol is [`offsets`]'s, and the write stage
//! is [`write`]'s own task, with one batch in flight while the next is gathered.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backoff::Backoff;
use common::registry::Registry;
use common::telemetry::Heartbeat;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::batch::Batch;
use crate::config::RunArgs;
use crate::consume::{self, GroupConsumer};
use crate::dead_letters::{DeadLetters, Sent};
use crate::decide::{decide, Policy, View, HOLD};
use crate::error::SinkError;
use crate::message::{Consumed, Row};
use crate::offsets::Fence;
use crate::partition::{Check, Delivered, Partitions, Wait};
use crate::partitions::StoreClock;
use crate::telemetry;
use crate::validate::{Admission, Validator, Verdict};
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
    frames_fenced: u64,
    batches: u64,
    redone: u64,
    events: u64,
    last_commit_ms: f64,
}

struct Sink<'a> {
    args: &'a RunArgs,
    pool: &'a PgPool,
    consumer: GroupConsumer,
    validator: Validator,
    admission: Admission,
    /// The database's clock and the retention's cutoff, for the admission window.
    clock: watch::Receiver<StoreClock>,
    dead_letters: Arc<DeadLetters>,
    /// Dead-letter sends end here (`dead_letters::DeadLetters::spawn`).
    dead_lettered: mpsc::Receiver<Sent>,
    dead_lettered_tx: mpsc::Sender<Sent>,
    writer: Writer,
    batch: Batch,
    /// Every assigned partition's state: fence, offsets accounted for, messages waiting.
    parts: Partitions,
    /// When to try again what waits (messages held for the registry, partitions to read again),
    /// and how long after.
    retry: Option<(Instant, Backoff)>,
    /// When the batch in flight went to the writer.
    writing: Option<Instant>,
    database_down: bool,
    stopping: bool,
    /// Set once the loop stops taking messages, for whatever reason: dead-letter sends give up.
    stop: watch::Sender<bool>,
    /// Why the sink must stop once what it holds is written (a message it can neither store nor
    /// dead-letter).
    failed: Option<SinkError>,
    /// Partitions paused now.
    paused: BTreeSet<i32>,
    totals: Totals,
    /// Beaten at every turn of the loop, and at least every second while it waits: `/livez`.
    heartbeat: Heartbeat,
    shutdown: watch::Receiver<bool>,
}

pub async fn run(
    args: &RunArgs,
    pool: &PgPool,
    clock: watch::Receiver<StoreClock>,
    heartbeat: Heartbeat,
    shutdown: watch::Receiver<bool>,
) -> Result<(), SinkError> {
    let dead_letters = Arc::new(DeadLetters::connect(&args.kafka, args.dead_letter_topic())?);
    dead_letters.check_topic(Duration::from_secs(10)).await?;
    let registry = args
        .schema_registry
        .as_ref()
        .map(|url| Registry::new(url.expose(), Duration::from_secs(5)).map_err(SinkError::Config))
        .transpose()?;
    if let Some(registry) = &registry {
        // A URL that answers but not as a registry (most often its API path left out) is the
        // user's to fix; a registry that is away is waited for, message by message.
        match tokio::task::block_in_place(|| registry.probe()) {
            Ok(()) => {}
            Err(e) if e.retryable() => tracing::warn!(error = %e, "schema registry unavailable at start: framed messages wait for it"),
            Err(e) => return Err(SinkError::Config(e.to_string())),
        }
    }
    let target = write::Target {
        pool: pool.clone(),
        mode: args.write_mode,
        group: args.group_id.clone(),
        topic: args.kafka.topic.clone(),
        dead_letters: Arc::clone(&dead_letters),
    };
    let writer = write::spawn(target, shutdown.clone());
    let (dead_lettered_tx, dead_lettered) = mpsc::channel(64);
    let mut sink = Sink {
        args,
        pool,
        consumer: consume::connect(args, pool, writer.busy.clone())?,
        validator: Validator::new(registry, args.unknown_schema_wait()),
        admission: Admission {
            past: chrono::Duration::days(args.admit_past_days.into()),
            future: chrono::Duration::minutes(args.admit_future_minutes.into()),
        },
        clock,
        dead_letters,
        dead_lettered,
        dead_lettered_tx,
        writer,
        batch: Batch::default(),
        parts: Partitions::default(),
        retry: None,
        writing: None,
        database_down: false,
        stopping: false,
        stop: watch::channel(false).0,
        failed: None,
        paused: BTreeSet::new(),
        totals: Totals::default(),
        heartbeat,
        shutdown,
    };
    tracing::info!(topic = %args.kafka.topic, group = %args.group_id, instance = %args.instance_id, dlq = %sink.dead_letters.topic(), mode = ?args.write_mode, "sink started");
    sink.run().await
}

/// librdkafka reconnects by itself and reports each failed connection attempt as a consume error:
/// news about the broker, not an attempt of ours that failed, so polling goes on at once. (Sleeping
/// after each one left the errors queued during an outage to be drained one sleep at a time after
/// it: minutes without a row.) A fatal error leaves the consumer unusable and ends the sink.
fn on_consume_error(e: SinkError, group: &str, instance: &str) -> Result<(), SinkError> {
    match e {
        SinkError::Kafka(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId)) => Err(SinkError::Config(format!(
            "another sink joined group {group} as instance {instance}: give each sink of a group its own --instance-id"
        ))),
        SinkError::Kafka(KafkaError::MessageConsumptionFatal(_)) => Err(e),
        e => {
            tracing::warn!(error = %e, "kafka consume error");
            Ok(())
        }
    }
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
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.heartbeat.beat();
            let d = decide(&self.view(), &policy);
            self.apply_pauses(&d.pause)?;
            if d.done {
                break;
            }
            if d.write {
                let enc = Encoded::new(std::mem::take(&mut self.batch), self.parts.claim(), self.args.write_mode, self.args.writers);
                self.writer.batches.send(enc).await.expect("the writer outlives the loop");
                self.writing = Some(Instant::now());
                continue;
            }
            let deadline = self.batch.deadline(policy.batch_age).filter(|_| self.writing.is_none());
            // Waiting for a quick write without taking messages: look again once it is no longer quick.
            let hold_until = self.writing.filter(|_| !d.consume).map(|t| t + HOLD);
            let retry_at = self.retry.as_ref().map(|(at, _)| *at).filter(|_| !self.stopping);
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if !self.stopping => {
                    tracing::info!("shutting down: writing the last batches");
                    self.stop_taking();
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
                Some(sent) = self.dead_lettered.recv() => self.on_dead_lettered(sent).await?,
                _ = sleep_until_opt(deadline), if deadline.is_some() => {}
                _ = sleep_until_opt(hold_until), if hold_until.is_some() => {}
                _ = sleep_until_opt(retry_at), if retry_at.is_some() => self.retry_waiting().await?,
                // The loop is alive while it waits for nothing (beaten above), and the lag is
                // computed afresh.
                _ = tick.tick() => telemetry::set_lag(self.lag()),
                // Polled, paused or not, but for the brief wait for a quick write: past
                // max.poll.interval.ms without a poll the group would throw this sink out.
                msg = consume::next(&self.consumer), if d.consume => match msg {
                    Ok(msg) => {
                        // A rebalance runs inside the poll that returned this message.
                        self.apply_changes();
                        self.on_message(msg).await?;
                    }
                    Err(e) => on_consume_error(e, &self.args.group_id, &self.args.instance_id)?,
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

    /// From now on no message is taken: what is held is written, dead-letter sends give up (their
    /// messages are read again at the next start), and the loop ends.
    fn stop_taking(&mut self) {
        self.stopping = true;
        self.stop.send_replace(true);
    }

    /// A message that can be neither stored nor dead-lettered ends the sink, after what it holds
    /// before that message is written (the message is not accounted for: it is read again at the
    /// next start, and nothing after it in its partition is accounted for either). Any other
    /// error ends it at once.
    fn fail(&mut self, e: SinkError) -> Result<(), SinkError> {
        match e {
            SinkError::DeadLetterRefused { .. } => {
                tracing::warn!(error = %e, "stopping: writing what is held, then exiting");
                self.stop_taking();
                self.failed = Some(e);
                Ok(())
            }
            e => Err(e),
        }
    }

    /// What [`decide`] sees.
    fn view(&self) -> View {
        View {
            batch_rows: self.batch.rows(),
            batch_age: self.batch.age(),
            writing: self.writing.map(|t| t.elapsed()),
            database_down: self.database_down,
            stopping: self.stopping,
            assigned: self.parts.assigned(),
            waiting: self.parts.waiting(),
            dead_letters: self.parts.dead_letters_in_flight(),
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
        // Called on every message: with nothing revoked, the batch is left as it is (reindexing
        // it per message made a batch quadratic in its messages).
        if !gone.is_empty() {
            for p in &gone {
                self.parts.revoke(*p);
                self.paused.remove(p);
            }
            telemetry::forget_partitions(&gone);
            self.batch.remove_partitions(&gone);
        }
        for (p, fence) in changes.assigned {
            self.parts.assign(p, fence);
            // Assigned again, a partition comes back unpaused.
            self.paused.remove(&p);
            if !fence.known() {
                self.retry_now();
            }
        }
    }

    /// A message from the consumer: checked now, or queued behind its partition's message in hand.
    async fn on_message(&mut self, msg: Consumed) -> Result<(), SinkError> {
        // No longer wanted: not accounted for, so it is read again at the next start.
        if self.stopping {
            return Ok(());
        }
        match self.parts.deliver(msg) {
            Delivered::Check(c) => self.work(Some(c)).await,
            Delivered::Queued | Delivered::Ignored => Ok(()),
        }
    }

    /// Checks `next` and then its partition's queued messages, until one has to wait.
    async fn work(&mut self, mut next: Option<Check>) -> Result<(), SinkError> {
        while let Some(Check { msg, gap }) = next {
            let p = msg.partition;
            if let Some(gap) = gap {
                self.on_gap(p, gap);
            }
            self.check(msg).await?;
            next = self.parts.next(p);
        }
        Ok(())
    }

    /// Validates one message: a frame into the batch, a refusal to the dead-letter topic (a task:
    /// the partition waits for it), or held while the schema registry cannot tell. Returns why it
    /// was held for the registry, if it was.
    async fn check(&mut self, msg: Consumed) -> Result<Option<String>, SinkError> {
        let clock = *self.clock.borrow();
        let verdict = match self.validator.check(msg.payload.as_deref()).await {
            Verdict::Frame(frame) => match self.admission.check(frame.captured_at, clock.now(), clock.cutoff) {
                Ok(()) => Verdict::Frame(frame),
                Err(why) => {
                    metrics::counter!(telemetry::NOT_ADMITTED).increment(1);
                    Verdict::Invalid(format!("camera {:?}, frame {}: {why}", frame.camera_id, frame.frame_seq))
                }
            },
            other => other,
        };
        match verdict {
            Verdict::Frame(frame) => {
                self.parts.account(msg.partition, msg.offset)?;
                self.batch.push(Row::new(*frame, msg));
                Ok(None)
            }
            Verdict::Invalid(reason) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, %reason, "invalid message to dead-letter topic");
                let send = self.parts.hold_for_dead_letter(msg.clone())?;
                self.dead_letters.spawn(msg, reason, send, self.dead_lettered_tx.clone(), self.stop.subscribe());
                Ok(None)
            }
            Verdict::Wait(why) => {
                tracing::warn!(partition = msg.partition, offset = msg.offset, error = %why, "message waits for the schema registry: partition paused");
                self.parts.hold(msg, Wait::Registry)?;
                self.retry.get_or_insert_with(|| {
                    let mut b = backoff();
                    (Instant::now() + b.next_delay(), b)
                });
                Ok(Some(why))
            }
        }
    }

    fn on_gap(&mut self, partition: i32, gap: Range<i64>) {
        tracing::warn!(
            partition,
            from = gap.start,
            to = gap.end,
            "offsets passed over by the consumer (transaction markers, or messages deleted by the topic's retention before they were read)"
        );
        metrics::counter!(telemetry::OFFSET_GAPS).increment((gap.end - gap.start) as u64);
    }

    /// A dead-letter send ended: its message is accounted for and its partition goes on, or the
    /// sink stops.
    async fn on_dead_lettered(&mut self, sent: Sent) -> Result<(), SinkError> {
        if !self.parts.dead_letter_done(sent.partition, sent.send, sent.result.is_ok()) {
            return Ok(()); // for a partition given up, or read again, since
        }
        match sent.result {
            Ok(()) => {
                self.totals.dead_letters += 1;
                metrics::counter!(telemetry::DEAD_LETTERS).increment(1);
                self.batch.open();
                let next = self.parts.next(sent.partition);
                self.work(next).await
            }
            Err(SinkError::Stopped) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Per assigned partition: messages in its log past the offset stored in the database (the
    /// truth, not Kafka's committed offsets), as far as librdkafka last reported the log's end.
    fn lag(&self) -> BTreeMap<i32, i64> {
        let logs = self.consumer.context().logs();
        self.parts
            .fences()
            .filter_map(|(p, fence)| {
                let (first, end) = logs.get(&p)?;
                let stored = match fence {
                    Fence::Stored(n) => n,
                    Fence::Fresh => *first,
                    Fence::Unknown => return None,
                };
                Some((p, (end - stored).max(0)))
            })
            .collect()
    }

    fn retry_now(&mut self) {
        self.retry = Some((Instant::now(), backoff()));
    }

    /// Tries again what waits: partitions whose stored offset must be read (and sought to), then
    /// the messages held for the registry, each followed by its partition's queue.
    async fn retry_waiting(&mut self) -> Result<(), SinkError> {
        let mut still = None;
        for p in self.parts.unknown() {
            match consume::resync(&self.consumer, self.pool, &self.args.group_id, &self.args.kafka.topic, p).await {
                Ok(fence) => self.parts.resynced(p, fence),
                Err(e) => still = Some(format!("partition {p}'s stored offset: {e}")),
            }
        }
        for p in self.parts.waiting_for_registry() {
            let msg = self.parts.retake(p).expect("it waits for the registry");
            if let Some(why) = self.check(msg).await? {
                still = Some(why);
                break;
            }
            tracing::info!(partition = p, "schema registry back: partition resumed");
            let next = self.parts.next(p);
            self.work(next).await?;
        }
        if self.parts.unknown().is_empty() && self.parts.waiting_for_registry().is_empty() {
            self.retry = None;
        } else {
            let (at, b) = self.retry.get_or_insert_with(|| (Instant::now(), backoff()));
            let delay = b.next_delay();
            *at = Instant::now() + delay;
            tracing::warn!(error = %still.unwrap_or_default(), retry_in_ms = delay.as_millis() as u64, "still waiting");
        }
        Ok(())
    }

    /// A batch is durable: the fences advance, and Kafka may learn the offsets. A failed Kafka
    /// commit only leaves Kafka's offsets behind the database's, which is what positions the sink.
    fn on_done(&mut self, done: Done) -> Result<(), SinkError> {
        self.writing = None;
        self.parts.durable(&done.stored);
        let mode = if self.stopping { CommitMode::Sync } else { CommitMode::Async };
        let ours: BTreeMap<i32, i64> = done.stored.iter().filter(|(p, _)| self.parts.is_assigned(**p)).map(|(p, n)| (*p, *n)).collect();
        if let Err(e) = consume::commit(&self.consumer, &self.args.kafka.topic, &ours, mode) {
            tracing::warn!(error = %e, "kafka offset commit failed; the rows are stored");
        }
        // Partitions another sink wrote: read them again, from the offset it stored.
        for p in &done.fenced {
            if self.parts.is_assigned(*p) {
                self.parts.forget(*p);
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
        let frames_fenced: u64 = w.fenced_frames.values().sum();
        t.refused += w.refused;
        t.frames_fenced += frames_fenced;
        t.dead_letters += w.refused + frames_fenced;
        t.fenced += done.fenced.len() as u64;
        t.redone += w.redone;
        t.events += w.events;
        t.batches += 1;
        metrics::counter!(telemetry::FRAMES).increment(w.frames);
        metrics::counter!(telemetry::DETECTIONS).increment(w.detections);
        metrics::counter!(telemetry::REPLAYED).increment(w.replayed);
        metrics::counter!(telemetry::CONFLICTS).increment(w.conflicts.len() as u64);
        metrics::counter!(telemetry::REFUSED).increment(w.refused);
        metrics::counter!(telemetry::DEAD_LETTERS).increment(w.refused + frames_fenced);
        for (camera, n) in &w.fenced_frames {
            metrics::counter!(telemetry::FENCED_FRAMES, "camera" => camera.clone()).increment(*n);
        }
        metrics::counter!(telemetry::FENCED).increment(done.fenced.len() as u64);
        metrics::counter!(telemetry::REDONE).increment(w.redone);
        metrics::counter!(telemetry::ZONE_EVENTS).increment(w.events);
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
            frames_fenced = t.frames_fenced,
            batches = t.batches,
            redone_through_staging = t.redone,
            zone_events = t.events,
            avg_batch_frames = (t.frames + t.replayed + t.conflicts).checked_div(t.batches).unwrap_or(0),
            rows_per_s = format!("{:.0}", (t.frames + t.detections) as f64 / secs),
            last_commit_ms = format!("{:.1}", t.last_commit_ms),
            lag = self.lag().values().sum::<i64>(),
            "progress"
        );
    }
}
