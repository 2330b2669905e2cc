//! A fake apiserver over HTTPS: answers SubjectAccessReviews with a policy
//! and TokenReviews from a token table, records every review body it gets
//! and the bearer token the gateway used, and can be made slow, broken or
//! unreachable. The gateway reaches it with its real kube client through a
//! generated kubeconfig.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certs::Certs;

/// What a SubjectAccessReview asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    pub subresource: String,
    /// The URL of a non-resource review (`nonResourceAttributes`), else "".
    pub path: String,
}

/// How the fake apiserver misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Normal,
    /// Answer after this long.
    Slow(Duration),
    /// Answer every review with this status.
    Status(u16),
    /// Answer with a body that is not JSON.
    Malformed,
}

/// A user a bearer token stands for.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: HashMap<String, Vec<String>>,
    pub audiences: Vec<String>,
}

type Policy = Box<dyn Fn(&Ask) -> bool + Send + Sync>;

struct State {
    policy: Mutex<Policy>,
    tokens: Mutex<HashMap<String, TokenUser>>,
    behaviour: Mutex<Behaviour>,
    subject_access_reviews: Mutex<Vec<Value>>,
    token_reviews: Mutex<Vec<Value>>,
    /// The bearer token on each request the gateway made.
    gateway_tokens: Mutex<Vec<String>>,
}

pub struct FakeApiserver {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl FakeApiserver {
    /// Serves with the dev `kubelet.crt` (127.0.0.1) and allows nothing
    /// until a policy is set.
    pub async fn start(certs: &Certs) -> FakeApiserver {
        let mut tls =
            crate::tls::server_config(&certs.path("kubelet.crt"), &certs.path("kubelet.key"), None)
                .unwrap();
        // As the apiserver: HTTP/2 for clients that offer it.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            policy: Mutex::new(Box::new(|_| false)),
            tokens: Mutex::new(HashMap::new()),
            behaviour: Mutex::new(Behaviour::Normal),
            subject_access_reviews: Mutex::new(Vec::new()),
            token_reviews: Mutex::new(Vec::new()),
            gateway_tokens: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            TlsAcceptor::from(std::sync::Arc::new(tls)),
            state.clone(),
            stop.clone(),
        ));
        FakeApiserver { addr, state, stop }
    }

    pub fn set_policy(&self, policy: impl Fn(&Ask) -> bool + Send + Sync + 'static) {
        *self.state.policy.lock().unwrap() = Box::new(policy);
    }

    pub fn add_token(&self, token: &str, user: TokenUser) {
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), user);
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Every SubjectAccessReview body received, in order.
    pub fn subject_access_reviews(&self) -> Vec<Value> {
        self.state.subject_access_reviews.lock().unwrap().clone()
    }

    /// The (verb, subresource) of every SubjectAccessReview received.
    pub fn asked(&self) -> Vec<(String, String)> {
        self.subject_access_reviews()
            .iter()
            .map(|r| {
                let attrs = &r["spec"]["resourceAttributes"];
                (
                    attrs["verb"].as_str().unwrap_or_default().to_owned(),
                    attrs["subresource"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    pub fn token_reviews(&self) -> Vec<Value> {
        self.state.token_reviews.lock().unwrap().clone()
    }

    pub fn gateway_tokens(&self) -> Vec<String> {
        self.state.gateway_tokens.lock().unwrap().clone()
    }

    /// Stops accepting connections (open ones stay until they close).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A kubeconfig for this apiserver, authenticating with a token file.
    pub fn write_kubeconfig(&self, certs: &Certs, token: &str) -> PathBuf {
        let token_file = certs.path("gateway-sa-token");
        std::fs::write(&token_file, token).unwrap();
        let path = certs.path("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}\n    certificate-authority: {}\n\
                 users:\n- name: gateway\n  user:\n    tokenFile: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: gateway\n\
                 current-context: test\n",
                self.addr,
                certs.path("ca.crt").display(),
                token_file.display()
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(tls), service) => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<bytes::Bytes>> {
    if let Some(token) = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        state
            .gateway_tokens
            .lock()
            .unwrap()
            .push(token.trim().to_owned());
    }
    let path = request.uri().path().to_owned();
    let body: Value = match request.into_body().collect().await {
        Ok(bytes) => serde_json::from_slice(&bytes.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let behaviour = *state.behaviour.lock().unwrap();

    let reply = match path.as_str() {
        "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
            state
                .subject_access_reviews
                .lock()
                .unwrap()
                .push(body.clone());
            let spec = &body["spec"];
            let non_resource = &spec["nonResourceAttributes"];
            let attrs = if non_resource.is_object() {
                non_resource
            } else {
                &spec["resourceAttributes"]
            };
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let ask = Ask {
                user: text(&spec["user"]),
                groups: spec["groups"]
                    .as_array()
                    .map(|g| g.iter().map(text).collect())
                    .unwrap_or_default(),
                verb: text(&attrs["verb"]),
                subresource: text(&attrs["subresource"]),
                path: text(&non_resource["path"]),
            };
            let allowed = (state.policy.lock().unwrap())(&ask);
            let mut review = body.clone();
            review["status"] = json!({ "allowed": allowed });
            review
        }
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            state.token_reviews.lock().unwrap().push(body.clone());
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let asked: Vec<String> = body["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut review = body.clone();
            review["status"] = match state.tokens.lock().unwrap().get(token) {
                // The real apiserver answers with the audiences the token
                // and the request have in common.
                Some(user)
                    if asked.is_empty() || user.audiences.iter().any(|a| asked.contains(a)) =>
                {
                    json!({
                        "authenticated": true,
                        "user": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra},
                        "audiences": if asked.is_empty() { user.audiences.clone() } else {
                            user.audiences.iter().filter(|a| asked.contains(a)).cloned().collect()
                        },
                    })
                }
                _ => json!({ "authenticated": false }),
            };
            review
        }
        _ => {
            return respond(StatusCode::NOT_FOUND, "not found".into());
        }
    };

    match behaviour {
        Behaviour::Normal => respond(StatusCode::OK, reply.to_string()),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            respond(StatusCode::OK, reply.to_string())
        }
        Behaviour::Status(code) => respond(
            StatusCode::from_u16(code).unwrap(),
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "injected failure", "code": code})
                .to_string(),
        ),
        Behaviour::Malformed => respond(StatusCode::OK, "{\"kind\": \"SubjectAccessRev".into()),
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<bytes::Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}
