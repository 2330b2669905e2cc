//! What more than one step of the chain reads from request headers: the
//! upgrade a request asks for (forwarding relays it, authentication looks
//! for a WebSocket bearer token in it) and the comma-separated lists those
//! headers carry. Pure functions over `http` types; no other module here.

use http::header::{self, HeaderMap, HeaderValue};

/// The WebSocket subprotocol prefix that carries a bearer token, which the
/// kubelet accepts as a credential (`base64url.bearer.authorization.k8s.io.<token>`).
pub const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// The protocol a request asks to switch to, if it is an HTTP/1.1 upgrade:
/// `Connection` names `upgrade` and `Upgrade` is present.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    connection_tokens(headers)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        .then(|| upgrade.clone())
}

/// The comma-separated, trimmed, non-empty entries of a list header value.
pub fn protocol_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// The comma-separated tokens of every `Connection` header.
/// Bytes, not text: a non-ASCII byte in one token must not hide the others.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| protocol_list(v.as_bytes()))
}
