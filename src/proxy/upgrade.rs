//! After a `101 Switching Protocols` both connections stop being HTTP: bytes
//! are spliced between caller and kubelet until one side is done. SPDY and
//! WebSocket frames are never parsed.

use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bytes moved by a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    pub to_kubelet: u64,
    pub to_caller: u64,
}

/// Waits for both upgrades to complete, then splices.
pub async fn splice_upgraded(
    caller: OnUpgrade,
    kubelet: OnUpgrade,
    linger: Duration,
) -> Result<Relayed, hyper::Error> {
    let (caller, kubelet): (Upgraded, Upgraded) = tokio::try_join!(caller, kubelet)?;
    Ok(splice(TokioIo::new(caller), TokioIo::new(kubelet), linger).await)
}

/// Copies both ways. When one direction ends (EOF or error) the end is passed
/// on as a write shutdown, and the other direction gets `linger` to finish —
/// enough for a last reply to drain, not enough to leak a stream whose peer
/// never closes. Then both connections are dropped.
pub async fn splice<C, K>(caller: C, kubelet: K, linger: Duration) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    K: AsyncRead + AsyncWrite + Unpin,
{
    let (mut caller_read, mut caller_write) = tokio::io::split(caller);
    let (mut kubelet_read, mut kubelet_write) = tokio::io::split(kubelet);

    let upstream = async {
        let n = tokio::io::copy(&mut caller_read, &mut kubelet_write)
            .await
            .unwrap_or(0);
        let _ = kubelet_write.shutdown().await;
        n
    };
    let downstream = async {
        let n = tokio::io::copy(&mut kubelet_read, &mut caller_write)
            .await
            .unwrap_or(0);
        let _ = caller_write.shutdown().await;
        n
    };
    tokio::pin!(upstream, downstream);

    tokio::select! {
        to_kubelet = &mut upstream => {
            let to_caller = tokio::time::timeout(linger, downstream).await.unwrap_or(0);
            Relayed { to_kubelet, to_caller }
        }
        to_caller = &mut downstream => {
            let to_kubelet = tokio::time::timeout(linger, upstream).await.unwrap_or(0);
            Relayed { to_kubelet, to_caller }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_half_close_lets_the_reply_drain() {
        let (caller_end, caller_peer) = duplex(64);
        let (kubelet_end, kubelet_peer) = duplex(64);
        let splice = tokio::spawn(splice(caller_peer, kubelet_peer, Duration::from_secs(5)));

        let kubelet = tokio::spawn(async move {
            let mut kubelet = kubelet_end;
            let mut got = Vec::new();
            kubelet.read_to_end(&mut got).await.unwrap();
            kubelet.write_all(b"reply to: ").await.unwrap();
            kubelet.write_all(&got).await.unwrap();
            kubelet.shutdown().await.unwrap();
        });

        let mut caller = caller_end;
        caller.write_all(b"hello").await.unwrap();
        caller.shutdown().await.unwrap();
        let mut reply = Vec::new();
        caller.read_to_end(&mut reply).await.unwrap();

        assert_eq!(reply, b"reply to: hello");
        kubelet.await.unwrap();
        assert_eq!(
            splice.await.unwrap(),
            Relayed {
                to_kubelet: 5,
                to_caller: 15
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_closes_is_dropped_after_the_linger() {
        let (caller_end, caller_peer) = duplex(64);
        let (kubelet_end, kubelet_peer) = duplex(64);
        drop(kubelet_end); // the kubelet went away
        let relayed = splice(caller_peer, kubelet_peer, Duration::from_secs(3)).await;
        assert_eq!(relayed, Relayed::default());
        drop(caller_end);
    }
}
