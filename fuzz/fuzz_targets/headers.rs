//! Header hygiene and the WebSocket token reader over arbitrary header sets
//! (one "name: value" per line). Invariant: nothing that identifies a caller
//! and no hop-by-hop header survives, whatever the input.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use kubelet_guard::authn::websocket_token;
use kubelet_guard::proxy::headers::{
    WEBSOCKET_BEARER_PREFIX, prepare_request, prepare_response, protocol_list, requested_upgrade,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = websocket_token(&headers);
    let upgrade = requested_upgrade(&headers);
    let mut response = headers.clone();
    prepare_response(&mut response, upgrade.is_some());
    prepare_request(&mut headers, upgrade.as_ref(), "192.0.2.1".parse().unwrap());
    for name in headers.keys() {
        let name = name.as_str();
        assert!(name != "authorization" && name != "proxy-authorization");
        assert!(!name.starts_with("impersonate-") && !name.starts_with("x-remote-"));
        assert!(
            ![
                "keep-alive",
                "te",
                "transfer-encoding",
                "proxy-connection",
                "trailer"
            ]
            .contains(&name)
        );
    }
    // A token is an entry that starts with the prefix (as the kubelet reads
    // it); none may be left.
    for value in headers.get_all("sec-websocket-protocol") {
        assert!(
            !protocol_list(value.as_bytes())
                .any(|p| p.starts_with(WEBSOCKET_BEARER_PREFIX.as_bytes()))
        );
    }
    if upgrade.is_none() {
        assert!(!headers.contains_key("upgrade") && !headers.contains_key("connection"));
    }
});
