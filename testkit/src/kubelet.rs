//! A stand-in kubelet on loopback for the demo and the integration tests. It
//! answers the kubelet's URLs with the kubelet's status codes and shapes —
//! pod lists, health, metrics, a log that follows, an echoing upgrade for
//! exec/attach/port-forward — and records every request it receives, so
//! tests can check exactly what the gateway forwarded (or that it forwarded
//! nothing). The real kubelet streaming code is exercised in `e2e/`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Every answer's body: fixed text, a request body echoed back, or a log fed
/// line by line.
type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

mod body {
    use super::*;

    pub fn text(s: String) -> Body {
        Full::new(Bytes::from(s))
            .map_err(|never| match never {})
            .boxed()
    }

    pub fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    pub fn boxed<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        body.map_err(Into::into).boxed()
    }
}

/// Pods this kubelet runs: (namespace, name, containers).
pub const PODS: &[(&str, &str, &[&str])] = &[
    ("default", "demo", &["app"]),
    ("kube-system", "coredns-demo", &["coredns"]),
];

/// A request as the kubelet received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, exactly as on the wire.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Clone)]
pub struct DemoKubeletOptions {
    /// Serve TLS with this config (which may require client certificates).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require `Authorization: Bearer <token>`.
    pub required_token: Option<String>,
    /// Time between lines of a followed log.
    pub log_interval: Duration,
    /// Misbehave, for tests: answer `/healthz` with a 101 although nothing
    /// asked to upgrade, and answer upgrade requests with a plain 200.
    pub misbehave: bool,
}

/// A TLS config that serves `cert`/`key` and, like a real kubelet without
/// anonymous access, only talks to clients whose certificate `client_ca` signed.
pub fn mutual_tls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> std::io::Result<Arc<rustls::ServerConfig>> {
    crate::tls::server_config(cert, key, Some(client_ca)).map(Arc::new)
}

/// The protocol a request asks to switch to: `Connection` names `upgrade`
/// and `Upgrade` is present (Go's `httpstream.IsUpgradeRequest`, which the
/// kubelet's streaming server uses).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| upgrade.clone())
}

impl Default for DemoKubeletOptions {
    fn default() -> Self {
        DemoKubeletOptions {
            tls: None,
            required_token: None,
            log_interval: Duration::from_millis(200),
            misbehave: false,
        }
    }
}

pub struct DemoKubelet {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    stop: CancellationToken,
}

struct State {
    options: DemoKubeletOptions,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    stop: CancellationToken,
}

