//! Each assigned partition's state, in one owner: its fence (what the database holds, as far as
//! this sink knows), the offsets accounted for since, the message in hand and the messages queued
//! behind it. Pure: the loop (`pipeline`) tells it what happened and carries out what it answers;
//! the table tests at the bottom hold its rules.
//!
//! The rule it exists for: **no delivered message is skipped.** A partition's messages are
//! accounted for (a row in the batch, or a dead letter the broker acknowledged) one at a time, in
//! the order the consumer delivered them. A message that cannot be accounted for yet (it waits for
//! the schema registry, its dead letter is in flight, or the dead-letter topic refused it) keeps
//! every later message of its partition queued behind it, and [`Partitions::account`] refuses any
//! offset but the one in hand. So the next offset a batch stores is always just past a message
//! whose outcome is durable, and never past one whose outcome is not.
//!
//! Offsets the consumer never delivers (transaction markers, messages retention deleted before
//! this group read them) are a gap: the next delivered message is taken, and [`Check::gap`] says
//! which offsets were passed over, so the loop can say so.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use crate::error::SinkError;
use crate::message::Consumed;
use crate::offsets::{Claim, Fence};

/// Messages queued behind a dead letter on its way before its partition is paused.
pub const QUEUE_BEFORE_PAUSE: usize = 500;

/// Why the message in hand cannot be accounted for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The schema registry cannot be asked, or does not know the schema id yet.
    Registry,
    /// Its dead letter is on its way (the number tells this send from an older one).
    DeadLetter(u64),
    /// The dead-letter topic refused it: it can be neither stored nor dead-lettered, and nothing
    /// after it in its partition is accounted for until the sink starts again.
    Failed,
}

/// A message the loop is to check now (validate, then account for or hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub msg: Consumed,
    /// Offsets before it the consumer passed over, if any.
    pub gap: Option<Range<i64>>,
}

/// What became of a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Check it now.
    Check(Check),
    /// Queued behind the message in hand.
    Queued,
    /// Not to be accounted for: the partition is not ours, its fence is unknown (it is read again
    /// from the stored offset), or the offset was dealt with already (a delivery from before a seek).
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hand {
    /// Given to the loop to check.
    Checking(i64),
    Waiting(Consumed, Wait),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    fence: Fence,
    /// The next offset the batch with the writer stores, once durable.
    writing: Option<i64>,
    /// Just past the last message accounted for.
    accounted: Option<i64>,
    /// Just past the last message delivered and taken.
    delivered: Option<i64>,
    hand: Option<Hand>,
    queue: VecDeque<Consumed>,
}

impl State {
    fn new(fence: Fence) -> Self {
        State { fence, writing: None, accounted: None, delivered: None, hand: None, queue: VecDeque::new() }
    }

    /// The offset the next message accounted for should have, if known.
    fn expected(&self) -> Option<i64> {
        match self.fence {
            Fence::Stored(n) => Some(self.accounted.unwrap_or(n)),
            Fence::Fresh | Fence::Unknown => self.accounted,
        }
    }

    fn check(&mut self, msg: Consumed) -> Check {
        let gap = self.expected().filter(|e| *e < msg.offset).map(|e| e..msg.offset);
        self.hand = Some(Hand::Checking(msg.offset));
        Check { msg, gap }
    }
}

/// A refused transition: a bug in the loop, never a message's fault. The sink stops; nothing
/// past the last durable offset was stored, so a restart is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition {partition}: {what}")]
pub struct Refused {
    pub partition: i32,
    pub what: String,
}

impl From<Refused> for SinkError {
    fn from(r: Refused) -> Self {
        SinkError::Invariant(r.to_string())
    }
}

/// The assigned partitions' states.
#[derive(Debug, Default)]
pub struct Partitions {
    states: BTreeMap<i32, State>,
    /// Numbers dead-letter sends, so that a send's completion is matched to the message it was for.
    sends: u64,
}

impl Partitions {
    pub fn assign(&mut self, partition: i32, fence: Fence) {
        self.states.insert(partition, State::new(fence));
    }

    pub fn revoke(&mut self, partition: i32) {
        self.states.remove(&partition);
    }

    pub fn is_assigned(&self, partition: i32) -> bool {
        self.states.contains_key(&partition)
    }

    pub fn assigned(&self) -> BTreeSet<i32> {
        self.states.keys().copied().collect()
    }

