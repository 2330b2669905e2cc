//! The connection layer over real TLS: every state a connection can be in
//! has a timer, ALPN alone decides the protocol, and each configured limit
//! holds under each ALPN choice (`h2`, `http/1.1`, none).

use std::time::{Duration, Instant};

use kubelet_guard::config::{GoDuration, Settings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::h2raw::{self, RawH2};
use crate::support::*;

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];
const NO_ALPN: &[&[u8]] = &[];

/// Short timers so the tests run in seconds; the limits of issue 18's inputs.
fn short_timers(settings: &mut Settings) {
    settings.limits.request_header_timeout = GoDuration(Duration::from_secs(1));
    settings.limits.idle_timeout = GoDuration(Duration::from_secs(1));
    settings.limits.max_request_header_bytes = 8192;
    settings.limits.http2_max_concurrent_streams = 7;
    settings.limits.http2_max_reset_streams = 3;
}

/// Reads (and discards) until the server closes the connection; how long
/// that took, or `None` if it is still open after `limit`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn peers_that_send_nothing_cannot_lock_the_apiserver_out() {
    // Issue 18, input 1: four TLS connections without a certificate, two
    // per ALPN, that never send a byte, against --max-connections 4.
    let env = Env::start_with(|_, s| {
        s.limits.max_connections = 4;
        s.limits.request_header_timeout = GoDuration(Duration::from_secs(1));
    })
    .await;
    let mut silent = Vec::new();
    for alpn in [H1, H1, H2, H2] {
        silent.push(tls_connect(&env.certs, env.gateway, &Identity::Nobody, alpn).await);
    }
    let started = Instant::now();
    let mut apiserver_conn = tokio::time::timeout(
        Duration::from_secs(5),
        Http1::connect(&env.certs, env.gateway, &apiserver()),
    )
    .await
    .expect("the fifth caller gets a handshake once the silent ones are closed");
    let waited = started.elapsed();
    let response = apiserver_conn
        .send(http::Request::get("/pods").body(empty()).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        waited >= Duration::from_millis(700),
        "all four slots were held until the timer: {waited:?}"
    );
    for (i, conn) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(conn, Duration::from_millis(500))
                .await
                .is_some(),
            "silent connection {i} is closed"
        );
    }
    println!("max-connections 4: the fifth caller got a handshake after {waited:?}");
}

#[tokio::test]
async fn an_http2_connection_with_no_stream_is_closed_even_while_it_pings() {
    let env =
        Env::start_with(|_, s| s.limits.idle_timeout = GoDuration(Duration::from_secs(1))).await;
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    let started = Instant::now();
    let mut goaway = None;
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "an idle HTTP/2 connection answering PINGs is still open after 5s"
        );
        // Our own PING, and an answer to every PING of the server's.
        if !h2.try_send(&h2raw::ping(*b"are-you?")).await {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(200), h2.next_frame()).await {
            Ok(None) => break started.elapsed(),
            Ok(Some(frame)) if frame.kind == h2raw::PING && frame.flags & h2raw::ACK == 0 => {
                let payload: [u8; 8] = frame.payload[..8].try_into().unwrap();
                h2.try_send(&h2raw::frame(h2raw::PING, h2raw::ACK, 0, &payload))
                    .await;
            }
            Ok(Some(frame)) if frame.kind == h2raw::GOAWAY => goaway = Some(frame),
            Ok(Some(_)) | Err(_) => {}
        }
    };
    let goaway = goaway.expect("a GOAWAY before the close");
    assert_eq!(goaway.error_code(), 0, "NO_ERROR");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(3500),
        "closed after {closed:?} (idle timeout 1s, then at most 1s to finish)"
    );
    println!("HTTP/2 idle with PINGs: GOAWAY and closed {closed:?} after the last stream");
}

#[tokio::test]
async fn an_open_stream_keeps_an_http2_connection_past_the_idle_timeout() {
    // The idle timer counts streams, not bytes: a followed log that runs
    // longer than --idle-timeout is not cut, and the timer starts again
    // when it ends.
    let env =
        Env::start_with(|_, s| s.limits.idle_timeout = GoDuration(Duration::from_secs(1))).await;
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    // 40 lines of `log line N\n` (11-12 bytes), one every 50ms: ~2s of stream.
    h2.send(&h2raw::get(
        1,
        "/containerLogs/default/demo/app?follow=true&tailLines=0&limitBytes=470",
    ))
    .await;
    let started = Instant::now();
    let frames = h2.frames_of(1).await;
    let streamed_for = started.elapsed();
    let data: usize = frames
        .iter()
        .filter(|f| f.kind == h2raw::DATA && f.stream == 1)
        .map(|f| f.payload.len())
        .sum();
    assert_eq!(data, 470, "the whole log arrived: {frames:?}");
    assert!(
        streamed_for > Duration::from_millis(1500),
        "{streamed_for:?}"
    );
    let closed = h2.frames_until_closed(Duration::from_secs(4)).await;
    assert!(closed.is_some(), "closed once idle after the stream ended");
}

