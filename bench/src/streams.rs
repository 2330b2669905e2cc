//! Many upgraded streams held open and idle: `--n` port-forward-shaped
//! upgrades through the target, each sending a 4-byte ping every
//! `--ping-interval` seconds (like SPDY's 5 s pings) and reading the echo.
//! Prints `READY {json}` once every stream is open (the harness then reads
//! the proxy's memory), holds them for `--hold` seconds, and prints a JSON
//! summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Mutex, Semaphore, watch};

use crate::client::Target;
use crate::wire;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// How many streams.
    #[arg(long)]
    n: u64,
    /// Handshakes in flight at once while opening.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 5.0)]
    ping_interval: f64,
    /// How long to hold the streams open once all are open.
    #[arg(long, default_value_t = 12.0)]
    hold: f64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    failed: AtomicU64,
    pings: AtomicU64,
    ping_errors: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Arc::new(args.target.client()?);
    let counters = Arc::new(Counters::default());
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let interval = Duration::from_secs_f64(args.ping_interval.max(0.1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();

    for i in 0..args.n {
        let (client, counters, first_error, slots) = (
            client.clone(),
            counters.clone(),
            first_error.clone(),
            slots.clone(),
        );
        let addr = args.target.addr.clone();
        let mut stop = stop_rx.clone();
        // Spread the pings over the interval instead of sending them in bursts.
        let offset = interval.mul_f64((i % 1000) as f64 / 1000.0);
        tasks.spawn(async move {
            let opened = async {
                let _slot = slots.acquire().await?;
                let mut stream = client.connect(&addr).await?;
                wire::upgrade(
                    &mut stream,
                    &format!("/portForward/bench/pod-{i}?mode=echo"),
                )
                .await?;
                anyhow::Ok(stream)
            }
            .await;
            let mut stream = match opened {
                Ok(stream) => {
                    counters.opened.fetch_add(1, Ordering::SeqCst);
                    stream
                }
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::SeqCst);
                    first_error.lock().await.get_or_insert(error.to_string());
                    return;
                }
            };
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
            let mut echo = [0u8; 4];
            loop {
                tokio::select! {
                    _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
                    _ = ticks.tick() => {
                        let ping = async {
                            stream.write_all(b"ping").await?;
                            stream.flush().await?;
                            stream.read_exact(&mut echo).await?;
                            std::io::Result::Ok(())
                        };
                        match ping.await {
                            Ok(()) if &echo == b"ping" => {
                                counters.pings.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(()) | Err(_) => {
                                counters.ping_errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
    }

    while counters.opened.load(Ordering::SeqCst) + counters.failed.load(Ordering::SeqCst) < args.n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    let summary = |counters: &Counters, error: Option<String>| {
        json!({
            "n": args.n,
            "opened": counters.opened.load(Ordering::SeqCst),
            "failed": counters.failed.load(Ordering::SeqCst),
            "pings": counters.pings.load(Ordering::SeqCst),
            "ping_errors": counters.ping_errors.load(Ordering::SeqCst),
            "open_secs": open_secs,
            "first_error": error,
        })
    };
    println!(
        "READY {}",
        summary(&counters, first_error.lock().await.clone())
    );
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    println!("{}", summary(&counters, first_error.lock().await.clone()));
    Ok(())
}
