//! After a `101 Switching Protocols` both connections stop being HTTP: bytes
//! are spliced between caller and kubelet until one side is done. SPDY and
//! WebSocket frames are never parsed.

use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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

/// Copies both ways until the session is over:
/// - when the caller finishes sending (EOF), the end is passed on as a write
///   shutdown and the kubelet gets `linger` to finish its reply — enough for
///   a last answer to drain, not enough to leak a stream whose peer never
///   closes;
/// - when the kubelet finishes, or either side fails, the session is over:
///   the caller's side is shut down and both connections dropped at once.
pub async fn splice<C, K>(caller: C, kubelet: K, linger: Duration) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    K: AsyncRead + AsyncWrite + Unpin,
{
    let (mut caller_read, mut caller_write) = tokio::io::split(caller);
    let (mut kubelet_read, mut kubelet_write) = tokio::io::split(kubelet);
    let to_kubelet = AtomicU64::new(0);
    let to_caller = AtomicU64::new(0);

    let upstream = async {
        let copied = copy(&mut caller_read, &mut kubelet_write, &to_kubelet).await;
        if copied.is_ok() {
            let _ = kubelet_write.shutdown().await;
        }
        copied
    };
    let downstream = async {
        let copied = copy(&mut kubelet_read, &mut caller_write, &to_caller).await;
        let _ = caller_write.shutdown().await;
        copied
    };
    tokio::pin!(upstream, downstream);

    tokio::select! {
        sent = &mut upstream => {
            if sent.is_ok() {
                let _ = tokio::time::timeout(linger, downstream).await;
            }
        }
        _ = &mut downstream => {}
    }
    Relayed {
        to_kubelet: to_kubelet.load(Ordering::Relaxed),
        to_caller: to_caller.load(Ordering::Relaxed),
    }
}

/// `tokio::io::copy`, counting as it goes so a direction cut short still
/// reports what it moved, and holding a full-size buffer only while data
/// flows. Most exec, attach and port-forward sessions sit idle most of the
/// time; an idle direction waits with the small probe buffer alone, so a
/// node with thousands of open sessions does not pin 32 KiB for each.
async fn copy<R, W>(reader: &mut R, writer: &mut W, counter: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut probe = [0u8; PROBE_BUFFER];
    // Empty (no allocation) while idle.
    let mut bulk: Vec<u8> = Vec::new();
    loop {
        let (n, into_bulk) = poll_fn(|cx| {
            if !bulk.is_empty() {
                let mut filled = ReadBuf::new(&mut bulk);
                match Pin::new(&mut *reader).poll_read(cx, &mut filled) {
                    Poll::Ready(read) => {
                        return Poll::Ready(read.map(|()| (filled.filled().len(), true)));
                    }
                    // Caught up with the sender: give the buffer back while waiting.
                    Poll::Pending => bulk = Vec::new(),
                }
            }
            let mut filled = ReadBuf::new(&mut probe);
            match Pin::new(&mut *reader).poll_read(cx, &mut filled) {
                Poll::Ready(Ok(())) if filled.filled().len() == PROBE_BUFFER => {
                    // A full probe: more is probably waiting. Carry on in a
                    // full-size buffer, so that a burst leaves as large
                    // writes rather than a small one first.
                    bulk = vec![0u8; COPY_BUFFER];
                    bulk[..PROBE_BUFFER].copy_from_slice(&probe);
                    let mut rest = ReadBuf::new(&mut bulk[PROBE_BUFFER..]);
                    let more = match Pin::new(&mut *reader).poll_read(cx, &mut rest) {
                        Poll::Ready(Ok(())) => rest.filled().len(),
                        // Nothing more yet, or an error the next read
                        // reports again: send what arrived.
                        _ => 0,
                    };
                    Poll::Ready(Ok((PROBE_BUFFER + more, true)))
                }
                read => read.map(|read| read.map(|()| (filled.filled().len(), false))),
            }
        })
        .await?;
        if n == 0 {
            return Ok(());
        }
        let data = if into_bulk { &bulk[..n] } else { &probe[..n] };
        writer.write_all(data).await?;
        writer.flush().await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Read size per direction while data flows: a TLS record's worth of
/// plaintext.
const COPY_BUFFER: usize = 16 * 1024;

/// Read size of an idle direction: room for a keystroke, a SPDY ping
/// (12 bytes) or a WebSocket control frame (at most 139). Held for as long
/// as a session is open, so it is kept small (1 KiB cost 1.4 KiB more per
/// idle session at 9,800 sessions, bench/PROFILE.md).
const PROBE_BUFFER: usize = 256;

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

    #[tokio::test]
    async fn when_the_kubelet_goes_away_the_session_ends_at_once() {
        let (caller_end, caller_peer) = duplex(64);
        let (mut kubelet_end, kubelet_peer) = duplex(64);
        let splice = tokio::spawn(splice(caller_peer, kubelet_peer, Duration::from_secs(3600)));
        kubelet_end.write_all(b"bye").await.unwrap();
        drop(kubelet_end);
        let relayed = tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .expect("no linger when the kubelet ends the session")
            .unwrap();
        assert_eq!(relayed.to_caller, 3);
        let mut caller = caller_end;
        let mut got = Vec::new();
        caller.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye", "and the caller saw its end");
    }

    #[tokio::test]
    async fn bursts_and_pauses_arrive_intact_across_buffer_changes() {
        // Bursts larger than the probe switch to the bulk buffer; pauses in
        // between give it back. Every byte must arrive, in order.
        let (caller_end, caller_peer) = duplex(4096);
        let (kubelet_end, kubelet_peer) = duplex(4096);
        let splice = tokio::spawn(splice(caller_peer, kubelet_peer, Duration::from_secs(5)));
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let bursts = [1, PROBE_BUFFER, PROBE_BUFFER + 1, 3, 200_000, 5];
        let kubelet = tokio::spawn(async move {
            let mut kubelet = kubelet_end;
            let mut got = Vec::new();
            kubelet.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut caller = caller_end;
        let mut offset = 0;
        for burst in bursts {
            caller
                .write_all(&sent[offset..offset + burst])
                .await
                .unwrap();
            offset += burst;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        caller.shutdown().await.unwrap();
        let got = kubelet.await.unwrap();
        assert_eq!(got.len(), offset);
        assert!(got == sent[..offset], "bytes changed or reordered");
        drop(caller);
        assert_eq!(splice.await.unwrap().to_kubelet, offset as u64);
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
