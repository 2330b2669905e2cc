//! Hostile input over real TLS: request smuggling and framing tricks,
//! identity tricks, protocol switching where none belongs, misbehaving
//! kubelets. Each case checks the status and what the kubelet received:
//! nothing, or exactly the request that was authorized.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use kubelet_guard_testkit::kubelet::DemoKubeletOptions;
use serde_json::json;

use crate::support::apiserver::TokenUser;
use crate::support::*;

/// Writes `raw` on a fresh connection as the apiserver; returns the status
/// of the first response (0 when the connection closed without one).
async fn raw_status(env: &Env, raw: &[u8]) -> u16 {
    let mut conn = env.raw(&apiserver()).await;
    conn.write(raw).await;
    conn.read_head().await.map_or(0, |h| h.status)
}

#[tokio::test]
async fn malformed_framing_and_headers_are_refused_before_the_kubelet() {
    let env = Env::start().await;
    let long_value = "a".repeat(2 << 20);
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no Host", b"GET /pods HTTP/1.1\r\n\r\n".to_vec()),
        ("two Hosts", b"GET /pods HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        (
            "two Content-Lengths",
            b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        ),
        ("obsolete line folding", b"GET /pods HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec()),
        ("space in a header name", b"GET /pods HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n".to_vec()),
        ("space before the colon", b"GET /pods HTTP/1.1\r\nHost: x\r\nX-A : v\r\n\r\n".to_vec()),
        ("NUL in a header value", b"GET /pods HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec()),
        ("LF-only line ends with a bare CR", b"GET /pods HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n".to_vec()),
        (
            "a 2 MiB header",
            format!("GET /pods HTTP/1.1\r\nHost: x\r\nX-Long: {long_value}\r\n\r\n").into_bytes(),
        ),
        ("150 headers", format!("GET /pods HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes()),
        ("a request line that is not HTTP", b"GET /pods JUNK/9.9\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (name, raw) in cases {
        let status = raw_status(&env, &raw).await;
        assert!(
            matches!(status, 400 | 431 | 505) || status == 0,
            "{name}: status {status}"
        );
    }
    assert!(
        env.kubelet_saw().is_empty(),
        "forwarded: {:?}",
        env.kubelet_saw()
    );
}

#[tokio::test]
async fn content_length_and_transfer_encoding_together_cannot_smuggle_a_request() {
    let env = Env::start().await;
    // CL says 4 bytes, chunked says "hello": a front end honouring CL and a
    // back end honouring TE would see the rest as a second request.
    let smuggle = b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
                    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                    GET /exec/default/demo/app?command=id HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conn = env.raw(&monitoring()).await;
    conn.write(smuggle).await;
    let first = conn.read_head().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saw = env.kubelet_saw();
    assert!(
        saw.iter().all(|r| !r.target.starts_with("/exec")),
        "a smuggled exec reached the kubelet: {saw:?}"
    );
    // Refused for its framing (kubelet parity: Go answers 400), before
    // authorization, and the connection is closed after the answer.
    let first = first.expect("an answer");
    assert_eq!(first.status, 400);
    assert_eq!(first.header("connection"), Some("close"));
    assert!(saw.is_empty(), "{saw:?}");
    let mut rest = first.rest;
    rest.extend(conn.read_to_end().await);
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "a second answer on the same connection: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_reaches_the_kubelet() {
    // Issue 18, "Also": as a caller allowed to POST, a body framed both
    // ways used to be forwarded with Transfer-Encoding winning.
    let env = Env::start().await;
    let mut conn = env.raw(&apiserver()).await;
    conn.write(
        b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let head = conn.read_head().await.expect("an answer");
    assert_eq!(head.status, 400);
    let mut rest = head.rest;
    rest.extend(conn.read_to_end().await);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "Bad Request: both Content-Length and Transfer-Encoding",
        "the body, then the connection closed"
    );
    assert!(env.kubelet_saw().is_empty(), "{:?}", env.kubelet_saw());
}

#[tokio::test]
async fn request_targets_up_to_64_kib_pass_and_longer_ones_are_refused() {
    // The `http` crate's URI type, which hyper and h2 parse every request
    // target into, holds at most 65,534 bytes; the kubelet takes heads up
    // to 1 MiB. The limit is listed in the README's refusal table.
    use crate::support::h2raw::{self, RawH2};
    let env = Env::start().await;
    let target = |len: usize| format!("/pods?x={}", "a".repeat(len - 8));
    let longest = target(65_534);
    let raw = format!("GET {longest} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&env, raw.as_bytes()).await, 200);
    assert_eq!(env.kubelet_saw()[0].target.len(), 65_534);

    let too_long = target(65_535);
    let raw = format!("GET {too_long} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(raw_status(&env, raw.as_bytes()).await, 414);
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &apiserver()).await;
    h2.send(&h2raw::get(1, &too_long)).await;
    let frames = h2.frames_of(1).await;
    let refused = frames
        .iter()
        .any(|f| f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY)
        || frames.iter().any(|f| f.status().is_some_and(|s| s >= 400));
    assert!(refused, "{frames:?}");
    assert_eq!(env.kubelet_saw().len(), 1, "only the 65,534-byte target");
}

#[tokio::test]
async fn upstream_framing_is_the_gateways_own() {
    // Whatever framing the caller used, the kubelet gets one request, framed
    // by the gateway, carrying exactly the caller's body.
    let env = Env::start().await;
    let mut conn = env.raw(&apiserver()).await;
    conn.write(
        b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhel\r\n0\r\n\r\n",
    )
    .await;
    let reply = String::from_utf8_lossy(&conn.read_to_end().await).into_owned();
    // "5\r\nhel\r\n" is a malformed chunk (3 bytes, not 5): refused, or at
    // most forwarded as the bytes the chunk framing really holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saw = env.kubelet_saw();
    assert!(saw.len() <= 1, "{saw:?}");
    assert!(!reply.contains("GET"), "{reply}");

    let mut conn = env.raw(&apiserver()).await;
    conn.write(
        b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let reply = String::from_utf8_lossy(&conn.read_to_end().await).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("hello"),
        "the kubelet echoed the body: {reply}"
    );
    let run: Vec<_> = env
        .kubelet_saw()
        .into_iter()
        .filter(|r| r.target.starts_with("/run"))
        .collect();
    assert_eq!(run.len(), saw.len() + 1);
}

#[tokio::test]
async fn http2_pseudo_headers_cannot_disguise_a_path() {
    let env = Env::start().await;
    for (uri, host) in [
        ("https://127.0.0.1/exec/../pods", None),
        ("https://127.0.0.1/%2e%2e/pods", None),
        ("https://127.0.0.1/pods", Some("other.example")),
    ] {
        let mut request = Request::get(uri);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let (_, response) = send_h2(
            &env.certs,
            env.gateway,
            &apiserver(),
            request.body(empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 400, "{uri} host {host:?}");
    }
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn an_upgrade_on_a_read_only_path_is_forwarded_as_a_plain_request() {
    let env = Env::start().await;
    let mut conn = env.raw(&monitoring()).await;
    conn.write(websocket_request("/containerLogs/default/demo/app?tailLines=1").as_bytes())
        .await;
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200, "a plain read, not a switched stream");
    let saw = &env.kubelet_saw()[0];
    assert!(!saw.headers.contains_key("upgrade"), "{:?}", saw.headers);
    assert!(!saw.headers.contains_key("connection"));
}

#[tokio::test]
async fn a_kubelet_that_switches_protocols_unasked_gets_a_502() {
    let env = Env::start_full(
        DemoKubeletOptions {
            misbehave: true,
            ..Default::default()
        },
        |_, _| {},
    )
    .await;
    let (status, body) = env.get(&apiserver(), "/healthz").await;
    assert_eq!(status, 502);
    assert!(body.contains("did not ask to upgrade"), "{body}");
}

#[tokio::test]
async fn an_upgrade_answered_with_200_is_a_502_and_the_connection_closes() {
    // Issue 14: only 101 or an error status may answer an upgrade (the
    // apiserver's upgrade-aware proxy rule); a 200 used to be relayed and
    // the connection kept as HTTP.
    let env = Env::start_full(
        DemoKubeletOptions {
            misbehave: true,
            ..Default::default()
        },
        |_, _| {},
    )
    .await;
    let mut conn = env.raw(&apiserver()).await;
    conn.write(spdy_request("/exec/default/demo/app?command=id").as_bytes())
        .await;
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 502);
    assert_eq!(head.header("connection"), Some("close"));
    let mut rest = head.rest;
    rest.extend(conn.read_to_end().await);
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "Bad Gateway: kubelet answered an upgrade request with 200 OK instead of 101 Switching Protocols",
        "the kubelet's body is not relayed, and the connection ends"
    );
}

fn carol() -> TokenUser {
    TokenUser {
        username: "carol".into(),
        uid: "c4".into(),
        groups: vec!["browser-users".into()],
        extra: HashMap::new(),
        audiences: vec![],
    }
}

#[tokio::test]
async fn a_token_in_the_websocket_protocols_authenticates_like_the_kubelets_and_is_not_forwarded() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().add_token("carol-token", carol());
    env.api().set_policy(|ask| ask.user == "carol");
    // base64url("carol-token"), unpadded.
    let protocol = "base64url.bearer.authorization.k8s.io.Y2Fyb2wtdG9rZW4";
    let request = format!(
        "GET /exec/default/demo/app?command=id HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocol}, v4.channel.k8s.io\r\n\r\n"
    );
    let mut conn = env.raw(&Identity::Nobody).await;
    conn.write(request.as_bytes()).await;
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 101);
    assert_eq!(
        head.header("sec-websocket-protocol"),
        Some("v4.channel.k8s.io")
    );

    assert_eq!(env.api().token_reviews()[0]["spec"]["token"], "carol-token");
    assert_eq!(
        env.api().subject_access_reviews()[0]["spec"]["user"],
        "carol"
    );
    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.headers["sec-websocket-protocol"], "v4.channel.k8s.io");
    assert!(!saw.headers.contains_key("authorization"));

    // Two tokens, or a token and nothing to choose from: 401.
    for protocols in [
        format!("{protocol}, {protocol}, v4.channel.k8s.io"),
        protocol.to_owned(),
    ] {
        let request = request.replace(&format!("{protocol}, v4.channel.k8s.io"), &protocols);
        let mut conn = env.raw(&Identity::Nobody).await;
        conn.write(request.as_bytes()).await;
        assert_eq!(conn.read_head().await.unwrap().status, 401, "{protocols}");
    }
}

#[tokio::test]
async fn subjects_become_exactly_the_users_and_groups_they_name() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|_| true);
    let groups: Vec<String> = (1..=10).map(|i| format!("team-{i:02}")).collect();
    let subject = format!(
        "/CN=many-groups{}",
        groups.iter().map(|g| format!("/O={g}")).collect::<String>()
    );
    let many = env.certs.issue_with_openssl("many", &subject, &[]);
    let lonely = env.certs.issue_with_openssl("lonely", "/CN=no-groups", &[]);
    assert_eq!(env.get(&many, "/pods").await.0, 200);
    assert_eq!(env.get(&lonely, "/pods").await.0, 200);

    let reviews = env.api().subject_access_reviews();
    assert_eq!(reviews[0]["spec"]["user"], "many-groups");
    // Then the kubelet's group adder's `system:authenticated` (issue 14).
    let mut expected = groups.clone();
    expected.push("system:authenticated".into());
    assert_eq!(
        reviews[0]["spec"]["groups"],
        json!(expected),
        "every O, in order"
    );
    assert_eq!(reviews[1]["spec"]["user"], "no-groups");
    assert_eq!(
        reviews[1]["spec"]["groups"],
        json!(["system:authenticated"]),
        "no O, only the group every authenticated user has"
    );
}

