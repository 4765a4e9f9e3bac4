//! The write stage: a task of its own that makes batches durable, one batch at a time, so that
//! the next batch is consumed, validated and encoded meanwhile. A batch is split into parts of
//! whole partitions written in parallel, one connection and one transaction each.
//!
//! A part's transaction:
//! 1. begins with the fenced offset store (`offsets::store`): a partition whose stored offset is
//!    no longer what this sink expects was written by another sink after a rebalance; the
//!    transaction rolls back and the part is written again without that partition, which the loop
//!    then reads again from the stored offset;
//! 2. fences by epoch (`epochs`): frames of a host that has lost their camera go to the dead-letter
//!    topic and out of the part, and the cameras' newest epochs move;
//! 3. writes the rows straight into the tables (COPY, or INSERT from UNNEST). A key conflict (a
//!    frame delivered again) redoes the part through the staging merge, which inserts only frames
//!    not stored yet, with their own detections and track observations;
//! 4. adds the frames it stored new to the rollups (`rollup`: people per minute, and tracks),
//!    and the zone and line events of the frames it accepted, new or replayed (`events`);
//! 5. commits.
//!
//! Rows the database refuses for what they hold (a CHECK a DBA added, a character the database
//! encoding lacks, in a frame or in its events, a key conflict the merge meets) are found by
//! bisecting the part with savepoints, each half's frames merged with their events; they are sent
//! to the dead-letter topic with the database's error, and the rest is stored: one bad row never
//! stops its partition.
//!
//! An error that may pass (classified in `error`) retries the part with backoff while the loop
//! pauses consumption; an error that cannot pass ends the sink, with nothing of the part stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backoff::Backoff;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, watch};

mod binary;
mod statements;

use crate::batch::Batch;
use crate::config::WriteMode;
use crate::dead_letters::DeadLetters;
use crate::epochs;
use crate::error::{DbFault, SinkError};
use crate::events;
use crate::message::{FrameKey, Row};
use crate::offsets::{self, Claim};
use crate::rollup;
use crate::telemetry;
use statements::{copy_streams, Streams};

/// What a write did. Rows that were already present are not counted as written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    pub frames: u64,
    pub detections: u64,
    /// Frames delivered again with the content already stored (or already in the batch).
    pub replayed: u64,
    /// Frames delivered again with other content: the stored frame was kept whole.
    pub conflicts: Vec<FrameKey>,
    /// Frames whose rows the database refused, sent to the dead-letter topic.
    pub refused: u64,
    /// Frames of an older epoch than their camera's newest, per camera: sent to the dead-letter
    /// topic.
    pub fenced_frames: BTreeMap<String, u64>,
    /// Parts whose direct write failed and went through staging.
    pub redone: u64,
    /// Zone and line events stored new.
    pub events: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.frames += other.frames;
        self.detections += other.detections;
        self.replayed += other.replayed;
        self.conflicts.extend(other.conflicts);
        self.refused += other.refused;
        for (camera, n) in other.fenced_frames {
            *self.fenced_frames.entry(camera).or_default() += n;
        }
        self.redone += other.redone;
        self.events += other.events;
    }
}

/// A batch ready for the writer: split into parts of whole partitions, each with its partitions'
/// claims on the stored offsets and its COPY data already made (for the COPY and staging modes),
/// so that encoding overlaps the previous batch's write.
pub struct Encoded {
    pub parts: Vec<Part>,
}

pub struct Part {
    pub batch: Batch,
    claims: Vec<Claim>,
    streams: Option<Streams>,
    /// The frames the epoch fence took out, per camera: a transaction redone after them still
    /// reports them.
    fenced_frames: BTreeMap<String, u64>,
}

impl Encoded {
    /// `claims`: the offsets the batch stores (`partition::Partitions::claim`).
    pub fn new(batch: Batch, claims: BTreeMap<i32, Claim>, mode: WriteMode, writers: usize) -> Self {
        let parts = batch
            .split(writers, claims)
            .into_iter()
            .map(|(batch, claims)| {
                let streams = (mode != WriteMode::Unnest).then(|| copy_streams(&batch.frames));
                Part { batch, claims, streams, fenced_frames: BTreeMap::new() }
            })
            .collect();
        Encoded { parts }
    }
}

impl Part {
    fn streams(&mut self) -> &Streams {
        let frames = &self.batch.frames;
        self.streams.get_or_insert_with(|| copy_streams(frames))
    }

    /// Leaves these partitions out: their rows and claims.
    fn drop_partitions(&mut self, gone: &BTreeSet<i32>) {
        self.batch.remove_partitions(gone);
        self.claims.retain(|c| !gone.contains(&c.partition));
        self.streams = None;
    }
}

