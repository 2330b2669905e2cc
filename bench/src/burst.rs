//! The cold-authorization burst: open `--n` connections as one identity,
//! then send the first request on all of them at the same moment. With a
//! cold decision cache the gateway should ask the apiserver once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Semaphore, watch};

use crate::client::Target;
use crate::wire;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    n: u64,
    #[arg(long, default_value = "/pods")]
    path: String,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Arc::new(args.target.client()?);
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let ready = Arc::new(AtomicU64::new(0));
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.n {
        let (client, slots, ready, mut go) =
            (client.clone(), slots.clone(), ready.clone(), go_rx.clone());
        let (addr, request) = (args.target.addr.clone(), wire::get_request(&args.path));
        tasks.spawn(async move {
            let connected = async {
                let _slot = slots.acquire().await?;
                anyhow::Ok(client.connect(&addr).await?)
            }
            .await;
            ready.fetch_add(1, Ordering::SeqCst);
            let mut stream = connected.map_err(|e| format!("connect: {e}"))?;
            let _ = go.wait_for(|go| *go).await;
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let (status, _) = wire::read_head(&mut stream)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok::<u16, String>(status)
        });
    }
    while ready.load(Ordering::SeqCst) < args.n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let _ = go_tx.send(true);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let key = match result {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(error)) => error,
            Err(error) => format!("task: {error}"),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    println!(
        "{}",
        json!({"n": args.n, "outcomes": outcomes, "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}
