//! Kafka consumption in a consumer group: the first stage of the sink.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::config::RunArgs;
use crate::error::SinkError;

/// The sink's Kafka clients' context. It logs partition hand-overs, so a scaled-out group can be
/// followed, and consumer lag per partition from librdkafka's statistics.
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        kafka_support::log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        kafka_support::log_client_error(error, reason);
    }

    fn stats(&self, stats: Statistics) {
        let mut lag: Vec<(String, i32, i64)> = stats
            .topics
            .iter()
            .flat_map(|(t, topic)| {
                topic.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0).map(move |p| (t.clone(), p.partition, p.consumer_lag))
            })
            .collect();
        lag.sort();
        if !lag.is_empty() {
            tracing::info!(lag = ?lag, "consumer lag (topic, partition, messages)");
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub type GroupConsumer = StreamConsumer<KafkaContext>;

/// One consumed message, owned, with where it came from.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

pub fn connect(args: &RunArgs) -> Result<GroupConsumer, SinkError> {
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
    let consumer: GroupConsumer =
        cfg.create_with_context(KafkaContext).map_err(|e| SinkError::Config(format!("kafka consumer settings: {e}")))?;
    rdkafka::consumer::Consumer::subscribe(&consumer, &[&args.topic])?;
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
