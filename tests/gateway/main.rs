//! Integration tests: the gateway over real TLS, in front of the stand-in
//! kubelet. One test binary, one module per concern.

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
