//! Forwarding an authorized request to the kubelet: plain requests stream
//! their bodies both ways; upgrades relay the kubelet's `101` and then splice
//! the two connections. Nothing here knows who the caller is or why the
//! request was allowed.

mod error;
pub mod headers;
pub mod upgrade;
pub mod upstream;

use std::net::IpAddr;
use std::time::Duration;

use crate::body::{self, Body};
use crate::drain::Drain;
pub(crate) use error::error_chain;
pub use error::{ProxyError, UpstreamCause};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
pub use upgrade::Relayed;
pub use upstream::{Upstream, UpstreamOptions};

/// Told when an upgraded stream opens and when it closes.
pub trait StreamObserver: Send + 'static {
    /// The kubelet switched protocols; splicing starts.
    fn opened(&self);
    /// The stream is closed, with what it relayed.
    fn closed(self: Box<Self>, outcome: Result<Relayed, String>);
}

pub struct Forwarder {
    upstream: Upstream,
    /// Spliced streams run under it, so shutdown waits for them and closes
    /// them when the grace period is over.
    drain: Drain,
    half_close_linger: Duration,
}

impl Forwarder {
    pub fn new(upstream: Upstream, half_close_linger: Duration, drain: Drain) -> Self {
        Forwarder {
            upstream,
            drain,
            half_close_linger,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Sends `request` to the kubelet at exactly `target` (the path and query
    /// that were authorized). An HTTP/1.1 upgrade is relayed only when
    /// `upgrade_allowed`; otherwise the `Upgrade` header is dropped with the
    /// other hop-by-hop headers. If the kubelet switches protocols,
    /// `observer` is called for something to tell about the stream.
    pub async fn forward(
        &self,
        mut request: Request<Body>,
        target: PathAndQuery,
        peer: IpAddr,
        upgrade_allowed: bool,
        observer: impl FnOnce() -> Box<dyn StreamObserver>,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = match request.version() {
            Version::HTTP_11 if upgrade_allowed => headers::requested_upgrade(request.headers()),
            _ => None,
        };
        let caller_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

        let (parts, body) = request.into_parts();
        let mut headers = parts.headers;
        // An HTTP/2 caller names the host in `:authority`; HTTP/1.1 needs `Host`.
        if !headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        }
        headers::prepare_request(&mut headers, upgrade.as_ref(), peer);
        if let Some(token) = self.upstream.authorization() {
            headers.insert(header::AUTHORIZATION, token);
        }

        let mut outbound = Request::builder()
            .method(parts.method)
            .uri(self.upstream.uri_for(target)?)
            .version(Version::HTTP_11)
            .body(body)?;
        *outbound.headers_mut() = headers;

        let sent = match caller_upgrade {
            // Never pooled: see `Upstream::send_upgrade`.
            Some(_) => self.upstream.send_upgrade(outbound).await,
            None => self.upstream.send(outbound).await,
        };
        let mut response = sent.map_err(|e| ProxyError::Unreachable {
            cause: UpstreamCause::of(&e),
            detail: error_chain(&e),
        })?;

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::prepare_response(response.headers_mut(), switching);
        let Some(caller) = caller_upgrade else {
            return match switching {
                false => Ok(response.map(body::boxed)),
                true => Err(ProxyError::UnexpectedUpgrade),
            };
        };
        match upgrade_answer(response.status()) {
            UpgradeAnswer::Switch => {
                let kubelet = hyper::upgrade::on(&mut response);
                self.spawn_splice(caller, kubelet, observer());
                Ok(response.map(|_| body::empty()))
            }
            answer => {
                // Neither connection is used again after this answer, as the
                // apiserver's upgrade proxy closes both: the kubelet's was
                // never pooled and closes once its body is done (at once for
                // a refusal, whose body is dropped unread); the caller's gets
                // `Connection: close`.
                if answer == UpgradeAnswer::Refuse {
                    // Dropping the response drops its body unread.
                    return Err(ProxyError::UpgradeNotSwitched(response.status()));
                }
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Ok(response.map(body::boxed))
            }
        }
    }

    fn spawn_splice(
        &self,
        caller: hyper::upgrade::OnUpgrade,
        kubelet: hyper::upgrade::OnUpgrade,
        observer: Box<dyn StreamObserver>,
    ) {
        let linger = self.half_close_linger;
        observer.opened();
        self.drain.spawn_stream(
            upgrade::splice_upgraded(caller, kubelet, linger),
            move |relayed| {
                let outcome = match relayed {
                    Some(relayed) => relayed.map_err(|e| error_chain(&e)),
                    None => Err("closed by shutdown".to_owned()),
                };
                observer.closed(outcome);
            },
        );
    }
}

/// What the gateway does with the kubelet's answer to an upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeAnswer {
    /// `101`: relay it and splice the connections.
    Switch,
    /// `>= 400`: relay the kubelet's error with its body, then close both
    /// connections.
    RelayError,
    /// Anything else (`1xx` other than 101, `2xx`, `3xx`): a `502` to the
    /// caller with none of the kubelet's headers, then close both.
    Refuse,
}

/// The rule of the apiserver's upgrade-aware proxy
/// (k8s.io/apimachinery `pkg/util/proxy/upgradeaware.go`, `tryUpgrade`):
/// an upgrade either switches protocols or fails with an error status; any
/// other answer is an error of the backend. Relaying it would let a `3xx`
/// with a `Location` send a redirect-following client, credentials and
/// all, to another host (CVE-2020-8559), or leave a `2xx` connection in a
/// state neither side expects.
pub fn upgrade_answer(status: StatusCode) -> UpgradeAnswer {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        UpgradeAnswer::Switch
    } else if status.as_u16() >= 400 {
        UpgradeAnswer::RelayError
    } else {
        UpgradeAnswer::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_class_has_one_upgrade_answer() {
        for code in 100..=599u16 {
            let status = StatusCode::from_u16(code).unwrap();
            let expected = match code {
                101 => UpgradeAnswer::Switch,
                400.. => UpgradeAnswer::RelayError,
                _ => UpgradeAnswer::Refuse,
            };
            assert_eq!(upgrade_answer(status), expected, "{code}");
        }
    }
}
