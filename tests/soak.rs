//! Load and soak against the real binary: many concurrent mTLS connections
//! mixing plain requests, followed logs and upgraded exec streams, counting
//! every unexpected answer, and the gateway's RSS and open descriptors before,
//! at the peak and after. Two identical rounds: descriptors must return to
//! the start after each, and the second round must leave no more memory
//! behind than the first. `cargo test` runs a short soak; the figures in
//! docs/security.md come from longer ones:
//!
//!   SOAK_CONNECTIONS=1000 SOAK_REQUESTS=100000 cargo test --release --test soak
//!   SOAK_CONNECTIONS=200 SOAK_SECONDS=600 cargo test --release --test soak
//!
//! No harness: this is one program with one verdict.

// Its raw HTTP/2 client holds whole frames in its futures; the size limit
// is for the gateway's request path, not its tests.
#![allow(clippy::large_futures)]

// The shared fixtures; they allow their own unused parts.
#[path = "gateway/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use kubelet_guard_testkit::kubelet::{DemoKubelet, DemoKubeletOptions};

use support::binary::Running;
use support::*;

/// What a second identical round may add to the RSS the first left behind,
/// beyond 10%: allocator noise, not connections or streams kept.
const RSS_SLACK_KIB: u64 = 8 * 1024;

struct Plan {
    connections: usize,
    requests: u64,
    deadline: Option<Duration>,
}

impl Plan {
    fn from_env() -> Plan {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Plan {
            connections: var("SOAK_CONNECTIONS").unwrap_or(100) as usize,
            requests: var("SOAK_REQUESTS").unwrap_or(5_000),
            deadline: var("SOAK_SECONDS").map(Duration::from_secs),
        }
    }

    fn more(&self, started: Instant, done: u64) -> bool {
        match self.deadline {
            Some(deadline) => started.elapsed() < deadline,
            None => done < self.requests,
        }
    }
}

#[derive(Default)]
struct Tally {
    plain: AtomicU64,
    follows: AtomicU64,
    streams: AtomicU64,
    handshakes: AtomicU64,
    unexpected: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.plain.load(Ordering::Relaxed)
            + self.follows.load(Ordering::Relaxed)
            + self.streams.load(Ordering::Relaxed)
    }

    fn error(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(what);
    }
}