impl DemoKubelet {
    /// Listens on `addr` (use port 0 for any free port) and serves until dropped.
    pub async fn start(
        addr: SocketAddr,
        options: DemoKubeletOptions,
    ) -> std::io::Result<DemoKubelet> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            options,
            recorded: recorded.clone(),
            stop: stop.clone(),
        });
        tokio::spawn(accept_loop(listener, state, stop.clone()));
        Ok(DemoKubelet {
            addr,
            recorded,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops accepting; open connections end with their tasks.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DemoKubelet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let acceptor = state.options.tls.clone().map(TlsAcceptor::from);
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let http = auto::Builder::new(TokioExecutor::new());
            let served = async {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = http
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    }
                }
            };
            tokio::select! {
                () = served => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(state: &State, mut request: Request<Incoming>) -> Response<Body> {
    let target = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    state
        .recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Recorded {
            method: request.method().clone(),
            target,
            version: request.version(),
            headers: request.headers().clone(),
        });

    if let Some(token) = &state.options.required_token {
        let expected = format!("Bearer {token}");
        if request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            return plain(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    }

    // Go's router, and so the kubelet's, matches the decoded path.
    let path = percent_encoding::percent_decode_str(request.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz", ..] if state.options.misbehave => {
            let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
        }
        ["healthz", ..] => plain(StatusCode::OK, "ok"),
        ["pods"] | ["pods", ""] | ["runningpods", ""] => json(StatusCode::OK, pod_list()),
        ["metrics", ..] => plain(
            StatusCode::OK,
            "# HELP demo_kubelet_up The demo kubelet is up.\n# TYPE demo_kubelet_up gauge\ndemo_kubelet_up 1\n",
        ),
        ["stats", "summary"] => json(
            StatusCode::OK,
            r#"{"node":{"nodeName":"demo-node"},"pods":[]}"#.into(),
        ),
        ["configz"] => json(
            StatusCode::OK,
            r#"{"kubeletconfig":{"address":"127.0.0.1","port":10250}}"#.into(),
        ),
        ["containerLogs", ns, pod, container] => {
            if !has_container(ns, pod, container) {
                return plain(
                    StatusCode::NOT_FOUND,
                    &format!("pod {ns}/{pod} has no container {container:?}"),
                );
            }
            container_log(state, request.uri().query().unwrap_or(""))
        }
        ["run", ns, pod, .., container] if request.method() == Method::POST => {
            if !has_container(ns, pod, container) {
                return plain(StatusCode::NOT_FOUND, "pod does not exist");
            }
            // `run` answers with the command's output; this kubelet's
            // command is `cat`, so the body comes straight back, streamed.
            Response::new(body::boxed(request.into_body()))
        }
        ["exec" | "attach", ns, pod, container] | ["exec" | "attach", ns, pod, _, container] => {
            if !has_container(ns, pod, container) {
                return plain(StatusCode::NOT_FOUND, "pod does not exist");
            }
            upgrade_and_echo(state, &mut request)
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            if !PODS.iter().any(|(n, p, _)| n == ns && p == pod) {
                return plain(StatusCode::NOT_FOUND, "pod does not exist");
            }
            upgrade_and_echo(state, &mut request)
        }
        _ => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn has_container(ns: &str, pod: &str, container: &str) -> bool {
    PODS.iter()
        .any(|(n, p, containers)| *n == ns && *p == pod && containers.contains(&container))
}

fn pod_list() -> String {
    let items: Vec<String> = PODS
        .iter()
        .map(|(ns, name, containers)| {
            let containers: Vec<String> = containers.iter().map(|c| format!(r#"{{"name":"{c}"}}"#)).collect();
            format!(
                r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"containers":[{}]}},"status":{{"phase":"Running"}}}}"#,
                containers.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

/// `follow`, `tailLines` and `timestamps` as the kubelet reads them.
fn container_log(state: &State, query: &str) -> Response<Body> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let follow = param("follow").as_deref() == Some("true");
    let timestamps = param("timestamps").as_deref() == Some("true");
    let tail: usize = param("tailLines")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .min(10_000);
    let interval = state.options.log_interval;

    // `limitBytes` ends the log after that many bytes, even when following.
    let mut budget: Option<usize> = param("limitBytes").and_then(|v| v.parse().ok());

    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let line = |n: usize| {
            let text = format!("log line {n}\n");
            if timestamps {
                Bytes::from(format!(
                    "{} {text}",
                    humantime::format_rfc3339_nanos(SystemTime::now())
                ))
            } else {
                Bytes::from(text)
            }
        };
        for n in 1.. {
            if n > tail {
                if !follow {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
            let mut bytes = line(n);
            if let Some(left) = budget.as_mut() {
                bytes.truncate(*left);
                *left -= bytes.len();
            }
            if tx.send(bytes).await.is_err() || budget == Some(0) {
                return;
            }
        }
    });
    let mut response = Response::new(body::boxed(ChannelBody(rx)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Answers an upgrade the way the kubelet's streaming server does (choosing
/// the first protocol version offered), then echoes every byte back.
fn upgrade_and_echo(state: &State, request: &mut Request<Incoming>) -> Response<Body> {
    let Some(protocol) = requested_upgrade(request.headers()) else {
        return plain(StatusCode::BAD_REQUEST, "Upgrade request required");
    };
    if state.options.misbehave {
        return plain(StatusCode::OK, "not switching protocols");
    }
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = request.headers();
    let reply = response.headers_mut();
    reply.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    reply.insert(header::UPGRADE, protocol.clone());
    if protocol.as_bytes().eq_ignore_ascii_case(b"websocket") {
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        reply.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            websocket_accept(key.as_bytes()),
        );
        if let Some(first) = first_list_item(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str()) {
            reply.insert(header::SEC_WEBSOCKET_PROTOCOL, first);
        }
    } else if let Some(first) = first_list_item(headers, "x-stream-protocol-version") {
        reply.insert("x-stream-protocol-version", first);
    }

    let on_upgrade = hyper::upgrade::on(request);
    // A stopped kubelet drops its streams too, mid-flight.
    let stop = state.stop.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        tokio::select! {
            _ = tokio::io::copy(&mut reader, &mut writer) => {
                let _ = writer.shutdown().await;
            }
            () = stop.cancelled() => {}
        }
    });
    response
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn websocket_accept(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref());
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn first_list_item(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_str(v).ok())
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(body::text(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(body::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A body fed line by line from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
