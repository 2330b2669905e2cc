//! The access log: one line per request, written when its response ends (so
//! the byte counts are final), and for upgraded streams one more line when
//! the stream closes. The query string is never logged — exec commands can
//! carry secrets. Requests are counted in the same place.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde::Serialize;

use crate::authn::Authenticated;
use crate::authz::attributes::{Attributes, Subresource};
use crate::authz::{Decision, Source};
use crate::config::LogFormat;
use crate::fault::Fault;
use crate::metrics::{AuthzLabels, Metrics, RefusalLabels, RequestLabels};
use crate::proxy::Relayed;
use crate::reject::Rejection;

/// What one request did, filled in as it moves through the pipeline.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    started: Instant,
    peer: SocketAddr,
    method: Method,
    path: String,
    user: Option<String>,
    groups: Vec<String>,
    authn: &'static str,
    attributes: Option<Attributes>,
    /// allowed; refused because of the caller: unauthenticated, denied,
    /// bad_request, method_not_allowed; refused because of the
    /// infrastructure: authentication_error (a TokenReview could not be
    /// made), authorization_error (a SubjectAccessReview could not be
    /// made). Empty until known.
    decision: &'static str,
    /// Why a request was refused (or failed at the kubelet), and whose
    /// fault that was (`Rejection::fault`).
    refusal: Option<(Fault, &'static str)>,
    source: Option<Source>,
    /// What went wrong with the kubelet (`proxy::UpstreamCause`), if it
    /// gave no usable answer.
    upstream_error: &'static str,
    allowed_by: Option<Subresource>,
    /// The kubelet answered (its bytes count as relayed).
    forwarded: bool,
    status: u16,
    format: LogFormat,
}

impl AccessRecord {
    pub fn new(peer: SocketAddr, method: &Method, path: &str, format: LogFormat) -> Self {
        AccessRecord {
            started: Instant::now(),
            peer,
            method: method.clone(),
            path: path.to_owned(),
            user: None,
            groups: Vec::new(),
            authn: "none",
            attributes: None,
            decision: "",
            refusal: None,
            source: None,
            upstream_error: "",
            allowed_by: None,
            forwarded: false,
            status: 0,
            format,
        }
    }

    pub fn authenticated(&mut self, caller: &Authenticated) {
        self.user = Some(caller.identity.user.clone());
        self.groups = caller.identity.groups.clone();
        self.authn = caller.method.as_str();
    }

    pub fn attributes(&mut self, attributes: Attributes) {
        self.attributes = Some(attributes);
    }

    /// Records why a request was refused before, or instead of, forwarding.
    pub fn refused(&mut self, rejection: &Rejection) {
        let (fault, cause) = rejection.fault();
        self.refusal = Some((fault, cause));
        if let Rejection::BadGateway(error) = rejection
            && let Some(upstream) = error.upstream_cause()
        {
            self.upstream_error = upstream.as_str();
        }
        self.decision = match rejection {
            Rejection::Unauthorized(_) if fault == Fault::Infrastructure => "authentication_error",
            Rejection::Unauthorized(_) => "unauthenticated",
            Rejection::BadPath(_)
            | Rejection::AbsoluteForm
            | Rejection::BadHost(_)
            | Rejection::BadFraming(_) => "bad_request",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::Forbidden { .. } => "denied",
            Rejection::AuthorizationError { .. } => "authorization_error",
            // Allowed, then the kubelet failed: the decision stands.
            Rejection::BadGateway(_) => self.decision,
        };
    }

    pub fn decided(&mut self, decision: Decision, metrics: &Metrics) {
        let (label, source) = match decision {
            Decision::Allowed {
                subresource,
                source,
            } => {
                self.allowed_by = Some(subresource);
                ("allowed", source)
            }
            Decision::Denied { source } => ("denied", source),
        };
        self.decision = label;
        self.source = Some(source);
        metrics
            .authorizations
            .get_or_create(&AuthzLabels {
                source: source.as_str(),
                decision: label,
            })
            .inc();
    }

    pub fn authorization_failed(&mut self, metrics: &Metrics) {
        self.source = Some(Source::Review);
        metrics
            .authorizations
            .get_or_create(&AuthzLabels {
                source: "review",
                decision: "error",
            })
            .inc();
    }

    pub fn forwarded(&mut self) {
        self.forwarded = true;
    }

