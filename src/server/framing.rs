//! Which framing headers an HTTP/1.1 request head carried, seen on the
//! bytes before hyper parses them. hyper follows RFC 9112 §6.3 for a head
//! with both `Content-Length` and `Transfer-Encoding`: it drops
//! `Content-Length`, reads the body by `Transfer-Encoding`, and closes the
//! connection afterwards. The kubelet (Go's net/http) refuses such a
//! request with 400 instead, and so does the gateway — but by the time the
//! request reaches the pipeline, `Content-Length` is gone. This scan keeps
//! the fact.
//!
//! It reads header *names* only, line by line, from the first byte of a
//! head to its blank line, and then stops until the connection is idle
//! again (so a body is never read as headers). A request pipelined behind
//! another one in the same read is not scanned; hyper still handles it as
//! above (Transfer-Encoding wins, connection closed after it).

/// Header names that matter, lowercase.
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
/// Enough of a name to tell those two apart from anything else.
const NAME_MAX: usize = TRANSFER_ENCODING.len() + 1;

#[derive(Debug, Default)]
pub struct HeadScan {
    name: Vec<u8>,
    /// Still in the current line's name (before its `:`).
    in_name: bool,
    /// Bytes on the current line, `\r` aside.
    line_len: usize,
    /// A non-blank line was seen (blank lines before a request are skipped,
    /// RFC 9112 §2.2).
    started: bool,
    content_length: bool,
    transfer_encoding: bool,
    /// The blank line ending the head was seen.
    done: bool,
}

impl HeadScan {
    pub fn new() -> Self {
        HeadScan {
            in_name: true,
            ..HeadScan::default()
        }
    }

    /// Feeds bytes of the head; returns `Some(ambiguous)` once the head is
    /// complete (and ignores anything after it).
    pub fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        if self.done {
            return None;
        }
        for &byte in bytes {
            match byte {
                b'\n' => {
                    if self.line_len == 0 && self.started {
                        self.done = true;
                        return Some(self.content_length && self.transfer_encoding);
                    }
                    self.started |= self.line_len > 0;
                    self.line_len = 0;
                    self.in_name = true;
                    self.name.clear();
                }
                b'\r' => {}
                b':' if self.in_name => {
                    self.line_len += 1;
                    self.in_name = false;
                    let name = self.name.to_ascii_lowercase();
                    self.content_length |= name == CONTENT_LENGTH;
                    self.transfer_encoding |= name == TRANSFER_ENCODING;
                }
                _ => {
                    self.line_len += 1;
                    if self.in_name && self.name.len() < NAME_MAX {
                        self.name.push(byte);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<bool> {
        let mut scan = HeadScan::new();
        pieces.iter().find_map(|p| scan.feed(p))
    }

    #[test]
    fn both_framing_headers_in_any_order_and_case() {
        let head = b"POST /run HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[head]), Some(true));
        let head = b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        let (a, b) = head.split_at(31);
        assert_eq!(scan(&[a, b]), Some(true), "split inside a name");
    }

    #[test]
    fn one_framing_header_or_lookalikes_are_not_ambiguous() {
        for head in [
            &b"POST /run HTTP/1.1\r\nContent-Length: 4\r\n\r\n"[..],
            b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /pods HTTP/1.1\r\nX-Content-Length: 1\r\nX-A: transfer-encoding: 1\r\n\r\n",
            b"\r\n\r\nGET /pods HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(
                scan(&[head]),
                Some(false),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_body_after_the_head_is_not_scanned() {
        let mut scan = HeadScan::new();
        assert_eq!(
            scan.feed(b"POST /run HTTP/1.1\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: x\r\n"),
            Some(false)
        );
        assert_eq!(scan.feed(b"Transfer-Encoding: chunked\r\n\r\n"), None);
    }
}
