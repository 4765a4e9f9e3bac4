//! Validation: the payload's framing, the schema registry's schema for framed messages, then the
//! wire contract's own checks. What fails goes to the dead-letter topic (`dead_letters`); a
//! registry that cannot be reached is an outage, not a reason to refuse a message, and neither is a
//! schema id it does not know yet, for a while (a registry's follower may lag its leader).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::registry::{Registry, RegistryError};
use wire::envelope::Envelope;

use crate::telemetry;

/// What became of one payload.
#[derive(Debug)]
pub enum Verdict {
    Frame(Box<wire::FrameMessage>),
    /// Refused, with the reason for the dead-letter topic.
    Invalid(String),
    /// The registry could not be asked, or does not know the schema id yet: try this message again
    /// later.
    Wait(String),
}

/// Checks payloads; holds the registry's schemas by id once fetched.
pub struct Validator {
    registry: Option<Arc<Registry>>,
    schemas: HashMap<u32, Arc<jsonschema::Validator>>,
    /// Ids the registry said it does not have, since when: their messages wait (and the registry
    /// is asked again) for `unknown_wait`, then go to the dead-letter topic; after that the
    /// registry is asked again now and then, since a schema can be registered later.
    unknown: HashMap<u32, Instant>,
    unknown_wait: Duration,
}

/// How long after the wait an unknown id is refused without asking the registry again.
const UNKNOWN_FOR: Duration = Duration::from_secs(10);

impl Validator {
    pub fn new(registry: Option<Registry>, unknown_wait: Duration) -> Self {
        Validator { registry: registry.map(Arc::new), schemas: HashMap::new(), unknown: HashMap::new(), unknown_wait }
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
                    Err(Lookup::Wait(why)) => return Verdict::Wait(why),
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
            Ok(frame) => Verdict::Frame(Box::new(frame)),
            Err(e) => Verdict::Invalid(e.to_string()),
        }
    }

    async fn schema(&mut self, id: u32) -> Result<Arc<jsonschema::Validator>, Lookup> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(Arc::clone(s));
        }
        // Refused lately, after its wait: refused again without asking.
        if self.unknown.get(&id).is_some_and(|t| (self.unknown_wait..self.unknown_wait + UNKNOWN_FOR).contains(&t.elapsed())) {
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
                let since = self.unknown.entry(id).or_insert_with(Instant::now);
                if since.elapsed() >= self.unknown_wait + UNKNOWN_FOR {
                    // A new period of refusals, without a new wait.
                    *since = Instant::now().checked_sub(self.unknown_wait).unwrap_or(*since);
                }
                return Err(if since.elapsed() < self.unknown_wait {
                    Lookup::Wait(format!("{e} (yet: its messages wait up to {:?} for it)", self.unknown_wait))
                } else {
                    Lookup::Unusable(e.to_string())
                });
            }
            // Away, or refusing us (credentials, a wrong URL): not the message's fault either way.
            Err(e) => return Err(Lookup::Wait(e.to_string())),
        };
        // A schema that is not a JSON Schema (an Avro one, say) cannot check these messages.
        let compiled = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|doc| jsonschema::validator_for(&doc).map_err(|e| e.to_string()))
            .map_err(|e| Lookup::Unusable(format!("schema {id} from the registry is not a usable JSON Schema: {e}")))?;
        tracing::info!(schema_id = id, "schema fetched from the registry");
        self.unknown.remove(&id);
        let compiled = Arc::new(compiled);
        self.schemas.insert(id, Arc::clone(&compiled));
        Ok(compiled)
    }
}

/// The capture times the store takes: from `past` before the database's clock (or the
/// retention's cutoff, if later) to `future` after it. A frame outside them comes from a camera
/// whose clock is wrong; stored, it would sit in the default partition (far ahead) or be deleted
/// by the next retention pass unseen (far behind).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub past: chrono::Duration,
    pub future: chrono::Duration,
}

impl Admission {
    /// Why a frame captured at `at` is refused, if it is.
    pub fn check(&self, at: DateTime<Utc>, now: DateTime<Utc>, cutoff: Option<DateTime<Utc>>) -> Result<(), String> {
        let from = (now - self.past).max(cutoff.unwrap_or(DateTime::<Utc>::MIN_UTC));
        let to = now + self.future;
        if (from..to).contains(&at) {
            return Ok(());
        }
        let why = if cutoff.is_some_and(|c| at < c && c > now - self.past) {
            "before the retention's cutoff"
        } else if at < from {
            "too far before the database's clock (--admit-past-days)"
        } else {
            "too far after the database's clock (--admit-future-minutes)"
        };
        Err(format!(
            "captured_at {} is outside the admission window {} to {}: {why}; is the camera's clock wrong?",
            at.to_rfc3339_opts(SecondsFormat::Millis, true),
            from.to_rfc3339_opts(SecondsFormat::Secs, true),
            to.to_rfc3339_opts(SecondsFormat::Secs, true)
        ))
    }
}

/// Why a schema id could not be used.
enum Lookup {
    /// The registry could not be asked, would not answer, or does not know the id yet.
    Wait(String),
    /// The registry answered: it has no such schema, or not one that can check a message.
    Unusable(String),
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
        let mut v = Validator::new(None, Duration::ZERO);
        assert!(reason(v.check(None).await).contains("no payload"));
        assert!(reason(v.check(Some(b"{")).await).contains("not a frame message"));
        assert!(reason(v.check(Some(br#"{"schema_version": 9}"#)).await).contains("schema_version 9"));
        assert!(reason(v.check(Some(&[0, 0, 1])).await).contains("too short"));
    }

    #[test]
    fn the_admission_window() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let a = Admission { past: chrono::Duration::days(7), future: chrono::Duration::minutes(60) };
        let now = t("2026-12-02T12:00:00Z");
        for (at, cutoff, want) in [
            ("2026-12-02T11:59:00Z", None, None),
            ("2026-11-25T12:00:00Z", None, None),
            ("2026-12-02T12:59:59Z", None, None),
            ("2026-12-02T13:00:00Z", None, Some("too far after")),
            ("2036-12-02T12:00:00Z", None, Some("too far after")),
            ("1970-01-01T00:00:00Z", None, Some("too far before")),
            ("2026-11-25T11:59:59Z", None, Some("too far before")),
            ("2026-11-28T00:00:00Z", Some("2026-11-30T00:00:00Z"), Some("retention's cutoff")),
            ("2026-11-30T00:00:00Z", Some("2026-11-30T00:00:00Z"), None),
            ("1970-01-01T00:00:00Z", Some("2026-11-30T00:00:00Z"), Some("retention's cutoff")),
            ("2026-11-24T00:00:00Z", Some("2026-11-01T00:00:00Z"), Some("too far before")),
        ] {
            let got = a.check(t(at), now, cutoff.map(t));
            match want {
                None => assert!(got.is_ok(), "{at}: {got:?}"),
                Some(w) => assert!(got.as_ref().is_err_and(|e| e.contains(w) && e.contains(&at[..10])), "{at}: {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_registry_that_cannot_be_reached_is_not_the_messages_fault() {
        let registry = Registry::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let mut v = Validator::new(Some(registry), Duration::ZERO);
        let framed = wire::envelope::frame(7, b"{}");
        assert!(matches!(v.check(Some(&framed)).await, Verdict::Wait(_)));
        // Plain JSON needs no registry.
        assert!(reason(v.check(Some(b"{}")).await).contains("not a frame message"));
    }
}
