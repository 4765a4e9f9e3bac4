//! The sink loop's decisions, as one pure function of what the loop knows: whether to hand the
//! batch to the writer now, which partitions to pause, and whether the loop is done. The loop
//! (`pipeline`) only carries them out, so every rule is here, tested by the table below.
//!
//! Consumption never stops for long by not polling: past `max.poll.interval.ms` without a poll the
//! group would throw this sink out. A full batch waits for a quick write without taking more
//! messages (they stay in the consumer's queue) for at most [`HOLD`]; whatever holds messages back
//! longer (a slow write, a database that is away, a partition waiting for the schema registry or
//! for its stored offset) pauses partitions instead, and the consumer keeps being polled. Pausing
//! costs a fetch: librdkafka drops what it had prefetched for a paused partition.

use std::collections::BTreeSet;
use std::time::Duration;

/// When a batch is written, and how large it may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Write as soon as the writer is idle, whatever the batch holds: at live rates a frame is
    /// written alone the moment it comes, and under load the next batch grows while a write is in
    /// flight, so batches are as large as the load makes them. Without it a batch waits to fill...
    pub write_when_idle: bool,
    /// ...up to this many rows...
    pub batch_rows: usize,
    /// ...or this age: with `write_when_idle` only a bound, since an idle writer takes it at once.
    pub batch_age: Duration,
    /// ...and never let it grow past this many while the writer is busy or the database away:
    /// the bound on what the sink holds in memory.
    pub batch_max_rows: usize,
}

/// How long a full batch may wait for the write in flight before partitions are paused.
pub const HOLD: Duration = Duration::from_secs(1);

/// What the loop knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Rows (frames + detections) in the batch being gathered, and how long since its first message.
    pub batch_rows: usize,
    pub batch_age: Option<Duration>,
    /// A batch is with the writer, since this long.
    pub writing: Option<Duration>,
    /// The writer cannot reach the database.
    pub database_down: bool,
    /// Shutdown was asked.
    pub stopping: bool,
    pub assigned: BTreeSet<i32>,
    /// Partitions whose next message waits (for the schema registry, for its dead letter, or to
    /// be re-read from the stored offset).
    pub waiting: BTreeSet<i32>,
    /// Dead-letter sends on their way.
    pub dead_letters: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Hand the batch to the writer now.
    pub write: bool,
    /// Take the next message (else wait, without polling, for the write in flight: at most [`HOLD`]).
    pub consume: bool,
    /// Exactly these partitions are to be paused; the other assigned ones consume.
    pub pause: BTreeSet<i32>,
    /// Nothing left to do: the loop ends.
    pub done: bool,
}