#[tokio::test]
async fn a_tls12_renegotiation_attempt_is_answered_and_the_connection_ends() {
    // rustls refuses renegotiation with a no_renegotiation warning alert;
    // it must reach the client at once (not wait for a write that never
    // comes), and a client that then sits there is timed out like any
    // connection without a request. openssl s_client renegotiates on "R".
    let env = Env::start().await;
    let connect = format!("127.0.0.1:{}", env.gateway.port());
    let ca = env.certs.path("ca.crt");
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca.to_str().unwrap(),
            "-tls1_2",
            "-alpn",
            "http/1.1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl installed (apt-get install openssl)");
    let mut stdin = child.stdin.take().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    stdin.write_all(b"R\n").await.unwrap();
    stdin.flush().await.unwrap();
    // stdin stays open: only the server can end this.
    let output = tokio::time::timeout(Duration::from_secs(15), async {
        let status = child.wait().await.unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (status, out, err)
    })
    .await
    .expect("the renegotiating connection ended");
    let ended = started.elapsed();
    drop(stdin);
    let (_, out, err) = output;
    assert!(
        out.contains("RENEGOTIATING") || err.contains("RENEGOTIATING"),
        "{out}\n{err}"
    );
    assert!(
        ended < Duration::from_secs(3),
        "answered, not left to the 10s request-header timeout: ended after {ended:?}\n{err}"
    );
    println!(
        "TLS 1.2 renegotiation: connection ended {ended:?} after the attempt; openssl said: {}",
        err.trim()
    );
}

/// Writes `prefix` at once, then one byte of `value` every 0.5s for 4s,
/// then ends the head: the trickle of issue 18, input 2. Returns when the
/// server closed the connection (if it did) and what it answered.
async fn trickle(stream: &mut TlsStream<TcpStream>) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut answered = Vec::new();
    let mut buf = [0u8; 4096];
    let prefix = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut pieces: Vec<&[u8]> = vec![prefix];
    pieces.extend(std::iter::repeat_n(&b"a"[..], 8));
    pieces.push(b"\r\n\r\n");
    for piece in pieces {
        if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
            return (Some(started.elapsed()), answered);
        }
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (Some(started.elapsed()), answered),
            Ok(Ok(n)) => answered.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let closed = closed_within(stream, Duration::from_secs(2))
        .await
        .map(|after| started.elapsed().min(after + started.elapsed()));
    (closed, answered)
}

#[tokio::test]
async fn alpn_decides_the_protocol_a_slow_head_cannot_pick_the_other_one() {
    // Issue 18, input 2: under ALPN h2, an HTTP/1.1 head is a protocol
    // error (closed at its first byte); under http/1.1 or no ALPN the head
    // is cut at --request-header-timeout. Never a 200.
    let env = Env::start_with(|_, s| short_timers(s)).await;
    for (name, alpn, cut_before) in [
        ("h2", H2, Duration::from_millis(400)),
        ("http/1.1", H1, Duration::from_millis(1800)),
        ("no ALPN", NO_ALPN, Duration::from_millis(1800)),
    ] {
        let mut stream = tls_connect(&env.certs, env.gateway, &monitoring(), alpn).await;
        let (closed, answered) = trickle(&mut stream).await;
        let answered = String::from_utf8_lossy(&answered);
        assert!(!answered.contains("200"), "{name}: answered {answered:?}");
        let closed = closed.unwrap_or_else(|| panic!("{name}: still open"));
        assert!(closed < cut_before, "{name}: closed after {closed:?}");
        println!("{name}: slow HTTP/1.1 head closed after {closed:?}");
    }
    assert!(env.kubelet_saw().is_empty(), "{:?}", env.kubelet_saw());
}

