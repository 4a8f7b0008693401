//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` family, request ids, and recognising a WebSocket upgrade.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, Request};
use ipnet::IpNet;

use crate::listener::Peer;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The fixed hop-by-hop fields; bit `i` of a presence mask stands for `HOP_BY_HOP[i]`. The last
/// is cutover's own: only cutover marks a request as a shadow copy, so a client must not be
/// able to pass a real request off as one (a backend may skip side effects for copies).
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
    TRAILER,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("x-cutover-shadow"),
];
const CONNECTION_BIT: u8 = 1 << 0;
const TE_BIT: u8 = 1 << 1;

/// Whether `name` is one of the fixed hop-by-hop fields (not counting those `Connection` names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// The name's bit in a presence mask, 0 if not a fixed hop-by-hop name. Matching the string
/// costs a length switch, where comparing `HeaderName`s in turn cost ~75 instructions a key.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection" => CONNECTION_BIT,
        "te" => TE_BIT,
        "transfer-encoding" => 1 << 2,
        "upgrade" => 1 << 3,
        "trailer" => 1 << 4,
        "keep-alive" => 1 << 5,
        "proxy-connection" => 1 << 6,
        "x-cutover-shadow" => 1 << 7,
        _ => 0,
    }
}

/// Removes the fields that describe one connection rather than the message: the fixed
/// hop-by-hop set (and `x-cutover-shadow`) and every field named in `Connection`. `TE: trailers` survives because
/// gRPC over HTTP/2 needs it end to end. `Host` is never removed, whatever `Connection` says.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Each `remove` hashes (and, for a `&str`, parses) its name, so only names present are
    // removed: one pass over the fields notes the fixed ones and reads `Connection` on the
    // way. Most requests carry none; most responses just `Connection: keep-alive`.
    let mut present = 0;
    let mut named = Vec::new();
    for (name, value) in headers.iter() {
        let bit = hop_by_hop_bit(name);
        present |= bit;
        if bit != CONNECTION_BIT {
            continue;
        }
        // A value that is not visible ASCII names nothing; in one that is, only spaces and
        // tabs can surround a token.
        let tokens = value
            .to_str()
            .unwrap_or_default()
            .as_bytes()
            .split(|&b| b == b',');
        for token in tokens.map(<[u8]>::trim_ascii) {
            // Keys are lowercase and valid, so a token naming no key (absent, empty or not a
            // valid name) has nothing to remove.
            let Some(name) = headers
                .keys()
                .find(|k| token.eq_ignore_ascii_case(k.as_str().as_bytes()))
            else {
                continue;
            };
            // `Host` stays; fixed fields are dealt with below. That includes TE, which RFC 9110
            // §10.1.4 has every HTTP/1.1 sender name in `Connection`: naming it must not lose
            // `trailers`.
            if hop_by_hop_bit(name) == 0 && name != HOST {
                named.push(name.clone());
            }
        }
    }
    if present == 0 {
        return;
    }
    for name in &named {
        headers.remove(name);
    }
    let keeps_trailers =
        present & TE_BIT != 0 && headers.get_all(TE).iter().any(|v| has_token(v, "trailers"));
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keeps_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The `Upgrade` value of a WebSocket upgrade request (`Connection: upgrade` plus
/// `Upgrade: websocket`). Any other upgrade, `h2c` included, gets `None` and is dropped.
pub fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| has_token(v, "upgrade"));
    let upgrade = headers.get(UPGRADE)?;
    let first_protocol = upgrade.to_str().ok()?.split(',').next()?.trim();
    let protocol_name = first_protocol.split('/').next()?;
    (asks_upgrade && protocol_name.eq_ignore_ascii_case("websocket")).then(|| upgrade.clone())
}

