//! Header hygiene between caller and kubelet. Pure functions: the forwarder
//! calls them, the tests hold them to RFC 9110 and to what the apiserver's
//! upgrade-aware proxy does.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::request_headers::connection_tokens;
pub use crate::request_headers::{WEBSOCKET_BEARER_PREFIX, protocol_list, requested_upgrade};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy names RFC 2616 and
/// proxies still use). They describe one connection and must not cross.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
const LEGACY_HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection"];

/// Makes a caller's headers fit to send to the kubelet:
/// - identity headers (`Authorization`, `Impersonate-*`, `X-Remote-*`, a
///   bearer token in `Sec-WebSocket-Protocol`) are removed — the kubelet must
///   only ever see the gateway's own credential;
/// - hop-by-hop headers are removed, and on an upgrade exactly
///   `Connection: Upgrade` and the caller's `Upgrade` are put back;
/// - the caller's address is appended to `X-Forwarded-For`.
pub fn prepare_request(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>, peer: IpAddr) {
    remove_hop_by_hop(headers);
    remove_identity_headers(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    append_forwarded_for(headers, peer);
}

/// Makes the kubelet's response headers fit to relay. On a `101`, the
/// kubelet's `Upgrade` is relayed with `Connection: Upgrade`; the rest of its
/// headers (`X-Stream-Protocol-Version`, `Sec-WebSocket-*`) pass unchanged.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    remove_hop_by_hop(headers);
    if switching_protocols && let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    // One pass over the names present (a handful) rather than a lookup per
    // hop-by-hop name: this runs twice for every request.
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name)
            || LEGACY_HOP_BY_HOP.contains(&name.as_str())
            || named.contains(name)
    });
}

fn remove_identity_headers(headers: &mut HeaderMap) {
    remove_where(headers, |name| {
        let name_text = name.as_str(); // always lowercase
        name == header::AUTHORIZATION
            || name_text.starts_with("impersonate-")
            || name_text.starts_with("x-remote-")
    });
    strip_websocket_bearer(headers);
}