#[tokio::test]
async fn names_that_are_not_plain_utf8_or_not_single_are_refused() {
    let env = Env::with_apiserver(|_, _| {}).await;
    env.api().set_policy(|_| true);
    let bmp = env.certs.path("bmp.cnf");
    // Without utf8only, openssl writes a non-ASCII name as BMPString/T61String.
    std::fs::write(
        &bmp,
        "[req]\ndistinguished_name=dn\nstring_mask=default\n[dn]\n",
    )
    .unwrap();
    let cases = [
        (
            "bmp-cn",
            "/CN=caf\u{e9}",
            vec!["-utf8", "-config", bmp.to_str().unwrap()],
        ),
        ("two-cns", "/CN=alice/CN=admin", vec![]),
        ("no-cn", "/O=system:masters", vec![]),
    ];
    for (name, subject, args) in &cases {
        let who = env.certs.issue_with_openssl(name, subject, args);
        let (status, body) = env.get(&who, "/pods").await;
        assert_eq!((status, body.as_str()), (401, "Unauthorized"), "{name}");
    }
    assert!(env.api().subject_access_reviews().is_empty());
    assert!(env.kubelet_saw().is_empty());
}

#[tokio::test]
async fn a_kubelet_dying_mid_stream_closes_the_callers_streams_cleanly() {
    let env = Env::start().await;
    let mut client = env.connect(&apiserver()).await;
    let response = client
        .send(
            Request::get("/containerLogs/default/demo/app?follow=true&tailLines=0")
                .body(empty())
                .unwrap(),
        )
        .await;
    let mut log = response.into_body();
    log.frame().await.unwrap().unwrap();

    let mut stream = env.raw(&apiserver()).await;
    stream
        .write(spdy_request("/exec/default/demo/app?command=sh").as_bytes())
        .await;
    let head = stream.read_head().await.unwrap();
    assert_eq!(head.status, 101);

    env.kubelet.stop();
    // The follow ends (with an error: the kubelet never finished the body).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = log.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the followed log did not end");
    // The stream is closed towards the caller.
    let mut rest = head.rest;
    rest.extend(stream.read_to_end().await);
    assert!(rest.is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = env.admin_get("/metrics", None).await;
    assert!(
        metrics.contains("kubelet_guard_upgraded_streams 0"),
        "{metrics}"
    );
    let (status, _) = env.get(&apiserver(), "/pods").await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_caller_vanishing_mid_upload_leaves_nothing_behind() {
    let env = Env::start().await;
    for _ in 0..5 {
        let mut conn = env.raw(&apiserver()).await;
        conn.write(
            b"POST /run/default/demo/app HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\npartial body",
        )
        .await;
        drop(conn);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = env.admin_get("/metrics", None).await;
        if metrics.contains("kubelet_guard_connections 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections left open: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.get(&apiserver(), "/pods").await.0, 200, "still serving");
}

#[tokio::test]
async fn two_host_fields_over_http2_are_refused_before_authorization() {
    // Issue 18, input 3: as monitoring (allowed `get nodes/metrics`), an
    // HTTP/2 request whose `:authority` is 127.0.0.1 with two `host` fields.
    // It used to reach the kubelet as HTTP/1.1 with both `Host` lines.
    use crate::support::h2raw::{self, RawH2};
    let env = Env::start().await;
    let pseudo = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "127.0.0.1"),
        (":path", "/metrics"),
    ];
    let refused: &[&[(&str, &str)]] = &[
        &[("host", "127.0.0.1"), ("host", "evil.example")],
        &[("host", "127.0.0.1"), ("host", "127.0.0.1")],
        &[("host", "evil.example")],
    ];
    for extra in refused {
        let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &monitoring()).await;
        let fields: Vec<_> = pseudo.iter().chain(extra.iter()).copied().collect();
        h2.send(&h2raw::request(1, &fields)).await;
        let frames = h2.frames_of(1).await;
        assert_eq!(
            frames.iter().find_map(|f| f.status()),
            Some(400),
            "{extra:?}: {frames:?}"
        );
    }
    // `:authority` with userinfo (RFC 9113 §8.3.1 forbids it).
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &monitoring()).await;
    h2.send(&h2raw::request(
        1,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "admin@127.0.0.1"),
            (":path", "/metrics"),
        ],
    ))
    .await;
    let frames = h2.frames_of(1).await;
    let status = frames.iter().find_map(|f| f.status());
    let reset = frames.iter().any(|f| f.kind == h2raw::RST_STREAM);
    assert!(status == Some(400) || reset, "{frames:?}");
    assert!(
        env.kubelet_saw().is_empty(),
        "forwarded: {:?}",
        env.kubelet_saw()
    );

    // One `host` that agrees with `:authority`: forwarded with one Host.
    let (mut h2, _) = RawH2::connect(&env.certs, env.gateway, &monitoring()).await;
    let fields: Vec<_> = pseudo
        .iter()
        .copied()
        .chain([("host", "127.0.0.1")])
        .collect();
    h2.send(&h2raw::request(1, &fields)).await;
    let frames = h2.frames_of(1).await;
    assert_eq!(
        frames.iter().find_map(|f| f.status()),
        Some(200),
        "{frames:?}"
    );
    let saw = env.kubelet_saw();
    assert_eq!(saw.len(), 1);
    let hosts: Vec<_> = saw[0].headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["127.0.0.1"]);
}

#[tokio::test]
async fn every_http1_version_forwards_exactly_one_well_formed_host() {
    let env = Env::start().await;
    for (name, raw) in [
        (
            "HTTP/1.0, two Hosts",
            &b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"[..],
        ),
        (
            "HTTP/1.1, Host with userinfo",
            b"GET /metrics HTTP/1.1\r\nHost: admin@127.0.0.1\r\n\r\n",
        ),
        (
            "HTTP/1.1, Host with a path",
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1/pods\r\n\r\n",
        ),
        (
            "HTTP/1.0, absolute-form",
            b"GET https://127.0.0.1/metrics HTTP/1.0\r\n\r\n",
        ),
    ] {
        assert_eq!(raw_status(&env, raw).await, 400, "{name}");
    }
    assert!(env.kubelet_saw().is_empty(), "{:?}", env.kubelet_saw());

    // HTTP/1.0 without a Host: the kubelet still gets exactly one.
    assert_eq!(
        raw_status(&env, b"GET /metrics HTTP/1.0\r\n\r\n").await,
        200
    );
    let saw = env.kubelet_saw();
    assert_eq!(saw[0].headers.get_all("host").iter().count(), 1, "{saw:?}");
}
