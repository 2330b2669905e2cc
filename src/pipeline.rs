//! One request, top to bottom: authenticate → check the path → map to
//! attributes → authorize → forward. Each step either passes the request on
//! or ends it with a [`Rejection`]; nothing goes back up. Alongside, an
//! [`AccessRecord`] collects what happened, written when the response ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::authn::{Authenticated, Authenticator, AuthnError, ClientCertificate, TokenError};
use crate::authz::attributes::{StreamingAuthz, is_upgrade_endpoint, request_attributes};
use crate::authz::path::decode_request_path;
use crate::authz::{Authorizer, Decision};
use crate::body::{self, Body, Counted};
use crate::config::LogFormat;
use crate::metrics::{AuthnLabels, Metrics};
use crate::proxy::{Forwarder, Relayed, StreamObserver};
use crate::reject::Rejection;
use crate::server::HeadClock;
use crate::target::request_target;

/// What the server knows about the connection a request arrived on.
pub struct Connection {
    pub peer: SocketAddr,
    pub client_certificate: Option<ClientCertificate>,
    /// HTTP/1.1 only: tells the slow-header guard when a request is in
    /// progress and when the connection was upgraded.
    pub head_clock: Option<Arc<HeadClock>>,
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
        if let Some(clock) = &connection.head_clock {
            clock.request_started();
        }
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
        let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let clock = connection.head_clock.clone();
        if upgraded && let Some(clock) = &clock {
            clock.upgraded();
        }
        let metrics = self.metrics.clone();
        response.map(move |b| {
            let on_end = move |bytes_out| {
                record.finish(
                    bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_out,
                    &metrics,
                );
                if let (false, Some(clock)) = (upgraded, clock) {
                    clock.response_finished();
                }
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

        let target = request_target(&request)?;
        let decoded_path = decode_request_path(target.path())?;
        let upgrade_allowed = is_upgrade_endpoint(&decoded_path);
        let attributes = request_attributes(request.method(), &decoded_path, self.streaming_authz)?;
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
                target,
                connection.peer.ip(),
                upgrade_allowed,
                stream_log,
            )
            .await?;
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
