//! Validation: the payload's framing, the schema registry's schema for framed messages, then the
//! wire contract's own checks; and the dead-letter topic for what fails. A bad message never blocks
//! its partition and is never silently lost; a registry that cannot be reached is an outage, not a
//! reason to refuse a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::registry::{Registry, RegistryError};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use wire::envelope::Envelope;

use crate::config::RunArgs;
use crate::consume::KafkaContext;
use crate::error::{kafka_may_heal, SinkError};
use crate::telemetry;

/// What became of one payload.
#[derive(Debug)]
pub enum Verdict {
    Frame(wire::FrameMessage),
    /// Refused, with the reason for the dead-letter topic.
    Invalid(String),
    /// The registry could not be asked: try this message again later.
    RegistryAway(String),
}

/// Checks payloads; holds the registry's schemas by id once fetched.
pub struct Validator {
    registry: Option<Arc<Registry>>,
    schemas: HashMap<u32, Arc<jsonschema::Validator>>,
    /// Ids the registry said it does not have, and when: asked again after a while, since a
    /// schema can be registered later.
    unknown: HashMap<u32, Instant>,
}

const UNKNOWN_FOR: Duration = Duration::from_secs(10);

impl Validator {
    pub fn new(registry: Option<Registry>) -> Self {
        Validator { registry: registry.map(Arc::new), schemas: HashMap::new(), unknown: HashMap::new() }
    }

    pub async fn check(&mut self, payload: Option<&[u8]>) -> Verdict {
        let Some(payload) = payload.filter(|p| !p.is_empty()) else { return Verdict::Invalid("empty message (no payload)".into()) };
        let envelope = match Envelope::open(payload) {
            Ok(e) => e,
            Err(e) => return Verdict::Invalid(e.to_string()),
        };
        let checked = match (envelope, &self.registry) {
            // Without a registry the contract's own checks decide (they are at least as strict
            // as the schema the detector registers).
            (Envelope::Plain(json), _) | (Envelope::Framed { json, .. }, None) => wire::FrameMessage::from_json(json),
            (Envelope::Framed { schema_id, json }, Some(_)) => {
                let schema = match self.schema(schema_id).await {
                    Ok(s) => s,
                    Err(Lookup::Away(why)) => return Verdict::RegistryAway(why),
                    Err(Lookup::Unusable(why)) => return Verdict::Invalid(why),
                };
                let value: serde_json::Value = match serde_json::from_slice(json) {
                    Ok(v) => v,
                    Err(e) => return Verdict::Invalid(wire::WireError::Json(e).to_string()),
                };
                if let Some(e) = schema.iter_errors(&value).next() {
                    return Verdict::Invalid(format!("does not match schema {schema_id}: {e} at {}", e.instance_path()));
                }
                wire::FrameMessage::from_value(value)
            }
        };
        match checked {
            Ok(frame) => Verdict::Frame(frame),
            Err(e) => Verdict::Invalid(e.to_string()),
        }
    }

    async fn schema(&mut self, id: u32) -> Result<Arc<jsonschema::Validator>, Lookup> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(Arc::clone(s));
        }
        if self.unknown.get(&id).is_some_and(|t| t.elapsed() < UNKNOWN_FOR) {
            return Err(Lookup::Unusable(RegistryError::UnknownSchema(id).to_string()));
        }
        let registry = Arc::clone(self.registry.as_ref().expect("called with a registry"));
        let fetched = tokio::task::spawn_blocking(move || registry.schema(id)).await.expect("a registry call does not panic");
        let outcome = match &fetched {
            Ok(_) => "found",
            Err(RegistryError::UnknownSchema(_)) => "unknown",
            Err(_) => "failed",
        };
        metrics::counter!(telemetry::REGISTRY_LOOKUPS, "result" => outcome).increment(1);
        let text = match fetched {
            Ok(text) => text,
            Err(e @ RegistryError::UnknownSchema(_)) => {
                self.unknown.insert(id, Instant::now());
                return Err(Lookup::Unusable(e.to_string()));
            }
            // Away, or refusing us (credentials, a wrong URL): not the message's fault either way.
            Err(e) => return Err(Lookup::Away(e.to_string())),
        };
        // A schema that is not a JSON Schema (an Avro one, say) cannot check these messages.
        let compiled = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|doc| jsonschema::validator_for(&doc).map_err(|e| e.to_string()))
            .map_err(|e| Lookup::Unusable(format!("schema {id} from the registry is not a usable JSON Schema: {e}")))?;
        tracing::info!(schema_id = id, "schema fetched from the registry");
        let compiled = Arc::new(compiled);
        self.schemas.insert(id, Arc::clone(&compiled));
        Ok(compiled)
    }
}

/// Why a schema id could not be used.
enum Lookup {
    /// The registry could not be asked, or would not answer.
    Away(String),
    /// The registry answered: it has no such schema, or not one that can check a message.
    Unusable(String),
}

pub struct DeadLetters {
    producer: FutureProducer<KafkaContext>,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    pub fn connect(args: &RunArgs) -> Result<Self, SinkError> {
        let mut cfg = ClientConfig::new();
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            // A send that cannot be delivered fails within this, and is tried again by the caller.
            .set("message.timeout.ms", "30000");
        args.kafka.apply(&mut cfg);
        let producer = cfg.create_with_context(KafkaContext).map_err(|e| SinkError::Config(format!("kafka producer settings: {e}")))?;
        Ok(DeadLetters { producer, topic: args.dead_letter_topic(), source_topic: args.kafka.topic.clone() })
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
            if kafka_may_heal(&error) {
                SinkError::Kafka(error)
            } else {
                SinkError::DeadLetterRefused { topic: self.topic.clone(), partition, offset, error }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(v: Verdict) -> String {
        match v {
            Verdict::Invalid(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reasons_name_the_problem() {
        let mut v = Validator::new(None);
        assert!(reason(v.check(None).await).contains("no payload"));
        assert!(reason(v.check(Some(b"{")).await).contains("not a frame message"));
        assert!(reason(v.check(Some(br#"{"schema_version": 9}"#)).await).contains("schema_version 9"));
        assert!(reason(v.check(Some(&[0, 0, 1])).await).contains("too short"));
    }

    #[tokio::test]
    async fn a_registry_that_cannot_be_reached_is_not_the_messages_fault() {
        let registry = Registry::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let mut v = Validator::new(Some(registry));
        let framed = wire::envelope::frame(7, b"{}");
        assert!(matches!(v.check(Some(&framed)).await, Verdict::RegistryAway(_)));
        // Plain JSON needs no registry.
        assert!(reason(v.check(Some(b"{}")).await).contains("not a frame message"));
    }
}
