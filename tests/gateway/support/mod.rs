//! Shared fixtures: the test kit's stand-ins (kubelet, scripted kubelet,
//! fake apiserver, development certificates) wired to a gateway, and
//! clients that speak real TLS (hyper for well-formed requests, raw bytes
//! for the rest).

#![allow(dead_code)]

pub mod binary;
pub mod h2raw;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use kubelet_guard::app::Gateway;
use kubelet_guard::authz::static_rules::StaticRuleSpec;
use kubelet_guard::certs;
use kubelet_guard::config::{AuthorizationMode, AuthorizationSettings, GoDuration, Settings};
use kubelet_guard_testkit::kubelet::{DemoKubelet, DemoKubeletOptions, Recorded, mutual_tls};

// The test kit's fixtures, under the names the tests use. Each test binary
// (gateway, soak) uses a different part of them.
#[allow(unused_imports)]
pub use kubelet_guard_testkit::certs::{Certs, Identity, NODE, apiserver, monitoring, run_tool};
#[allow(unused_imports)]
pub use kubelet_guard_testkit::{apiserver, scripted};

/// The static rules the tests run with: the apiserver may do anything;
/// monitoring may `get` metrics, stats and proxy.
pub fn default_rules() -> Vec<StaticRuleSpec> {
    vec![
        StaticRuleSpec {
            user: Some(certs::APISERVER_USER.into()),
            group: None,
            verbs: vec!["*".into()],
            subresources: vec!["*".into()],
        },
        StaticRuleSpec {
            user: None,
            group: Some(certs::MONITORING_GROUP.into()),
            verbs: vec!["get".into()],
            subresources: vec!["metrics".into(), "stats".into(), "proxy".into()],
        },
    ]
}

