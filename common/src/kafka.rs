//! Kafka client plumbing both services share: the Kafka flags (brokers, topic, `-X` librdkafka
//! properties, with secret values never shown), librdkafka's log lines, and what a Kafka error
//! means (whether waiting can help).

use std::fmt;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::secret::{is_secret_name, Secret};

/// The Kafka flags of both services.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Kafka topic: the detector publishes to it, the sink consumes it.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "detections")]
    pub topic: String,

    /// Extra librdkafka property, as kcat takes it (repeatable): -X security.protocol=SASL_SSL.
    /// Values of secret-named keys (sasl.password, ssl.key.password, ...) are never shown.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<Property>,
}

impl KafkaArgs {
    /// Sets the brokers and the `-X` properties; called after the service's own settings, so that
    /// a `-X` property wins over them.
    pub fn apply(&self, cfg: &mut ClientConfig) {
        cfg.set("bootstrap.servers", &self.brokers);
        for p in &self.properties {
            cfg.set(&p.key, p.value.expose());
        }
    }

    /// The `-X` properties as logs may show them.
    pub fn shown(&self) -> Vec<String> {
        self.properties.iter().map(Property::to_string).collect()
    }
}

/// One `-X key=value`; the value of a secret-named key shows as `<redacted>`.
#[derive(Clone)]
pub struct Property {
    pub key: String,
    pub value: Secret<String>,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_secret_name(&self.key) {
            write!(f, "{}={}", self.key, self.value)
        } else {
            write!(f, "{}={}", self.key, self.value.expose())
        }
    }
}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Parses a `-X key=value` librdkafka property, as kcat takes it.
pub fn parse_property(s: &str) -> Result<Property, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(Property { key: k.trim().to_string(), value: Secret::new(v.to_string()) }),
        // The value may be a secret: not echoed back.
        _ => Err("expected KEY=VALUE".to_string()),
    }
}

/// For `ClientContext::log`. librdkafka reports trouble it retries by itself (a broker away, a
/// reconnect); those are warnings or debug lines here, so that an ERROR line is always the
/// service's own verdict.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    if (level as i32) <= RDKafkaLogLevel::Critical as i32 {
        tracing::warn!(target: "librdkafka", "{fac} {msg}");
    } else {
        tracing::debug!(target: "librdkafka", "{fac} {msg}");
    }
}

/// For `ClientContext::error`: see [`log_librdkafka`].
pub fn log_client_error(error: KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, "{reason}");
}

/// The context of a client that needs no callbacks of its own: librdkafka's logs and errors only.
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

/// Whether a Kafka error may pass by itself (a broker away, a leader moving, too few replicas in
/// sync for now), as opposed to one that fails the same message every time (too large, not
/// authorized, a bad topic name).
pub fn may_heal(e: &KafkaError) -> bool {
    let Some(code) = e.rdkafka_error_code() else { return true };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::FencedInstanceId
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_secrets_are_redacted() {
        let p = parse_property("a.b=c=d").unwrap();
        assert_eq!((p.key.as_str(), p.value.expose().as_str()), ("a.b", "c=d"));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
        let shown = |s: &str| parse_property(s).unwrap().to_string();
        assert_eq!(shown("sasl.password=hunter2"), "sasl.password=<redacted>");
        assert_eq!(format!("{:?}", parse_property("ssl.key.password=x").unwrap()), "ssl.key.password=<redacted>");
        assert_eq!(shown("ssl.key.location=/etc/k.pem"), "ssl.key.location=/etc/k.pem");
        assert_eq!(shown("compression.type=lz4"), "compression.type=lz4");
    }

    #[test]
    fn errors_that_waiting_can_mend() {
        let produce = |c| KafkaError::MessageProduction(c);
        assert!(!may_heal(&produce(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!may_heal(&produce(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(may_heal(&produce(RDKafkaErrorCode::MessageTimedOut)));
        assert!(may_heal(&produce(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(may_heal(&produce(RDKafkaErrorCode::NotEnoughReplicas)));
        assert!(may_heal(&produce(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!may_heal(&KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId)));
    }
}
