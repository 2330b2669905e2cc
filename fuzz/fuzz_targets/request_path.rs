//! Request targets: path safety, then the attribute mapper, in both modes
//! and for every method. Invariants: an accepted path has exactly the raw
//! path's segments once decoded, and no "." or ".." among them; a streaming
//! path is never mapped below `create` in strict mode.
#![no_main]

use http::Method;
use kubelet_guard::admit::path::decode_request_path;
use kubelet_guard::authz::attributes::{
    StreamingAuthz, Verb, is_upgrade_endpoint, request_attributes,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = decode_request_path(raw) else {
        return;
    };
    assert_eq!(
        raw.split('/').count(),
        decoded.split('/').count(),
        "{raw:?} -> {decoded:?}"
    );
    assert!(
        decoded.split('/').all(|s| s != "." && s != ".."),
        "{raw:?} -> {decoded:?}"
    );
    let _ = is_upgrade_endpoint(&decoded);
    for method in [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let strict = request_attributes(&method, &decoded, StreamingAuthz::Strict);
        let kubelet = request_attributes(&method, &decoded, StreamingAuthz::Kubelet);
        match (strict, kubelet) {
            (Ok(strict), Ok(kubelet)) => {
                assert!(!strict.subresources.is_empty());
                assert_eq!(strict.subresources, kubelet.subresources);
                if strict.verb != kubelet.verb {
                    assert_eq!(
                        strict.verb,
                        Verb::Create,
                        "strict only ever raises to create"
                    );
                }
            }
            (Err(_), Err(_)) => assert_eq!(method, Method::OPTIONS),
            _ => panic!("the modes disagree on {method} {decoded:?}"),
        }
    }
});
