//! kubelet-guard: an authenticating, authorizing gateway that stands where
//! the apiserver expects the kubelet (`<node-ip>:10250`) and forwards what it
//! allows to the kubelet on loopback.
//!
//! The modules follow the request: [`server`] accepts TLS connections and
//! serves HTTP, the [`pipeline`] runs each request through [`authn`],
//! [`admit`] (the one place a request's shape is checked), [`authz`] and
//! [`proxy`], and [`access_log`] writes what happened. No module imports one
//! that imports it back (`tests/module_graph.rs`). [`tls`] holds every
//! certificate concern, [`reload`] keeps file-backed values current,
//! [`drain`] is the one shutdown signal, [`config`] turns flags and the
//! config file into a [`config::Config`], and [`app`] assembles it all.

pub mod access_log;
pub mod admin;
pub mod admit;
pub mod apiserver;
pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod certs;
pub mod config;
pub mod csr;
pub mod drain;
pub mod fault;
pub mod logging;
pub mod metrics;
pub mod metrics_endpoint;
pub mod pipeline;
pub mod proxy;
pub mod reject;
pub mod reload;
pub mod request_headers;
pub mod server;
pub mod tls;
