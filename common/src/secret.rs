//! Values that must never be shown: in `--help` (clap's `hide_env_values` keeps the environment's
//! values out), in logs and errors, or in a `{:?}` of a config struct.

use std::fmt;
use std::str::FromStr;

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
/// `password=` and the like). `Debug` and `Display` show it with every one of them replaced.
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

/// `scheme://user:password@host/path?password=x` with the password and every secret-named query
/// value replaced by `***`. The user information ends at the *last* `@` before the path, so a
/// password with an `@` in it is hidden whole; a URL that does not parse as one is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') || url.contains('=') { "***".to_string() } else { url.to_string() };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let shown: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_name(k) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}{}", shown.join("&"), fragment.map(|f| format!("#{f}")).unwrap_or_default())
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
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
            ("user:secret@host", "***"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
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
}