/// A batch the writer has dealt with.
pub struct Done {
    /// The next offsets now durable, per partition.
    pub stored: BTreeMap<i32, i64>,
    /// Partitions another sink had written: left out, to be read again.
    pub fenced: BTreeSet<i32>,
    pub rows: usize,
    pub written: Written,
    pub took: Duration,
}

/// What every part's write needs besides its rows.
#[derive(Clone)]
pub struct Target {
    pub pool: PgPool,
    pub mode: WriteMode,
    pub group: String,
    pub topic: String,
    pub dead_letters: Arc<DeadLetters>,
}

/// The loop's side of the write stage.
pub struct Writer {
    pub batches: mpsc::Sender<Encoded>,
    pub done: mpsc::Receiver<Result<Done, SinkError>>,
    /// True while the database cannot be written (a part is retrying).
    pub down: watch::Receiver<bool>,
    /// True while a batch is being written: a revocation waits for it (`consume`).
    pub busy: watch::Receiver<bool>,
}

/// Starts the write stage. It stops retrying once shutdown is asked.
pub fn spawn(target: Target, shutdown: watch::Receiver<bool>) -> Writer {
    let (batch_tx, mut batch_rx) = mpsc::channel::<Encoded>(1);
    let (done_tx, done_rx) = mpsc::channel(1);
    let (down_tx, down_rx) = watch::channel(false);
    let (busy_tx, busy_rx) = watch::channel(false);
    let down_tx = Arc::new(down_tx);
    tokio::spawn(async move {
        while let Some(enc) = batch_rx.recv().await {
            busy_tx.send_replace(true);
            let t = Instant::now();
            let mut writes = tokio::task::JoinSet::new();
            for part in enc.parts {
                writes.spawn(write_part(target.clone(), part, shutdown.clone(), Arc::clone(&down_tx)));
            }
            let mut done =
                Ok(Done { stored: BTreeMap::new(), fenced: BTreeSet::new(), rows: 0, written: Written::default(), took: Duration::ZERO });
            while let Some(joined) = writes.join_next().await {
                match (&mut done, joined.expect("a part's write does not panic")) {
                    (Ok(d), Ok((part, written, fenced))) => {
                        let frames = &part.batch.frames;
                        let all_new = written.frames == frames.len() as u64;
                        telemetry::committed(frames.iter().map(|r| (r.msg.camera_id.as_str(), r.partition, r.msg.captured_at)), all_new);
                        d.stored.extend(part.claims.iter().map(|c| (c.partition, c.next)));
                        d.rows += part.batch.rows();
                        d.written += written;
                        d.fenced.extend(fenced);
                    }
                    (_, Err(e)) => done = Err(e),
                    (Err(_), Ok(_)) => {}
                }
            }
            down_tx.send_if_modified(|down| std::mem::replace(down, false));
            busy_tx.send_replace(false);
            let failed = done.is_err();
            let done = done.map(|d| Done { took: t.elapsed(), ..d });
            if done_tx.send(done).await.is_err() || failed {
                break;
            }
        }
    });
    Writer { batches: batch_tx, done: done_rx, down: down_rx, busy: busy_rx }
}

