//! The stand-in kubelet: as fast as hyper allows, so the bench measures the
//! proxy in front of it.
//!
//! - `GET /containerLogs/...?bytes=N`: `N` bytes, chunked, in 64 KiB chunks
//!   (`&chunk=C`: C-byte chunks, each flushed on its own)
//!   (the shape of `kubectl logs -f`);
//! - `/portForward/...` or `/exec/...` with `Upgrade`: `101`, then by
//!   `?mode=`: `echo` (every byte back, for idle streams with pings),
//!   `sink&bytes=N` (read N bytes, answer an 8-byte count), `source&bytes=N`
//!   (write N bytes); the shape of port-forward;
//! - anything else: a ~1 KiB JSON document, like `/pods` on an idle node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body::{self, Body, CHUNK, Chunked};
use crate::{server, tls};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Plain HTTP listener.
    #[arg(long)]
    plain: Option<SocketAddr>,
    /// TLS listener (needs --cert, --key, --client-ca).
    #[arg(long)]
    tls: Option<SocketAddr>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// Client certificates are required and must chain to this CA.
    #[arg(long)]
    client_ca: Option<PathBuf>,
}

/// A `/pods`-like answer of about 1 KiB.
fn small_json() -> Bytes {
    let mut items = Vec::new();
    for i in 0..4 {
        items.push(serde_json::json!({
            "metadata": {"name": format!("bench-{i}"), "namespace": "default",
                         "uid": format!("00000000-0000-0000-0000-00000000000{i}")},
            "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            "status": {"phase": "Running"}
        }));
    }
    let doc =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let small = small_json();
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut tasks = tokio::task::JoinSet::new();
    let handler = move |request| handle(request, small.clone(), chunk.clone());
    if let Some(addr) = args.plain {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tasks.spawn(server::serve(listener, None, handler.clone()));
    }
    if let Some(addr) = args.tls {
        let (Some(cert), Some(key), Some(ca)) = (&args.cert, &args.key, &args.client_ca) else {
            anyhow::bail!("--tls needs --cert, --key and --client-ca");
        };
        let config = tls::server_config(cert, key, Some(ca), &[b"h2", b"http/1.1"])?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tasks.spawn(server::serve(
            listener,
            Some(TlsAcceptor::from(config)),
            handler,
        ));
    }
    if tasks.is_empty() {
        anyhow::bail!("give --plain and/or --tls");
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn query_param<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

async fn handle(mut request: Request<Incoming>, small: Bytes, chunk: Bytes) -> Response<Body> {
    let path = request.uri().path();
    let bytes: u64 = query_param(&request, "bytes")
        .and_then(|b| b.parse().ok())
        .unwrap_or(1 << 20);
    if path.starts_with("/containerLogs/") {
        // `chunk=N`: N-byte chunks, each flushed, as the kubelet writes a
        // followed log line by line.
        let body = match query_param(&request, "chunk").and_then(|c| c.parse::<usize>().ok()) {
            Some(n) if n > 0 => Chunked::flushed(chunk.slice(..n.min(chunk.len())), bytes),
            _ => Chunked::body(chunk, bytes),
        };
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .unwrap_or_default();
    }
    let wants_upgrade = request.headers().contains_key(header::UPGRADE);
    if wants_upgrade && (path.starts_with("/portForward/") || path.starts_with("/exec/")) {
        let mode = match query_param(&request, "mode").unwrap_or("echo") {
            "sink" => Mode::Sink(bytes),
            "source" => Mode::Source(bytes),
            _ => Mode::Echo,
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                // A stream whose client goes away just ends.
                let _ = stream(TokioIo::new(upgraded), mode, chunk).await;
            }
        });
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static("portforward.k8s.io"),
        );
        return response;
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(small))
        .unwrap_or_default()
}

enum Mode {
    Echo,
    Sink(u64),
    Source(u64),
}

async fn stream(mut io: TokioIo<Upgraded>, mode: Mode, chunk: Bytes) -> std::io::Result<()> {
    match mode {
        Mode::Echo => {
            // A small buffer: thousands of these sit idle at once.
            let mut buf = [0u8; 512];
            loop {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await?;
                io.flush().await?;
            }
        }
        Mode::Sink(total) => {
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0u64;
            while got < total {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            io.write_all(&got.to_be_bytes()).await?;
            io.flush().await?;
            // Wait for the client to close.
            while io.read(&mut buf).await? > 0 {}
        }
        Mode::Source(total) => {
            let mut left = total;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                io.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            io.flush().await?;
            let mut buf = [0u8; 512];
            while io.read(&mut buf).await? > 0 {}
        }
    }
    let _ = io.shutdown().await;
    Ok(())
}
