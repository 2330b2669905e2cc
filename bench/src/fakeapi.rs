//! A fake apiserver (HTTPS) that allows every SubjectAccessReview and counts
//! them: `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` answers
//! `allowed: true` after `--delay-ms`; `GET /count` returns how many it got.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body::{self, Body};
use crate::{server, tls};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// How long each review takes, as a real apiserver's round trip would.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = tls::server_config(&args.cert, &args.key, None, &[b"h2", b"http/1.1"])?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let count = Arc::new(AtomicU64::new(0));
    let delay = Duration::from_millis(args.delay_ms);
    server::serve(listener, Some(TlsAcceptor::from(config)), move |request| {
        handle(request, count.clone(), delay)
    })
    .await;
    Ok(())
}

fn text(status: StatusCode, content: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body::full(Bytes::from(content)))
        .unwrap_or_default()
}

async fn handle(
    request: Request<Incoming>,
    count: Arc<AtomicU64>,
    delay: Duration,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/count") => text(StatusCode::OK, count.load(Ordering::SeqCst).to_string()),
        (&Method::POST, "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(collected) = request.into_body().collect().await else {
                return text(StatusCode::BAD_REQUEST, "cannot read the body".into());
            };
            let Ok(review) = serde_json::from_slice::<Value>(&collected.to_bytes()) else {
                return text(StatusCode::BAD_REQUEST, "not JSON".into());
            };
            tokio::time::sleep(delay).await;
            let answer = json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "metadata": {},
                "spec": review.get("spec").cloned().unwrap_or_else(|| json!({})),
                "status": {"allowed": true, "reason": "kubelet-guard bench"}
            });
            Response::builder()
                .status(StatusCode::CREATED)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body::full(Bytes::from(answer.to_string())))
                .unwrap_or_default()
        }
        _ => text(StatusCode::NOT_FOUND, "not found".into()),
    }
}
