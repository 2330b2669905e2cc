//! Upgrades: SPDY and WebSocket, GET and POST, relayed 101s and splicing.

use crate::support::*;

/// 64 KiB of varied bytes, so a dropped or reordered chunk shows.
fn payload() -> Vec<u8> {
    (0..65_536u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn spdy_exec_relays_the_101_and_splices_both_ways() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/exec/default/demo/app?command=sh&input=1&output=1&tty=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");

    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("SPDY/3.1"));
    assert_eq!(head.header("connection"), Some("Upgrade"));
    assert_eq!(
        head.header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );

    let data = payload();
    raw.write(&data).await;
    let echoed = raw.read_exact_after(head.rest, data.len()).await;
    assert!(echoed == data, "the kubelet's bytes come back unchanged");

    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.method, http::Method::POST);
    assert_eq!(saw.headers["upgrade"], "SPDY/3.1");
    assert_eq!(saw.headers["connection"], "Upgrade");
    let versions: Vec<_> = saw
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .collect();
    assert_eq!(
        versions,
        ["v4.channel.k8s.io", "v3.channel.k8s.io"],
        "all offered versions, in order"
    );
}

#[tokio::test]
async fn websocket_exec_on_get_relays_accept_and_protocol() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=date&output=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");

    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(
        head.header("sec-websocket-protocol"),
        Some("v4.channel.k8s.io")
    );

    raw.write(b"\x81\x05hello").await;
    assert_eq!(raw.read_exact_after(head.rest, 7).await, b"\x81\x05hello");

    let saw = &env.kubelet_saw()[0];
    assert_eq!(saw.method, http::Method::GET);
    assert_eq!(saw.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(saw.headers["sec-websocket-version"], "13");
}

#[tokio::test]
async fn websocket_port_forward_is_spliced() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(websocket_request("/portForward/default/demo?port=8080").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 101);
    let data = payload();
    raw.write(&data).await;
    assert!(raw.read_exact_after(head.rest, data.len()).await == data);
}

#[tokio::test]
async fn when_the_caller_closes_the_kubelets_last_bytes_still_arrive() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/attach/default/demo/app?output=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 101);

    raw.write(b"last words").await;
    // TLS close_notify: the caller is done sending. The kubelet echoes, then
    // closes; the gateway must pass both on.
    tokio::io::AsyncWriteExt::shutdown(&mut raw.stream)
        .await
        .unwrap();
    let mut rest = head.rest;
    rest.extend(raw.read_to_end().await);
    assert_eq!(rest, b"last words");
}

#[tokio::test]
async fn a_kubelet_error_on_an_upgrade_is_relayed_with_its_body() {
    let env = Env::start().await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(spdy_request("/exec/default/no-such-pod/app?command=ls").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 404);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let body = raw.read_exact_after(head.rest, length).await;
    assert_eq!(body, b"pod does not exist");
}

#[tokio::test]
async fn strict_mode_refuses_a_websocket_exec_to_a_get_only_identity() {
    let env = Env::start().await;
    let mut raw = env.raw(&monitoring()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=cat&input=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 403);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    let body = raw.read_exact_after(head.rest, length).await;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "Forbidden (user=monitoring, verb=create, resource=nodes, subresource(s)=[proxy])"
    );
    assert!(env.kubelet_saw().is_empty(), "the kubelet never saw it");
}

#[tokio::test]
async fn kubelet_mode_lets_a_get_only_identity_exec_over_websocket_as_the_kubelet_would() {
    let env = Env::start_with(|_, settings| {
        settings.authz.streaming_authz = kubelet_guard::authz::attributes::StreamingAuthz::Kubelet;
    })
    .await;
    let mut raw = env.raw(&monitoring()).await;
    raw.write(websocket_request("/exec/default/demo/app?command=cat&input=1").as_bytes())
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(
        head.status, 101,
        "`get nodes/proxy` is enough for the kubelet"
    );
    assert_eq!(env.kubelet_saw().len(), 1);
}

/// The gateway in front of a kubelet that answers every request with
/// `answer`, byte for byte.
async fn behind_scripted_kubelet(answer: &str) -> (Env, scripted::ScriptedKubelet) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let env = Env::start_with(move |_, s| s.upstream.upstream = format!("https://{addr}")).await;
    let kubelet = scripted::ScriptedKubelet::start(&env.certs, listener, answer.as_bytes().into());
    (env, kubelet)
}

