//! Command-line flags and the optional YAML config file → one validated
//! [`Config`]. Flag names follow the kubelet's and kube-apiserver's; every
//! flag can also be set in the file under its camelCase name (`--tls-cert-file`
//! → `tlsCertFile`), and a flag wins over the file. Anything invalid fails at
//! start with the flag's name and what it expects.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use http::uri::{Authority, Scheme};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::authz::attributes::StreamingAuthz;
use crate::authz::static_rules::{StaticRuleSpec, StaticRules};
use crate::tls::coverage::CoveragePolicy;
use crate::tls::{TlsOptions, TlsVersion, UpstreamTls};

/// A duration written the kubelet's way (`2m`, `30s`, `1h30m`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl std::str::FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(GoDuration)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 2m or 1h30m: {e}"))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Who decides what static rules do not allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum AuthorizationMode {
    /// Static rules, then a SubjectAccessReview to the apiserver (the
    /// kubelet's `Webhook` mode).
    #[default]
    #[value(name = "Webhook")]
    Webhook,
    /// Static rules only; no apiserver is contacted.
    #[value(name = "Static")]
    Static,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingCertSource {
    /// --tls-cert-file and --tls-private-key-file, reloaded when they change.
    #[default]
    File,
    /// A kubernetes.io/kubelet-serving CertificateSigningRequest, rotated
    /// before it expires.
    Csr,
}

// --- secure metrics listener ---
/// A listener that can be switched off: `IP:PORT`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenSetting {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for ListenSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(ListenSetting::Off);
        }
        s.parse()
            .map(ListenSetting::At)
            .map_err(|_| format!("{s:?} is neither IP:PORT nor off"))
    }
}

impl Serialize for ListenSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ListenSetting::Off => serializer.serialize_str("off"),
            ListenSetting::At(addr) => serializer.collect_str(addr),
        }
    }
}

impl<'de> Deserialize<'de> for ListenSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
// --- end secure metrics listener ---

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable.
    Text,
}