/// Puts `Connection: upgrade` and `Upgrade` back after hop-by-hop removal.
pub fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade);
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',').any(|t| {
            t.trim()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(token)
        })
    })
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto`/`-Host`. A trusted
/// peer's own `-Proto`/`-Host` are kept: it saw the client, we did not.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
    peer_trusted: bool,
) {
    if headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = Vec::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            chain.extend_from_slice(value.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(peer.forwarded_for.as_bytes());
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer.forwarded_for.clone());
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(value) => {
                headers.insert(X_FORWARDED_HOST.clone(), value.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Adds a random `x-request-id` unless the client sent one.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if !headers.contains_key(&X_REQUEST_ID) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let random = rand::random::<u128>().to_be_bytes();
        let mut id = [0u8; 32];
        for (pair, byte) in id.chunks_exact_mut(2).zip(random) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        if let Ok(value) = HeaderValue::from_bytes(&id) {
            headers.insert(X_REQUEST_ID.clone(), value);
        }
    }
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut nearest = peer;
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            return nearest;
        };
        if !is_trusted(ip, trusted) {
            return ip;
        }
        nearest = ip;
    }
    nearest
}

/// A copy of a request head for a second attempt or a shadow copy (extensions are not
/// carried over).
pub fn copy_head(parts: &Parts) -> Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(HOST, HeaderValue::from_static("example.com"));
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(CONNECTION));
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("keep-alive"));
        assert_eq!(h.get(HOST).unwrap(), "example.com");
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert!(h.contains_key("x-kept"));
    }

    fn stripped(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        strip_hop_by_hop(&mut h);
        h.iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    fn fields(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hop_by_hop_bits_follow_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << i, "{name}");
        }
        assert_eq!(hop_by_hop_bit(&HOST), 0);
    }

    #[test]
    fn connection_tokens_remove_only_what_they_name() {
        // Mixed-case tokens, whitespace, an empty token and absent or invalid names.
        assert_eq!(
            stripped(&[
                ("connection", "close, X-Foo,, x-absent, bad name, a;b"),
                ("x-foo", "1"),
                ("x-foo", "2"),
                ("x-bar", "1"),
            ]),
            fields(&[("x-bar", "1")])
        );
        // Tokens naming fixed fields, `connection` itself included.
        assert_eq!(
            stripped(&[
                ("connection", "Upgrade, connection, keep-alive"),
                ("upgrade", "websocket"),
                ("x-bar", "1"),
            ]),
            fields(&[("x-bar", "1")])
        );
        // A value that is not visible ASCII names nothing.
        assert_eq!(
            stripped(&[("connection", "x-foo, caf\u{e9}"), ("x-foo", "1")]),
            fields(&[("x-foo", "1")])
        );
        // `Host` survives being named.
        assert_eq!(
            stripped(&[("connection", "Host"), ("host", "a.example")]),
            fields(&[("host", "a.example")])
        );
        // Every `Connection` field counts.
        assert_eq!(
            stripped(&[
                ("connection", "x-a"),
                ("connection", "X-B"),
                ("x-a", "1"),
                ("x-b", "1"),
                ("x-c", "1"),
            ]),
            fields(&[("x-c", "1")])
        );
    }

    #[test]
    fn fixed_fields_go_and_te_trailers_stays() {
        assert_eq!(
            stripped(&[
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("trailer", "x-t"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("x-bar", "1"),
            ]),
            fields(&[("x-bar", "1"), ("te", "trailers")])
        );
        assert_eq!(stripped(&[("te", "gzip")]), fields(&[]));
        assert_eq!(
            stripped(&[("te", "gzip"), ("te", "Trailers;q=1")]),
            fields(&[("te", "trailers")])
        );
        // A compliant HTTP/1.1 client names TE in `Connection` (RFC 9110 §10.1.4).
        assert_eq!(
            stripped(&[("connection", "te"), ("te", "trailers")]),
            fields(&[("te", "trailers")])
        );
        assert_eq!(
            stripped(&[("connection", "TE"), ("te", "gzip")]),
            fields(&[])
        );
        let plain = [("host", "a.example"), ("x-bar", "1")];
        assert_eq!(stripped(&plain), fields(&plain));
    }

    #[test]
    fn only_websocket_upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(websocket_upgrade(&h), None);
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(websocket_upgrade(&h).is_some());
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(websocket_upgrade(&h), None);
    }

    #[test]
    fn client_ip_is_right_most_untrusted_entry() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "3.3.3.3".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
    }
}