    pub fn status(&mut self, status: u16) {
        self.status = status;
    }

    /// Writes the request's line and counts it.
    pub fn finish(&self, bytes_in: u64, bytes_out: u64, metrics: &Metrics) {
        self.count(metrics);
        if self.forwarded {
            metrics.relayed("to_kubelet", bytes_in);
            metrics.relayed("to_caller", bytes_out);
        }
        self.write("request", self.started.elapsed(), bytes_in, bytes_out);
    }

    /// Writes the closing line of an upgraded stream.
    pub fn stream_closed(&self, outcome: &Result<Relayed, String>, metrics: &Metrics) {
        let relayed = outcome.as_ref().copied().unwrap_or_default();
        metrics.relayed("to_kubelet", relayed.to_kubelet);
        metrics.relayed("to_caller", relayed.to_caller);
        match outcome {
            Ok(_) => self.write(
                "stream closed",
                self.started.elapsed(),
                relayed.to_kubelet,
                relayed.to_caller,
            ),
            Err(reason) => {
                tracing::info!(target: "access", error = %reason, "stream failed");
                self.write("stream closed", self.started.elapsed(), 0, 0);
            }
        }
    }

    fn count(&self, metrics: &Metrics) {
        let subresource = self
            .allowed_by
            .or_else(|| {
                self.attributes
                    .and_then(|a| a.subresources.first().copied())
            })
            .map_or("none", Subresource::as_str);
        let verb = self.attributes.map_or("none", |a| a.verb.as_str());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                subresource,
                verb,
                code: self.status,
            })
            .inc();
        if let Some((fault, cause)) = self.refusal {
            metrics
                .refusals
                .get_or_create(&RefusalLabels {
                    fault: fault.as_str(),
                    cause,
                })
                .inc();
        }
    }

    fn write(&self, message: &'static str, duration: Duration, bytes_in: u64, bytes_out: u64) {
        let subresources = Joined(self.attributes.as_ref().map_or(&[], |a| a.subresources));
        let groups = Joined(&self.groups);
        let line = Line {
            message,
            peer: &self.peer,
            user: self.user.as_deref().unwrap_or(""),
            groups: &groups,
            authn: self.authn,
            method: self.method.as_str(),
            path: &self.path,
            verb: self.attributes.map_or("", |a| a.verb.as_str()),
            subresources: &subresources,
            decision: self.decision,
            cause: self.refusal.map_or("", |(_, cause)| cause),
            source: self.source.map_or("", Source::as_str),
            upstream_error: self.upstream_error,
            status: self.status,
            bytes_in,
            bytes_out,
            duration_ms: duration.as_secs_f64() * 1000.0,
        };
        match self.format {
            // Formatted here rather than by the tracing subscriber: its
            // JSON formatter was 30% of the gateway's instructions per
            // small request (bench/PROFILE.md). Same fields, same filter.
            LogFormat::Json => {
                if tracing::enabled!(target: "access", tracing::Level::INFO) {
                    line.write_json();
                }
            }
            LogFormat::Text => tracing::info!(
                target: "access",
                peer = %line.peer,
                user = line.user,
                groups = %line.groups,
                authn = line.authn,
                method = line.method,
                path = line.path,
                verb = line.verb,
                subresources = %line.subresources,
                decision = line.decision,
                cause = line.cause,
                source = line.source,
                upstream_error = line.upstream_error,
                status = line.status,
                bytes_in,
                bytes_out,
                duration_ms = line.duration_ms,
                "{message}"
            ),
        }
    }
}

/// One access-log line, in the shape of the gateway's other JSON log lines
/// (`timestamp`, `level`, `message`, the fields, `target`).
#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip)]
    message: &'static str,
    #[serde(serialize_with = "as_text")]
    peer: &'a SocketAddr,
    user: &'a str,
    #[serde(serialize_with = "as_text")]
    groups: &'a Joined<'a, String>,
    authn: &'static str,
    method: &'a str,
    path: &'a str,
    verb: &'static str,
    #[serde(serialize_with = "as_text")]
    subresources: &'a Joined<'a, Subresource>,
    decision: &'static str,
    /// Why it was refused: a caller cause (no_credentials, denied, …) or an
    /// infrastructure one (gateway_credential_rejected, …); empty if not.
    cause: &'static str,
    source: &'static str,
    /// connect, tls, timeout or protocol when the kubelet gave no usable
    /// answer; left out otherwise.
    #[serde(skip_serializing_if = "str::is_empty")]
    upstream_error: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
}

