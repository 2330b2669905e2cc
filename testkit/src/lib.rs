//! Test kit for kubelet-guard: what its tests and demo stand the gateway
//! in front of, kept out of the product crate so the gateway carries no
//! test-only code.
//!
//! - [`kubelet`]: a stand-in kubelet on loopback (the kubelet's URLs, status
//!   codes and upgrade answers; every request recorded), with a switch to
//!   misbehave.
//! - [`scripted`]: a kubelet that answers with bytes a test wrote by hand.
//! - [`apiserver`]: a fake apiserver for SubjectAccessReview and
//!   TokenReview, reached by the gateway's real kube client.
//! - [`certs`]: development certificates in a temp dir, and the
//!   identities test clients present.
//! - [`tls`]: server TLS for the stand-ins, built with rustls directly.
//!
//! The `kubelet-guard-demo` binary runs the stand-in kubelet behind the
//! gateway with development certificates (`cargo demo`).

pub mod apiserver;
pub mod certs;
pub mod kubelet;
pub mod scripted;
pub mod tls;
