//! Values that must never be shown: in `--help` (clap's `hide_env_values` keeps the environment's
//! values out), in logs and errors, or in a `{:?}` of a config struct. A secret is [`hide`]n the
//! moment it is read (a URL parsed into a [`SecretUrl`], a secret-named `-X` property, a camera of
//! the cameras file), and [`redact`] then hides it in every line the process prints.

use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;

use crate::url::{percent_decode, Url};

/// A value whose `Debug` and `Display` print `<redacted>`; [`Secret::expose`] is the one way in.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL that may carry credentials (a password as user information, or in the query as
/// `password=` and the like), or a local path. `Debug` and `Display` show it with every credential
/// replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Secret<String>);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL as it may be shown.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hide_url(s);
        Ok(SecretUrl(Secret::new(s.to_string())))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Whether a setting's name says it holds a secret (`password`, `sasl.password`, `ssl.key.password`,
/// `token`, ...); a file's location is not one.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "key", "credential"].iter().any(|s| n.contains(s))
        && !n.ends_with(".location")
        && !n.ends_with("file")
}

/// A URL with its password and every secret-named query value replaced by `***`. Text that is not
/// a URL (a local path, even one with `@` or `=` in its name) is shown as it is, but for a broken
/// URL with user information (`http://u:pw@`), shown as far as its `://`.
pub fn redact_url(text: &str) -> String {
    match (Url::parse(text), text.split_once("://")) {
        (Ok(url), _) => redacted(&url),
        (Err(_), Some((scheme, rest))) if rest.contains('@') => format!("{scheme}://***"),
        (Err(_), _) => text.to_string(),
    }
}

/// The password and the values of secret-named query keys (`password=`, `token=`, ...).
fn url_secrets<'a>(url: &Url<'a>) -> Vec<&'a str> {
    let query = url.query_pairs().filter(|(k, _)| is_secret_name(k)).filter_map(|(_, v)| v);
    url.password.into_iter().chain(query).collect()
}

/// The URL as it may be shown: the password and every secret-named query value as `***`.
fn redacted(url: &Url) -> String {
    let userinfo = match (url.user, url.password) {
        (Some(u), Some(_)) => format!("{u}:***@"),
        (Some(u), None) => format!("{u}@"),
        _ => String::new(),
    };
    let query = url.query.map_or_else(String::new, |_| {
        let pairs: Vec<String> = url
            .query_pairs()
            .map(|(k, v)| match v {
                Some(_) if is_secret_name(k) => format!("{k}=***"),
                Some(v) => format!("{k}={v}"),
                None => k.to_string(),
            })
            .collect();
        format!("?{}", pairs.join("&"))
    });
    let fragment = url.fragment.map_or_else(String::new, |f| format!("#{f}"));
    format!("{}://{userinfo}{}{}{query}{fragment}", url.scheme, url.host_port(), url.path)
}

/// Secret values looked for in every line the process prints ([`redact`]), longest first.
static HIDDEN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Values shorter than this are not looked for in text: they would hide pieces of every line (and
/// are no secret, being guessed at once). Their URL and `-X` forms are still hidden.
const MIN_HIDDEN_CHARS: usize = 4;

/// Makes every later line the process prints show `value` as `***`.
pub fn hide(value: &str) {
    if value.chars().count() < MIN_HIDDEN_CHARS {
        return;
    }
    let mut hidden = HIDDEN.write().unwrap_or_else(|e| e.into_inner());
    for v in [value.to_string(), String::from_utf8_lossy(&percent_decode(value)).into_owned()] {
        if !hidden.contains(&v) {
            hidden.push(v);
        }
    }
    hidden.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// [`hide`]s a URL's secrets. A password equal to its user name is not hidden: the name is shown,
/// so it is no secret (it is the local development database's).
pub fn hide_url(text: &str) {
    if let Ok(url) = Url::parse(text) {
        for secret in url_secrets(&url) {
            if url.password != Some(secret) || url.user != Some(secret) {
                hide(secret);
            }
        }
    }
}

/// The one redaction every line either service prints passes through (`telemetry::init_logs`
/// routes standard error through it): each value given to [`hide`] becomes `***`, and so does the
/// password of any URL in the text, whoever wrote it (librdkafka, libpq, OpenCV, FFmpeg).
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for value in HIDDEN.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), "***");
        }
    }
    if !out.contains("://") {
        return out;
    }
    // Each URL-like token: from its scheme to the next space or quote.
    let mut shown = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("://") {
        let start = rest[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c))).map_or(0, |i| i + 1);
        let end = rest[at..].find(|c: char| c.is_whitespace() || "\"'`<>".contains(c)).map_or(rest.len(), |i| at + i);
        shown.push_str(&rest[..start]);
        shown.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    shown.push_str(rest);
    shown
}

