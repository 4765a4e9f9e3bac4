//! Kafka consumption in a consumer group: the first stage of the sink.
//!
//! On every assignment each partition starts at the next offset stored in PostgreSQL with the rows
//! (`sink_offsets`), not at Kafka's committed offset: the database is the record of what has been
//! written, so a crash between the database commit and the Kafka commit repeats nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::config::RunArgs;
use crate::error::SinkError;
use crate::telemetry;

/// The context of the sink's producer (dead letters): librdkafka's logs only.
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }
}

/// The consumer's context: positions assigned partitions from the database, notes what a rebalance
/// changed for the loop (it writes its batch at once after a revocation), and logs lag from librdkafka's statistics.
pub struct GroupContext {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    group: String,
    topic: String,
    /// Partitions revoked since the loop last looked, and whether anything was assigned.
    changes: Mutex<Changes>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        common::kafka::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        common::kafka::log_client_error(error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let mut lag: Vec<(i32, i64)> = stats
            .topics
            .get(&self.topic)
            .map(|t| {
                t.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0).map(|p| (p.partition, p.consumer_lag)).collect()
            })
            .unwrap_or_default();
        lag.sort();
        for (partition, messages) in &lag {
            metrics::gauge!(telemetry::LAG, "partition" => partition.to_string()).set(*messages as f64);
        }
        if !lag.is_empty() {
            tracing::info!(lag = ?lag, total = lag.iter().map(|(_, l)| l).sum::<i64>(), "consumer lag (partition, messages)");
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.stored_offsets(&partitions);
                for (partition, next) in &stored {
                    if let Err(e) = tpl.set_partition_offset(&self.topic, *partition, Offset::Offset(*next)) {
                        tracing::warn!(partition, error = %e, "cannot position partition");
                    }
                }
                tracing::info!(partitions = ?partitions, from_database = ?stored, "partitions assigned");
                self.changes.lock().unwrap().assigned = true;
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = ?partitions, "partitions revoked");
                self.changes.lock().unwrap().revoked.extend(&partitions);
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
    /// The next offsets the database holds for these partitions. Called from librdkafka's
    /// rebalance callback, which cannot await, hence the blocking bridge. If the database cannot be
    /// read, Kafka's committed offsets apply: they never run ahead of the database (the sink
    /// commits to Kafka only after it), so the worst case is a replay the natural keys absorb.
    fn stored_offsets(&self, partitions: &[i32]) -> HashMap<i32, i64> {
        let query = sqlx::query_as::<_, (i32, i64)>(
            "SELECT kafka_partition, next_offset FROM sink_offsets
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(partitions)
        .fetch_all(&self.pool);
        let read =
            tokio::task::block_in_place(|| self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), query).await }));
        match read {
            Ok(Ok(rows)) => rows.into_iter().collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read stored offsets; starting from Kafka's committed offsets");
                HashMap::new()
            }
            Err(_) => {
                tracing::warn!("reading stored offsets timed out; starting from Kafka's committed offsets");
                HashMap::new()
            }
        }
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
    pub assigned: bool,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.assigned || !self.revoked.is_empty()
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// One consumed message, owned, with where it came from.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

pub fn connect(args: &RunArgs, pool: &PgPool) -> Result<GroupConsumer, SinkError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group_id)
        .set("client.id", format!("sink-{}", std::process::id()))
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets are committed by hand, only after the rows are durable.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only committed transactions of producers that use them.
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", (args.report_every_s * 1000).to_string());
    for (k, v) in &args.kafka_properties {
        cfg.set(k, v);
    }
    let context = GroupContext {
        pool: pool.clone(),
        runtime: tokio::runtime::Handle::current(),
        group: args.group_id.clone(),
        topic: args.topic.clone(),
        changes: Mutex::new(Changes::default()),
    };
    let consumer: GroupConsumer =
        cfg.create_with_context(context).map_err(|e| SinkError::Config(format!("kafka consumer settings: {e}")))?;
    consumer.subscribe(&[&args.topic])?;
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
