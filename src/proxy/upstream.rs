//! The connection pool to the kubelet.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use tokio::sync::watch;

use crate::body::Body;

/// Where the kubelet is and how the gateway proves itself to it. Cheap to
/// clone: clones share the connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// For upgrade requests: a fresh connection each, never pooled, as the
    /// apiserver's upgrade proxy dials one per upgrade (`DialForUpgrade`).
    /// A `101` hands the connection over to the splice; any other answer
    /// leaves it to close as soon as its body is done, so a connection on
    /// which an upgrade went wrong is never used again.
    upgrades: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    /// `Authorization` value for the kubelet (from `--upstream-token-file`).
    token: watch::Receiver<Option<HeaderValue>>,
}

#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    /// How long an unused pooled connection stays open. The kubelet closes
    /// idle connections after 90s; closing first avoids racing it.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 128,
        }
    }
}

impl Upstream {
    /// `server_name` overrides the name the kubelet's certificate is
    /// verified for (the upstream host by default).
    pub fn new(
        scheme: Scheme,
        authority: Authority,
        tls: ClientConfig,
        server_name: Option<rustls_pki_types::ServerName<'static>>,
        token: watch::Receiver<Option<HeaderValue>>,
        options: &UpstreamOptions,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.connect_timeout));
        // The scheme of each request picks TLS or not; plain HTTP is only
        // allowed to a loopback kubelet, which the config checks.
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match server_name {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder
            // HTTP/1.1 only (ALPN `http/1.1`): upgrades need it, and a pool of
            // HTTP/1.1 connections keeps one slow log stream from holding up
            // others behind a single HTTP/2 connection's stream limit.
            .enable_http1()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .build(connector.clone());
        let upgrades = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Upstream {
            client,
            upgrades,
            scheme,
            authority,
            token,
        }
    }

    /// The kubelet URL for a caller's path and query, byte for byte.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The gateway's bearer token for the kubelet, if it uses one.
    pub fn authorization(&self) -> Option<HeaderValue> {
        self.token.borrow().clone()
    }

    /// A GET of `path` with the gateway's own credentials (readiness).
    pub async fn probe(&self, path: &'static str) -> Result<http::StatusCode, String> {
        let mut request = Request::get(
            self.uri_for(PathAndQuery::from_static(path))
                .map_err(|e| e.to_string())?,
        )
        .body(crate::body::empty())
        .map_err(|e| e.to_string())?;
        if let Some(token) = self.authorization() {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, token);
        }
        let response = self
            .send(request)
            .await
            .map_err(|e| super::error_chain(&e))?;
        Ok(response.status())
    }

    pub async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }

    /// Sends an upgrade request on a connection of its own (see `upgrades`).
    pub async fn send_upgrade(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.upgrades.request(request).await
    }
}