/// A setting that cannot be used, and how to fix it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--{flag} ({key} in the config file): {problem}")]
    Invalid {
        flag: &'static str,
        key: &'static str,
        problem: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Every setting of `kubelet-guard serve`, as flags and as config-file keys.
/// All optional here; defaults and checks are applied by [`Settings::validate`].
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// YAML file with any of these settings (camelCase keys) plus
    /// `authorization.static` rules. Flags override the file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Name of this node, as in `kubectl get nodes` (the `name` of every
    /// SubjectAccessReview). Required.
    #[arg(long, env = "NODE_NAME")]
    #[serde(default)]
    pub node_name: Option<String>,

    /// Address the apiserver dials [default: 0.0.0.0:10250].
    #[arg(long, value_name = "IP:PORT")]
    #[serde(default)]
    pub secure_listen_address: Option<SocketAddr>,

    /// Where the serving certificate comes from: file (--tls-cert-file and
    /// --tls-private-key-file) or csr (requested from the cluster with a
    /// kubernetes.io/kubelet-serving CertificateSigningRequest) [default: file].
    #[arg(long, value_name = "SOURCE")]
    #[serde(default)]
    pub serving_cert_source: Option<ServingCertSource>,

    /// The node's IPs the apiserver may dial (repeat, or comma-separate):
    /// the serving certificate must carry each as an IP SAN (checked at
    /// start and reload); csr: requested as SANs, and with neither this nor
    /// --node-hostname, the Node object's addresses are.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    #[serde(default)]
    pub node_ip: Option<Vec<IpAddr>>,

    /// The node's names the apiserver may dial (repeat, or comma-separate):
    /// checked against the DNS SANs like --node-ip; csr: requested as SANs.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    #[serde(default)]
    pub node_hostname: Option<Vec<String>>,

    /// What a serving certificate that misses a --node-ip/--node-hostname
    /// SAN, or is outside its validity window, does: warn (serve; warn
    /// line, /readyz reason, metric) or refuse (the gateway does not start;
    /// a reloaded one is not used) [default: warn].
    #[arg(long, value_name = "POLICY")]
    #[serde(default)]
    pub serving_cert_coverage: Option<CoveragePolicy>,

    /// csr: keep the issued key and certificate here, so a restart reuses a
    /// valid one instead of asking again.
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub serving_cert_dir: Option<PathBuf>,

    /// csr: kubeconfig to request the certificate with (e.g. the node's own
    /// kubelet credentials, so approvers see system:node:<name>)
    /// [default: --kubeconfig, else the pod's ServiceAccount].
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub csr_kubeconfig: Option<PathBuf>,

    /// Serving certificate (PEM, leaf first). Required with --serving-cert-source=file.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of the serving certificate (PEM). Required with --serving-cert-source=file.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that vouches for client certificates (the apiserver's
    /// `--kubelet-client-certificate` issuer). Without it no client
    /// certificate is requested.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,

    /// Lowest TLS version accepted: VersionTLS12 or VersionTLS13 [default: VersionTLS12].
    #[arg(long, value_name = "VERSION")]
    #[serde(default)]
    pub tls_min_version: Option<TlsVersion>,

    /// Comma-separated TLS 1.2 cipher suites (Go names). TLS 1.3 suites are
    /// always on [default: rustls' secure defaults].
    #[arg(long, value_name = "SUITES", value_delimiter = ',')]
    #[serde(default)]
    pub tls_cipher_suites: Option<Vec<String>>,

    /// The kubelet: https://127.0.0.1:10250, or http:// for a loopback
    /// kubelet [default: https://127.0.0.1:10250].
    #[arg(long, value_name = "URL")]
    #[serde(default)]
    pub upstream: Option<String>,

    /// CA bundle that signed the kubelet's serving certificate.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,

    /// Client certificate the gateway presents to the kubelet.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub upstream_client_cert_file: Option<PathBuf>,

    /// Key of --upstream-client-cert-file.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub upstream_client_key_file: Option<PathBuf>,

    /// The name to verify the kubelet's serving certificate against, when it
    /// is not the upstream host (kubelet certificates name the node, not
    /// 127.0.0.1).
    #[arg(long, value_name = "NAME")]
    #[serde(default)]
    pub upstream_tls_server_name: Option<String>,

    /// File holding a bearer token the gateway presents to the kubelet.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub upstream_token_file: Option<PathBuf>,

    /// Accept any kubelet serving certificate. Logged as a warning.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub upstream_insecure_skip_tls_verify: Option<bool>,

    /// strict: /exec, /attach, /run and /portForward need verb `create`
    /// whatever the method; kubelet: the kubelet's own mapping [default: strict].
    #[arg(long, value_name = "MODE")]
    #[serde(default)]
    pub streaming_authz: Option<StreamingAuthz>,

    /// Treat requests without credentials as system:anonymous (still
    /// authorized like any other) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub anonymous_auth: Option<bool>,

    /// kubeconfig for the apiserver (SubjectAccessReview, TokenReview);
    /// without it the in-cluster ServiceAccount is used.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,

    /// Webhook: static rules, then a SubjectAccessReview; Static: static
    /// rules only, no apiserver [default: Webhook].
    #[arg(long, value_name = "MODE")]
    #[serde(default)]
    pub authorization_mode: Option<AuthorizationMode>,

    /// Authenticate bearer tokens with a TokenReview [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub authentication_token_webhook: Option<bool>,

    /// How long a TokenReview result (success or failure) is cached [default: 2m].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub authentication_token_webhook_cache_ttl: Option<GoDuration>,

    /// Comma-separated audiences a bearer token must be meant for
    /// [default: the apiserver's own].
    #[arg(long, value_name = "AUDIENCES", value_delimiter = ',')]
    #[serde(default)]
    pub auth_token_audiences: Option<Vec<String>>,

    /// How long an allowed SubjectAccessReview decision is cached [default: 5m].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub authorization_webhook_cache_authorized_ttl: Option<GoDuration>,

    /// How long a denied SubjectAccessReview decision is cached [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<GoDuration>,

    /// Deadline for each SubjectAccessReview and TokenReview; past it the
    /// request is refused [default: 5s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub review_timeout: Option<GoDuration>,

    /// Plain-HTTP listener for /healthz, /livez, /readyz and /metrics
    /// [default: 127.0.0.1:10251].
    #[arg(long, value_name = "IP:PORT")]
    #[serde(default)]
    pub admin_listen_address: Option<SocketAddr>,

    // --- secure metrics listener (metrics_endpoint) ---
    /// TLS listener for `/metrics` with the gateway's serving certificate,
    /// authentication and a SubjectAccessReview for the non-resource
    /// `get /metrics` (needs --authorization-mode=Webhook); `off` to disable
    /// [default: off; the manifests use 0.0.0.0:10262].
    #[arg(long, value_name = "IP:PORT|off")]
    #[serde(default)]
    pub metrics_listen_address: Option<ListenSetting>,
    // --- end secure metrics listener ---
    /// json or text [default: json].
    #[arg(long, value_name = "FORMAT")]
    #[serde(default)]
    pub log_format: Option<LogFormat>,

    /// On SIGTERM, how long in-flight requests and upgraded streams may run
    /// before they are closed [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub shutdown_grace_period: Option<GoDuration>,

    /// A TLS handshake that takes longer is dropped [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub tls_handshake_timeout: Option<GoDuration>,

    /// Once a request head has started arriving, it must be complete
    /// within this (slow-header protection); a new connection's first head
    /// (HTTP/1.1) or preface (HTTP/2) within this of the handshake, like
    /// Go's ReadHeaderTimeout and HTTP/2 preface timeout [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub request_header_timeout: Option<GoDuration>,

    /// A kept-alive HTTP/1.1 connection with no request, or an HTTP/2
    /// connection with no open stream (PINGs do not count), for this long
    /// is closed; at least the kubelet's 90s [default: 90s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default)]
    pub idle_timeout: Option<GoDuration>,

    /// Largest request head accepted, like the kubelet's [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    #[serde(default)]
    pub max_request_header_bytes: Option<usize>,

    /// Connections served at once; beyond it accepting pauses [default: 20000].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub max_connections: Option<usize>,

    /// HTTP/2 streams per connection [default: 250].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub http2_max_concurrent_streams: Option<u32>,

    /// HTTP/2 streams a client may reset before they are accepted, per
    /// connection; more closes the connection (CVE-2023-44487 "rapid
    /// reset") [default: 20].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub http2_max_reset_streams: Option<usize>,

    /// Config file only: `static` rules checked before any review.
    #[arg(skip)]
    #[serde(default)]
    pub authorization: Option<AuthorizationSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationSettings {
    #[serde(default, rename = "static")]
    pub static_rules: Vec<StaticRuleSpec>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub listen: SocketAddr,
    pub serving: Serving,
    /// What the serving certificate is checked against (`tls::coverage`):
    /// --node-ip and --node-hostname, and what to do about a gap.
    pub serving_coverage: ServingCoverageConfig,
    pub client_ca_file: Option<PathBuf>,
    pub tls: TlsOptions,
    pub upstream_scheme: Scheme,
    pub upstream_authority: Authority,
    pub upstream_tls: UpstreamTls,
    pub upstream_token_file: Option<PathBuf>,
    pub streaming_authz: StreamingAuthz,
    pub anonymous_auth: bool,
    pub static_rules: StaticRules,
    /// The apiserver, when anything needs it.
    pub apiserver: Option<ApiserverConfig>,
    pub admin_listen: SocketAddr,
    // --- secure metrics listener ---
    /// `None`: no secure metrics listener. Authorized with the webhook's
    /// SubjectAccessReviews and decision TTLs (validation ensures there is one).
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub shutdown_grace_period: Duration,
    pub limits: Limits,
}

/// Protection against slow, greedy or hostile clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_header_bytes: usize,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_request_header_bytes: 1 << 20,
            max_connections: 20_000,
            http2_max_concurrent_streams: 250,
            http2_max_reset_streams: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCoverageConfig {
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
    pub policy: CoveragePolicy,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    Files { cert: PathBuf, key: PathBuf },
    Csr(CsrSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrSettings {
    /// SANs; both empty means "from the Node object".
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
    pub dir: Option<PathBuf>,
    /// `None`: the pod's ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
}

/// How the gateway uses the apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiserverConfig {
    /// `None`: the in-cluster ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    pub review_timeout: Duration,
    /// SubjectAccessReview after static rules (`--authorization-mode=Webhook`).
    pub authorization: Option<WebhookAuthorization>,
    /// TokenReview for bearer tokens (`--authentication-token-webhook`).
    pub token_authentication: Option<WebhookAuthentication>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAuthorization {
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAuthentication {
    pub cache_ttl: Duration,
    pub audiences: Vec<String>,
}

impl Settings {
    /// Reads `--config` (if given) and lays the flags over it.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        match &self.config {
            Some(path) => Ok(Settings::from_file(path)?.overlaid_by(self)),
            None => Ok(self),
        }
    }

    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        serde_saphyr::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// `flags` wins wherever it has a value.
    fn overlaid_by(self, flags: Settings) -> Settings {
        Settings {
            config: flags.config.or(self.config),
            node_name: flags.node_name.or(self.node_name),
            secure_listen_address: flags.secure_listen_address.or(self.secure_listen_address),
            serving_cert_source: flags.serving_cert_source.or(self.serving_cert_source),
            node_ip: flags.node_ip.or(self.node_ip),
            node_hostname: flags.node_hostname.or(self.node_hostname),
            serving_cert_coverage: flags.serving_cert_coverage.or(self.serving_cert_coverage),
            serving_cert_dir: flags.serving_cert_dir.or(self.serving_cert_dir),
            csr_kubeconfig: flags.csr_kubeconfig.or(self.csr_kubeconfig),
            tls_cert_file: flags.tls_cert_file.or(self.tls_cert_file),
            tls_private_key_file: flags.tls_private_key_file.or(self.tls_private_key_file),
            client_ca_file: flags.client_ca_file.or(self.client_ca_file),
            tls_min_version: flags.tls_min_version.or(self.tls_min_version),
            tls_cipher_suites: flags.tls_cipher_suites.or(self.tls_cipher_suites),
            upstream: flags.upstream.or(self.upstream),
            upstream_ca_file: flags.upstream_ca_file.or(self.upstream_ca_file),
            upstream_client_cert_file: flags
                .upstream_client_cert_file
                .or(self.upstream_client_cert_file),
            upstream_client_key_file: flags
                .upstream_client_key_file
                .or(self.upstream_client_key_file),
            upstream_token_file: flags.upstream_token_file.or(self.upstream_token_file),
            upstream_tls_server_name: flags
                .upstream_tls_server_name
                .or(self.upstream_tls_server_name),
            upstream_insecure_skip_tls_verify: flags
                .upstream_insecure_skip_tls_verify
                .or(self.upstream_insecure_skip_tls_verify),
            streaming_authz: flags.streaming_authz.or(self.streaming_authz),
            anonymous_auth: flags.anonymous_auth.or(self.anonymous_auth),
            kubeconfig: flags.kubeconfig.or(self.kubeconfig),
            authorization_mode: flags.authorization_mode.or(self.authorization_mode),
            authentication_token_webhook: flags
                .authentication_token_webhook
                .or(self.authentication_token_webhook),
            authentication_token_webhook_cache_ttl: flags
                .authentication_token_webhook_cache_ttl
                .or(self.authentication_token_webhook_cache_ttl),
            auth_token_audiences: flags.auth_token_audiences.or(self.auth_token_audiences),
            authorization_webhook_cache_authorized_ttl: flags
                .authorization_webhook_cache_authorized_ttl
                .or(self.authorization_webhook_cache_authorized_ttl),
            authorization_webhook_cache_unauthorized_ttl: flags
                .authorization_webhook_cache_unauthorized_ttl
                .or(self.authorization_webhook_cache_unauthorized_ttl),
            review_timeout: flags.review_timeout.or(self.review_timeout),
            admin_listen_address: flags.admin_listen_address.or(self.admin_listen_address),
            // --- secure metrics listener ---
            metrics_listen_address: flags.metrics_listen_address.or(self.metrics_listen_address),
            log_format: flags.log_format.or(self.log_format),
            shutdown_grace_period: flags.shutdown_grace_period.or(self.shutdown_grace_period),
            tls_handshake_timeout: flags.tls_handshake_timeout.or(self.tls_handshake_timeout),
            request_header_timeout: flags.request_header_timeout.or(self.request_header_timeout),
            idle_timeout: flags.idle_timeout.or(self.idle_timeout),
            max_request_header_bytes: flags
                .max_request_header_bytes
                .or(self.max_request_header_bytes),
            max_connections: flags.max_connections.or(self.max_connections),
            http2_max_concurrent_streams: flags
                .http2_max_concurrent_streams
                .or(self.http2_max_concurrent_streams),
            http2_max_reset_streams: flags
                .http2_max_reset_streams
                .or(self.http2_max_reset_streams),
            authorization: flags.authorization.or(self.authorization),
        }
    }

    /// Applies defaults and checks every setting.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let limits = self.limits()?;
        let node_name = self.node_name.ok_or_else(|| {
            invalid(
                "node-name",
                "nodeName",
                "required: the name of this node as in `kubectl get nodes` (or set NODE_NAME)",
            )
        })?;
        check_node_name(&node_name).map_err(|p| invalid("node-name", "nodeName", p))?;

        let node_ips = self.node_ip.clone().unwrap_or_default();
        let node_hostnames = self.node_hostname.clone().unwrap_or_default();
        if let Some(bad) = node_hostnames
            .iter()
            .find(|n| rustls_pki_types::DnsName::try_from(n.as_str()).is_err())
        {
            return Err(invalid(
                "node-hostname",
                "nodeHostname",
                format!("{bad:?} is not a DNS name"),
            ));
        }
        let serving_coverage = ServingCoverageConfig {
            ips: node_ips,
            dns_names: node_hostnames,
            policy: self.serving_cert_coverage.unwrap_or_default(),
        };
        let serving = match self.serving_cert_source.unwrap_or_default() {
            ServingCertSource::File => {
                let cert = self.tls_cert_file.ok_or_else(|| {
                    invalid(
                        "tls-cert-file",
                        "tlsCertFile",
                        "required: the serving certificate (PEM), or --serving-cert-source=csr",
                    )
                })?;
                let key = self.tls_private_key_file.ok_or_else(|| {
                    invalid(
                        "tls-private-key-file",
                        "tlsPrivateKeyFile",
                        "required: the serving certificate's key (PEM)",
                    )
                })?;
                Serving::Files { cert, key }
            }
            ServingCertSource::Csr => {
                if self.tls_cert_file.is_some() || self.tls_private_key_file.is_some() {
                    return Err(invalid(
                        "serving-cert-source",
                        "servingCertSource",
                        "csr requests the serving certificate: drop --tls-cert-file and --tls-private-key-file",
                    ));
                }
                let dns_names = self.node_hostname.unwrap_or_default();
                Serving::Csr(CsrSettings {
                    ips: self.node_ip.unwrap_or_default(),
                    dns_names,
                    dir: self.serving_cert_dir,
                    kubeconfig: self.csr_kubeconfig.or_else(|| self.kubeconfig.clone()),
                })
            }
        };

        let (upstream_scheme, upstream_authority) = parse_upstream(
            self.upstream
                .as_deref()
                .unwrap_or("https://127.0.0.1:10250"),
        )
        .map_err(|p| invalid("upstream", "upstream", p))?;

        let insecure = self.upstream_insecure_skip_tls_verify.unwrap_or(false);
        if upstream_scheme == Scheme::HTTPS && !insecure && self.upstream_ca_file.is_none() {
            return Err(invalid(
                "upstream-ca-file",
                "upstreamCaFile",
                "required for an https upstream: the CA that signed the kubelet's serving certificate \
                 (or set --upstream-insecure-skip-tls-verify to accept any certificate)",
            ));
        }
        if insecure && self.upstream_ca_file.is_some() {
            return Err(invalid(
                "upstream-insecure-skip-tls-verify",
                "upstreamInsecureSkipTlsVerify",
                "conflicts with --upstream-ca-file: give a CA to verify the kubelet, or skip verification, not both",
            ));
        }
        let server_name = self
            .upstream_tls_server_name
            .map(|name| {
                rustls_pki_types::ServerName::try_from(name.clone())
                    .map(|n| n.to_owned())
                    .map_err(|_| {
                        invalid(
                            "upstream-tls-server-name",
                            "upstreamTlsServerName",
                            format!("{name:?} is not a DNS name or IP address"),
                        )
                    })
            })
            .transpose()?;
        if server_name.is_some() && insecure {
            return Err(invalid(
                "upstream-tls-server-name",
                "upstreamTlsServerName",
                "has no effect with --upstream-insecure-skip-tls-verify",
            ));
        }
        let client_cert = match (
            self.upstream_client_cert_file,
            self.upstream_client_key_file,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "upstream-client-key-file",
                    "upstreamClientKeyFile",
                    "required with --upstream-client-cert-file",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "upstream-client-cert-file",
                    "upstreamClientCertFile",
                    "required with --upstream-client-key-file",
                ));
            }
        };

        let static_specs = self
            .authorization
            .map(|a| a.static_rules)
            .unwrap_or_default();
        let static_rules =
            StaticRules::from_specs(&static_specs).map_err(|(index, e)| ConfigError::Invalid {
                flag: "config",
                key: "authorization.static",
                problem: format!("rule {index}: {e}"),
            })?;

        let authorization = match self.authorization_mode.unwrap_or_default() {
            AuthorizationMode::Webhook => Some(WebhookAuthorization {
                authorized_ttl: self
                    .authorization_webhook_cache_authorized_ttl
                    .map_or(Duration::from_secs(300), |d| d.0),
                unauthorized_ttl: self
                    .authorization_webhook_cache_unauthorized_ttl
                    .map_or(Duration::from_secs(30), |d| d.0),
            }),
            AuthorizationMode::Static => None,
        };
        let token_authentication =
            self.authentication_token_webhook
                .unwrap_or(true)
                .then(|| WebhookAuthentication {
                    cache_ttl: self
                        .authentication_token_webhook_cache_ttl
                        .map_or(Duration::from_secs(120), |d| d.0),
                    audiences: self.auth_token_audiences.unwrap_or_default(),
                });
        let review_timeout = self.review_timeout.map_or(Duration::from_secs(5), |d| d.0);
        if review_timeout.is_zero() {
            return Err(invalid(
                "review-timeout",
                "reviewTimeout",
                "must be more than 0s",
            ));
        }
        // --- secure metrics listener ---
        let metrics_listen = match self.metrics_listen_address {
            Some(ListenSetting::At(addr)) if authorization.is_none() => {
                return Err(invalid(
                    "metrics-listen-address",
                    "metricsListenAddress",
                    format!(
                        "{addr} needs --authorization-mode=Webhook: /metrics is authorized \
                         with a SubjectAccessReview (or set it to off)"
                    ),
                ));
            }
            Some(ListenSetting::At(addr)) => Some(addr),
            Some(ListenSetting::Off) | None => None,
        };
        // --- end secure metrics listener ---
        let apiserver = (authorization.is_some() || token_authentication.is_some()).then_some(
            ApiserverConfig {
                kubeconfig: self.kubeconfig,
                review_timeout,
                authorization,
                token_authentication,
            },
        );

        Ok(Config {
            node_name,
            listen: self
                .secure_listen_address
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 10250))),
            serving,
            serving_coverage,
            client_ca_file: self.client_ca_file,
            tls: TlsOptions {
                min_version: self.tls_min_version.unwrap_or_default(),
                cipher_suites: self.tls_cipher_suites.unwrap_or_default(),
            },
            upstream_scheme,
            upstream_authority,
            upstream_tls: UpstreamTls {
                ca_file: self.upstream_ca_file,
                client_cert,
                insecure_skip_verify: insecure,
                server_name,
            },
            upstream_token_file: self.upstream_token_file,
            streaming_authz: self.streaming_authz.unwrap_or_default(),
            anonymous_auth: self.anonymous_auth.unwrap_or(false),
            static_rules,
            apiserver,
            admin_listen: self
                .admin_listen_address
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10251))),
            metrics_listen,
            log_format: self.log_format.unwrap_or_default(),
            shutdown_grace_period: self
                .shutdown_grace_period
                .map_or(Duration::from_secs(30), |d| d.0),
            limits,
        })
    }

    fn limits(&self) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let positive = |value: Option<GoDuration>, fallback: Duration, flag, key| match value {
            Some(GoDuration(d)) if d.is_zero() => Err(invalid(flag, key, "must be more than 0s")),
            Some(GoDuration(d)) => Ok(d),
            None => Ok(fallback),
        };
        let limits = Limits {
            tls_handshake_timeout: positive(
                self.tls_handshake_timeout,
                default.tls_handshake_timeout,
                "tls-handshake-timeout",
                "tlsHandshakeTimeout",
            )?,
            request_header_timeout: positive(
                self.request_header_timeout,
                default.request_header_timeout,
                "request-header-timeout",
                "requestHeaderTimeout",
            )?,
            idle_timeout: positive(
                self.idle_timeout,
                default.idle_timeout,
                "idle-timeout",
                "idleTimeout",
            )?,
            max_request_header_bytes: self
                .max_request_header_bytes
                .unwrap_or(default.max_request_header_bytes),
            max_connections: self.max_connections.unwrap_or(default.max_connections),
            http2_max_concurrent_streams: self
                .http2_max_concurrent_streams
                .unwrap_or(default.http2_max_concurrent_streams),
            http2_max_reset_streams: self
                .http2_max_reset_streams
                .unwrap_or(default.http2_max_reset_streams),
        };
        if limits.max_request_header_bytes < 8192 {
            return Err(invalid(
                "max-request-header-bytes",
                "maxRequestHeaderBytes",
                "must be at least 8192: smaller would refuse ordinary requests",
            ));
        }
        if limits.max_connections == 0 {
            return Err(invalid(
                "max-connections",
                "maxConnections",
                "must be at least 1",
            ));
        }
        if limits.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "http2-max-concurrent-streams",
                "http2MaxConcurrentStreams",
                "must be at least 1",
            ));
        }
        Ok(limits)
    }
}

