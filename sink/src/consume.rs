//! Kafka consumption in a consumer group: the first stage of the sink, and the Kafka side of the
//! offset protocol (`offsets`). The rebalance callback carries out step 1 and (on revocation) the
//! drain: each assigned partition starts at the next offset stored in PostgreSQL with the rows,
//! and a revoked partition is given up only once the write in flight is durable (bounded).
//! [`resync`] positions a partition again from the stored offset, [`commit`] tells Kafka what is
//! durable (step 4).
//!
//! Members are static (`group.instance.id`): a sink that restarts within the session timeout gets
//! its partitions back at once, with no rebalance of the others.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::config::RunArgs;
use crate::error::SinkError;
use crate::message::Consumed;
use crate::offsets::{self, Fence};

/// The consumer's context: positions assigned partitions from the database, notes what a rebalance
/// changed for the loop (it writes its batch at once after a revocation), and keeps where the
/// partitions' logs end, from librdkafka's statistics.
pub struct GroupContext {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    group: String,
    topic: String,
    /// True while the writer has a batch: a revocation waits for it, at most `revoke_wait`.
    writer_busy: tokio::sync::watch::Receiver<bool>,
    revoke_wait: Duration,
    /// What the group changed since the loop last looked.
    changes: Mutex<Changes>,
    /// Per partition: the first and the next offset of its log, from librdkafka's statistics.
    logs: Mutex<BTreeMap<i32, (i64, i64)>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }

    /// Where each partition's log ends (its last stable offset: what `read_committed` may read),
    /// and where it begins, for the lag the loop computes from the stored offsets.
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else { return };
        let mut logs = self.logs.lock().unwrap();
        for p in topic.partitions.values().filter(|p| p.partition >= 0 && p.ls_offset >= 0) {
            logs.insert(p.partition, (p.lo_offset.max(0), p.ls_offset));
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let fences = self.stored_offsets(&partitions);
                for (partition, fence) in &fences {
                    if let Fence::Stored(next) = fence {
                        if let Err(e) = tpl.set_partition_offset(&self.topic, *partition, Offset::Offset(*next)) {
                            tracing::warn!(partition, error = %e, "cannot position partition");
                        }
                    }
                }
                tracing::info!(partitions = ?partitions, fences = ?fences, "partitions assigned");
                self.changes.lock().unwrap().assigned.extend(fences);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?partitions, "partitions revoked");
                self.changes.lock().unwrap().revoked.extend(&partitions);
                self.wait_for_writer();
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
    }
}

impl GroupContext {
    /// Each partition's fence: its stored next offset, none yet, or unknown when the database
    /// cannot be read now (the loop pauses those and reads them again). Called from librdkafka's
    /// rebalance callback, which cannot await, hence the blocking bridge.
    fn stored_offsets(&self, partitions: &[i32]) -> Vec<(i32, Fence)> {
        let read = tokio::task::block_in_place(|| {
            self.runtime
                .block_on(tokio::time::timeout(Duration::from_secs(10), offsets::read(&self.pool, &self.group, &self.topic, partitions)))
        });
        match read {
            Ok(Ok(stored)) => partitions.iter().map(|p| (*p, Fence::from_stored(stored.get(p).copied()))).collect(),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(error = %why, "cannot read stored offsets: the partitions wait until they can be read");
                partitions.iter().map(|p| (*p, Fence::Unknown)).collect()
            }
        }
    }

    /// A revoked partition's rows in flight are made durable before the partition is given up, so
    /// the next owner reads a final offset; at most `revoke_wait` (the fence covers a longer write).
    fn wait_for_writer(&self) {
        let mut busy = self.writer_busy.clone();
        if !*busy.borrow() {
            return;
        }
        let t = Instant::now();
        let waited = tokio::task::block_in_place(|| self.runtime.block_on(tokio::time::timeout(self.revoke_wait, busy.wait_for(|b| !*b))));
        match waited {
            Ok(_) => tracing::info!(ms = t.elapsed().as_millis() as u64, "waited for the write in flight before giving partitions up"),
            Err(_) => {
                tracing::warn!(ms = t.elapsed().as_millis() as u64, "the write in flight outlasted the revoke wait; its offsets are fenced")
            }
        }
    }

    /// Per partition: the first and the next offset of its log, as last reported.
    pub fn logs(&self) -> BTreeMap<i32, (i64, i64)> {
        self.logs.lock().unwrap().clone()
    }

    /// What the group changed since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap())
    }
}

/// A rebalance's effect, as the loop needs it.
#[derive(Debug, Default)]
pub struct Changes {
    pub revoked: Vec<i32>,
    pub assigned: Vec<(i32, Fence)>,
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

pub fn connect(args: &RunArgs, pool: &PgPool, writer_busy: tokio::sync::watch::Receiver<bool>) -> Result<GroupConsumer, SinkError> {
    let mut cfg = ClientConfig::new();
    cfg.set("group.id", &args.group_id)
        .set("group.instance.id", &args.instance_id)
        .set("client.id", format!("sink-{}", args.instance_id))
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets are committed by hand, only after the rows are durable.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only committed transactions of producers that use them.
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", (args.report_every_s * 1000).to_string())
        // What librdkafka prefetches ahead of the loop (default 64 MB): with the batch cap, the
        // bound on the sink's memory while the database is slow or away.
        .set("queued.max.messages.kbytes", "16384");
    args.kafka.apply(&mut cfg);
    let context = GroupContext {
        pool: pool.clone(),
        runtime: tokio::runtime::Handle::current(),
        group: args.group_id.clone(),
        topic: args.kafka.topic.clone(),
        writer_busy,
        revoke_wait: Duration::from_secs(args.revoke_wait_s),
        changes: Mutex::new(Changes::default()),
        logs: Mutex::new(BTreeMap::new()),
    };
    let consumer: GroupConsumer =
        cfg.create_with_context(context).map_err(|e| SinkError::Config(format!("kafka consumer settings: {e}")))?;
    consumer.subscribe(&[&args.kafka.topic])?;
    Ok(consumer)
}

pub async fn next(consumer: &GroupConsumer) -> Result<Consumed, SinkError> {
    let m = consumer.recv().await?;
    Ok(Consumed {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
    })
}

/// Where a partition must be read from again, and its fence: after a fence failure, or when its
/// offset could not be read at assignment. Seeks the consumer there.
pub async fn resync(consumer: &GroupConsumer, pool: &PgPool, group: &str, topic: &str, partition: i32) -> Result<Fence, SinkError> {
    let stored = offsets::read(pool, group, topic, &[partition]).await?.get(&partition).copied();
    let position = match stored {
        Some(next) => Offset::Offset(next),
        // Never stored: where the group's Kafka offset says, as at a fresh assignment.
        None => {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            let committed = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(10)))?;
            match committed.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            }
        }
    };
    tokio::task::block_in_place(|| consumer.seek(topic, partition, position, Duration::from_secs(10)))?;
    tracing::info!(partition, ?position, "partition re-read from the stored offset");
    Ok(Fence::from_stored(stored))
}

/// Step 4 of the offset protocol: the next offsets to Kafka, once they are durable in the
/// database; only for the partitions still assigned, so that a partition given up does not get
/// an old offset.
pub fn commit(consumer: &GroupConsumer, topic: &str, next: &BTreeMap<i32, i64>, mode: CommitMode) -> Result<(), SinkError> {
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in next {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    if tpl.count() > 0 {
        consumer.commit(&tpl, mode)?;
    }
    Ok(())
}
