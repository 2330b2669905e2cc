//! HTTP/2 as raw frames over real TLS, for what a client library would not
//! send: streams reset at once, PINGs instead of requests, header blocks
//! of any size, duplicate `host` fields. Header blocks use HPACK literals
//! without indexing or Huffman coding (RFC 7541 §6.2.2), which every
//! decoder must accept.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Certs, Identity, tls_connect};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The parameters of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    /// A response HEADERS frame's `:status`, when the server encoded it as
    /// a static-table index (hyper does for 200, 204, 206, 304, 400, 404, 500)
    /// or as a literal with an indexed name.
    pub fn status(&self) -> Option<u16> {
        let first = *self.payload.first()?;
        match first {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            // Literal, name = static index 8 (:status), with or without
            // indexing; value of 3 digits, plain or Huffman coded.
            0x48 | 0x08 | 0x18 => match *self.payload.get(1)? {
                3 => std::str::from_utf8(self.payload.get(2..5)?)
                    .ok()?
                    .parse()
                    .ok(),
                0x80..=0x83 => huffman_digits(self.payload.get(2..)?, 3),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Decodes `n` HPACK-Huffman-coded decimal digits (RFC 7541 Appendix B:
/// `0`-`2` are `000` + 2 bits, `3`-`9` are `011` + 3 bits).
fn huffman_digits(bytes: &[u8], n: usize) -> Option<u16> {
    let bit = |i: usize| Some((bytes.get(i / 8)? >> (7 - i % 8)) & 1);
    let bits = |at: usize, len: usize| -> Option<u16> {
        (at..at + len).try_fold(0u16, |acc, i| Some((acc << 1) | u16::from(bit(i)?)))
    };
    let (mut at, mut value) = (0, 0u16);
    for _ in 0..n {
        let digit = match bits(at, 3)? {
            0b000 => {
                at += 5;
                bits(at - 2, 2)?
            }
            0b011 => {
                at += 6;
                2 + bits(at - 3, 3)?
            }
            _ => return None,
        };
        value = value * 10 + digit;
    }
    Some(value)
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | u8::try_from(value).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).unwrap() | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).unwrap());
}

/// A header block of literal fields, in order (pseudo-headers first).
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00); // literal without indexing, new name
        integer(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        integer(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A HEADERS frame for `fields` on `stream`, ending the stream; a block
/// larger than the default 16 KiB frame size continues in CONTINUATION
/// frames (RFC 9113 §6.10).
pub fn request(stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
    let block = header_block(fields);
    let mut chunks = block.chunks(16_384).peekable();
    let mut out = Vec::new();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let (kind, mut flags) = if first {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, stream, chunk));
        first = false;
    }
    out
}

pub fn get(stream: u32, path: &str) -> Vec<u8> {
    request(
        stream,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "127.0.0.1"),
            (":path", path),
        ],
    )
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub struct RawH2 {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawH2 {
    /// A TLS connection with ALPN `h2`, nothing sent yet.
    pub async fn connect_silent(certs: &Certs, addr: SocketAddr, who: &Identity) -> RawH2 {
        let stream = tls_connect(certs, addr, who, &[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        RawH2 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connected, preface and an empty SETTINGS sent; returns the server's
    /// SETTINGS frame (and ACKs it).
    pub async fn connect(certs: &Certs, addr: SocketAddr, who: &Identity) -> (RawH2, Frame) {
        let mut h2 = RawH2::connect_silent(certs, addr, who).await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello).await;
        loop {
            let frame = h2.next_frame().await.expect("server SETTINGS");
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                h2.send(&self::frame(SETTINGS, ACK, 0, &[])).await;
                return (h2, frame);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Like [`RawH2::send`], but a connection the server closed is an
    /// answer, not a failure: returns whether the write went through.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// The next frame; `None` once the server closed the connection.
    /// Cancel-safe: a partly read frame stays buffered.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until the server closes the connection, or `limit` passes
    /// (then `None`).
    pub async fn frames_until_closed(&mut self, limit: Duration) -> Option<Vec<Frame>> {
        tokio::time::timeout(limit, async {
            let mut frames = Vec::new();
            while let Some(frame) = self.next_frame().await {
                frames.push(frame);
            }
            frames
        })
        .await
        .ok()
    }

    /// Frames on `stream` until it ends (END_STREAM or RST_STREAM), the
    /// connection closes, or a GOAWAY arrives; then returns all frames seen.
    pub async fn frames_of(&mut self, stream: u32) -> Vec<Frame> {
        let mut seen = Vec::new();
        let deadline = Duration::from_secs(10);
        let _ = tokio::time::timeout(deadline, async {
            while let Some(frame) = self.next_frame().await {
                let done = (frame.stream == stream
                    && (frame.flags & END_STREAM != 0 || frame.kind == RST_STREAM))
                    || frame.kind == GOAWAY;
                seen.push(frame);
                if done {
                    break;
                }
            }
        })
        .await;
        seen
    }
}
