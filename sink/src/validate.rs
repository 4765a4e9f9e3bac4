//! Validation against wire schema v1, and the dead-letter topic for what fails it: a bad message
//! never blocks its partition, and is never silently lost.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::RunArgs;
use crate::consume::{Consumed, KafkaContext};
use crate::error::SinkError;

/// Parses and checks one payload; the error text says why it was refused.
pub fn check(payload: Option<&[u8]>) -> Result<wire::FrameMessage, String> {
    let payload = payload.ok_or_else(|| "empty message (no payload)".to_string())?;
    wire::FrameMessage::from_json(payload).map_err(|e| e.to_string())
}

pub struct DeadLetters {
    producer: FutureProducer<KafkaContext>,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    pub fn connect(args: &RunArgs) -> Result<Self, SinkError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &args.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        for (k, v) in &args.kafka_properties {
            cfg.set(k, v);
        }
        let producer = cfg.create_with_context(KafkaContext).map_err(|e| SinkError::Config(format!("kafka producer settings: {e}")))?;
        Ok(DeadLetters { producer, topic: args.dead_letter_topic(), source_topic: args.topic.clone() })
    }

    /// Sends the original bytes with headers naming the error and the source; returns once the
    /// broker has acknowledged it, so the source offset can then be committed.
    pub async fn send(&self, msg: &Consumed, reason: &str) -> Result<(), SinkError> {
        let partition = msg.partition.to_string();
        let offset = msg.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlq.error", value: Some(reason) })
            .insert(Header { key: "dlq.source.topic", value: Some(&self.source_topic) })
            .insert(Header { key: "dlq.source.partition", value: Some(&partition) })
            .insert(Header { key: "dlq.source.offset", value: Some(&offset) });
        let empty: &[u8] = &[];
        let mut record = FutureRecord::to(&self.topic)
            .payload(msg.payload.as_deref().unwrap_or(empty))
            .headers(headers);
        if let Some(key) = &msg.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| SinkError::Kafka(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_problem() {
        assert!(check(None).unwrap_err().contains("no payload"));
        assert!(check(Some(b"{")).unwrap_err().contains("not a v1 frame message"));
        assert!(check(Some(br#"{"schema_version": 9}"#)).unwrap_err().contains("schema_version 9"));
    }
}