/// Resident memory (KiB) and open descriptors of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// One connection's life: keep-alive plain requests, now and then a
/// followed log or an exec stream, and a fresh handshake every so often.
async fn worker(
    certs: Arc<Certs>,
    addr: SocketAddr,
    plan: Arc<Plan>,
    started: Instant,
    tally: Arc<Tally>,
    seed: u64,
) {
    let mut n = seed;
    let mut client: Option<Http1> = None;
    while plan.more(started, tally.total()) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let roll = (n >> 33) % 100;
        if roll < 3 {
            // An exec stream: upgrade, echo 4 KiB, close.
            let mut raw = Raw::connect(&certs, addr, &apiserver(), &[b"http/1.1"]).await;
            tally.handshakes.fetch_add(1, Ordering::Relaxed);
            raw.write(
                spdy_request("/exec/default/demo/app?command=cat&input=1&output=1").as_bytes(),
            )
            .await;
            match raw.read_head().await {
                Some(head) if head.status == 101 => {
                    let payload = vec![(n & 0xff) as u8; 4096];
                    raw.write(&payload).await;
                    let echoed = raw.read_exact_after(head.rest, payload.len()).await;
                    if echoed == payload {
                        tally.streams.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.error("exec stream echoed other bytes".into());
                    }
                }
                other => tally.error(format!(
                    "exec upgrade answered {:?}",
                    other.map(|h| h.status)
                )),
            }
            continue;
        }
        if client.is_none() || roll < 8 {
            client = Some(Http1::connect(&certs, addr, &apiserver()).await);
            tally.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        let Some(c) = client.as_mut() else { continue };
        if roll < 13 {
            // A followed log: three lines, then the caller goes away.
            let response = c
                .send(
                    Request::get("/containerLogs/default/demo/app?follow=true&tailLines=1")
                        .body(empty())
                        .unwrap(),
                )
                .await;
            if response.status() != 200 {
                tally.error(format!("follow answered {}", response.status()));
                continue;
            }
            let mut body = response.into_body();
            let mut lines = 0;
            while lines < 3 {
                match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                    Ok(Some(Ok(_))) => lines += 1,
                    other => {
                        tally.error(format!("follow ended early: {other:?}"));
                        break;
                    }
                }
            }
            if lines == 3 {
                tally.follows.fetch_add(1, Ordering::Relaxed);
            }
            client = None;
            continue;
        }
        let path =
            ["/pods", "/healthz", "/metrics/resource", "/stats/summary"][(roll % 4) as usize];
        let response = c.send(Request::get(path).body(empty()).unwrap()).await;
        let status = response.status();
        match response.into_body().collect().await {
            Ok(_) if status == 200 => {
                tally.plain.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                tally.error(format!("{path} answered {status}: {:?}", other.err()));
                client = None;
            }
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    std::process::exit(runtime.block_on(soak()));
}

async fn soak() -> i32 {
    let plan = Arc::new(Plan::from_env());
    let certs = Arc::new(Certs::new());
    let mut kubelet = start_kubelet(&certs, "127.0.0.1:0".parse().unwrap()).await;
    let kubelet_addr = kubelet.addr();

    let Running {
        child: mut gateway,
        addr,
        mut lines,
        ..
    } = Running::start(&certs, kubelet_addr).await;
    // Keep reading the log so the gateway never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = gateway.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = usage(pid);

    // Two identical rounds. The allocator keeps the first round's peak
    // memory for reuse, so "RSS back to where it started" is not a leak
    // test; "the second round leaves no more behind than the first" is.
    let mut failed = false;
    let mut after_rounds = Vec::new();
    for number in 1..=2 {
        let (tally, elapsed, peak) = round(&certs, addr, &plan, pid).await;
        // Callers are gone; the kubelet goes too, closing the gateway's
        // pooled upstream connections. What is left open has leaked.
        kubelet.stop();
        drop(kubelet);
        let after = settle(pid, baseline.1).await;
        report(number, &plan, &tally, elapsed, baseline, peak, after);
        let unexpected = tally.unexpected.load(Ordering::Relaxed);
        if unexpected > 0 {
            println!(
                "FAIL: {unexpected} unexpected answers; first: {:?}",
                tally.first_error.lock().unwrap()
            );
            failed = true;
        }
        if after.1 != baseline.1 {
            println!(
                "FAIL: descriptors did not return to {} (now {})",
                baseline.1, after.1
            );
            failed = true;
        }
        after_rounds.push(after.0);
        kubelet = start_kubelet(&certs, kubelet_addr).await;
    }
    let _ = gateway.kill().await;

    let (first, second) = (after_rounds[0], after_rounds[1]);
    let growth = second.saturating_sub(first);
    println!(
        "leak check: RSS {first} KiB after round 1, {second} KiB after round 2 (+{growth} KiB)"
    );
    if growth > first / 10 + RSS_SLACK_KIB {
        println!("FAIL: the second round left {growth} KiB more behind than the first");
        failed = true;
    }
    if failed { 1 } else { 0 }
}

async fn start_kubelet(certs: &Certs, addr: SocketAddr) -> DemoKubelet {
    let options = DemoKubeletOptions {
        log_interval: Duration::from_millis(10),
        ..Default::default()
    };
    start_tls_kubelet(certs, addr, options).await
}

/// One round of the plan: every connection's worker to the end, with the
/// gateway's peak RSS and descriptors sampled meanwhile.
async fn round(
    certs: &Arc<Certs>,
    addr: SocketAddr,
    plan: &Arc<Plan>,
    pid: u32,
) -> (Arc<Tally>, Duration, (u64, usize)) {
    let tally = Arc::new(Tally::default());
    let peak = Arc::new((AtomicU64::new(0), AtomicUsize::new(0)));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let (rss, fds) = usage(pid);
                peak.0.fetch_max(rss, Ordering::Relaxed);
                peak.1.fetch_max(fds, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..plan.connections)
        .map(|i| {
            let (certs, plan, tally) = (certs.clone(), plan.clone(), tally.clone());
            tokio::spawn(worker(certs, addr, plan, started, tally, i as u64 + 1))
        })
        .collect();
    for w in workers {
        if let Err(e) = w.await {
            tally.error(format!("a worker panicked: {e}"));
        }
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let peak = (
        peak.0.load(Ordering::Relaxed),
        peak.1.load(Ordering::Relaxed),
    );
    (tally, elapsed, peak)
}

/// Waits (up to 15 s) for the descriptors to return to `fds_baseline`, then
/// gives the allocator a moment; returns RSS and descriptors.
async fn settle(pid: u32, fds_baseline: usize) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = usage(pid);
    while now.1 > fds_baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = usage(pid);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    usage(pid)
}

fn report(
    number: usize,
    plan: &Plan,
    tally: &Tally,
    elapsed: Duration,
    baseline: (u64, usize),
    peak: (u64, usize),
    after: (u64, usize),
) {
    let total = tally.total();
    println!(
        "round {number}: {} connections, {:.1}s: {} requests ({} plain, {} followed logs, {} exec streams, {}/s), {} handshakes, {} unexpected",
        plan.connections,
        elapsed.as_secs_f64(),
        total,
        tally.plain.load(Ordering::Relaxed),
        tally.follows.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
        (total as f64 / elapsed.as_secs_f64()) as u64,
        tally.handshakes.load(Ordering::Relaxed),
        tally.unexpected.load(Ordering::Relaxed),
    );
    println!(
        "gateway: RSS {} KiB at start, {} KiB peak, {} KiB after; descriptors {} at start, {} peak, {} after",
        baseline.0, peak.0, after.0, baseline.1, peak.1, after.1
    );
}
