//! Kafka client plumbing: `-X` properties, secret redaction, librdkafka logs.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// Parses a `-X key=value` librdkafka property, as kcat takes it.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A property's value as logs may show it: secrets hidden, file locations kept.
pub fn redact(key: &str, value: &str) -> String {
    let k = key.to_ascii_lowercase();
    if ["password", "secret", "token", "key"].iter().any(|s| k.contains(s)) && !k.ends_with(".location") {
        "<redacted>".to_string()
    } else {
        value.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_secrets_are_redacted() {
        assert_eq!(parse_property("a.b=c=d").unwrap(), ("a.b".into(), "c=d".into()));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
        assert_eq!(redact("sasl.password", "hunter2"), "<redacted>");
        assert_eq!(redact("ssl.key.password", "x"), "<redacted>");
        assert_eq!(redact("ssl.key.location", "/etc/k.pem"), "/etc/k.pem");
        assert_eq!(redact("compression.type", "lz4"), "lz4");
    }
}
