//! Kafka client plumbing both services share: the Kafka flags (brokers, topic, `-X` librdkafka
//! properties, with secret values never shown), librdkafka's log lines, and what a Kafka error
//! means (whether waiting can help).

use std::fmt;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::secret::{hide, is_secret_name, Secret};

/// The Kafka flags of both services: the connection and the topic.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub connection: KafkaConnection,

    /// Kafka topic: the detector publishes to it, the sink consumes it.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "detections")]
    pub topic: String,
}

/// Where the brokers are and how to reach them (every Kafka flag but a topic).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaConnection {
    /// Kafka bootstrap servers, comma-separated HOST:PORT.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Extra librdkafka property, as kcat takes it (repeatable): -X security.protocol=SASL_SSL.
    /// Values of secret-named keys (sasl.password, ssl.key.password, ...) are never shown; give
    /// secrets in --kafka-config instead, as the command line is visible to every user (ps).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<Property>,

    /// A file of librdkafka properties, one KEY=VALUE a line (# comments), as kcat's -F reads
    /// it: the place for secrets (sasl.password, ...). -X on the command line wins over it.
    #[arg(short = 'F', long, env = "KAFKA_CONFIG_FILE", value_name = "FILE", value_parser = read_properties)]
    pub kafka_config: Option<PropertiesFile>,
}

/// The properties of a `--kafka-config` file, read when the flag is parsed. (A type of its own:
/// clap would take a `Vec` for a flag given many times.)
#[derive(Debug, Clone)]
pub struct PropertiesFile(pub Vec<Property>);

impl KafkaArgs {
    /// As [`KafkaConnection::apply`].
    pub fn apply(&self, cfg: &mut ClientConfig) {
        self.connection.apply(cfg);
    }

    /// As [`KafkaConnection::shown`].
    pub fn shown(&self) -> Vec<String> {
        self.connection.shown()
    }

    /// [`KafkaConnection::check`], and a topic name Kafka takes.
    pub fn check(&self) -> Result<(), String> {
        self.connection.check()?;
        check_topic("--topic", &self.topic)
    }
}

impl KafkaConnection {
    /// Sets the brokers and the properties (the file's, then `-X`); called after the service's own
    /// settings, so that the user's win over them.
    pub fn apply(&self, cfg: &mut ClientConfig) {
        cfg.set("bootstrap.servers", &self.brokers);
        for p in self.kafka_config.iter().flat_map(|f| &f.0).chain(&self.properties) {
            cfg.set(&p.key, p.value.expose());
        }
    }

    /// The properties as logs may show them.
    pub fn shown(&self) -> Vec<String> {
        self.kafka_config.iter().flat_map(|f| &f.0).chain(&self.properties).map(Property::to_string).collect()
    }

    /// Refuses what no broker can fix, before anything connects: an empty or malformed broker
    /// list, a property librdkafka does not know or a value it refuses (checked by librdkafka
    /// itself, without a connection).
    pub fn check(&self) -> Result<(), String> {
        check_brokers(&self.brokers)?;
        let mut cfg = ClientConfig::new();
        self.apply(&mut cfg);
        cfg.create_native_config().map(drop).map_err(|e| match e {
            KafkaError::ClientConfig(_, message, key, _) => format!("Kafka property {key}: {message}"),
            e => format!("Kafka properties: {e}"),
        })
    }
}

/// `--brokers`: comma-separated `HOST:PORT` (or `HOST`, or `PROTOCOL://HOST:PORT`).
fn check_brokers(brokers: &str) -> Result<(), String> {
    if brokers.trim().is_empty() {
        return Err("--brokers is empty: give the bootstrap servers as HOST:PORT[,HOST:PORT...]".into());
    }
    for b in brokers.split(',').map(str::trim) {
        let hostport = b.split_once("://").map_or(b, |(_, rest)| rest);
        let port = hostport.rsplit_once(':').filter(|(h, _)| !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')));
        let bad = hostport.is_empty()
            || hostport.contains(char::is_whitespace)
            || hostport.starts_with(':')
            || port.is_some_and(|(_, p)| p.parse::<u16>().is_err());
        if bad {
            return Err(format!("--brokers: {b:?} is not HOST:PORT"));
        }
    }
    Ok(())
}

/// A topic name as Kafka takes it: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub fn check_topic(flag: &str, name: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || name.len() > 249 || !name.chars().all(legal) || name == "." || name == ".." {
        return Err(format!("{flag} {name:?} is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"));
    }
    Ok(())
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

/// Parses a `-X key=value` librdkafka property, as kcat takes it; a secret-named key's value is
/// hidden from every line from here on.
pub fn parse_property(s: &str) -> Result<Property, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            let key = k.trim().to_string();
            if is_secret_name(&key) {
                hide(v);
            }
            Ok(Property { key, value: Secret::new(v.to_string()) })
        }
        // The value may be a secret: not echoed back.
        _ => Err("expected KEY=VALUE".to_string()),
    }
}

/// Reads a `--kafka-config` file: `KEY=VALUE` lines, blank lines and `#` comments.
fn read_properties(path: &str) -> Result<PropertiesFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let properties = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| parse_property(l.trim_start()).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(PropertiesFile(properties))
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
    fn a_properties_file_reads_as_kcats_does() {
        let path = std::env::temp_dir().join(format!("kafka-{}.properties", std::process::id()));
        std::fs::write(&path, "# SASL\n\nsasl.password=p=w\n  acks=all\n").unwrap();
        let file = read_properties(path.to_str().unwrap()).unwrap();
        let read: Vec<(&str, &str)> = file.0.iter().map(|p| (p.key.as_str(), p.value.expose().as_str())).collect();
        assert_eq!(read, [("sasl.password", "p=w"), ("acks", "all")]);
        std::fs::write(&path, "acks=all\nnovalue\n").unwrap();
        assert_eq!(read_properties(path.to_str().unwrap()).unwrap_err(), "line 2: expected KEY=VALUE");
        std::fs::remove_file(&path).unwrap();
        assert!(read_properties(path.to_str().unwrap()).unwrap_err().starts_with("cannot read it: "));
    }

    #[test]
    fn what_no_broker_can_fix_is_refused_before_connecting() {
        let args = |brokers: &str, topic: &str, props: &[&str]| KafkaArgs {
            connection: KafkaConnection {
                brokers: brokers.into(),
                properties: props.iter().map(|p| parse_property(p).unwrap()).collect(),
                kafka_config: None,
            },
            topic: topic.into(),
        };
        assert!(args("127.0.0.1:9092,[::1]:9092,SSL://b:9093,b2", "detections", &["linger.ms=5"]).check().is_ok());
        for (a, needle) in [
            (args("", "t", &[]), "--brokers is empty"),
            (args("h:x", "t", &[]), "\"h:x\" is not HOST:PORT"),
            (args("h:1,", "t", &[]), "\"\" is not HOST:PORT"),
            (args("h:1", "", &[]), "--topic \"\" is not a Kafka topic name"),
            (args("h:1", "a b", &[]), "is not a Kafka topic name"),
            (args("h:1", "t", &["no.such.property=1"]), "Kafka property no.such.property: "),
            (args("h:1", "t", &["acks=several"]), "Kafka property acks: "),
        ] {
            let err = a.check().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
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