/// A kubelet stand-in and a gateway in front of it, and, for the tests of
/// SubjectAccessReview and TokenReview, a fake apiserver.
pub struct Env {
    pub certs: Certs,
    pub kubelet: DemoKubelet,
    pub gateway: SocketAddr,
    /// The admin listener (health, readiness, metrics), plain HTTP.
    pub admin: SocketAddr,
    pub apiserver: Option<apiserver::FakeApiserver>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Env {
    /// The default setup, with `adjust` applied to the gateway's settings.
    pub async fn start_with(adjust: impl FnOnce(&Certs, &mut Settings)) -> Env {
        Env::start_full(DemoKubeletOptions::default(), adjust).await
    }

    pub async fn start() -> Env {
        Env::start_with(|_, _| {}).await
    }

    pub async fn start_full(
        kubelet_options: DemoKubeletOptions,
        adjust: impl FnOnce(&Certs, &mut Settings),
    ) -> Env {
        Env::start_inner(kubelet_options, false, adjust).await
    }

    /// A gateway that asks the fake apiserver: no static rules, every
    /// decision is a SubjectAccessReview, bearer tokens get a TokenReview.
    pub async fn with_apiserver(adjust: impl FnOnce(&Certs, &mut Settings)) -> Env {
        Env::start_inner(DemoKubeletOptions::default(), true, adjust).await
    }

    pub fn api(&self) -> &apiserver::FakeApiserver {
        self.apiserver.as_ref().expect("started with an apiserver")
    }

    async fn start_inner(
        kubelet_options: DemoKubeletOptions,
        with_apiserver: bool,
        adjust: impl FnOnce(&Certs, &mut Settings),
    ) -> Env {
        let certs = Certs::new();
        let kubelet = start_tls_kubelet(
            &certs,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            DemoKubeletOptions {
                log_interval: Duration::from_millis(50),
                ..kubelet_options
            },
        )
        .await;
        let mut settings = gateway_settings(&certs, kubelet.addr());
        let apiserver = if with_apiserver {
            let api = apiserver::FakeApiserver::start(&certs).await;
            settings.apiserver.kubeconfig =
                Some(api.write_kubeconfig(&certs, "gateway-sa-token-1"));
            settings.authz.authorization_mode = AuthorizationMode::Webhook;
            settings.authn.authentication_token_webhook = true;
            settings.authz.authorization = None;
            Some(api)
        } else {
            None
        };
        adjust(&certs, &mut settings);
        let (gateway, admin, shutdown, task) = start_gateway_with_admin(settings).await;
        Env {
            certs,
            kubelet,
            gateway,
            admin,
            apiserver,
            shutdown,
            task,
        }
    }

    /// What the kubelet received.
    pub fn kubelet_saw(&self) -> Vec<Recorded> {
        self.kubelet.requests()
    }

    pub async fn connect(&self, who: &Identity) -> Http1 {
        Http1::connect(&self.certs, self.gateway, who).await
    }

    pub async fn raw(&self, who: &Identity) -> Raw {
        Raw::connect(&self.certs, self.gateway, who, &[b"http/1.1"]).await
    }

    /// One GET over a fresh HTTP/1.1 connection; returns status and body.
    pub async fn get(&self, who: &Identity, target: &str) -> (u16, String) {
        self.call(who, http::Method::GET, target, None).await
    }

    /// One request over a fresh HTTP/1.1 connection, optionally with a
    /// bearer token; returns status and body.
    pub async fn call(
        &self,
        who: &Identity,
        method: http::Method,
        target: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut client = self.connect(who).await;
        let mut request = Request::builder().method(method).uri(target);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client.send(request.body(empty()).unwrap()).await;
        let status = response.status().as_u16();
        (status, body_text(response).await)
    }

    /// What SIGTERM does: stop accepting and start draining.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the gateway to finish; `None` if it takes longer than `limit`.
    pub async fn finished_within(self, limit: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        tokio::time::timeout(limit, self.task)
            .await
            .ok()
            .map(|_| started.elapsed())
    }

    /// GET on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str, accept: Option<&str>) -> (u16, String) {
        let tcp = TcpStream::connect(self.admin).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = Request::get(path).header("host", "admin");
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = sender
            .send_request(request.body(empty()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, body_text(response).await)
    }
}

/// Gateway settings pointing at a kubelet on `kubelet`, with the dev certs.
/// The stand-in kubelet on `addr`, behind mutual TLS with the test
/// certificates (its own serving certificate, clients from the test CA).
pub async fn start_tls_kubelet(
    certs: &Certs,
    addr: SocketAddr,
    options: DemoKubeletOptions,
) -> DemoKubelet {
    DemoKubelet::start(
        addr,
        DemoKubeletOptions {
            tls: Some(
                mutual_tls(
                    &certs.path("kubelet.crt"),
                    &certs.path("kubelet.key"),
                    &certs.path("ca.crt"),
                )
                .unwrap(),
            ),
            ..options
        },
    )
    .await
    .unwrap()
}

pub fn gateway_settings(certs: &Certs, kubelet: SocketAddr) -> Settings {
    let mut s = Settings::default();
    s.node.node_name = Some(NODE.into());
    s.serving.secure_listen_address = "127.0.0.1:0".parse().unwrap();
    s.operations.admin_listen_address = "127.0.0.1:0".parse().unwrap();
    s.operations.shutdown_grace_period = GoDuration(Duration::from_secs(2));
    s.serving.tls_cert_file = Some(certs.path("serving.crt"));
    s.serving.tls_private_key_file = Some(certs.path("serving.key"));
    s.serving.client_ca_file = Some(certs.path("ca.crt"));
    s.upstream.upstream = format!("https://{kubelet}");
    s.upstream.upstream_ca_file = Some(certs.path("ca.crt"));
    s.upstream.upstream_client_cert_file = Some(certs.path("gateway-client.crt"));
    s.upstream.upstream_client_key_file = Some(certs.path("gateway-client.key"));
    s.authz.authorization = Some(AuthorizationSettings {
        static_rules: default_rules(),
    });
    // No apiserver unless a test starts one (see `apiserver.rs`).
    s.authz.authorization_mode = AuthorizationMode::Static;
    s.authn.authentication_token_webhook = false;
    s
}

pub async fn start_gateway(
    settings: Settings,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let (addr, _, shutdown, task) = start_gateway_with_admin(settings).await;
    (addr, shutdown, task)
}

/// Starts a gateway; returns its address, its admin address, the token that
/// shuts it down and its task.
pub async fn start_gateway_with_admin(
    settings: Settings,
) -> (
    SocketAddr,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = settings.validate().expect("valid test settings");
    let gateway = Gateway::bind(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    let admin = gateway.admin_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.run(shutdown.clone()));
    (addr, admin, shutdown, task)
}

/// A TLS client config trusting the dev CA, presenting `who`'s certificate.
pub fn client_tls(certs: &Certs, who: &Identity, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_tls_trusting(certs, &certs.path("ca.crt"), who, alpn)
}

/// Like [`client_tls`], trusting the CAs in `roots` instead of the dev CA.
pub fn client_tls_trusting(
    certs: &Certs,
    roots_file: &Path,
    who: &Identity,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match who {
        Identity::Nobody => builder.with_no_client_auth(),
        Identity::Named(name) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(certs.path(&format!("{name}.crt")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    certs: &Certs,
    addr: SocketAddr,
    who: &Identity,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("gateway accepts TCP");
    TlsConnector::from(client_tls(certs, who, alpn))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// An HTTP/1.1 connection to the gateway.
pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1 {
    pub async fn connect(certs: &Certs, addr: SocketAddr, who: &Identity) -> Http1 {
        let tls = tls_connect(certs, addr, who, &[b"http/1.1"]).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Http1 { sender }
    }

    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Response<Incoming> {
        // HTTP/1.1 needs a Host; hyper does not add one to a relative URI.
        if !request.headers().contains_key("host") {
            request
                .headers_mut()
                .insert("host", http::HeaderValue::from_static("127.0.0.1"));
        }
        // A request sent before the connection is ready is refused by hyper.
        self.sender.ready().await.expect("connection ready");
        self.sender.send_request(request).await.expect("response")
    }
}

/// Sends one request over an HTTP/2 connection.
pub async fn send_h2(
    certs: &Certs,
    addr: SocketAddr,
    who: &Identity,
    request: Request<Full<Bytes>>,
) -> (Option<Vec<u8>>, Response<Incoming>) {
    let tls = tls_connect(certs, addr, who, &[b"h2"]).await;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (alpn, sender.send_request(request).await.expect("response"))
}

pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

pub async fn body_text(response: Response<Incoming>) -> String {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A TLS connection that writes requests as raw bytes, so tests can send
/// what a well-behaved client library would refuse to.
pub struct Raw {
    pub stream: TlsStream<TcpStream>,
}

/// A parsed response head, plus any bytes read past it.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    pub async fn connect(certs: &Certs, addr: SocketAddr, who: &Identity, alpn: &[&[u8]]) -> Raw {
        Raw {
            stream: tls_connect(certs, addr, who, alpn).await,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads until the end of a response head (or EOF).
    pub async fn read_head(&mut self) -> Option<Head> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = response.parse(&buf) {
                return Some(Head {
                    status: response.code.unwrap_or(0),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    rest: buf[len..].to_vec(),
                });
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("response within 10s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads exactly `n` bytes (after whatever `already` holds).
    pub async fn read_exact_after(&mut self, already: Vec<u8>, n: usize) -> Vec<u8> {
        let mut out = already;
        while out.len() < n {
            let mut chunk = vec![0u8; n - out.len()];
            let got = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("bytes within 10s")
                .unwrap();
            assert!(got > 0, "stream closed after {} of {n} bytes", out.len());
            out.extend_from_slice(&chunk[..got]);
        }
        out
    }

    /// Reads the rest of the stream until the peer closes it.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut out)).await;
        out
    }
}

/// An upgrade request in the shape the apiserver sends for SPDY exec.
pub fn spdy_request(target: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A WebSocket upgrade request as client-go / kubectl sends it (a GET).
pub fn websocket_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io, base64.channel.k8s.io\r\n\r\n"
    )
}