#[tokio::test]
async fn an_http2_preface_is_refused_without_alpn_h2() {
    // Prior knowledge is not ALPN: an HTTP/1.1 connection that opens with
    // the HTTP/2 preface is closed, with no HTTP/2 SETTINGS in reply.
    let env = Env::start_with(|_, s| short_timers(s)).await;
    for (name, alpn) in [("http/1.1", H1), ("no ALPN", NO_ALPN)] {
        let mut stream = tls_connect(&env.certs, env.gateway, &apiserver(), alpn).await;
        let mut hello = h2raw::PREFACE.to_vec();
        hello.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
        hello.extend(h2raw::get(1, "/pods"));
        stream.write_all(&hello).await.unwrap();
        stream.flush().await.unwrap();
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "{name}: still open");
        assert!(
            reply.len() < 9 || reply[3] != h2raw::SETTINGS,
            "{name}: answered as HTTP/2: {reply:?}"
        );
    }
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn first_request_and_idle_timers_hold_under_each_alpn() {
    let env = Env::start_with(|_, s| short_timers(s)).await;
    // Nothing at all after the handshake; for h2, half a preface.
    for (name, alpn, send) in [
        ("h2, nothing", H2, &b""[..]),
        ("h2, half a preface", H2, &h2raw::PREFACE[..10]),
        ("http/1.1, nothing", H1, &b""[..]),
        ("no ALPN, nothing", NO_ALPN, &b""[..]),
        ("http/1.1, half a head", H1, &b"GET /pods HTTP/1.1\r\n"[..]),
    ] {
        let mut stream = tls_connect(&env.certs, env.gateway, &Identity::Nobody, alpn).await;
        stream.write_all(send).await.unwrap();
        stream.flush().await.unwrap();
        let closed = closed_within(&mut stream, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{name}: still open after 3s"));
        assert!(closed >= Duration::from_millis(800), "{name}: {closed:?}");
        println!("{name}: closed after {closed:?}");
    }
    // Idle after one request.
    for (name, alpn) in [("http/1.1", H1), ("no ALPN", NO_ALPN)] {
        let mut raw = Raw::connect(&env.certs, env.gateway, &apiserver(), alpn).await;
        raw.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let head = raw.read_head().await.unwrap();
        assert_eq!(head.status, 200, "{name}");
        let closed = closed_within(&mut raw.stream, Duration::from_secs(3)).await;
        assert!(
            closed.is_some(),
            "{name}: idle connection still open after 3s"
        );
    }
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    h2.send(&h2raw::get(1, "/healthz")).await;
    let frames = h2.frames_of(1).await;
    assert_eq!(
        frames.iter().find_map(|f| f.status()),
        Some(200),
        "{frames:?}"
    );
    assert!(
        h2.frames_until_closed(Duration::from_secs(4))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn header_size_limits_hold_under_each_alpn() {
    let env = Env::start_with(|_, s| short_timers(s)).await;
    let big = "a".repeat(16 * 1024);
    for (name, alpn) in [("http/1.1", H1), ("no ALPN", NO_ALPN)] {
        let mut raw = Raw::connect(&env.certs, env.gateway, &apiserver(), alpn).await;
        raw.write(
            format!("GET /pods HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(raw.read_head().await.map(|h| h.status), Some(431), "{name}");
    }
    let (mut h2, settings) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    assert!(
        settings
            .settings()
            .contains(&(h2raw::SETTINGS_MAX_HEADER_LIST_SIZE, 8192)),
        "{:?}",
        settings.settings()
    );
    h2.send(&h2raw::request(
        1,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "127.0.0.1"),
            (":path", "/pods"),
            ("x-big", &big),
        ],
    ))
    .await;
    let frames = h2.frames_of(1).await;
    let refused = frames.iter().any(|f| f.status() == Some(431))
        || frames
            .iter()
            .any(|f| f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY);
    assert!(refused, "{frames:?}");
    assert!(env.kubelet_saw().is_empty(), "{:?}", env.kubelet_saw());
}

#[tokio::test]
async fn http2_stream_and_reset_limits_hold() {
    let env = Env::start_with(|_, s| short_timers(s)).await;
    let (mut h2, settings) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    assert!(
        settings
            .settings()
            .contains(&(h2raw::SETTINGS_MAX_CONCURRENT_STREAMS, 7)),
        "{:?}",
        settings.settings()
    );
    // Eight followed logs at once: the eighth is refused.
    let mut burst = Vec::new();
    for i in 0..8u32 {
        burst.extend(h2raw::get(
            1 + 2 * i,
            "/containerLogs/default/demo/app?follow=true&tailLines=0",
        ));
    }
    h2.send(&burst).await;
    let frames = h2.frames_of(15).await;
    let refused = frames
        .iter()
        .find(|f| f.stream == 15 && f.kind == h2raw::RST_STREAM)
        .unwrap_or_else(|| panic!("stream 15 not refused: {frames:?}"));
    assert_eq!(refused.error_code(), 0x7, "REFUSED_STREAM");

    // Rapid reset (CVE-2023-44487): streams opened and reset at once; past
    // --http2-max-reset-streams (3) the connection gets a GOAWAY.
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    let mut burst = Vec::new();
    for i in 0..20u32 {
        let id = 1 + 2 * i;
        burst.extend(h2raw::get(id, "/pods"));
        burst.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    h2.try_send(&burst).await;
    let frames = h2
        .frames_until_closed(Duration::from_secs(5))
        .await
        .expect("closed after too many resets");
    let goaway = frames
        .iter()
        .find(|f| f.kind == h2raw::GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    assert_eq!(goaway.error_code(), 0xb, "ENHANCE_YOUR_CALM");
}
