//! The one URL parser of the workspace. Redaction (`secret`), the schema registry client and the
//! checks of the flags that take URLs all read a URL through [`Url::parse`], so the part that is
//! hidden is the part that is sent as a credential. A leaf: it imports no other module.

/// `scheme://[user[:password]@]host[:port][/path][?query][#fragment]`, borrowed from the text.
/// The user information ends at the *last* `@` before the path, so a password with an `@` in it
/// is taken whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url<'a> {
    pub scheme: &'a str,
    /// User information, still percent-encoded.
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    /// A name or an address; an IPv6 address keeps its brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// Empty or starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fragment: Option<&'a str>,
}

impl<'a> Url<'a> {
    /// Why `text` is not a URL of that form: a sentence that does not repeat it (it may hold a
    /// password).
    pub fn parse(text: &'a str) -> Result<Self, String> {
        let (scheme, rest) = text.split_once("://").ok_or("not a URL (scheme://host...)")?;
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) || !chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
            return Err("not a URL: the part before :// is no scheme".into());
        }
        let (rest, fragment) = rest.split_once('#').map_or((rest, None), |(r, f)| (r, Some(f)));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (user, password) = match userinfo.map(|u| u.split_once(':').map_or((u, None), |(u, p)| (u, Some(p)))) {
            Some((user, password)) => (Some(user), password),
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or("its host has a '[' that is never closed")?;
            hostport.split_at(end + 2)
        } else {
            hostport.find(':').map_or((hostport, ""), |i| hostport.split_at(i))
        };
        if host.is_empty() || host == "[]" {
            return Err("it names no host".into());
        }
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("its port {p:?} is not a number from 0 to 65535"))?),
            None => return Err("unexpected characters after its host".into()),
        };
        let (path, query) = tail.split_once('?').map_or((tail, None), |(p, q)| (p, Some(q)));
        Ok(Url { scheme, user, password, host, port, path, query, fragment })
    }

    /// `host` or `host:port`.
    pub fn host_port(&self) -> String {
        self.port.map_or_else(|| self.host.to_string(), |p| format!("{}:{p}", self.host))
    }

    /// The query's `key=value` pairs, as written.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        self.query.into_iter().flat_map(|q| q.split('&')).map(|pair| pair.split_once('=').map_or((pair, None), |(k, v)| (k, Some(v))))
    }

    /// The URL without user information, query or fragment, and without a trailing `/`.
    pub fn base(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host_port(), self.path.trim_end_matches('/'))
    }
}

/// `%XX` escapes decoded (user information, before it goes into a basic-auth header).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let u = Url::parse("https://svc:p@ss@reg.example:8081/apis/ccompat/v7/?token=t0k&x=1#f").unwrap();
        assert_eq!((u.scheme, u.user, u.password, u.host, u.port), ("https", Some("svc"), Some("p@ss"), "reg.example", Some(8081)));
        assert_eq!((u.path, u.query, u.fragment), ("/apis/ccompat/v7/", Some("token=t0k&x=1"), Some("f")));
        assert_eq!(u.base(), "https://reg.example:8081/apis/ccompat/v7");
        assert_eq!(u.query_pairs().collect::<Vec<_>>(), [("token", Some("t0k")), ("x", Some("1"))]);
        let v6 = Url::parse("rtsp://[::1]:8554/cam").unwrap();
        assert_eq!((v6.host, v6.port, v6.path), ("[::1]", Some(8554), "/cam"));
        assert_eq!(Url::parse("postgres://h/db").unwrap().host_port(), "h");
    }

    #[test]
    fn what_is_no_url_says_why_without_repeating_it() {
        for (text, why) in [
            ("rtsp://", "no host"),
            ("rtsp://[::1", "never closed"),
            ("rtsp://u:secret@/x", "no host"),
            ("http://h:99999/x", "port \"99999\""),
            ("samples/a=b@c.mp4", "not a URL"),
            ("1http://h", "no scheme"),
            ("rtsp://[::1]x/", "after its host"),
        ] {
            let err = Url::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("p%40ss%2"), b"p@ss%2");
    }
}
