//! A kubelet that answers every request with bytes a test wrote by hand,
//! over the same mutual TLS as the stand-in kubelet. It is for answers a
//! well-behaved HTTP library would not write (an upgrade answered with a
//! redirect, interim `1xx` answers) and it reports whether the gateway
//! closed the connection after the answer — the one thing the stand-in
//! kubelet cannot see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certs::Certs;
use crate::kubelet::mutual_tls;

/// What happened on one kubelet connection.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The request heads received, in order.
    pub heads: Vec<String>,
    /// The gateway closed the connection within the wait after the answer.
    pub closed_by_gateway: Option<bool>,
}

pub struct ScriptedKubelet {
    pub addr: SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
    stop: CancellationToken,
}

/// How long, after answering, the kubelet waits to see the gateway close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

impl ScriptedKubelet {
    /// Answers each request head arriving on `listener` with `answer`, byte
    /// for byte. The listener is bound first so that a gateway can be
    /// pointed at it before the certificates it serves with exist.
    pub fn start(
        certs: &Certs,
        listener: std::net::TcpListener,
        answer: Vec<u8>,
    ) -> ScriptedKubelet {
        let tls = mutual_tls(
            &certs.path("kubelet.crt"),
            &certs.path("kubelet.key"),
            &certs.path("ca.crt"),
        )
        .unwrap();
        let acceptor = TlsAcceptor::from(tls);
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (record, halt) = (served.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = halt.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (acceptor, record, answer) = (acceptor.clone(), record.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let index = {
                        let mut all = record.lock().unwrap();
                        all.push(Served::default());
                        all.len() - 1
                    };
                    // One request per connection is all these tests send;
                    // a second request on a reused connection would show as
                    // `closed_by_gateway: Some(false)`.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    record.lock().unwrap()[index]
                        .heads
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    if tls.write_all(&answer).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    let closed = match tokio::time::timeout(CLOSE_WAIT, tls.read(&mut chunk)).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => true,
                        Ok(Ok(_)) | Err(_) => false,
                    };
                    record.lock().unwrap()[index].closed_by_gateway = Some(closed);
                });
            }
        });
        ScriptedKubelet { addr, served, stop }
    }

    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// Waits until every connection has a close verdict (at most a few
    /// seconds past `CLOSE_WAIT`), then returns them.
    pub async fn verdicts(&self) -> Vec<Served> {
        for _ in 0..100 {
            let served = self.served();
            if !served.is_empty() && served.iter().all(|s| s.closed_by_gateway.is_some()) {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.served()
    }
}

impl Drop for ScriptedKubelet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