    /// Each assigned partition's fence: what the database holds, as far as this sink knows.
    pub fn fences(&self) -> impl Iterator<Item = (i32, Fence)> + '_ {
        self.states.iter().map(|(p, s)| (*p, s.fence))
    }

    /// Partitions whose fence must be read again before their messages count.
    pub fn unknown(&self) -> Vec<i32> {
        self.states.iter().filter(|(_, s)| s.fence == Fence::Unknown).map(|(p, _)| *p).collect()
    }

    /// Partitions to pause (the consumer is still polled): their fence is unknown, or their
    /// message in hand waits for the registry (which can take long) or failed, or its dead letter
    /// has [`QUEUE_BEFORE_PAUSE`] messages queued behind it. A dead letter normally takes a
    /// round trip, and pausing costs a fetch (librdkafka drops what it prefetched), so a
    /// partition keeps being read behind one until its queue says the send is slow.
    pub fn waiting(&self) -> BTreeSet<i32> {
        self.states
            .iter()
            .filter(|(_, s)| match &s.hand {
                _ if s.fence == Fence::Unknown => true,
                Some(Hand::Waiting(_, Wait::Registry | Wait::Failed)) => true,
                Some(Hand::Waiting(_, Wait::DeadLetter(_))) => s.queue.len() >= QUEUE_BEFORE_PAUSE,
                _ => false,
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Partitions whose message in hand waits for the registry.
    pub fn waiting_for_registry(&self) -> Vec<i32> {
        self.states.iter().filter(|(_, s)| matches!(s.hand, Some(Hand::Waiting(_, Wait::Registry)))).map(|(p, _)| *p).collect()
    }

    /// Dead letters on their way.
    pub fn dead_letters_in_flight(&self) -> usize {
        self.states.values().filter(|s| matches!(s.hand, Some(Hand::Waiting(_, Wait::DeadLetter(_))))).count()
    }

    /// A message the consumer delivered.
    pub fn deliver(&mut self, msg: Consumed) -> Delivered {
        let Some(s) = self.states.get_mut(&msg.partition) else { return Delivered::Ignored };
        if s.fence == Fence::Unknown {
            return Delivered::Ignored;
        }
        // Below what was taken or accounted for already: delivered before a seek moved the position.
        let floor = [s.delivered, s.expected()].into_iter().flatten().max();
        if floor.is_some_and(|f| msg.offset < f) {
            return Delivered::Ignored;
        }
        s.delivered = Some(msg.offset + 1);
        if s.hand.is_some() {
            s.queue.push_back(msg);
            return Delivered::Queued;
        }
        Delivered::Check(s.check(msg))
    }

    /// The message in hand is dealt with: its row is in the batch, or its dead letter is durable.
    pub fn account(&mut self, partition: i32, offset: i64) -> Result<(), Refused> {
        let refused = |what: String| Refused { partition, what };
        let s = self.states.get_mut(&partition).ok_or_else(|| refused(format!("offset {offset} accounted for, but not assigned")))?;
        let in_hand = match &s.hand {
            Some(Hand::Checking(o)) => Some(*o),
            Some(Hand::Waiting(m, Wait::DeadLetter(_))) => Some(m.offset),
            _ => None,
        };
        if in_hand != Some(offset) {
            return Err(refused(format!("offset {offset} accounted for, but the message in hand is {:?}", s.hand)));
        }
        s.accounted = Some(offset + 1);
        s.hand = None;
        Ok(())
    }

    /// The message being checked must wait; returns the number of a dead-letter send.
    pub fn hold(&mut self, msg: Consumed, wait: Wait) -> Result<(), Refused> {
        let partition = msg.partition;
        let s = self.states.get_mut(&partition).ok_or(Refused { partition, what: "a message held, but not assigned".into() })?;
        if s.hand != Some(Hand::Checking(msg.offset)) {
            return Err(Refused { partition, what: format!("offset {} held, but the message in hand is {:?}", msg.offset, s.hand) });
        }
        s.hand = Some(Hand::Waiting(msg, wait));
        Ok(())
    }

    /// Holds the message being checked for its dead letter; the send's number.
    pub fn hold_for_dead_letter(&mut self, msg: Consumed) -> Result<u64, Refused> {
        self.sends += 1;
        self.hold(msg, Wait::DeadLetter(self.sends))?;
        Ok(self.sends)
    }

    /// A dead-letter send ended. Delivered (`ok`): the message is accounted for. Refused: it stays
    /// in hand, failed. A send for a message no longer in hand (its partition was revoked, or read
    /// again) changes nothing: false.
    pub fn dead_letter_done(&mut self, partition: i32, send: u64, ok: bool) -> bool {
        let Some(s) = self.states.get_mut(&partition) else { return false };
        let Some(Hand::Waiting(m, Wait::DeadLetter(n))) = &mut s.hand else { return false };
        if *n != send {
            return false;
        }
        if ok {
            s.accounted = Some(m.offset + 1);
            s.hand = None;
        } else {
            s.hand = Some(Hand::Waiting(m.clone(), Wait::Failed));
        }
        true
    }

    /// The message that waits for the registry, to be checked again (then accounted for or held).
    pub fn retake(&mut self, partition: i32) -> Option<Consumed> {
        let s = self.states.get_mut(&partition)?;
        match s.hand.take() {
            Some(Hand::Waiting(m, Wait::Registry)) => {
                s.hand = Some(Hand::Checking(m.offset));
                Some(m)
            }
            other => {
                s.hand = other;
                None
            }
        }
    }

    /// The next queued message to check, once nothing is in hand.
    pub fn next(&mut self, partition: i32) -> Option<Check> {
        let s = self.states.get_mut(&partition)?;
        if s.hand.is_some() {
            return None;
        }
        let msg = s.queue.pop_front()?;
        Some(s.check(msg))
    }

    /// What a batch handed to the writer now stores: every partition with messages accounted for
    /// past its fence moves from the fence to just past them. One batch is written at a time.
    pub fn claim(&mut self) -> BTreeMap<i32, Claim> {
        let mut claims = BTreeMap::new();
        for (p, s) in &mut self.states {
            let Some(next) = s.accounted else { continue };
            let from = match s.fence {
                Fence::Stored(n) => Some(n),
                Fence::Fresh => None,
                Fence::Unknown => continue,
            };
            if s.writing.is_none() && from.is_none_or(|n| n < next) {
                s.writing = Some(next);
                claims.insert(*p, Claim { partition: *p, fence: s.fence, next });
            }
        }
        claims
    }

    /// The batch with the writer is durable: these partitions stored these next offsets.
    pub fn durable(&mut self, stored: &BTreeMap<i32, i64>) {
        for (p, next) in stored {
            if let Some(s) = self.states.get_mut(p).filter(|s| s.writing == Some(*next)) {
                s.fence = Fence::Stored(*next);
                s.writing = None;
            }
        }
    }

    /// Another sink stored this partition's offset since this one read it (or it could not be read):
    /// all of it is forgotten until it is read again from the stored offset.
    pub fn forget(&mut self, partition: i32) {
        if let Some(s) = self.states.get_mut(&partition) {
            *s = State::new(Fence::Unknown);
        }
    }

    /// The stored offset was read again (and the consumer sought there).
    pub fn resynced(&mut self, partition: i32, fence: Fence) {
        if let Some(s) = self.states.get_mut(&partition).filter(|s| s.fence == Fence::Unknown) {
            *s = State::new(fence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> Consumed {
        Consumed { partition, offset, key: None, payload: Some(vec![b'x']) }
    }

    fn check(partition: i32, offset: i64, gap: Option<Range<i64>>) -> Delivered {
        Delivered::Check(Check { msg: msg(partition, offset), gap })
    }

    /// One step and what it should answer.
    enum Step {
        Assign(i32, Fence),
        Deliver(Consumed, Delivered),
        Account(i32, i64, bool),
        Hold(Consumed, Wait, bool),
        DeadLetter(i32, u64, bool, bool),
        Retake(i32, Option<i64>),
        Next(i32, Option<Delivered>),
        Claim(Vec<(i32, Fence, i64)>),
        Durable(Vec<(i32, i64)>),
        Forget(i32),
        Resynced(i32, Fence),
        Revoke(i32),
        Waiting(Vec<i32>),
    }
    use Step::*;

    fn run(what: &str, steps: Vec<Step>) {
        let mut p = Partitions::default();
        for (i, step) in steps.into_iter().enumerate() {
            let at = format!("{what}, step {i}");
            match step {
                Assign(n, f) => p.assign(n, f),
                Deliver(m, want) => assert_eq!(p.deliver(m), want, "{at}"),
                Account(n, o, ok) => assert_eq!(p.account(n, o).is_ok(), ok, "{at}"),
                Hold(m, w, ok) => assert_eq!(p.hold(m, w).is_ok(), ok, "{at}"),
                DeadLetter(n, send, delivered, matched) => assert_eq!(p.dead_letter_done(n, send, delivered), matched, "{at}"),
                Retake(n, want) => assert_eq!(p.retake(n).map(|m| m.offset), want, "{at}"),
                Next(n, want) => assert_eq!(p.next(n).map(Delivered::Check), want, "{at}"),
                Claim(want) => {
                    let got: Vec<(i32, Fence, i64)> = p.claim().into_values().map(|c| (c.partition, c.fence, c.next)).collect();
                    assert_eq!(got, want, "{at}");
                }
                Durable(stored) => p.durable(&stored.into_iter().collect()),
                Forget(n) => p.forget(n),
                Resynced(n, f) => p.resynced(n, f),
                Revoke(n) => p.revoke(n),
                Waiting(want) => assert_eq!(p.waiting().into_iter().collect::<Vec<_>>(), want, "{at}"),
            }
        }
    }

    #[test]
    fn messages_are_accounted_for_in_order() {
        run(
            "in order",
            vec![
                Assign(0, Fence::Stored(10)),
                Deliver(msg(0, 10), check(0, 10, None)),
                Account(0, 10, true),
                Deliver(msg(0, 11), check(0, 11, None)),
                Account(0, 11, true),
                Claim(vec![(0, Fence::Stored(10), 12)]),
                Claim(vec![]),
                Deliver(msg(0, 12), check(0, 12, None)),
                Account(0, 12, true),
                Claim(vec![]), // one batch with the writer at a time
                Durable(vec![(0, 12)]),
                Claim(vec![(0, Fence::Stored(12), 13)]),
            ],
        );
        run(
            "a fresh partition starts where the consumer does",
            vec![
                Assign(3, Fence::Fresh),
                Deliver(msg(3, 500), check(3, 500, None)),
                Account(3, 500, true),
                Claim(vec![(3, Fence::Fresh, 501)]),
            ],
        );
    }

    #[test]
    fn nothing_but_the_message_in_hand_is_accounted_for() {
        run(
            "refused",
            vec![
                Assign(0, Fence::Stored(0)),
                Account(0, 0, false), // nothing delivered
                Account(1, 0, false), // not assigned
                Deliver(msg(0, 0), check(0, 0, None)),
                Account(0, 1, false), // not the one in hand
                Account(0, 0, true),
                Account(0, 0, false), // twice
            ],
        );
    }

    /// Issue 16's first fault: messages held for the registry, the second of which the
    /// dead-letter topic refuses. The third must not be accounted for: the stored offset stops at
    /// the refused one.
    #[test]
    fn a_refused_dead_letter_keeps_every_later_message_of_its_partition_out() {
        run(
            "refused dead letter",
            vec![
                Assign(0, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Hold(msg(0, 0), Wait::Registry, true),
                Deliver(msg(0, 1), Delivered::Queued),
                Deliver(msg(0, 2), Delivered::Queued),
                Waiting(vec![0]),
                // The registry is back.
                Retake(0, Some(0)),
                Account(0, 0, true),
                Next(0, Some(check(0, 1, None))),
                Hold(msg(0, 1), Wait::DeadLetter(1), true),
                Next(0, None),
                DeadLetter(0, 1, false, true), // refused: failed, in hand for good
                Next(0, None),
                Account(0, 2, false),
                Retake(0, None),
                Waiting(vec![0]),
                Claim(vec![(0, Fence::Stored(0), 1)]),
            ],
        );
    }

    #[test]
    fn dead_letters_complete_in_their_partition_only() {
        run(
            "dead letters",
            vec![
                Assign(0, Fence::Stored(0)),
                Assign(1, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Hold(msg(0, 0), Wait::DeadLetter(7), true),
                Deliver(msg(0, 1), Delivered::Queued),
                // Partition 1 goes on meanwhile; partition 0 is read on, its messages queued.
                Deliver(msg(1, 0), check(1, 0, None)),
                Account(1, 0, true),
                Waiting(vec![]),
                DeadLetter(0, 6, true, false), // another send's completion
                DeadLetter(0, 7, true, true),
                Waiting(vec![]),
                Next(0, Some(check(0, 1, None))),
                Account(0, 1, true),
                Claim(vec![(0, Fence::Stored(0), 2), (1, Fence::Stored(0), 1)]),
            ],
        );
        run(
            "a send that ends after its partition was given up and taken again",
            vec![
                Assign(0, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Hold(msg(0, 0), Wait::DeadLetter(1), true),
                Revoke(0),
                DeadLetter(0, 1, true, false),
                Assign(0, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Hold(msg(0, 0), Wait::DeadLetter(2), true),
                DeadLetter(0, 1, true, false),
                DeadLetter(0, 2, true, true),
                Claim(vec![(0, Fence::Stored(0), 1)]),
            ],
        );
    }

    #[test]
    fn a_slow_dead_letter_pauses_its_partition_once_enough_is_queued_behind_it() {
        let mut p = Partitions::default();
        p.assign(0, Fence::Stored(0));
        assert_eq!(p.deliver(msg(0, 0)), check(0, 0, None));
        p.hold_for_dead_letter(msg(0, 0)).unwrap();
        for o in 1..QUEUE_BEFORE_PAUSE as i64 {
            assert_eq!(p.deliver(msg(0, o)), Delivered::Queued);
        }
        assert!(p.waiting().is_empty());
        assert_eq!(p.deliver(msg(0, QUEUE_BEFORE_PAUSE as i64)), Delivered::Queued);
        assert_eq!(p.waiting(), BTreeSet::from([0]));
        assert!(p.dead_letter_done(0, 1, true));
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn gaps_and_stale_deliveries() {
        run(
            "offsets the consumer passes over are a gap, named",
            vec![
                Assign(0, Fence::Stored(10)),
                Deliver(msg(0, 14), check(0, 14, Some(10..14))),
                Account(0, 14, true),
                Deliver(msg(0, 16), check(0, 16, Some(15..16))),
                Account(0, 16, true),
                Deliver(msg(0, 12), Delivered::Ignored), // from before a seek
                Claim(vec![(0, Fence::Stored(10), 17)]),
            ],
        );
        run(
            "nothing is taken from a partition that is not ours or not known",
            vec![
                Deliver(msg(0, 0), Delivered::Ignored),
                Assign(0, Fence::Unknown),
                Deliver(msg(0, 0), Delivered::Ignored),
                Waiting(vec![0]),
                Claim(vec![]),
                Resynced(0, Fence::Stored(5)),
                Waiting(vec![]),
                Deliver(msg(0, 4), Delivered::Ignored),
                Deliver(msg(0, 5), check(0, 5, None)),
            ],
        );
    }

    #[test]
    fn a_fenced_partition_is_forgotten_until_read_again() {
        run(
            "fenced",
            vec![
                Assign(0, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Account(0, 0, true),
                Claim(vec![(0, Fence::Stored(0), 1)]),
                Deliver(msg(0, 1), check(0, 1, None)),
                Hold(msg(0, 1), Wait::Registry, true),
                Deliver(msg(0, 2), Delivered::Queued),
                Forget(0), // another sink stored it meanwhile
                Durable(vec![]),
                Retake(0, None),
                Next(0, None),
                Deliver(msg(0, 3), Delivered::Ignored),
                Claim(vec![]),
                Resynced(0, Fence::Stored(40)),
                Deliver(msg(0, 40), check(0, 40, None)),
                Account(0, 40, true),
                Claim(vec![(0, Fence::Stored(40), 41)]),
            ],
        );
        run(
            "a durable write for a partition assigned again since is not taken for the new fence",
            vec![
                Assign(0, Fence::Stored(0)),
                Deliver(msg(0, 0), check(0, 0, None)),
                Account(0, 0, true),
                Claim(vec![(0, Fence::Stored(0), 1)]),
                Revoke(0),
                Assign(0, Fence::Stored(0)),
                Durable(vec![(0, 1)]),
                Deliver(msg(0, 0), check(0, 0, None)),
                Account(0, 0, true),
                Claim(vec![(0, Fence::Stored(0), 1)]),
            ],
        );
    }

    #[test]
    fn a_hold_must_be_for_the_message_being_checked() {
        run(
            "holds",
            vec![
                Assign(0, Fence::Fresh),
                Hold(msg(0, 0), Wait::Registry, false),
                Deliver(msg(0, 0), check(0, 0, None)),
                Hold(msg(0, 1), Wait::Registry, false),
                Hold(msg(0, 0), Wait::Registry, true),
                Hold(msg(0, 0), Wait::Registry, false), // already waiting
                Retake(0, Some(0)),
                Hold(msg(0, 0), Wait::Registry, true),
            ],
        );
    }
}
