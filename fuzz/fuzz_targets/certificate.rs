//! Identity from a client certificate: any bytes are either refused or give
//! a user; never a panic. Seeded with real certificates (fuzz/run).
#![no_main]

use kubelet_guard::authn::identity_from_certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = identity_from_certificate(data) {
        assert!(!identity.user.is_empty());
    }
});
