//! kubelet-guard: an authenticating, authorizing gateway that stands where
//! the apiserver expects the kubelet (`<node-ip>:10250`) and forwards what it
//! allows to the kubelet on loopback.
//!
//! The modules follow the request: [`server`] accepts TLS connections, the
//! [`pipeline`] runs each request through [`authn`], [`target`] (one path,
//! one authority), [`authz`] and [`proxy`]; [`tls`] holds every certificate
//! concern, [`config`] turns flags and the config file into a
//! [`config::Config`], and [`app`] assembles it all.

pub mod access_log;
pub mod admin;
pub mod apiserver;
pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod certs;
pub mod config;
pub mod csr;
pub mod demo_kubelet;
pub mod fault;
pub mod metrics;
pub mod metrics_endpoint;
pub mod pipeline;
pub mod proxy;
pub mod reject;
pub mod server;
pub mod target;
pub mod tls;
