//! Just enough raw HTTP/1.1 for upgrade requests and response heads.

use anyhow::{anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A port-forward-shaped upgrade request (SPDY, as the apiserver sends it).
pub fn upgrade_request(path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
    )
}

pub fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
}

/// Reads a response head; returns the status code and any bytes read past it.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = parse_status(&buf[..end])?;
            return Ok((status, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
    }
}

fn parse_status(head: &[u8]) -> anyhow::Result<u16> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let text = std::str::from_utf8(line).map_err(|_| anyhow!("status line is not UTF-8"))?;
    let mut parts = text.split(' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => {
            code.parse().map_err(|_| anyhow!("bad status line: {text}"))
        }
        _ => bail!("bad status line: {text}"),
    }
}

/// Sends an upgrade request and expects `101`.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    stream.write_all(upgrade_request(path).as_bytes()).await?;
    stream.flush().await?;
    let (status, rest) = read_head(stream).await?;
    if status != 101 {
        bail!("expected 101 Switching Protocols, got {status}");
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 101 Switching Protocols").unwrap(),
            101
        );
        assert_eq!(parse_status(b"HTTP/1.0 200 OK").unwrap(), 200);
        assert!(parse_status(b"SSH-2.0").is_err());
    }
}