/// One part, retried while the database is away, until it is durable (or fails for good).
async fn write_part(
    target: Target,
    mut part: Part,
    mut shutdown: watch::Receiver<bool>,
    down: Arc<watch::Sender<bool>>,
) -> Result<(Part, Written, BTreeSet<i32>), SinkError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut fenced = BTreeSet::new();
    loop {
        if part.claims.is_empty() {
            return Ok((part, Written::default(), fenced));
        }
        match attempt(&target, &mut part).await {
            Ok(Attempt::Written(w)) => return Ok((part, w, fenced)),
            Ok(Attempt::Fenced(gone)) => {
                tracing::warn!(partitions = ?gone, "another sink stored these partitions' offsets since this one read them: their rows are left out and the partitions read again");
                part.drop_partitions(&gone);
                fenced.extend(gone);
            }
            Err(e) if e.retryable() && !*shutdown.borrow() => {
                down.send_if_modified(|down| !std::mem::replace(down, true));
                let delay = backoff.next_delay();
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

enum Attempt {
    Written(Written),
    /// These partitions' stored offsets moved: nothing was written.
    Fenced(BTreeSet<i32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Merge,
    Bisect,
}

/// The direct write, else the merge, else the bisection, each in a transaction of its own.
async fn attempt(target: &Target, part: &mut Part) -> Result<Attempt, SinkError> {
    let first = if target.mode == WriteMode::Staging { Path::Merge } else { Path::Direct };
    let mut path = first;
    loop {
        let outcome = in_transaction(target, part, path).await;
        path = match (&outcome, path) {
            (Err(e), Path::Direct) if is_unique_violation(e) => Path::Merge,
            // A key conflict the merge itself meets (a unique index a DBA added, rows written
            // around the keys) is the rows' fault like any other: bisected, refused alone.
            (Err(e), Path::Direct | Path::Merge) if e.db_fault() == Some(DbFault::Rows) => Path::Bisect,
            _ => {
                return outcome.map(|a| match a {
                    Attempt::Written(w) if path != first => Attempt::Written(Written { redone: w.redone + 1, ..w }),
                    other => other,
                })
            }
        };
        tracing::debug!(?path, "redoing the part through staging");
    }
}

fn is_unique_violation(e: &SinkError) -> bool {
    matches!(e, SinkError::Database(db) if db.as_database_error().is_some_and(|d| d.code().as_deref() == Some("23505")))
}

async fn in_transaction(target: &Target, part: &mut Part, path: Path) -> Result<Attempt, SinkError> {
    let mut tx = target.pool.begin().await?;
    // The fence first: it takes the offset rows' locks, so a second writer of a partition waits
    // here, then finds the offset moved, before it has written anything.
    let fenced = offsets::store(&mut tx, &target.group, &target.topic, &part.claims).await?;
    if !fenced.is_empty() {
        return Ok(Attempt::Fenced(fenced.into_iter().collect()));
    }
    fence_epochs(&mut tx, target, part).await?;
    let echoes = &part.batch.echoes;
    let mut w = Written {
        replayed: echoes.iter().filter(|e| e.same).count() as u64,
        conflicts: echoes.iter().filter(|e| !e.same).map(|e| e.key.clone()).collect(),
        fenced_frames: part.fenced_frames.clone(),
        ..Written::default()
    };
    let frames = part.batch.frames.len() as u64;
    // The keys of the frames this transaction stores new, where not all are.
    let new: Option<BTreeSet<FrameKey>> = match path {
        Path::Direct => {
            (w.frames, w.detections) = match target.mode {
                WriteMode::Unnest => statements::unnest_direct(&mut tx, &part.batch).await?,
                _ => statements::copy_direct(&mut tx, part.streams()).await?,
            };
            None
        }
        Path::Merge => {
            let m = statements::merge(&mut tx, part.streams()).await?;
            w.replayed += frames - m.frames - m.conflicts.len() as u64;
            (w.frames, w.detections) = (m.frames, m.detections);
            w.conflicts.extend(m.conflicts);
            Some(m.new.into_iter().collect())
        }
        Path::Bisect => {
            let (m, refused, events) = bisect(&mut tx, &part.batch, &w.conflicts).await?;
            w.events = events;
            w.replayed += frames - refused.len() as u64 - m.frames - m.conflicts.len() as u64;
            (w.frames, w.detections, w.refused) = (m.frames, m.detections, refused.len() as u64);
            w.conflicts.extend(m.conflicts);
            // Dead letters before the commit: a crash between the two repeats the dead letters
            // (at least once), never loses them. The rows leave the part only once all are sent:
            // a send that fails retries the part with them.
            for (&i, reason) in &refused {
                let row = &part.batch.frames[i];
                tracing::warn!(partition = row.partition, offset = row.offset, frame = %row.key(), %reason, "the database refused a frame's rows: to the dead-letter topic");
                target.dead_letters.send(row.partition, row.offset, row.key.as_deref(), &row.payload, reason).await?;
            }
            part.batch.take_rows(&refused.keys().copied().collect());
            part.streams = None;
            Some(m.new.into_iter().collect())
        }
    };
    let stored: Vec<&Row> = part.batch.frames.iter().filter(|r| new.as_ref().is_none_or(|keys| keys.contains(&r.key()))).collect();
    rollup::add(&mut tx, &rollup::minutes(stored.iter().copied())).await?;
    rollup::add_tracks(&mut tx, &rollup::tracks(stored.iter().copied())).await?;
    if path != Path::Bisect {
        w.events = add_events(&mut tx, &part.batch.frames, &w.conflicts).await?;
    }
    tx.commit().await?;
    Ok(Attempt::Written(w))
}

/// Sends the frames the epoch fence refuses to the dead-letter topic, then takes them out of the
/// part (before the commit and in that order, as the refused rows); one warning per camera.
async fn fence_epochs(conn: &mut PgConnection, target: &Target, part: &mut Part) -> Result<(), SinkError> {
    let fenced = epochs::fence(conn, &part.batch.frames).await?;
    if fenced.is_empty() {
        return Ok(());
    }
    // Per camera: frames, their epochs, the newest.
    let mut cameras: BTreeMap<&str, (u64, BTreeSet<u64>, u64)> = BTreeMap::new();
    for f in &fenced {
        let row = &part.batch.frames[f.index];
        let reason = format!(
            "camera {:?}, frame {} of run {}: epoch {} is older than the camera's newest, {}: a host that has lost the camera (fenced)",
            row.msg.camera_id, row.msg.frame_seq, row.msg.run_id, f.epoch, f.newest
        );
        target.dead_letters.send(row.partition, row.offset, row.key.as_deref(), &row.payload, &reason).await?;
        let camera = cameras.entry(&row.msg.camera_id).or_default();
        camera.0 += 1;
        camera.1.insert(f.epoch);
        camera.2 = camera.2.max(f.newest);
    }
    for (camera, (frames, epochs, newest)) in cameras {
        tracing::warn!(
            camera,
            frames,
            ?epochs,
            newest,
            "frames of an older epoch than the camera's newest (a host that has lost the camera): fenced, to the dead-letter topic"
        );
        *part.fenced_frames.entry(camera.to_string()).or_default() += frames;
    }
    part.batch.take_rows(&fenced.iter().map(|f| f.index).collect());
    part.streams = None;
    Ok(())
}

/// The zone and line events of the frames accepted (all but those whose key conflicts), stored
/// new; how many.
async fn add_events(conn: &mut PgConnection, frames: &[Row], conflicts: &[FrameKey]) -> Result<u64, SinkError> {
    events::add(conn, &events::Rows::of(frames.iter().filter(|r| !conflicts.contains(&r.key())))).await
}

/// Finds the frames whose rows the database refuses: merges halves of the batch with their events
/// under savepoints, keeping what succeeds and splitting what fails, down to single frames (so a
/// frame whose events it refuses, a rule name its encoding lacks, is refused whole). Returns what
/// was merged, the refused frames' indexes with the database's error, and the events stored new.
async fn bisect(
    conn: &mut PgConnection,
    batch: &Batch,
    conflicts: &[FrameKey],
) -> Result<(statements::Merged, BTreeMap<usize, String>, u64), SinkError> {
    let mut merged = statements::Merged { frames: 0, detections: 0, new: Vec::new(), conflicts: Vec::new() };
    let mut refused = BTreeMap::new();
    let mut events = 0;
    let mut todo = vec![(0, batch.frames.len())];
    while let Some((lo, hi)) = todo.pop() {
        sqlx::query("SAVEPOINT bisect").execute(&mut *conn).await?;
        let frames = &batch.frames[lo..hi];
        let written = match statements::merge(conn, &copy_streams(frames)).await {
            Ok(m) => {
                let conflicting: Vec<FrameKey> = conflicts.iter().chain(&m.conflicts).cloned().collect();
                add_events(conn, frames, &conflicting).await.map(|e| (m, e))
            }
            Err(e) => Err(e),
        };
        match written {
            Ok((m, e)) => {
                sqlx::query("RELEASE SAVEPOINT bisect").execute(&mut *conn).await?;
                events += e;
                merged.frames += m.frames;
                merged.detections += m.detections;
                merged.new.extend(m.new);
                merged.conflicts.extend(m.conflicts);
            }
            Err(e) if e.db_fault() == Some(DbFault::Rows) => {
                sqlx::query("ROLLBACK TO SAVEPOINT bisect").execute(&mut *conn).await?;
                if hi - lo == 1 {
                    refused.insert(lo, format!("the database refused the frame's rows: {e}"));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((merged, refused, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_streams_for_a_frame_without_people() {
        let mut batch = Batch::default();
        assert_eq!(copy_streams(&batch.frames), Streams { keys: None, frames: None, parts: [None, None] });
        let msg = wire::FrameMessage {
            schema_version: 2,
            camera_id: "cam".into(),
            run_id: uuid::Uuid::from_u128(9),
            frame_seq: 5,
            captured_at: chrono::Utc::now(),
            pts_ms: 500,
            frame_width: 640,
            frame_height: 480,
            model: wire::ModelInfo { name: "m".into(), sha256: "0123abcd".into(), keypoints: 0 },
            detections: vec![],
            tracker: None,
            epoch: None,
        };
        batch.push(crate::message::Row::new(msg, crate::message::Consumed { partition: 2, offset: 41, key: None, payload: None }));
        // A frame with nobody in it is a frames row and no detections or tracks stream at all.
        let streams = copy_streams(&batch.frames);
        assert!(streams.keys.is_some() && streams.frames.is_some() && streams.parts == [None, None]);
    }
}