/// `${NAME}` references replaced by the environment's values, each hidden from the logs: how a
/// camera's credentials stay out of a cameras file or the camera catalog that many can read
/// (`rtsp://${CAM3_USER}:${CAM3_PASSWORD}@cam-3/stream`, NAME set on each host that runs it).
/// Why not, in a sentence that names the reference, never a value.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name = after.find('}').map(|end| &after[..end]).filter(|n| is_variable_name(n));
        let Some(name) = name else {
            return Err("a ${ that does not start a reference ${NAME} (NAME: letters, digits, _)".into());
        };
        let value = std::env::var(name).map_err(|_| format!("${{{name}}} is not set in this host's environment"))?;
        hide(&value);
        out.push_str(&value);
        rest = &after[name.len() + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a URL gives a secret (its password, a secret-named query value) in clear rather than as
/// `${NAME}` references ([`expand_env`]).
pub fn url_has_clear_secret(text: &str) -> bool {
    let references_only = |s: &str| {
        let mut rest = s;
        while let Some(r) = rest.strip_prefix("${") {
            match r.find('}') {
                Some(end) if is_variable_name(&r[..end]) => rest = &r[end + 1..],
                _ => return false,
            }
        }
        rest.is_empty()
    };
    Url::parse(text).is_ok_and(|url| url_secrets(&url).into_iter().any(|s| !references_only(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_show_no_password_however_it_is_given() {
        let cases = [
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:p@ss@w0rd@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:secret@h/db?sslmode=verify-full&password=hunter2", "postgres://u:***@h/db?sslmode=verify-full&password=***"),
            ("postgres://h/db?user=u&password=hunter2&sslpassword=k3y", "postgres://h/db?user=u&password=***&sslpassword=***"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("https://svc:t0ken@reg.example/apis/ccompat/v7", "https://svc:***@reg.example/apis/ccompat/v7"),
            ("http://h:8081/x?token=abc#frag", "http://h:8081/x?token=***#frag"),
            // A local path is no URL: shown whole, whatever it holds.
            ("samples/a=b@c.mp4", "samples/a=b@c.mp4"),
            ("http://u:secret@", "http://***"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn text_shows_no_hidden_value_nor_url_password() {
        hide("sw0rdfish");
        hide("ab");
        hide_url("postgres://pipeline:pipeline@h/db");
        hide_url("http://h/x?token=t%40k3n");
        let line = "Invalid value \"sw0rdfish\" for ssl.key.password; at rtsp://admin:opensesame@cam:554/1 (tab), \
                    'https://u:pw@h/x?token=zzz' ab t@k3n pipeline";
        assert_eq!(
            redact(line),
            "Invalid value \"***\" for ssl.key.password; at rtsp://admin:***@cam:554/1 (tab), \
                    'https://u:***@h/x?token=***' ab *** pipeline"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!((format!("{s:?}"), format!("{s}")), ("<redacted>".into(), "<redacted>".into()));
        assert_eq!(s.expose(), "hunter2");
        let u: SecretUrl = "postgres://u:hunter2@h/db".parse().unwrap();
        assert!(!format!("{u:?} {u}").contains("hunter2"));
        assert_eq!(u.expose(), "postgres://u:hunter2@h/db");
        for (name, secret) in [
            ("sasl.password", true),
            ("ssl.key.password", true),
            ("ssl.key.location", false),
            ("sasl.oauthbearer.token.endpoint.url", true),
            ("compression.type", false),
            ("ssl.keystore.password", true),
        ] {
            assert_eq!(is_secret_name(name), secret, "{name}");
        }
    }

    #[test]
    fn references_are_expanded_from_the_environment_and_hidden() {
        std::env::set_var("SECRET_TEST_CAM_PASSWORD", "s3cr3t-pw");
        std::env::set_var("SECRET_TEST_CAM_USER", "viewer");
        let url = expand_env("rtsp://${SECRET_TEST_CAM_USER}:${SECRET_TEST_CAM_PASSWORD}@cam-3/s").unwrap();
        assert_eq!(url, "rtsp://viewer:s3cr3t-pw@cam-3/s");
        assert_eq!(redact("opening s3cr3t-pw"), "opening ***");
        assert_eq!(expand_env("/videos/a.mp4").unwrap(), "/videos/a.mp4");
        assert_eq!(
            expand_env("a${SECRET_TEST_UNSET_NAME}b").unwrap_err(),
            "${SECRET_TEST_UNSET_NAME} is not set in this host's environment"
        );
        for bad in ["a${", "a${}", "a${1X}", "a${X Y}"] {
            assert!(expand_env(bad).unwrap_err().contains("does not start a reference"), "{bad}");
        }
    }

    #[test]
    fn a_secret_in_clear_is_told_from_a_reference() {
        for (url, clear) in [
            ("rtsp://u:pw@cam/s", true),
            ("rtsp://u:${PW}@cam/s", false),
            ("rtsp://${U}:${PW}@cam/s", false),
            ("rtsp://u:${PW}x@cam/s", true),
            ("rtsp://u:@cam/s", false),
            ("rtsp://u@cam/s", false),
            ("http://cam/s?token=abc", true),
            ("http://cam/s?token=${TOKEN}", false),
            ("/videos/a.mp4", false),
        ] {
            assert_eq!(url_has_clear_secret(url), clear, "{url}");
        }
    }
}