fn invalid(flag: &'static str, key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        key,
        problem: problem.into(),
    }
}

/// Node names are DNS subdomains (RFC 1123), as the apiserver requires.
fn check_node_name(name: &str) -> Result<(), String> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

/// `https://host:port` or, for a kubelet on this host only, `http://…`.
fn parse_upstream(url: &str) -> Result<(Scheme, Authority), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a scheme: https://HOST:PORT"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} needs a host: https://HOST:PORT"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} must not have a path or query: request paths are forwarded as they are"
        ));
    }
    if scheme == Scheme::HTTP {
        if !is_loopback_host(authority.host()) {
            return Err(format!(
                "{url:?}: plain http is only allowed to a kubelet on loopback (127.0.0.1, ::1, localhost)"
            ));
        }
    } else if scheme != Scheme::HTTPS {
        return Err(format!("{url:?}: the scheme must be https or http"));
    }
    Ok((scheme, authority))
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Settings {
        Settings {
            node_name: Some("node-1".into()),
            tls_cert_file: Some("tls.crt".into()),
            tls_private_key_file: Some("tls.key".into()),
            upstream_ca_file: Some("kubelet-ca.crt".into()),
            ..Settings::default()
        }
    }

    fn error_of(settings: Settings) -> String {
        settings
            .validate()
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn defaults_follow_the_kubelet() {
        let config = minimal().validate().unwrap();
        assert_eq!(config.listen, "0.0.0.0:10250".parse().unwrap());
        assert_eq!(config.upstream_scheme, Scheme::HTTPS);
        assert_eq!(config.upstream_authority.as_str(), "127.0.0.1:10250");
        assert_eq!(config.streaming_authz, StreamingAuthz::Strict);
        assert!(!config.anonymous_auth);
        assert_eq!(config.tls.min_version, TlsVersion::Tls12);
    }

    #[test]
    fn errors_name_the_flag_and_the_fix() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    node_name: None,
                    ..minimal()
                },
                "--node-name (nodeName in the config file): required",
            ),
            (
                Settings {
                    node_name: Some("Node_1".into()),
                    ..minimal()
                },
                "not a valid node name",
            ),
            (
                Settings {
                    tls_cert_file: None,
                    ..minimal()
                },
                "--tls-cert-file",
            ),
            (
                Settings {
                    tls_private_key_file: None,
                    ..minimal()
                },
                "--tls-private-key-file",
            ),
            (
                Settings {
                    upstream_ca_file: None,
                    ..minimal()
                },
                "--upstream-ca-file",
            ),
            (
                Settings {
                    upstream_insecure_skip_tls_verify: Some(true),
                    ..minimal()
                },
                "conflicts with --upstream-ca-file",
            ),
            (
                Settings {
                    upstream: Some("http://10.0.0.1:10250".into()),
                    ..minimal()
                },
                "only allowed to a kubelet on loopback",
            ),
            (
                Settings {
                    upstream: Some("https://127.0.0.1:10250/api".into()),
                    ..minimal()
                },
                "must not have a path",
            ),
            (
                Settings {
                    upstream: Some("ftp://127.0.0.1".into()),
                    ..minimal()
                },
                "scheme must be https or http",
            ),
            (
                Settings {
                    upstream: Some("127.0.0.1:10250".into()),
                    ..minimal()
                },
                "needs a scheme",
            ),
            (
                Settings {
                    upstream_client_cert_file: Some("c".into()),
                    ..minimal()
                },
                "--upstream-client-key-file",
            ),
            (
                Settings {
                    authorization: Some(AuthorizationSettings {
                        static_rules: vec![StaticRuleSpec {
                            user: None,
                            group: None,
                            verbs: vec!["get".into()],
                            subresources: vec!["proxy".into()],
                        }],
                    }),
                    ..minimal()
                },
                "authorization.static in the config file): rule 0: a rule needs exactly one of `user` or `group`",
            ),
        ];
        for (settings, want) in cases {
            let got = error_of(settings);
            assert!(got.contains(want), "{got:?} should contain {want:?}");
        }
    }

    #[test]
    fn review_settings_default_to_the_kubelets_and_read_go_durations() {
        let config = minimal().validate().unwrap();
        let apiserver = config.apiserver.expect("webhook modes are on by default");
        assert_eq!(apiserver.review_timeout, Duration::from_secs(5));
        let authz = apiserver.authorization.unwrap();
        assert_eq!(
            (authz.authorized_ttl, authz.unauthorized_ttl),
            (Duration::from_secs(300), Duration::from_secs(30))
        );
        assert_eq!(
            apiserver.token_authentication.unwrap().cache_ttl,
            Duration::from_secs(120)
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: n\ntlsCertFile: /c\ntlsPrivateKeyFile: /k\nupstreamCaFile: /ca\n\
             authorizationWebhookCacheAuthorizedTtl: 1m30s\nreviewTimeout: 500ms\n\
             authTokenAudiences: [a, b]\n",
        )
        .unwrap();
        let apiserver = Settings::from_file(&path)
            .unwrap()
            .validate()
            .unwrap()
            .apiserver
            .unwrap();
        assert_eq!(
            apiserver.authorization.unwrap().authorized_ttl,
            Duration::from_secs(90)
        );
        assert_eq!(apiserver.review_timeout, Duration::from_millis(500));
        assert_eq!(
            apiserver.token_authentication.unwrap().audiences,
            ["a", "b"]
        );

        std::fs::write(&path, "nodeName: n\nreviewTimeout: soon\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
    }

    #[test]
    fn static_mode_without_token_webhook_needs_no_apiserver() {
        let config = Settings {
            authorization_mode: Some(AuthorizationMode::Static),
            authentication_token_webhook: Some(false),
            ..minimal()
        }
        .validate()
        .unwrap();
        assert!(config.apiserver.is_none());
        let zero = Settings {
            review_timeout: Some(GoDuration(Duration::ZERO)),
            ..minimal()
        };
        assert!(error_of(zero).contains("--review-timeout"));
    }

    #[test]
    fn csr_mode_takes_no_certificate_files_and_defaults_its_kubeconfig() {
        let csr = Settings {
            serving_cert_source: Some(ServingCertSource::Csr),
            tls_cert_file: None,
            tls_private_key_file: None,
            node_ip: Some(vec!["10.0.0.7".parse().unwrap()]),
            node_hostname: Some(vec!["node-1.example".into()]),
            kubeconfig: Some("/etc/kubelet-guard/kubeconfig".into()),
            ..minimal()
        };
        let config = csr.clone().validate().unwrap();
        assert_eq!(
            config.serving,
            Serving::Csr(CsrSettings {
                ips: vec!["10.0.0.7".parse().unwrap()],
                dns_names: vec!["node-1.example".into()],
                dir: None,
                kubeconfig: Some("/etc/kubelet-guard/kubeconfig".into()),
            })
        );
        let with_files = Settings {
            tls_cert_file: Some("tls.crt".into()),
            ..csr.clone()
        };
        assert!(error_of(with_files).contains("drop --tls-cert-file"));
        let bad_name = Settings {
            node_hostname: Some(vec!["not a name".into()]),
            ..csr
        };
        assert!(error_of(bad_name).contains("--node-hostname"));
    }

    #[test]
    fn loopback_http_upstreams_are_allowed() {
        for url in [
            "http://127.0.0.1:10250",
            "http://[::1]:10250",
            "http://localhost:8080",
        ] {
            let config = Settings {
                upstream: Some(url.into()),
                upstream_ca_file: None,
                ..minimal()
            }
            .validate();
            assert!(config.is_ok(), "{url}: {config:?}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = Settings {
            node_name: Some("from-file".into()),
            anonymous_auth: Some(true),
            ..minimal()
        };
        let flags = Settings {
            node_name: Some("from-flag".into()),
            ..Settings::default()
        };
        let merged = file.overlaid_by(flags).validate().unwrap();
        assert_eq!(merged.node_name, "from-flag");
        assert!(merged.anonymous_auth, "a setting only the file has is kept");
    }

    #[test]
    fn the_file_uses_camel_case_keys_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "nodeName: node-a\ntlsCertFile: /tls.crt\ntlsPrivateKeyFile: /tls.key\n\
             upstream: http://127.0.0.1:10250\nstreamingAuthz: kubelet\n\
             authorization:\n  static:\n    - group: system:masters\n      verbs: ['*']\n      subresources: ['*']\n",
        )
        .unwrap();
        let config = Settings::from_file(&path).unwrap().validate().unwrap();
        assert_eq!(config.node_name, "node-a");
        assert_eq!(config.streaming_authz, StreamingAuthz::Kubelet);
        assert!(!config.static_rules.is_empty());

        std::fs::write(&path, "nodeName: node-a\ntlsCertFil: /typo\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("tlsCertFil"), "{err}");
    }

    // --- secure metrics listener ---
    #[test]
    fn the_metrics_listener_is_off_unless_set_and_needs_the_webhook() {
        assert_eq!(minimal().validate().unwrap().metrics_listen, None);
        let at = |value: &str| Settings {
            metrics_listen_address: Some(value.parse().unwrap()),
            ..minimal()
        };
        assert_eq!(
            at("0.0.0.0:10262").validate().unwrap().metrics_listen,
            Some("0.0.0.0:10262".parse().unwrap())
        );
        assert_eq!(at("off").validate().unwrap().metrics_listen, None);
        let got = error_of(Settings {
            authorization_mode: Some(AuthorizationMode::Static),
            ..at("127.0.0.1:10262")
        });
        assert!(
            got.contains("--metrics-listen-address (metricsListenAddress in the config file)")
                && got.contains("--authorization-mode=Webhook"),
            "{got}"
        );
        assert!(
            "10262"
                .parse::<ListenSetting>()
                .unwrap_err()
                .contains("neither IP:PORT nor off")
        );
        let file: Settings = serde_saphyr::from_str("metricsListenAddress: off\n").unwrap();
        assert_eq!(file.metrics_listen_address, Some(ListenSetting::Off));
    }
}
