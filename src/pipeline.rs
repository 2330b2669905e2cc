//! One request, top to bottom: authenticate ([`crate::authn`]) → admit
//! ([`crate::admit`]: target, `Host`, path, method) → attributes and
//! authorize ([`crate::authz`]) → forward ([`crate::proxy`]). Each step
//! either passes the request on or ends it with a [`Rejection`]; nothing
//! goes back up, and no step reaches into another. Alongside, an
//! [`AccessRecord`] collects what happened, written when the response ends.
//!
//! Authentication comes before admission, as in the kubelet (its
//! authentication filter runs before the authorizing filter that reads the
//! path): a caller without valid credentials learns nothing about which
//! requests would be well-formed — it gets 401 whatever it sent.
//!
//! The connection-level concerns (the HTTP/1.1 head timer, draining) belong
//! to [`crate::server`], which calls [`Pipeline::handle`] once per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::admit::admit;
use crate::authn::{Authenticated, Authenticator, AuthnError, ClientCertificate, TokenError};
use crate::authz::attributes::{StreamingAuthz, attributes_for, is_upgrade_endpoint};
use crate::authz::{Authorizer, Decision};
use crate::body::{self, Body, Counted};
use crate::config::LogFormat;
use crate::metrics::{AuthnLabels, Metrics, UpstreamErrorLabels};
use crate::proxy::{Forwarder, Relayed, StreamObserver};
use crate::reject::Rejection;

/// What the server knows about the connection a request arrived on.
pub struct Connection {
    pub peer: SocketAddr,
    pub client_certificate: Option<ClientCertificate>,
}

pub struct Pipeline {
    pub streaming_authz: StreamingAuthz,
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub log_format: LogFormat,
}

impl Pipeline {
    pub async fn handle(
        &self,
        connection: &Connection,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let mut record = AccessRecord::new(
            connection.peer,
            request.method(),
            request.uri().path(),
            self.log_format,
        );
        let bytes_in = Arc::new(AtomicU64::new(0));
        let request =
            request.map(|b| body::boxed(Counted::new(body::boxed(b), bytes_in.clone(), None)));

        let response = match self.process(connection, request, &mut record).await {
            Ok(response) => response,
            Err(rejection) => {
                record.refused(&rejection);
                // Infrastructure causes are logged at warn where they
                // happen (`fault::FailureReporter`), once per review and
                // rate-limited; per request they stay at debug.
                tracing::debug!(peer = %connection.peer, reason = %rejection, "request refused");
                rejection.into_response()
            }
        };

        record.status(response.status().as_u16());
        let metrics = self.metrics.clone();
        response.map(move |b| {
            let on_end = move |bytes_out| {
                record.finish(
                    bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_out,
                    &metrics,
                );
            };
            body::boxed(Counted::new(b, Arc::default(), Some(Box::new(on_end))))
        })
    }

    async fn process(
        &self,
        connection: &Connection,
        request: Request<Body>,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, Rejection> {
        let caller = self.authenticate(connection, &request).await?;
        record.authenticated(&caller);

        let admitted = admit(&request)?;
        let upgrade_allowed = is_upgrade_endpoint(admitted.path());
        let attributes =
            attributes_for(admitted.method_verb, admitted.path(), self.streaming_authz);
        record.attributes(attributes);

        let decision = match self
            .authorizer
            .authorize(&caller.identity, &attributes)
            .await
        {
            Ok(decision) => decision,
            Err(error) => {
                record.authorization_failed(&self.metrics);
                return Err(Rejection::AuthorizationError {
                    user: caller.identity.user.clone(),
                    verb: attributes.verb,
                    error,
                });
            }
        };
        record.decided(decision, &self.metrics);
        if let Decision::Denied { .. } = decision {
            return Err(Rejection::Forbidden {
                user: caller.identity.user.clone(),
                verb: attributes.verb,
                subresources: attributes.subresources,
            });
        }

        let started = Instant::now();
        let stream_log = || -> Box<dyn StreamObserver> {
            Box::new(StreamLog {
                record: record.clone(),
                metrics: self.metrics.clone(),
            })
        };
        let response = self
            .forwarder
            .forward(
                request,
                admitted.target,
                connection.peer.ip(),
                upgrade_allowed,
                stream_log,
            )
            .await
            .inspect_err(|error| {
                if let Some(cause) = error.upstream_cause() {
                    self.metrics
                        .upstream_errors
                        .get_or_create(&UpstreamErrorLabels {
                            cause: cause.as_str(),
                        })
                        .inc();
                }
            })?;
        self.metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        record.forwarded();
        Ok(response)
    }

    async fn authenticate(
        &self,
        connection: &Connection,
        request: &Request<Body>,
    ) -> Result<Authenticated, Rejection> {
        let result = self
            .authenticator
            .authenticate(connection.client_certificate.as_ref(), request.headers())
            .await;
        let labels = match &result {
            Ok(caller) => AuthnLabels {
                method: caller.method.as_str(),
                result: "success",
            },
            Err(error) => AuthnLabels {
                method: match error {
                    AuthnError::NoCredentials => "none",
                    AuthnError::Certificate(_) => "x509",
                    AuthnError::Token(_) => "token",
                },
                // A token that could not be checked is not a bad token.
                result: match error {
                    AuthnError::Token(TokenError::ReviewFailed(_)) => "error",
                    _ => "failure",
                },
            },
        };
        self.metrics.authentications.get_or_create(&labels).inc();
        Ok(result?)
    }
}

/// Logs and counts an upgraded stream from open to close.
struct StreamLog {
    record: AccessRecord,
    metrics: Arc<Metrics>,
}

impl StreamObserver for StreamLog {
    fn opened(&self) {
        self.metrics.upgraded_streams.inc();
    }

    fn closed(self: Box<Self>, outcome: Result<Relayed, String>) {
        self.metrics.upgraded_streams.dec();
        self.record.stream_closed(&outcome, &self.metrics);
    }
}
