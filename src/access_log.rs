//! The access log: one line per request, written when its response ends (so
//! the byte counts are final), and for upgraded streams one more line when
//! the stream closes. The query string is never logged — exec commands can
//! carry secrets. Requests are counted in the same place.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;

use crate::authn::Authenticated;
use crate::authz::attributes::{Attributes, Subresource};
use crate::authz::{Decision, Source};
use crate::metrics::{AuthzLabels, Metrics, RequestLabels};
use crate::proxy::Relayed;
use crate::reject::Rejection;

/// What one request did, filled in as it moves through the pipeline.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    started: Instant,
    peer: SocketAddr,
    method: Method,
    path: String,
    user: Option<String>,
    groups: Vec<String>,
    authn: &'static str,
    attributes: Option<Attributes>,
    /// allowed, denied, error, unauthenticated, bad_request or
    /// method_not_allowed; empty until known.
    decision: &'static str,
    source: Option<Source>,
    allowed_by: Option<Subresource>,
    /// The kubelet answered (its bytes count as relayed).
    forwarded: bool,
    status: u16,
}

impl AccessRecord {
    pub fn new(peer: SocketAddr, method: &Method, path: &str) -> Self {
        AccessRecord {
            started: Instant::now(),
            peer,
            method: method.clone(),
            path: path.to_owned(),
            user: None,
            groups: Vec::new(),
            authn: "none",
            attributes: None,
            decision: "",
            source: None,
            allowed_by: None,
            forwarded: false,
            status: 0,
        }
    }

    pub fn authenticated(&mut self, caller: &Authenticated) {
        self.user = Some(caller.identity.user.clone());
        self.groups = caller.identity.groups.clone();
        self.authn = caller.method.as_str();
    }

    pub fn attributes(&mut self, attributes: Attributes) {
        self.attributes = Some(attributes);
    }

    /// Records why a request was refused before, or instead of, forwarding.
    pub fn refused(&mut self, rejection: &Rejection) {
        self.decision = match rejection {
            Rejection::Unauthorized(_) => "unauthenticated",
            Rejection::BadPath(_) | Rejection::AbsoluteForm | Rejection::BadHost(_) => {
                "bad_request"
            }
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::Forbidden { .. } => "denied",
            Rejection::AuthorizationError { .. } => "error",
            // Allowed, then the kubelet failed: the decision stands.
            Rejection::BadGateway(_) => self.decision,
        };
    }

    pub fn decided(&mut self, decision: Decision, metrics: &Metrics) {
        let (label, source) = match decision {
            Decision::Allowed {
                subresource,
                source,
            } => {
                self.allowed_by = Some(subresource);
                ("allowed", source)
            }
            Decision::Denied { source } => ("denied", source),
        };
        self.decision = label;
        self.source = Some(source);
        metrics
            .authorizations
            .get_or_create(&AuthzLabels {
                source: source.as_str(),
                decision: label,
            })
            .inc();
    }

    pub fn authorization_failed(&mut self, metrics: &Metrics) {
        self.source = Some(Source::Review);
        metrics
            .authorizations
            .get_or_create(&AuthzLabels {
                source: "review",
                decision: "error",
            })
            .inc();
    }

    pub fn forwarded(&mut self) {
        self.forwarded = true;
    }

    pub fn status(&mut self, status: u16) {
        self.status = status;
    }

    fn subresources(&self) -> String {
        self.attributes
            .map(|a| {
                a.subresources
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    /// Writes the request's line and counts it.
    pub fn finish(&self, bytes_in: u64, bytes_out: u64, metrics: &Metrics) {
        self.count(metrics);
        if self.forwarded {
            metrics.relayed("to_kubelet", bytes_in);
            metrics.relayed("to_caller", bytes_out);
        }
        self.write("request", self.started.elapsed(), bytes_in, bytes_out);
    }

    /// Writes the closing line of an upgraded stream.
    pub fn stream_closed(&self, outcome: &Result<Relayed, String>, metrics: &Metrics) {
        let relayed = outcome.as_ref().copied().unwrap_or_default();
        metrics.relayed("to_kubelet", relayed.to_kubelet);
        metrics.relayed("to_caller", relayed.to_caller);
        match outcome {
            Ok(_) => self.write(
                "stream closed",
                self.started.elapsed(),
                relayed.to_kubelet,
                relayed.to_caller,
            ),
            Err(reason) => {
                tracing::info!(target: "access", error = %reason, "stream failed");
                self.write("stream closed", self.started.elapsed(), 0, 0);
            }
        }
    }

    fn count(&self, metrics: &Metrics) {
        let subresource = self
            .allowed_by
            .or_else(|| {
                self.attributes
                    .and_then(|a| a.subresources.first().copied())
            })
            .map_or("none", Subresource::as_str);
        let verb = self.attributes.map_or("none", |a| a.verb.as_str());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                subresource,
                verb,
                code: self.status,
            })
            .inc();
    }

    fn write(&self, message: &'static str, duration: Duration, bytes_in: u64, bytes_out: u64) {
        tracing::info!(
            target: "access",
            peer = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            groups = %self.groups.join(","),
            authn = self.authn,
            method = %self.method,
            path = %self.path,
            verb = self.attributes.map_or("", |a| a.verb.as_str()),
            subresources = %self.subresources(),
            decision = self.decision,
            source = self.source.map_or("", Source::as_str),
            status = self.status,
            bytes_in,
            bytes_out,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "{message}"
        );
    }
}
