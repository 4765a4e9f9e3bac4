//! The offset protocol: why every message is stored exactly once, whatever crashes, rebalances or
//! replays happen. This module holds its types and its SQL; it knows no Kafka client.
//!
//! **Invariant.** For each (consumer group, topic, partition), `sink_offsets.next_offset` is the
//! offset of the first message whose outcome (rows, or a dead letter) is not yet durable. The rows
//! of the messages in `[a, b)` are written in the one transaction that moves `next_offset` from
//! `a` to `b`, and that transaction commits only if `next_offset` is still `a` when it runs.
//!
//! The protocol, in the order a partition goes through it:
//! 1. **Read at assignment.** When the group assigns a partition, [`read`] takes its stored
//!    `next_offset` and the consumer is positioned there (`consume::GroupContext::rebalance`).
//!    That value is the partition's [`Fence`]: what this sink believes is stored. A partition
//!    whose offset cannot be read (the database is away) is [`Fence::Unknown`]: paused, its
//!    messages ignored, until `consume::resync` reads it and seeks there.
//! 2. **Track.** Each batch accounts, per partition, for a contiguous run of messages starting at
//!    the fence (stored rows, replays and dead letters alike) and ending at its next offset: one
//!    owner, `partition::Partitions`, refuses to account for any message but the next delivered.
//! 3. **Fenced store.** Each part of a batch begins its transaction with [`store`]: for every
//!    partition, `next_offset` moves from the fence to the batch's next offset *only if it still is
//!    the fence* (a row lock, so two writers of one partition queue up). A partition whose stored
//!    offset moved (another sink wrote it after a rebalance) is *fenced out*: the transaction rolls
//!    back, the part is written again without it, and the partition is re-read and sought to the
//!    stored offset (`consume::resync`). Otherwise the rows follow in the same transaction and
//!    the fence advances when it commits.
//! 4. **Commit to Kafka after.** Once the transaction is durable, the next offsets go to Kafka
//!    (`consume::commit`), for the partitions still assigned. Kafka's committed offsets therefore
//!    never run ahead of the database; they are only a fallback (and what lag tools read).
//!
//! **Why exactly once.** A message's rows become durable only with the offset move past it (3),
//! and that move happens once: a second transaction covering the same message would have to start
//! from the same fence, which the first one moved. A crash before the commit loses the rows and
//! the move together; the restarted sink reads the old offset (1) and does the work again. A crash
//! after it repeats nothing, because the position comes from the database, not from Kafka (4). On
//! a rebalance the old owner waits (bounded) for its write in flight before giving a partition up,
//! and drops the partition's rows it has not written yet, so the new owner reads an offset that is
//! already final; should the wait run out, the fence decides which of the two writes counts and
//! the other is rolled back. The natural keys remain, for what the protocol cannot see: a detector
//! that sends a frame twice (a file processed again); those are merged as replays, never stored
//! twice (`write`).

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};

use crate::error::SinkError;

/// What this sink believes `sink_offsets` holds for one assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// This next offset.
    Stored(i64),
    /// No row: nothing of this partition was ever stored by this group.
    Fresh,
    /// It could not be read; the partition waits to be read again (`consume::resync`).
    Unknown,
}

impl Fence {
    pub fn from_stored(stored: Option<i64>) -> Self {
        stored.map_or(Fence::Fresh, Fence::Stored)
    }

    /// Whether messages of this partition can be accounted for.
    pub fn known(self) -> bool {
        self != Fence::Unknown
    }
}

/// One partition's move in a transaction: from the fence to the batch's next offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    pub fence: Fence,
    pub next: i64,
}

/// The stored next offsets of these partitions (none for a partition never stored).
pub async fn read(pool: &PgPool, group: &str, topic: &str, partitions: &[i32]) -> Result<HashMap<i32, i64>, SinkError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM sink_offsets
         WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Step 3: moves every claimed partition's offset, each only if it still is the claim's fence.
/// Returns the partitions fenced out; the caller must then roll the transaction back.
pub async fn store(conn: &mut PgConnection, group: &str, topic: &str, claims: &[Claim]) -> Result<Vec<i32>, SinkError> {
    let mut partitions = Vec::with_capacity(claims.len());
    let mut fences: Vec<Option<i64>> = Vec::with_capacity(claims.len());
    let mut nexts = Vec::with_capacity(claims.len());
    for c in claims {
        let fence = match c.fence {
            Fence::Stored(at) => Some(at),
            Fence::Fresh => None,
            Fence::Unknown => unreachable!("an unknown partition's messages are not accounted for"),
        };
        partitions.push(c.partition);
        fences.push(fence);
        nexts.push(c.next);
    }
    // A fresh partition inserts its row; a known one updates it from the fence. Either way a row
    // that is not what this sink expects (another writer got there first) matches nothing.
    let moved: Vec<i32> = sqlx::query_scalar(
        "WITH claims AS (SELECT * FROM UNNEST($3::int[], $4::bigint[], $5::bigint[]) AS u(p, f, n)),
              inserted AS (INSERT INTO sink_offsets (consumer_group, topic, kafka_partition, next_offset)
                           SELECT $1, $2, p, n FROM claims WHERE f IS NULL
                           ON CONFLICT (consumer_group, topic, kafka_partition) DO NOTHING
                           RETURNING kafka_partition),
              updated AS (UPDATE sink_offsets AS s SET next_offset = c.n, updated_at = now() FROM claims c
                          WHERE s.consumer_group = $1 AND s.topic = $2 AND s.kafka_partition = c.p AND s.next_offset = c.f
                          RETURNING s.kafka_partition)
         SELECT kafka_partition FROM inserted UNION ALL SELECT kafka_partition FROM updated",
    )
    .bind(group)
    .bind(topic)
    .bind(&partitions)
    .bind(&fences)
    .bind(&nexts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(partitions.into_iter().filter(|p| !moved.contains(p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences() {
        assert_eq!(Fence::from_stored(None), Fence::Fresh);
        assert_eq!(Fence::from_stored(Some(7)), Fence::Stored(7));
        assert!(!Fence::Unknown.known() && Fence::Fresh.known());
    }
}
