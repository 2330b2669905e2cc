//! One bulk stream through the target, timed:
//! - `get`: a chunked response of `--bytes` (`kubectl logs -f` shape), in
//!   64 KiB chunks, or with `--chunk N` in N-byte chunks each flushed on its
//!   own (the kubelet flushes every log line);
//! - `push`: after a port-forward-shaped upgrade, send `--bytes` and wait
//!   for the upstream's 8-byte count of what arrived;
//! - `pull`: after the upgrade, read `--bytes` the upstream sends.
//!
//! Prints one JSON line: bytes, seconds, MB/s (10^6 bytes).

use std::time::Instant;

use anyhow::{Context as _, bail};
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::Target;
use crate::wire;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Get,
    Push,
    Pull,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long)]
    bytes: u64,
    /// `get` only: the upstream's chunk size (each flushed), in bytes.
    #[arg(long)]
    chunk: Option<usize>,
}

const BUF: usize = 64 * 1024;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let mut stream = client
        .connect(&args.target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", args.target.addr))?;
    let total = args.bytes;
    let started = Instant::now();
    let moved = match args.mode {
        Mode::Get => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake::<
                _,
                Empty<bytes::Bytes>,
            >(TokioIo::new(stream))
            .await?;
            tokio::spawn(connection);
            let chunk = args
                .chunk
                .map(|c| format!("&chunk={c}"))
                .unwrap_or_default();
            let request = Request::get(format!(
                "/containerLogs/bench/pod/app?follow=true&bytes={total}{chunk}"
            ))
            .header("host", "127.0.0.1")
            .body(Empty::new())?;
            let response = sender.send_request(request).await?;
            if !response.status().is_success() {
                bail!("GET answered {}", response.status());
            }
            let mut body = response.into_body();
            let mut got = 0u64;
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    got += data.len() as u64;
                }
            }
            got
        }
        Mode::Push => {
            wire::upgrade(
                &mut stream,
                &format!("/portForward/bench/pod?mode=sink&bytes={total}"),
            )
            .await?;
            let buf = vec![b'p'; BUF];
            let mut left = total;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(BUF);
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            stream.flush().await?;
            let mut ack = [0u8; 8];
            stream
                .read_exact(&mut ack)
                .await
                .context("no count from the upstream")?;
            u64::from_be_bytes(ack)
        }
        Mode::Pull => {
            let rest = wire::upgrade(
                &mut stream,
                &format!("/portForward/bench/pod?mode=source&bytes={total}"),
            )
            .await?;
            let mut got = rest.len() as u64;
            let mut buf = vec![0u8; BUF];
            while got < total {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            let _ = stream.shutdown().await;
            got
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if moved != total {
        bail!("moved {moved} bytes, expected {total}");
    }
    println!(
        "{}",
        json!({"bytes": moved, "secs": secs, "mb_per_s": moved as f64 / secs / 1e6})
    );
    Ok(())
}