/// Removes every value of each header whose name matches.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| doomed(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Drops the bearer-token entry from every `Sec-WebSocket-Protocol` value,
/// keeping the protocols the kubelet needs to pick from. Works on bytes: a
/// value with a non-ASCII byte elsewhere in it must lose its token too.
fn strip_websocket_bearer(headers: &mut HeaderMap) {
    let name = header::SEC_WEBSOCKET_PROTOCOL;
    if !headers.contains_key(&name) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(&name)
        .iter()
        .filter_map(|value| {
            let rest: Vec<&[u8]> = protocol_list(value.as_bytes())
                .filter(|p| !p.starts_with(WEBSOCKET_BEARER_PREFIX.as_bytes()))
                .collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_bytes(&rest.join(&b", "[..])).ok())
                .flatten()
        })
        .collect();
    headers.remove(&name);
    for value in kept {
        headers.append(&name, value);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {peer}", prior.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    #[test]
    fn identity_headers_never_reach_the_kubelet() {
        let mut map = headers(&[
            ("authorization", "Bearer stolen"),
            ("Impersonate-User", "system:admin"),
            ("impersonate-group", "system:masters"),
            ("Impersonate-Extra-scopes", "x"),
            ("impersonate-uid", "1"),
            ("X-Remote-User", "admin"),
            ("x-remote-group", "system:masters"),
            ("x-remote-extra-foo", "bar"),
            ("proxy-authorization", "Basic x"),
            ("accept", "application/json"),
            ("x-remotely", "kept: not an x-remote- header"),
        ]);
        prepare_request(&mut map, None, PEER);
        assert_eq!(names(&map), ["accept", "x-forwarded-for", "x-remotely"]);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_including_those_named_in_connection() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-custom-hop", "1"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]);
        prepare_request(&mut map, None, PEER);
        assert_eq!(
            names(&map),
            ["x-forwarded-for", "x-stream-protocol-version"]
        );
    }

    #[test]
    fn upgrades_keep_exactly_connection_upgrade_and_the_protocol() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        let upgrade = requested_upgrade(&map);
        assert_eq!(
            upgrade.as_ref().map(|v| v.to_str().unwrap()),
            Some("SPDY/3.1")
        );
        prepare_request(&mut map, upgrade.as_ref(), PEER);
        assert_eq!(map["connection"], "Upgrade");
        assert_eq!(map["upgrade"], "SPDY/3.1");
        let versions: Vec<_> = map.get_all("x-stream-protocol-version").iter().collect();
        assert_eq!(versions, ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        assert!(requested_upgrade(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(requested_upgrade(&headers(&[("connection", "upgrade")])).is_none());
        assert!(
            requested_upgrade(&headers(&[
                ("connection", "close"),
                ("upgrade", "websocket")
            ]))
            .is_none()
        );
        assert!(
            requested_upgrade(&headers(&[
                ("connection", "UPGRADE"),
                ("upgrade", "websocket")
            ]))
            .is_some()
        );
        let split = headers(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(requested_upgrade(&split).is_some());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut map = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
        ]);
        prepare_request(&mut map, None, PEER);
        assert_eq!(map["x-forwarded-for"], "192.0.2.1, 192.0.2.2, 10.0.0.7");
        let mut map = HeaderMap::new();
        prepare_request(&mut map, None, "::1".parse().unwrap());
        assert_eq!(map["x-forwarded-for"], "::1");
    }

    #[test]
    fn websocket_bearer_tokens_are_removed_and_the_other_protocols_kept() {
        let mut map = headers(&[(
            "sec-websocket-protocol",
            "base64url.bearer.authorization.k8s.io.c2VjcmV0, v4.channel.k8s.io, base64.channel.k8s.io",
        )]);
        prepare_request(&mut map, None, PEER);
        assert_eq!(
            map["sec-websocket-protocol"],
            "v4.channel.k8s.io, base64.channel.k8s.io"
        );

        let mut only_token = headers(&[(
            "sec-websocket-protocol",
            "base64url.bearer.authorization.k8s.io.c2VjcmV0",
        )]);
        prepare_request(&mut only_token, None, PEER);
        assert!(!only_token.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn a_non_ascii_byte_does_not_shield_the_headers_connection_names() {
        let mut map = HeaderMap::new();
        map.insert(
            "connection",
            HeaderValue::from_bytes(b"x-odd\xb3, x-hop").unwrap(),
        );
        map.insert("x-hop", HeaderValue::from_static("1"));
        prepare_request(&mut map, None, PEER);
        assert!(!map.contains_key("x-hop"));
    }

    #[test]
    fn a_non_ascii_byte_does_not_shield_a_websocket_token() {
        // Found by fuzz/headers: to_str() failed on the 0xb3 byte and the
        // whole value, token included, used to be kept.
        let mut map = HeaderMap::new();
        map.insert(
            "sec-websocket-protocol",
            HeaderValue::from_bytes(
                b"base64url.bearer.authorization.k8s.io.dG9rZW4\xb34, v4.channel.k8s.io",
            )
            .unwrap(),
        );
        prepare_request(&mut map, None, PEER);
        assert_eq!(map["sec-websocket-protocol"], "v4.channel.k8s.io");
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_but_a_101_keeps_its_upgrade() {
        let mut ok = headers(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        prepare_response(&mut ok, false);
        assert_eq!(names(&ok), ["content-type"]);

        let mut switching = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        prepare_response(&mut switching, true);
        assert_eq!(switching["connection"], "Upgrade");
        assert_eq!(switching["upgrade"], "websocket");
        assert_eq!(
            switching["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(switching["sec-websocket-protocol"], "v4.channel.k8s.io");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Header names mixing identity, hop-by-hop and ordinary headers, in any
    /// letter case (HeaderName lowercases them, as HTTP/2 requires).
    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            Just("Authorization".to_owned()),
            Just("Proxy-Authorization".to_owned()),
            "[Ii][Mm][Pp][Ee][Rr][Ss][Oo][Nn][Aa][Tt][Ee]-[A-Za-z-]{1,10}",
            "[Xx]-[Rr][Ee][Mm][Oo][Tt][Ee]-[A-Za-z-]{1,10}",
            Just("Connection".to_owned()),
            Just("Keep-Alive".to_owned()),
            Just("TE".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("Upgrade".to_owned()),
            Just("Proxy-Connection".to_owned()),
            Just("Sec-WebSocket-Protocol".to_owned()),
            "[A-Za-z][A-Za-z0-9-]{0,12}",
        ]
        .prop_filter_map("valid name", |n| HeaderName::from_bytes(n.as_bytes()).ok())
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            Just("upgrade, x-custom".to_owned()),
            Just("base64url.bearer.authorization.k8s.io.dG9rZW4, v4.channel.k8s.io".to_owned()),
            "[ -~]{0,24}",
        ]
        .prop_filter_map("valid value", |v| HeaderValue::from_str(&v).ok())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn no_identity_or_hop_by_hop_header_survives(
            pairs in proptest::collection::vec((header_name(), header_value()), 0..16),
            upgrade in proptest::option::of(Just(HeaderValue::from_static("SPDY/3.1"))),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name, value);
            }
            prepare_request(&mut headers, upgrade.as_ref(), "10.0.0.1".parse().unwrap());
            for name in headers.keys() {
                let name = name.as_str();
                prop_assert!(name != "authorization" && name != "proxy-authorization");
                prop_assert!(!name.starts_with("impersonate-") && !name.starts_with("x-remote-"));
                prop_assert!(!["keep-alive", "te", "transfer-encoding", "proxy-connection", "trailer"].contains(&name));
            }
            for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
                prop_assert!(!value.to_str().unwrap_or("").contains(WEBSOCKET_BEARER_PREFIX));
            }
            match &upgrade {
                Some(protocol) => {
                    prop_assert_eq!(headers.get_all(header::CONNECTION).iter().collect::<Vec<_>>(), ["Upgrade"]);
                    prop_assert_eq!(headers.get_all(header::UPGRADE).iter().collect::<Vec<_>>(), [protocol]);
                }
                None => {
                    prop_assert!(!headers.contains_key(header::CONNECTION));
                    prop_assert!(!headers.contains_key(header::UPGRADE));
                }
            }
            prop_assert!(headers["x-forwarded-for"].to_str().unwrap().ends_with("10.0.0.1"));
        }
    }
}
