//! One request, top to bottom: authenticate → check the path → map to
//! attributes → authorize → forward. Each step either passes the request on
//! or ends it with a [`Rejection`]; nothing goes back up.

use std::net::SocketAddr;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::authn::{Authenticator, ClientCertificate};
use crate::authz::attributes::{StreamingAuthz, request_attributes};
use crate::authz::path::decode_request_path;
use crate::authz::{Authorizer, Decision};
use crate::body::Body;
use crate::proxy::Forwarder;
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
}

impl Pipeline {
    pub async fn handle(
        &self,
        connection: &Connection,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let response = match self.process(connection, request).await {
            Ok(response) => response,
            Err(rejection) => {
                tracing::info!(peer = %connection.peer, %method, %path, reason = %rejection, "request refused");
                rejection.into_response()
            }
        };
        tracing::debug!(
            peer = %connection.peer,
            %method,
            %path,
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    async fn process(
        &self,
        connection: &Connection,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Rejection> {
        let caller = self
            .authenticator
            .authenticate(connection.client_certificate.as_ref(), request.headers())
            .await?;

        let target = request_target(&request)?;
        let decoded_path = decode_request_path(target.path())?;
        let attributes = request_attributes(request.method(), &decoded_path, self.streaming_authz)?;

        let decision = self
            .authorizer
            .authorize(&caller.identity, &attributes)
            .await
            .map_err(|error| Rejection::AuthorizationError {
                user: caller.identity.user.clone(),
                verb: attributes.verb,
                error,
            })?;
        match decision {
            Decision::Allowed { .. } => {}
            Decision::Denied { .. } => {
                return Err(Rejection::Forbidden {
                    user: caller.identity.user.clone(),
                    verb: attributes.verb,
                    subresources: attributes.subresources,
                });
            }
        }

        let on_stream_end = Box::new(|_| {});
        Ok(self
            .forwarder
            .forward(request, target, connection.peer.ip(), on_stream_end)
            .await?)
    }
}

/// The path and query exactly as the caller sent them. HTTP/1 absolute-form
/// (`GET https://host/pods`) is a proxy request no apiserver sends; refusing
/// it keeps one spelling per request.
fn request_target(request: &Request<Incoming>) -> Result<PathAndQuery, Rejection> {
    let uri = request.uri();
    if request.version() < Version::HTTP_2 && uri.scheme().is_some() {
        return Err(Rejection::AbsoluteForm);
    }
    uri.path_and_query().cloned().ok_or(Rejection::BadPath(
        crate::authz::path::PathError::NotAbsolute,
    ))
}