impl Line<'_> {
    /// Writes the line to stdout with one `write` (so lines from many
    /// connections never interleave); a closed stdout loses the line, as it
    /// would any other log line.
    fn write_json(&self) {
        let line = self.to_json(time::OffsetDateTime::now_utc());
        let _ = std::io::stdout().lock().write_all(&line);
    }

    fn to_json(&self, now: time::OffsetDateTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(&mut out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
        // Serializing borrowed strings, numbers and Display values cannot fail.
        let _ = serde_json::to_writer(&mut out, self.message);
        let fields = out.len();
        let _ = serde_json::to_writer(&mut out, self);
        // Splice the fields object into the line: its `{` becomes a comma,
        // its `}` goes.
        if out.get(fields) == Some(&b'{') && out.last() == Some(&b'}') {
            out[fields] = b',';
            out.pop();
        }
        out.extend_from_slice(b",\"target\":\"access\"}\n");
        out
    }
}

/// RFC 3339 in UTC with microseconds, as the other log lines have it.
/// Digits by hand: `write!` with seven padded integers cost more than the
/// rest of the line.
fn write_timestamp(out: &mut Vec<u8>, now: time::OffsetDateTime) {
    let (year, month, day) = now.to_calendar_date();
    let (hour, minute, second, micro) = now.to_hms_micro();
    push_digits(out, u32::try_from(year).unwrap_or(0), 4);
    out.push(b'-');
    push_digits(out, u32::from(u8::from(month)), 2);
    out.push(b'-');
    push_digits(out, u32::from(day), 2);
    out.push(b'T');
    push_digits(out, u32::from(hour), 2);
    out.push(b':');
    push_digits(out, u32::from(minute), 2);
    out.push(b':');
    push_digits(out, u32::from(second), 2);
    out.push(b'.');
    push_digits(out, micro, 6);
    out.push(b'Z');
}

/// `value` in decimal, zero-padded to `width` digits (the low `width`
/// digits if it has more).
fn push_digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// A list written comma-separated, without building the string first.
struct Joined<'a, T>(&'a [T]);

impl<T: AsRef<str>> fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(item.as_ref())?;
        }
        Ok(())
    }
}

fn as_text<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::attributes::Verb;

    #[test]
    fn a_json_line_is_one_object_with_every_field_escaped() {
        let attributes = Attributes {
            verb: Verb::Create,
            subresources: &[Subresource::Metrics, Subresource::Proxy],
        };
        let groups = vec!["system:masters".to_owned(), "team \"a\"".to_owned()];
        let line = Line {
            message: "request",
            peer: &"127.0.0.1:40000".parse().unwrap(),
            user: "alice\n{x}",
            groups: &Joined(&groups),
            authn: "x509",
            method: "POST",
            path: "/exec/ns/pod/c{\"}",
            verb: attributes.verb.as_str(),
            subresources: &Joined(attributes.subresources),
            decision: "allowed",
            cause: "",
            source: "static",
            upstream_error: "",
            status: 101,
            bytes_in: 7,
            bytes_out: 9,
            duration_ms: 1.5,
        };
        let now =
            time::OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_123_456_789).unwrap();
        let text = line.to_json(now);
        assert_eq!(text.last(), Some(&b'\n'));
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let parsed: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let expected = serde_json::json!({
            "timestamp": "2027-01-15T08:00:00.123456Z",
            "level": "INFO",
            "message": "request",
            "peer": "127.0.0.1:40000",
            "user": "alice\n{x}",
            "groups": "system:masters,team \"a\"",
            "authn": "x509",
            "method": "POST",
            "path": "/exec/ns/pod/c{\"}",
            "verb": "create",
            "subresources": "metrics,proxy",
            "decision": "allowed",
            "cause": "",
            "source": "static",
            "status": 101,
            "bytes_in": 7,
            "bytes_out": 9,
            "duration_ms": 1.5,
            "target": "access",
        });
        assert_eq!(parsed, expected);
    }

    #[test]
    fn timestamps_are_zero_padded() {
        let mut out = Vec::new();
        let early = time::OffsetDateTime::from_unix_timestamp_nanos(3_661_000_007_000).unwrap();
        write_timestamp(&mut out, early);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T01:01:01.000007Z"
        );
    }
}
