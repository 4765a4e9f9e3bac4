//! The sink's second output: the dead-letter topic, for messages that fail validation and frames
//! whose rows the database refuses. Each is sent with its original bytes and headers naming the
//! error and the source; its source offset is accounted for only once the broker has it.
//!
//! The loop's dead letters are tasks ([`DeadLetters::spawn`]) whose completion is an event of the
//! loop: a send that has to wait (a leader moving, too few replicas in sync) holds back only its
//! own partition, and the consumer keeps being polled.

use std::sync::Arc;
use std::time::Duration;

use common::backoff::Backoff;
use common::kafka::{may_heal, KafkaArgs, LogContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};

use crate::error::SinkError;
use crate::message::Consumed;
use crate::telemetry;

pub struct DeadLetters {
    producer: FutureProducer<LogContext>,
    topic: String,
    source_topic: String,
}

/// A spawned send's end: send number `send`, of a message of `partition`.
#[derive(Debug)]
pub struct Sent {
    pub partition: i32,
    pub send: u64,
    /// `Ok` once the broker has it; an error that cannot pass, or the shutdown, otherwise.
    pub result: Result<(), SinkError>,
}

impl DeadLetters {
    pub fn connect(kafka: &KafkaArgs, topic: String) -> Result<Self, SinkError> {
        let mut cfg = ClientConfig::new();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            // A send that cannot be delivered fails within this, and is tried again by the caller.
            .set("message.timeout.ms", "30000");
        kafka.apply(&mut cfg);
        let producer = cfg.create_with_context(LogContext).map_err(|e| SinkError::Config(format!("kafka producer settings: {e}")))?;
        Ok(DeadLetters { producer, topic, source_topic: kafka.topic.clone() })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Asks the brokers for the topic (a producer's request, which makes it where the brokers
    /// create topics on use; they may answer that it is unknown while they make it, so a few
    /// times). A topic that does not exist and will not be made is the user's to fix: every
    /// invalid message would wait for it. Brokers that do not answer are an outage the consumer
    /// waits out, so that is only a warning here.
    pub async fn check_topic(&self, timeout: Duration) -> Result<(), SinkError> {
        let mut tries = 0;
        loop {
            let metadata = match tokio::task::block_in_place(|| self.producer.client().fetch_metadata(Some(&self.topic), timeout)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "cannot check the dead-letter topic now");
                    return Ok(());
                }
            };
            let error = metadata.topics().iter().find(|t| t.name() == self.topic).and_then(|t| t.error()).map(RDKafkaErrorCode::from);
            tries += 1;
            return match error {
                None | Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(()),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) if tries < 5 => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Err(SinkError::Config(format!(
                    "dead-letter topic {} does not exist and the brokers do not create topics on use: create it, or name another with --dead-letter-topic",
                    self.topic
                ))),
                Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(SinkError::Config(format!(
                    "dead-letter topic {}: not authorized (the sink's principal needs Write and Describe on it)",
                    self.topic
                ))),
                Some(code) => {
                    tracing::warn!(topic = %self.topic, error = %code, "the dead-letter topic is not usable now");
                    Ok(())
                }
            };
        }
    }

    /// Sends a message's original bytes with headers naming the error and the source; returns once
    /// the broker has acknowledged it, so the source offset can then be stored. An error that will
    /// fail this message every time (too large for the topic, not authorized) is
    /// [`SinkError::DeadLetterRefused`]; the caller must not retry it.
    pub async fn send(&self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8], reason: &str) -> Result<(), SinkError> {
        let (p, o) = (partition.to_string(), offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlq.error", value: Some(reason) })
            .insert(Header { key: "dlq.source.topic", value: Some(&self.source_topic) })
            .insert(Header { key: "dlq.source.partition", value: Some(&p) })
            .insert(Header { key: "dlq.source.offset", value: Some(&o) });
        let mut record = FutureRecord::to(&self.topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(error, _)| {
            if may_heal(&error) {
                SinkError::Kafka(error)
            } else {
                SinkError::DeadLetterRefused { topic: self.topic.clone(), partition, offset, error }
            }
        })
    }

    /// Sends `msg` in a task of its own, trying again while the error may pass, until the broker
    /// has it, it is refused, or the sink shuts down; the end goes to `done`.
    pub fn spawn(
        self: &Arc<Self>,
        msg: Consumed,
        reason: String,
        send: u64,
        done: mpsc::Sender<Sent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
            let payload = msg.payload.as_deref().unwrap_or_default();
            let result = loop {
                let sent = tokio::select! {
                    r = this.send(msg.partition, msg.offset, msg.key.as_deref(), payload, &reason) => r,
                    _ = shutdown.wait_for(|stop| *stop) => break Err(SinkError::Stopped),
                };
                match sent {
                    Err(e) if e.retryable() => {
                        let delay = backoff.next_delay();
                        metrics::counter!(telemetry::DEAD_LETTER_RETRIES).increment(1);
                        tracing::warn!(partition = msg.partition, offset = msg.offset, error = %e, retry_in_ms = delay.as_millis() as u64, "dead-letter send failed; its partition waits, the others go on");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait_for(|stop| *stop) => break Err(SinkError::Stopped),
                        }
                    }
                    other => break other,
                }
            };
            let _ = done.send(Sent { partition: msg.partition, send, result }).await;
        });
    }
}
