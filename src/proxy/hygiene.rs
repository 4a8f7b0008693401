//! Request-head checks hyper leaves to us, per RFC 9112 and as the strictest of Envoy, nginx
//! and HAProxy apply them: a missing, repeated or invalid `Host` or target authority.
//! Ambiguous framing is found in the raw bytes (`framing`); hyper itself rejects NUL and bare
//! CR in field values, differing `Content-Length`s and oversized heads. A rejected request is
//! answered 400 and its connection closed, never forwarded.

use http::header::{HeaderValue, HOST};
use http::{Request, Version};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    AmbiguousFraming,
    MissingHost,
    DuplicateHost,
    InvalidHost,
}

impl Rejection {
    pub fn message(self) -> &'static str {
        match self {
            Rejection::AmbiguousFraming => {
                "ambiguous message framing (Content-Length with Transfer-Encoding, or conflicting Content-Length)"
            }
            Rejection::MissingHost => "HTTP/1.1 request without Host",
            Rejection::DuplicateHost => "more than one Host field",
            Rejection::InvalidHost => "invalid Host",
        }
    }
}

/// The authority a client addressed (`host[:port]`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed {
    pub value: HeaderValue,
    /// From an absolute-form target or HTTP/2 `:authority` rather than the `Host` field, so
    /// `Host` must be set from it when forwarding.
    pub from_target: bool,
    /// Length of the host part, found while validating, so matching need not parse again.
    host_len: usize,
}

impl Addressed {
    pub fn as_str(&self) -> &str {
        // Validated as an authority, hence visible ASCII.
        self.value.to_str().unwrap_or_default()
    }

    /// The host without port, for route matching.
    pub fn host(&self) -> &str {
        // Both come from the same validated value, so the slice is always there.
        self.as_str().get(..self.host_len).unwrap_or_default()
    }
}

/// Checks a request head and returns the authority the client addressed, taken from an
/// absolute-form target or `:authority` before `Host`.
pub fn inspect<B>(req: &Request<B>) -> Result<Option<Addressed>, Rejection> {
    let headers = req.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::DuplicateHost);
    }
    // Absolute-form and HTTP/2 `:authority` name the target; Host is then only a duplicate.
    let target = match req.uri().authority() {
        Some(authority) => match host_without_port(authority.as_str()) {
            Some(host) => Some(Addressed {
                value: HeaderValue::from_str(authority.as_str())
                    .map_err(|_| Rejection::InvalidHost)?,
                from_target: true,
                host_len: host.len(),
            }),
            None => return Err(Rejection::InvalidHost),
        },
        None => None,
    };
    let host = match host {
        Some(value) => {
            let text = value.to_str().map_err(|_| Rejection::InvalidHost)?;
            match host_without_port(text) {
                Some(host) => Some(Addressed {
                    value: value.clone(),
                    from_target: false,
                    host_len: host.len(),
                }),
                // An empty Host is allowed only when the target names the authority itself.
                None if text.is_empty() && target.is_some() => None,
                None => return Err(Rejection::InvalidHost),
            }
        }
        None if req.version() == Version::HTTP_11 => return Err(Rejection::MissingHost),
        None => None,
    };
    Ok(target.or(host))
}

/// The bytes of a reg-name (RFC 3986 §3.2.2): unreserved, sub-delims, and `%` of a
/// pct-encoded octet. A table, as `host_without_port` runs on every request.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// The host part of `host[:port]`, if the whole is a valid authority without user info.
pub fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let ip_literal = inner
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if inner.is_empty() || !ip_literal {
            return None;
        }
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?),
        };
        (&authority[..inner.len() + 2], port)
    } else {
        // A byte scan from the end: `rsplit_once(':')` goes through the general char searcher.
        match authority.bytes().rposition(|b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    let reg_name_ok = host.starts_with('[')
        || (!host.is_empty() && host.bytes().all(|b| REG_NAME[usize::from(b)]));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (reg_name_ok && port_ok).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(host_without_port("example.com"), Some("example.com"));
        assert_eq!(host_without_port("example.com:8080"), Some("example.com"));
        assert_eq!(host_without_port("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_without_port("[::1]"), Some("[::1]"));
        assert_eq!(host_without_port("user@example.com"), None);
        assert_eq!(host_without_port("a b"), None);
        assert_eq!(host_without_port("example.com:80x"), None);
        assert_eq!(host_without_port("[::1]x"), None);
        assert_eq!(host_without_port(":80"), None);
        assert_eq!(host_without_port("a/b"), None);
    }

    #[test]
    fn reg_name_table_is_the_rfc_set() {
        for b in 0..=u8::MAX {
            let rfc = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
            assert_eq!(REG_NAME[usize::from(b)], rfc, "byte {b:#04x}");
        }
        assert_eq!(host_without_port("a.b:"), Some("a.b"));
        assert_eq!(host_without_port("a:b:80"), None);
        assert_eq!(host_without_port("a.b:123456"), None);
        assert_eq!(
            host_without_port("xn--bcher-kva.example:443"),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(host_without_port("caf\u{e9}.example"), None);
    }

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn host_rules_for_http11() {
        let ok = request(Version::HTTP_11, "/", &[("host", "a.example")]);
        assert_eq!(inspect(&ok).unwrap().unwrap().as_str(), "a.example");
        let missing = request(Version::HTTP_11, "/", &[]);
        assert_eq!(inspect(&missing), Err(Rejection::MissingHost));
        let twice = request(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]);
        assert_eq!(inspect(&twice), Err(Rejection::DuplicateHost));
        let absolute = request(
            Version::HTTP_11,
            "http://b.example/x",
            &[("host", "a.example")],
        );
        let addressed = inspect(&absolute).unwrap().unwrap();
        assert_eq!(
            (addressed.as_str(), addressed.from_target),
            ("b.example", true)
        );
        let old = request(Version::HTTP_10, "/", &[]);
        assert_eq!(inspect(&old), Ok(None));
        let empty = request(Version::HTTP_11, "/", &[("host", "")]);
        assert_eq!(inspect(&empty), Err(Rejection::InvalidHost));
        let userinfo = request(
            Version::HTTP_11,
            "http://u@b.example/",
            &[("host", "b.example")],
        );
        assert_eq!(inspect(&userinfo), Err(Rejection::InvalidHost));
    }

    #[test]
    fn addressed_host_leaves_out_the_port() {
        let host = |uri: &str, host: &str| {
            let req = request(Version::HTTP_11, uri, &[("host", host)]);
            let addressed = inspect(&req).unwrap().unwrap();
            addressed.host().to_owned()
        };
        assert_eq!(host("/", "Shop.Example:8080"), "Shop.Example");
        assert_eq!(host("/", "shop.example"), "shop.example");
        assert_eq!(host("/", "[::1]:9"), "[::1]");
        assert_eq!(host("http://b.example:81/x", "a.example:82"), "b.example");
        // An empty Host is allowed when the target names the authority.
        assert_eq!(host("http://[::1]/x", ""), "[::1]");
    }
}