/// Reads until the gateway closes the connection; `None` if it is still
/// open after 3 s.
async fn rest_until_closed(raw: &mut Raw, already: Vec<u8>) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = already;
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        raw.stream.read_to_end(&mut out),
    )
    .await;
    match read {
        // A close without close_notify is a close too.
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

/// The exact request of issue 14: a SPDY exec as the apiserver sends it.
const ISSUE_14_EXEC: &str = "POST /exec/ns/p/c?command=id&output=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
    Content-Length: 0\r\n\r\n";

/// Headers of the kubelet's answer that must not reach the caller when the
/// gateway refuses it.
const KUBELET_ONLY: &[&str] = &[
    "location",
    "link",
    "set-cookie",
    "x-kubelet-said",
    "x-stream-protocol-version",
    "upgrade",
];

#[tokio::test]
async fn an_upgrade_answered_with_a_redirect_is_a_502_without_the_location_and_both_sides_close() {
    // Issue 14, part 1, as reported: a 302 with a Location to another host.
    let (env, kubelet) = behind_scripted_kubelet(
        "HTTP/1.1 302 Found\r\nLocation: https://10.0.0.9:10250/exec/ns/p/c\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(ISSUE_14_EXEC.as_bytes()).await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 502);
    assert_eq!(head.header("location"), None, "{:?}", head.headers);
    assert_eq!(head.header("connection"), Some("close"));
    let body = rest_until_closed(&mut raw, head.rest)
        .await
        .expect("the gateway closes the caller's connection");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "Bad Gateway: kubelet answered an upgrade request with 302 Found instead of 101 Switching Protocols"
    );
    let served = kubelet.verdicts().await;
    assert_eq!(served.len(), 1);
    assert!(served[0].heads[0].starts_with("POST /exec/ns/p/c?command=id&output=1 HTTP/1.1\r\n"));
    assert_eq!(
        served[0].closed_by_gateway,
        Some(true),
        "the kubelet's connection is closed, not pooled"
    );
}

#[tokio::test]
async fn every_upgrade_answer_other_than_101_or_an_error_is_refused_over_spdy_and_websocket() {
    // Every status class below 400 except 101, with headers that must not
    // leak and bodies that must not be relayed. Interim 1xx answers are
    // followed by a final one, as HTTP requires.
    let answers: &[(&str, &str)] = &[
        (
            "200 OK",
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nX-Kubelet-Said: hi\r\nContent-Length: 23\r\n\r\nnot switching protocols",
        ),
        (
            "204 No Content",
            "HTTP/1.1 204 No Content\r\nX-Kubelet-Said: hi\r\n\r\n",
        ),
        (
            "206 Partial Content",
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/9\r\nContent-Length: 2\r\n\r\nab",
        ),
        (
            "301 Moved Permanently",
            "HTTP/1.1 301 Moved Permanently\r\nLocation: https://evil.example/\r\nContent-Length: 5\r\n\r\nmoved",
        ),
        (
            "304 Not Modified",
            "HTTP/1.1 304 Not Modified\r\nX-Kubelet-Said: hi\r\n\r\n",
        ),
        (
            "307 Temporary Redirect",
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /exec/other\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "308 Permanent Redirect",
            "HTTP/1.1 308 Permanent Redirect\r\nLocation: http://10.0.0.9/\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "200 OK",
            "HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "302 Found",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLocation: https://10.0.0.9/\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "200 OK",
            "HTTP/1.1 200 OK\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    for (reason, answer) in answers {
        for request in [
            spdy_request("/exec/default/demo/app?command=id"),
            websocket_request("/attach/default/demo/app?output=1"),
            spdy_request("/portForward/default/demo"),
        ] {
            let (env, kubelet) = behind_scripted_kubelet(answer).await;
            let mut raw = env.raw(&apiserver()).await;
            raw.write(request.as_bytes()).await;
            let case = format!("{reason} to {}", request.lines().next().unwrap());
            let head = raw.read_head().await.expect("a response");
            assert_eq!(head.status, 502, "{case}");
            for name in KUBELET_ONLY {
                assert_eq!(head.header(name), None, "{case}: {name} leaked");
            }
            assert_eq!(head.header("connection"), Some("close"), "{case}");
            let body = rest_until_closed(&mut raw, head.rest)
                .await
                .unwrap_or_else(|| panic!("{case}: the caller's connection stays open"));
            assert_eq!(
                String::from_utf8(body).unwrap(),
                format!(
                    "Bad Gateway: kubelet answered an upgrade request with {reason} instead of 101 Switching Protocols"
                ),
                "{case}"
            );
            let served = kubelet.verdicts().await;
            assert_eq!(served.len(), 1, "{case}");
            assert_eq!(served[0].closed_by_gateway, Some(true), "{case}");
        }
    }
}

#[tokio::test]
async fn an_upgrade_answered_with_an_error_is_relayed_with_its_body_then_both_sides_close() {
    for (status, answer) in [
        (
            400,
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad request",
        ),
        (
            403,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nforbidden",
        ),
        (
            404,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 18\r\n\r\npod does not exist",
        ),
        (
            500,
            "HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nerror\r\n0\r\n\r\n",
        ),
        (
            503,
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy",
        ),
    ] {
        let (env, kubelet) = behind_scripted_kubelet(answer).await;
        let mut raw = env.raw(&apiserver()).await;
        raw.write(ISSUE_14_EXEC.as_bytes()).await;
        let head = raw.read_head().await.expect("a response");
        assert_eq!(head.status, status);
        assert_eq!(head.header("connection"), Some("close"), "{status}");
        let rest = rest_until_closed(&mut raw, head.rest)
            .await
            .unwrap_or_else(|| panic!("{status}: the caller's connection stays open"));
        let body = String::from_utf8(rest).unwrap();
        let expected = answer.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body, expected, "{status}: relayed byte for byte");
        let served = kubelet.verdicts().await;
        assert_eq!(served[0].closed_by_gateway, Some(true), "{status}");
    }
}

#[tokio::test]
async fn a_plain_request_keeps_its_kubelet_connection_pooled() {
    // The control for the tests above: outside upgrades, a 302 is an answer
    // like any other and both connections stay open.
    let (env, kubelet) = behind_scripted_kubelet(
        "HTTP/1.1 302 Found\r\nLocation: /pods/\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let mut raw = env.raw(&apiserver()).await;
    raw.write(b"GET /pods HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let head = raw.read_head().await.expect("a response");
    assert_eq!(head.status, 302);
    assert_eq!(head.header("location"), Some("/pods/"));
    assert_eq!(
        rest_until_closed(&mut raw, head.rest).await,
        None,
        "caller connection open"
    );
    assert_eq!(kubelet.verdicts().await[0].closed_by_gateway, Some(false));
}
