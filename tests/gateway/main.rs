//! Integration tests: the gateway over real TLS, in front of the stand-in
//! kubelet. One test binary, one module per concern.

// Raw clients here hold whole frames and 16 KiB buffers in their futures;
// the size limit is for the gateway's request path, not its tests.
#![allow(clippy::large_futures)]

mod authentication;
mod authorization;
mod binary;
mod connections;
mod coverage;
mod faults;
mod forwarding;
mod hardening;
mod identity;
mod metrics_endpoint;
mod operations;
mod paths;
mod reloads;
mod reviews;
mod support;
mod tools;
mod upgrades;
