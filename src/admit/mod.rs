//! Admission: the one place a request's shape is checked, before anything
//! is decided about it. A request is admitted with exactly one spelling of
//! what it names — one path and query (forwarded byte for byte), one
//! authority, a decoded path the kubelet will route on identically, and a
//! method the kubelet has a verb for — or it is refused (400 or 405):
//!
//! - [`target`]: the request target and `Host` rules, unambiguous framing;
//! - [`path`]: path safety (no spelling that decodes to other segments);
//! - [`method`]: method → verb.
//!
//! Nothing here knows who the caller is; the steps after admission work
//! only on an [`Admitted`] request.

pub mod method;
pub mod path;
pub mod target;

use std::borrow::Cow;

use http::Request;
use http::uri::PathAndQuery;
use thiserror::Error;

pub use method::{MethodNotAllowed, Verb};
pub use path::PathError;
pub use target::AmbiguousFraming;

/// Why a request was not admitted.
#[derive(Debug, Error)]
pub enum AdmitError {
    #[error("{0}")]
    BadPath(#[from] PathError),
    #[error("absolute-form request target")]
    AbsoluteForm,
    #[error("{0}")]
    BadHost(&'static str),
    /// The body's length is ambiguous; the connection is closed after the
    /// answer.
    #[error("{0}")]
    BadFraming(&'static str),
    #[error("{0}")]
    MethodNotAllowed(#[from] MethodNotAllowed),
}

/// What an admitted request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The path and query exactly as sent: what is forwarded.
    pub target: PathAndQuery,
    /// The decoded path, when decoding changed it (most paths have no
    /// escapes: no copy then).
    decoded: Option<String>,
    /// The verb of the request's method.
    pub method_verb: Verb,
}

impl Admitted {
    /// The decoded path: what is authorized (the kubelet routes on it).
    pub fn path(&self) -> &str {
        self.decoded.as_deref().unwrap_or(self.target.path())
    }
}

/// Checks, in this order, the request target, the path and the method.
pub fn admit<B>(request: &Request<B>) -> Result<Admitted, AdmitError> {
    let target = target::request_target(request)?;
    let decoded = match path::decode_request_path(target.path())? {
        Cow::Borrowed(_) => None,
        Cow::Owned(decoded) => Some(decoded),
    };
    let method_verb = Verb::for_method(request.method())
        .ok_or_else(|| MethodNotAllowed(request.method().clone()))?;
    Ok(Admitted {
        target,
        decoded,
        method_verb,
    })
}

#[cfg(test)]
mod tests {
    use http::{Method, header};

    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "node-a:10250")
            .body(())
            .unwrap()
    }

    #[test]
    fn an_admitted_request_keeps_the_raw_target_and_authorizes_the_decoded_path() {
        let admitted = admit(&request(
            Method::HEAD,
            "/containerLogs/ns/p%20o/c?tailLines=1",
        ))
        .unwrap();
        assert_eq!(admitted.target, "/containerLogs/ns/p%20o/c?tailLines=1");
        assert_eq!(admitted.path(), "/containerLogs/ns/p o/c");
        assert_eq!(admitted.method_verb, Verb::Get);
        let plain = admit(&request(Method::POST, "/exec/ns/p/c?command=sh")).unwrap();
        assert_eq!(plain.path(), "/exec/ns/p/c");
        assert_eq!(plain.decoded, None, "no copy of a path without escapes");
        assert_eq!(plain.method_verb, Verb::Create);
    }

    #[test]
    fn target_then_path_then_method_are_checked() {
        let refused = |r: Request<()>| admit(&r).unwrap_err().to_string();
        assert_eq!(
            refused(request(Method::TRACE, "/pods/../exec")),
            "path has a '.' or '..' segment",
            "the path is checked before the method"
        );
        assert_eq!(
            refused(request(Method::TRACE, "/pods")),
            "method TRACE is not allowed"
        );
        let mut no_host = request(Method::TRACE, "/pods/../exec");
        no_host.headers_mut().remove(header::HOST);
        assert_eq!(refused(no_host), "missing Host header");
    }
}
