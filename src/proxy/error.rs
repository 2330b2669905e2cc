//! Why a request could not be forwarded, typed: a refused or failed TCP
//! connection, a failed TLS handshake (the kubelet's certificate, or the
//! gateway's client certificate refused), a timeout, or a kubelet that
//! broke HTTP. Each is a different thing to fix on a node, so each is its
//! own `cause` in `kubelet_guard_upstream_errors_total` and in the access
//! log's `upstream_error` field.

use std::error::Error as StdError;

use http::StatusCode;
use thiserror::Error;

/// What went wrong between the gateway and the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamCause {
    /// The TCP connection was refused or failed (nothing listening, reset,
    /// no route).
    Connect,
    /// The TLS handshake failed (certificate not trusted, wrong name, client
    /// certificate refused, protocol mismatch).
    Tls,
    /// Connecting took longer than the connect timeout.
    Timeout,
    /// The kubelet's answer was not valid HTTP, the connection closed
    /// mid-answer, or an upgrade was answered with neither `101` nor an
    /// error status.
    Protocol,
}

impl UpstreamCause {
    /// The `cause` label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamCause::Connect => "connect",
            UpstreamCause::Tls => "tls",
            UpstreamCause::Timeout => "timeout",
            UpstreamCause::Protocol => "protocol",
        }
    }

    /// Classifies an error of the kubelet client by walking its sources: a
    /// `rustls::Error` anywhere is TLS; an I/O timeout is a timeout; other
    /// errors while connecting are connect errors; errors after the
    /// connection was made are protocol errors.
    pub fn of(error: &hyper_util::client::legacy::Error) -> UpstreamCause {
        let mut timed_out = false;
        let mut pending: Vec<&(dyn StdError + 'static)> = error.source().into_iter().collect();
        while let Some(cause) = pending.pop() {
            if cause.is::<rustls::Error>() {
                return UpstreamCause::Tls;
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                // `io::Error::source` skips the error it wraps (hyper-rustls
                // wraps tokio-rustls's `io::Error`, which wraps the
                // `rustls::Error`): look inside too.
                if let Some(inner) = io.get_ref() {
                    pending.push(inner);
                }
            }
            if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
                timed_out |= hyper.is_timeout();
            }
            pending.extend(cause.source());
        }
        if timed_out {
            UpstreamCause::Timeout
        } else if error.is_connect() {
            UpstreamCause::Connect
        } else {
            UpstreamCause::Protocol
        }
    }
}

#[derive(Debug, Error)]
pub enum ProxyError {
    /// The request did not get an answer from the kubelet.
    #[error("kubelet unreachable: {detail}")]
    Unreachable {
        cause: UpstreamCause,
        detail: String,
    },
    #[error("kubelet answered 101 Switching Protocols to a request that did not ask to upgrade")]
    UnexpectedUpgrade,
    /// An upgrade answered with neither `101` nor an error status. Only the
    /// status is kept: the kubelet's headers (a `Location`, say) and body
    /// never reach the caller.
    #[error("kubelet answered an upgrade request with {0} instead of 101 Switching Protocols")]
    UpgradeNotSwitched(StatusCode),
    #[error("cannot build the kubelet request: {0}")]
    Request(#[from] http::Error),
}

impl ProxyError {
    /// What went wrong with the kubelet, or `None` when the gateway could
    /// not even build the request.
    pub fn upstream_cause(&self) -> Option<UpstreamCause> {
        match self {
            ProxyError::Unreachable { cause, .. } => Some(*cause),
            ProxyError::UnexpectedUpgrade | ProxyError::UpgradeNotSwitched(_) => {
                Some(UpstreamCause::Protocol)
            }
            ProxyError::Request(_) => None,
        }
    }
}

/// `error: cause: cause`, because hyper's top-level messages ("client error
/// (Connect)") say little on their own.
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! Each cause, produced by a real failure on loopback.
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use http::uri::{Authority, PathAndQuery, Scheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    use super::*;
    use crate::proxy::{Upstream, UpstreamOptions};

    fn client_tls() -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    /// The cause of a GET to `addr` over `scheme`.
    async fn cause_of_get(scheme: Scheme, addr: SocketAddr) -> UpstreamCause {
        let options = UpstreamOptions {
            connect_timeout: Duration::from_millis(300),
            ..UpstreamOptions::default()
        };
        let upstream = Upstream::new(
            scheme,
            Authority::try_from(addr.to_string()).unwrap(),
            client_tls(),
            None,
            tokio::sync::watch::channel(None).1,
            &options,
        );
        let uri = upstream
            .uri_for(PathAndQuery::from_static("/pods"))
            .unwrap();
        let request = http::Request::get(uri).body(crate::body::empty()).unwrap();
        let error = upstream.send(request).await.unwrap_err();
        UpstreamCause::of(&error)
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: the port refuses connections.
        assert_eq!(
            cause_of_get(Scheme::HTTPS, addr).await,
            UpstreamCause::Connect
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_tls_error() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = acceptor.accept(stream).await;
            }
        });
        assert_eq!(cause_of_get(Scheme::HTTPS, addr).await, UpstreamCause::Tls);
    }

    #[tokio::test]
    async fn a_connect_that_is_never_answered_is_a_timeout() {
        // A listener with a full accept queue: Linux drops further SYNs, so
        // a connect neither succeeds nor fails until it gives up.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the accept queue never filled");
        assert_eq!(
            cause_of_get(Scheme::HTTPS, addr).await,
            UpstreamCause::Timeout
        );
        drop(listener);
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_is_a_protocol_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
            }
        });
        assert_eq!(
            cause_of_get(Scheme::HTTP, addr).await,
            UpstreamCause::Protocol
        );
    }

    #[test]
    fn bad_upgrade_answers_are_protocol_errors_and_a_bad_request_is_none() {
        assert_eq!(
            ProxyError::UpgradeNotSwitched(StatusCode::OK).upstream_cause(),
            Some(UpstreamCause::Protocol)
        );
        assert_eq!(
            ProxyError::UnexpectedUpgrade.upstream_cause(),
            Some(UpstreamCause::Protocol)
        );
        let bad = http::Request::get("/")
            .header("a", "\n")
            .body(())
            .unwrap_err();
        assert_eq!(ProxyError::Request(bad).upstream_cause(), None);
    }
}
