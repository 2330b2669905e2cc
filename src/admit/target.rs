//! What a request names, before anything is decided about it: the path and
//! query to authorize and forward, and the one authority the kubelet will
//! see. Every HTTP version the gateway serves (HTTP/1.0, HTTP/1.1, HTTP/2)
//! goes through the same rule, so a request reaches the kubelet with
//! exactly one `Host`, or is refused with 400 before authorization:
//!
//! - HTTP/1.x: origin-form only — absolute-form (`GET https://host/pods`) is
//!   a proxy request no apiserver sends, and refusing it keeps one spelling
//!   per request; HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2, as Go
//!   and so the kubelet require); HTTP/1.0 at most one.
//! - HTTP/2: `:authority`, if present, carries no userinfo, and a `host`
//!   field must name the same authority (RFC 9113 §8.3.1); at most one
//!   `host` field — HTTP/2 does not merge them, and the kubelet (reached
//!   over HTTP/1.1) would get two `Host` lines.
//! - A `Host` must be a well-formed `host[:port]` (Go answers 400 to a
//!   malformed one: net/http `httpguts.ValidHostHeader`).
//!
//! - HTTP/1.x: not both `Content-Length` and `Transfer-Encoding`. RFC 9112
//!   §6.3 lets a server process such a request by `Transfer-Encoding` or
//!   reject it; Go's net/http (and so the kubelet) rejects it with 400, and
//!   so does the gateway — the kubelet never sees a request whose length
//!   two parsers could read two ways. The connection is closed after the
//!   answer (same section: the server MUST close it).
//!
//! The authority forwarded is then the single `Host`, else `:authority`,
//! else — a caller that named none (HTTP/1.0, HTTP/2 without `:authority`)
//! — the kubelet's own address, as the upstream client writes it.

use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Request, Uri, Version, header};

use super::AdmitError;
use super::path::PathError;

/// Marks a request whose head carried both `Content-Length` and
/// `Transfer-Encoding`, set by the server, which saw the head before hyper
/// dropped `Content-Length` (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

/// The path and query exactly as the caller sent them, once the request's
/// shape is unambiguous.
pub fn request_target<B>(request: &Request<B>) -> Result<PathAndQuery, AdmitError> {
    let uri = request.uri();
    if request.version() < Version::HTTP_2 && uri.scheme().is_some() {
        return Err(AdmitError::AbsoluteForm);
    }
    check_authority(request.version(), uri, request.headers()).map_err(AdmitError::BadHost)?;
    let headers = request.headers();
    let both = headers.contains_key(header::CONTENT_LENGTH)
        && headers.contains_key(header::TRANSFER_ENCODING);
    if both || request.extensions().get::<AmbiguousFraming>().is_some() {
        return Err(AdmitError::BadFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    uri.path_and_query()
        .cloned()
        .ok_or(AdmitError::BadPath(PathError::NotAbsolute))
}

fn check_authority(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(host) = host
        && !is_host_and_port(host.as_bytes())
    {
        return Err("malformed Host header");
    }
    match version {
        Version::HTTP_10 => Ok(()),
        Version::HTTP_11 => host.map(|_| ()).ok_or("missing Host header"),
        _ => match (uri.authority(), host) {
            (Some(authority), _) if authority.as_str().contains('@') => {
                Err(":authority must not carry userinfo")
            }
            (Some(authority), Some(host))
                if !authority
                    .as_str()
                    .as_bytes()
                    .eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Err(":authority and Host disagree")
            }
            _ => Ok(()),
        },
    }
}

/// `host[:port]` and nothing else: no userinfo, path, spaces or controls.
fn is_host_and_port(value: &[u8]) -> bool {
    !value.contains(&b'@') && Authority::try_from(value).is_ok()
}