pub fn decide(v: &View, p: &Policy) -> Decision {
    let gathered = v.batch_age.is_some();
    let writing = v.writing.is_some();
    let due = p.write_when_idle || v.batch_rows >= p.batch_rows || v.batch_age.is_some_and(|a| a >= p.batch_age) || v.stopping;
    let write = gathered && !writing && due;
    // The batch cannot go out now and is as large as it may be: hold everything back, briefly
    // by not taking messages, for longer by pausing.
    let full = v.batch_rows >= p.batch_max_rows && writing;
    let brief = full && !v.database_down && v.writing.is_some_and(|w| w < HOLD);
    let hold_all = v.database_down || (full && !brief) || v.stopping;
    let pause = if hold_all { v.assigned.clone() } else { v.assigned.intersection(&v.waiting).copied().collect() };
    Decision { write, consume: !brief, pause, done: v.stopping && !gathered && !writing && v.dead_letters == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches that wait to fill (`--write-when-idle false`).
    const POLICY: Policy = Policy { write_when_idle: false, batch_rows: 100, batch_age: Duration::from_millis(200), batch_max_rows: 400 };
    /// The default: written as soon as the writer is idle.
    const IDLE: Policy = Policy { write_when_idle: true, ..POLICY };

    fn set(v: &[i32]) -> BTreeSet<i32> {
        v.iter().copied().collect()
    }

    fn view() -> View {
        View { assigned: set(&[0, 1, 2, 3]), ..View::default() }
    }

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    /// (what, view, write, consume, pause, done)
    type Case = (&'static str, View, bool, bool, BTreeSet<i32>, bool);

    #[test]
    fn decisions() {
        let all = set(&[0, 1, 2, 3]);
        let none = set(&[]);
        let busy = |n| Some(Duration::from_millis(n));
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing gathered", view(), false, true, none.clone(), false),
            ("a young small batch waits", View { batch_rows: 10, batch_age: ms(50), ..view() }, false, true, none.clone(), false),
            ("a full batch is written", View { batch_rows: 100, batch_age: ms(1), ..view() }, true, true, none.clone(), false),
            ("an old batch is written", View { batch_rows: 1, batch_age: ms(200), ..view() }, true, true, none.clone(), false),
            ("one write at a time", View { batch_rows: 150, batch_age: ms(500), writing: busy(10), ..view() }, false, true, none.clone(), false),
            ("while writing, the next batch grows", View { batch_rows: 399, batch_age: ms(500), writing: busy(10), ..view() }, false, true, none.clone(), false),
            ("at its cap, a quick write is waited for", View { batch_rows: 400, batch_age: ms(500), writing: busy(999), ..view() }, false, false, none.clone(), false),
            ("at its cap, a slow write: all paused, still polled", View { batch_rows: 400, batch_age: ms(500), writing: busy(1000), ..view() }, false, true, all.clone(), false),
            ("at its cap, writer idle: written, nothing paused", View { batch_rows: 400, batch_age: ms(1), ..view() }, true, true, none.clone(), false),
            ("database away: everything paused", View { batch_rows: 5, batch_age: ms(10), writing: busy(10), database_down: true, ..view() }, false, true, all.clone(), false),
            ("database away, at the cap: paused, polled", View { batch_rows: 400, batch_age: ms(10), writing: busy(10), database_down: true, ..view() }, false, true, all.clone(), false),
            ("database away, nothing gathered yet", View { writing: busy(10), database_down: true, ..view() }, false, true, all.clone(), false),
            ("a partition waiting for the registry is paused", View { waiting: set(&[2]), ..view() }, false, true, set(&[2]), false),
            ("waiting, but no longer ours", View { waiting: set(&[7]), ..view() }, false, true, none.clone(), false),
            ("stopping: the last batch goes out", View { batch_rows: 3, batch_age: ms(1), stopping: true, ..view() }, true, true, all.clone(), false),
            ("stopping: wait for the write", View { writing: busy(10), stopping: true, ..view() }, false, true, all.clone(), false),
            ("stopping: wait for the dead letters on their way", View { stopping: true, dead_letters: 1, ..view() }, false, true, all.clone(), false),
            ("stopping: done", View { stopping: true, ..view() }, false, true, all.clone(), true),
            ("a partition waiting for its dead letter is paused alone", View { waiting: set(&[1]), dead_letters: 1, ..view() }, false, true, set(&[1]), false),
        ];
        for (what, v, write, consume, pause, done) in cases {
            let d = decide(&v, &POLICY);
            assert_eq!(d, Decision { write, consume, pause, done }, "{what}");
        }
    }

    #[test]
    fn decisions_when_written_as_soon_as_the_writer_is_idle() {
        let all = set(&[0, 1, 2, 3]);
        let none = set(&[]);
        let busy = |n| Some(Duration::from_millis(n));
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing gathered: nothing to write", view(), false, true, none.clone(), false),
            ("one young frame goes out at once", View { batch_rows: 1, batch_age: ms(0), ..view() }, true, true, none.clone(), false),
            ("while writing, the next batch grows", View { batch_rows: 150, batch_age: ms(5), writing: busy(10), ..view() }, false, true, none.clone(), false),
            ("the writer back: what grew goes out", View { batch_rows: 150, batch_age: ms(30), ..view() }, true, true, none.clone(), false),
            ("at its cap, a quick write is waited for", View { batch_rows: 400, batch_age: ms(5), writing: busy(999), ..view() }, false, false, none.clone(), false),
            ("at its cap, a slow write: all paused, still polled", View { batch_rows: 400, batch_age: ms(5), writing: busy(1000), ..view() }, false, true, all.clone(), false),
            ("database away: everything paused", View { batch_rows: 5, batch_age: ms(10), writing: busy(10), database_down: true, ..view() }, false, true, all.clone(), false),
            ("stopping: done", View { stopping: true, ..view() }, false, true, all.clone(), true),
        ];
        for (what, v, write, consume, pause, done) in cases {
            let d = decide(&v, &IDLE);
            assert_eq!(d, Decision { write, consume, pause, done }, "{what}");
        }
    }
}
