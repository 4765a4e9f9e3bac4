//! A client of a schema registry's Confluent-compatible REST API: Confluent Schema Registry
//! itself, or Apicurio Registry's `/apis/ccompat/v7`. It checks that a URL is such an API
//! ([`Registry::probe`]), registers a schema under a subject, reads and sets the subject's
//! compatibility, and fetches schemas by id. Blocking; the sink calls it from
//! `spawn_blocking`. Credentials may ride in the URL (`https://user:password@host/...`, sent as
//! HTTP basic auth); they are never shown: errors and logs carry [`Registry::url`], without them.
//! (`Registry::new` takes the URL exposed, from a `secret::SecretUrl`.)

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::secret::redact_url;
use crate::url::{percent_decode, Url};

/// Why a registry call failed, and whose problem that is.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// It cannot be reached, timed out, or failed on its side (HTTP 5xx): an outage, which may pass.
    #[error("schema registry at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The registry holds no schema with this id: the message's fault, not the registry's.
    #[error("schema id {0} is unknown to the schema registry")]
    UnknownSchema(u32),
    /// The registry refused the request (an incompatible schema, credentials): someone must fix it.
    #[error("schema registry at {url} refused to {what}: HTTP {status}: {message}")]
    Refused { url: String, what: String, status: u16, message: String },
    /// What answers at the URL is no Confluent-compatible registry API (a path it does not know,
    /// a page that is not the API's JSON): the URL is wrong, most often missing the API's path.
    #[error(
        "schema registry URL {url} is not a Confluent-compatible schema registry API ({reason}): check the URL's path \
         (Apicurio Registry serves the API at /apis/ccompat/v7)"
    )]
    NotARegistry { url: String, reason: String },
}

impl RegistryError {
    pub fn retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

pub struct Registry {
    /// The API's base, without credentials, query or trailing slash.
    base: String,
    /// A query the URL carries (a token), sent with every request.
    query: Option<String>,
    /// The URL as it may be shown.
    shown: String,
    /// `Basic ...` from the URL's user information.
    authorization: Option<String>,
    agent: ureq::Agent,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.shown)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The registry's JSON media type.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Deserialize)]
struct Id {
    id: u32,
}

#[derive(Deserialize)]
struct Schema {
    schema: String,
}

/// `GET /config` and `GET /config/{subject}`.
#[derive(Deserialize)]
struct Config {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: String,
}

impl Registry {
    /// `url` is the API's base: `http://host:8081` for Confluent, `http://host:8080/apis/ccompat/v7`
    /// for Apicurio. Each call gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| u.scheme == "http" || u.scheme == "https")
            .ok_or_else(|| format!("schema registry URL {} is not http://HOST... or https://HOST...", redact_url(url)))?;
        let authorization = parsed.user.map(|user| {
            let userinfo = parsed.password.map_or_else(|| user.to_string(), |p| format!("{user}:{p}"));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(percent_decode(&userinfo)))
        });
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        let (base, query) = (parsed.base(), parsed.query.map(str::to_string));
        let shown = redact_url(&query.as_ref().map_or_else(|| base.clone(), |q| format!("{base}?{q}")));
        Ok(Registry { base, query, shown, authorization, agent })
    }

    /// The URL without its credentials: safe to show.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Checks that the URL is a registry's API: `GET /config` must answer with the global
    /// compatibility level, as Confluent's registry and Apicurio's ccompat API do. Both services
    /// call it at start, so that a wrong URL (most often the host without the API's path, where
    /// every path is a 404) is one clear error (`NotARegistry`, the user's to fix) rather than every
    /// framed message failing later. An outage stays `Unavailable`.
    pub fn probe(&self) -> Result<(), RegistryError> {
        let text = self.call(Method::Get, "/config", None, "read its compatibility level")?;
        serde_json::from_str::<Config>(&text).map(|_| ()).map_err(|_| RegistryError::NotARegistry {
            url: self.shown.clone(),
            reason: format!("GET /config answered {:?}", text.chars().take(80).collect::<String>()),
        })
    }

    /// Whether `subject` holds a schema yet.
    pub fn subject_exists(&self, subject: &str) -> Result<bool, RegistryError> {
        let what = format!("list subject {subject}'s versions");
        match self.call(Method::Get, &format!("/subjects/{}/versions", percent_encode(subject)), None, &what) {
            Ok(_) => Ok(true),
            Err(RegistryError::Refused { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The compatibility level set for `subject` itself, if any. (For a subject that holds schemas
    /// Apicurio answers the global level when the subject has none of its own; Confluent answers
    /// none.)
    pub fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let what = format!("read subject {subject}'s compatibility");
        match self.call(Method::Get, &format!("/config/{}", percent_encode(subject)), None, &what) {
            Ok(text) => parse::<Config>(&text, &self.shown).map(|c| Some(c.compatibility_level)),
            Err(RegistryError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers `schema` (a JSON Schema document) under `subject`, or finds it there; its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schemaType": "JSON", "schema": schema });
        let what = format!("register a schema under subject {subject}");
        self.call(Method::Post, &format!("/subjects/{}/versions", percent_encode(subject)), Some(body), &what)
            .and_then(|text| parse::<Id>(&text, &self.shown).map(|r| r.id))
    }

    /// Sets the subject's compatibility level (`BACKWARD`, `FULL`, ...).
    pub fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let body = serde_json::json!({ "compatibility": level });
        let what = format!("set subject {subject}'s compatibility to {level}");
        self.call(Method::Put, &format!("/config/{}", percent_encode(subject)), Some(body), &what).map(|_| ())
    }

    /// The schema registered under `id`.
    pub fn schema(&self, id: u32) -> Result<String, RegistryError> {
        match self.call(Method::Get, &format!("/schemas/ids/{id}"), None, &format!("fetch schema {id}")) {
            Err(RegistryError::Refused { status: 404, .. }) => Err(RegistryError::UnknownSchema(id)),
            other => other.and_then(|text| parse::<Schema>(&text, &self.shown).map(|s| s.schema)),
        }
    }

    fn call(&self, method: Method, path: &str, body: Option<serde_json::Value>, what: &str) -> Result<String, RegistryError> {
        let unavailable = |reason: String| RegistryError::Unavailable { url: self.shown.clone(), reason };
        let uri = match &self.query {
            Some(q) => format!("{}{path}?{q}", self.base),
            None => format!("{}{path}", self.base),
        };
        let with_auth = |headers: Vec<(&'static str, String)>| {
            let mut h = headers;
            h.push(("Accept", CONTENT_TYPE.to_string()));
            if let Some(auth) = &self.authorization {
                h.push(("Authorization", auth.clone()));
            }
            h
        };
        let sent = match (method, body) {
            (Method::Get, _) => with_auth(vec![]).into_iter().fold(self.agent.get(&uri), |r, (k, v)| r.header(k, v)).call(),
            (m, body) => {
                let headers = with_auth(vec![("Content-Type", CONTENT_TYPE.to_string())]);
                let request = if m == Method::Post { self.agent.post(&uri) } else { self.agent.put(&uri) };
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                headers.into_iter().fold(request, |r, (k, v)| r.header(k, v)).send(body)
            }
        };
        let mut response = sent.map_err(|e| unavailable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| unavailable(format!("reading the response: {e}")))?;
        match status {
            200..=299 => Ok(text),
            500..=599 => Err(unavailable(format!("HTTP {status}: {}", error_message(&text)))),
            // The registry's own 404s (no such subject, schema, version) carry its error code; a
            // 404 without one is a path the server does not know: not the registry's API.
            404 if !is_registry_error(&text) => {
                Err(RegistryError::NotARegistry { url: self.shown.clone(), reason: format!("{} {path}: HTTP 404", method.name()) })
            }
            _ => Err(RegistryError::Refused { url: self.shown.clone(), what: what.to_string(), status, message: error_message(&text) }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(text: &'a str, url: &str) -> Result<T, RegistryError> {
    serde_json::from_str(text)
        .map_err(|e| RegistryError::Unavailable { url: url.to_string(), reason: format!("unexpected response {text:?}: {e}") })
}

/// Whether a body is the registry API's own error (`{"error_code": 40401, "message": ...}`).
fn is_registry_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.get("error_code").is_some_and(serde_json::Value::is_u64))
}

/// The registry's own words from an error body (`{"message": ..., "error_code": ...}`), or the body.
fn error_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Error {
        message: String,
    }
    let text = serde_json::from_str::<Error>(body).map(|e| e.message).unwrap_or_else(|_| body.to_string());
    text.chars().take(300).collect()
}

/// A string as one URL component (a subject name in a path, a query's value): every byte but the
/// unreserved ones percent-encoded.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_for_a_basic_auth_header() {
        let r = Registry::new("https://svc:p%40ss@reg.example:8081/apis/ccompat/v7/", Duration::from_secs(1)).unwrap();
        assert_eq!(r.url(), "https://reg.example:8081/apis/ccompat/v7");
        let want = base64::engine::general_purpose::STANDARD.encode("svc:p@ss");
        assert_eq!(r.authorization.as_deref(), Some(format!("Basic {want}").as_str()));
        assert!(!format!("{r:?}").contains(&want), "{r:?}");
        let plain = Registry::new("http://127.0.0.1:8081", Duration::from_secs(1)).unwrap();
        assert_eq!((plain.url(), plain.authorization.is_none()), ("http://127.0.0.1:8081", true));
        let err = Registry::new("ftp://u:secret@x", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("http://") && !err.contains("secret"), "{err}");
        let token = Registry::new("http://h:1/x/?token=t0k3n", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (token.base.as_str(), token.query.as_deref(), token.url()),
            ("http://h:1/x", Some("token=t0k3n"), "http://h:1/x?token=***")
        );
    }

    #[test]
    fn redaction_and_paths() {
        assert_eq!(percent_encode("detections-value"), "detections-value");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(error_message(r#"{"message":"Schema 9 not found.","error_code":40403}"#), "Schema 9 not found.");
    }

    #[test]
    fn a_404_is_the_registrys_only_with_its_error_code() {
        assert!(is_registry_error(r#"{"message":"Subject 'x' not found.","error_code":40401}"#));
        // Apicurio's answer for a path outside its ccompat API, and a web server's page.
        assert!(!is_registry_error(r#"{"detail":"NotFoundException","title":"Could not find resource","status":404}"#));
        assert!(!is_registry_error("<html><body>Not Found</body></html>"));
    }

    #[test]
    fn an_unreachable_registry_is_an_outage() {
        // Port 9 (discard) on loopback: nothing listens there.
        let r = Registry::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let err = r.schema(1).unwrap_err();
        assert!(err.retryable(), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:9"), "{err}");
    }
}
