//! Request-path safety: the gate every request passes before it is authorized.
//!
//! The kubelet authorizes and routes on Go's *decoded* `URL.Path`. If we
//! authorized one spelling of a path while the kubelet routed another, a caller
//! could reach `/exec` while being checked for something harmless. So a path
//! is accepted only when decoding it cannot change which segments it names;
//! anything ambiguous is refused (400), never normalized. The raw path is what
//! gets forwarded, and the decoded path — identical for every routing purpose —
//! is what gets authorized.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has a percent-encoded '/'")]
    EncodedSlash,
    #[error("path has a percent-encoded '.'")]
    EncodedDot,
    #[error("path has a backslash")]
    Backslash,
    #[error("path has a NUL or control character")]
    ControlCharacter,
    #[error("path has a malformed percent-escape")]
    MalformedEscape,
    #[error("path is not valid UTF-8 once decoded")]
    NotUtf8,
}

/// Checks a raw request path (as it arrived, without the query) and returns
/// the decoded path the kubelet will route on.
///
/// A trailing slash is allowed: the kubelet serves `/logs/`, `/runningpods/`
/// and `/stats/` under those exact names.
pub fn decode_request_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    check_escapes(raw)?;
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }

    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" if i != last => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }

    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    Ok(decoded)
}

/// Rejects escapes that are malformed or that would decode into a character
/// that changes how the path splits into segments.
fn check_escapes(raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = match bytes.get(i + 1..i + 3) {
                // Two hex digits exactly: `from_str_radix` alone would also
                // take a sign ("%+1").
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    hex_value(hi) << 4 | hex_value(lo)
                }
                _ => return Err(PathError::MalformedEscape),
            };
            match byte {
                b'/' => return Err(PathError::EncodedSlash),
                b'.' => return Err(PathError::EncodedDot),
                b'\\' => return Err(PathError::Backslash),
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_kubelet_path_shape() {
        for path in [
            "/",
            "/pods",
            "/runningpods/",
            "/logs/",
            "/logs/kubelet.log",
            "/stats/summary",
            "/metrics/cadvisor",
            "/exec/default/nginx/app",
            "/exec/default/nginx/0b7f5c1e-1d2a-4c1b-9d5e-2a5d4f6a7b8c/app",
            "/portForward/kube-system/coredns-abc",
            "/containerLogs/default/web-0/app",
            "/debug/pprof/goroutine",
            "/configz",
        ] {
            assert_eq!(decode_request_path(path).as_deref(), Ok(path), "{path}");
        }
    }

    #[test]
    fn decodes_harmless_escapes_so_the_mapper_sees_what_the_kubelet_routes() {
        assert_eq!(
            decode_request_path("/%65xec/ns/pod/c").as_deref(),
            Ok("/exec/ns/pod/c")
        );
        assert_eq!(
            decode_request_path("/logs/my%20file.log").as_deref(),
            Ok("/logs/my file.log")
        );
        assert_eq!(
            decode_request_path("/logs/caf%C3%A9").as_deref(),
            Ok("/logs/café")
        );
    }

    #[test]
    fn refuses_ambiguous_paths() {
        use PathError::*;
        let cases = [
            ("pods", NotAbsolute),
            ("*", NotAbsolute),
            ("", NotAbsolute),
            ("//pods", EmptySegment),
            ("/exec//ns/pod/c", EmptySegment),
            ("/exec/ns/pod/c//", EmptySegment),
            ("/.", DotSegment),
            ("/..", DotSegment),
            ("/./pods", DotSegment),
            ("/exec/../pods", DotSegment),
            ("/stats/..", DotSegment),
            ("/stats/.", DotSegment),
            ("/stats%2fsummary", EncodedSlash),
            ("/stats%2Fsummary", EncodedSlash),
            ("/%2e%2e/pods", EncodedDot),
            ("/exec/%2E/x", EncodedDot),
            ("/logs/a.%2elog", EncodedDot),
            ("/stats\\summary", Backslash),
            ("/stats%5csummary", Backslash),
            ("/stats%5Csummary", Backslash),
            ("/pods%00", ControlCharacter),
            ("/pods%0a", ControlCharacter),
            ("/pods%7f", ControlCharacter),
            ("/pods%", MalformedEscape),
            ("/pods%2", MalformedEscape),
            ("/pods%zz", MalformedEscape),
            ("/pods%+1", MalformedEscape),
            ("/pods%ff", NotUtf8),
            // Overlong UTF-8 for '.' and '/': the classic traversal bypass.
            ("/%c0%ae%c0%ae/pods", NotUtf8),
            ("/exec%c0%afns", NotUtf8),
        ];
        for (path, want) in cases {
            assert_eq!(decode_request_path(path), Err(want), "{path:?}");
        }
    }

    #[test]
    fn dots_inside_names_are_fine() {
        for path in [
            "/logs/kubelet.log",
            "/logs/..hidden",
            "/logs/a..b",
            "/x/.well-known",
        ] {
            assert!(decode_request_path(path).is_ok(), "{path}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Paths built from the characters that matter: separators, dots,
    /// percent signs, hex digits, backslashes and a little of everything.
    fn tricky_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/".to_owned()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%".to_owned()),
                Just("%2f".to_owned()),
                Just("%2e".to_owned()),
                Just("%5c".to_owned()),
                Just("%00".to_owned()),
                Just("%c0%ae".to_owned()),
                Just("\\".to_owned()),
                "[0-9a-fA-F]{1,2}",
                "[a-z]{1,4}",
                "%[0-9a-fA-F]{2}",
                any::<char>().prop_map(|c| c.to_string()),
            ],
            0..12,
        )
        .prop_map(|parts| format!("/{}", parts.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Decoding never creates or removes a segment boundary, and an
        /// accepted path has no segment that means "here" or "up".
        #[test]
        fn an_accepted_path_names_the_same_segments_decoded(raw in tricky_path()) {
            if let Ok(decoded) = decode_request_path(&raw) {
                let raw_segments: Vec<&str> = raw.split('/').collect();
                let decoded_segments: Vec<&str> = decoded.split('/').collect();
                prop_assert_eq!(raw_segments.len(), decoded_segments.len());
                for (i, segment) in decoded_segments.iter().enumerate().skip(1) {
                    prop_assert!(*segment != "." && *segment != "..", "{:?}", decoded);
                    prop_assert!(!segment.is_empty() || i == decoded_segments.len() - 1, "{:?}", decoded);
                }
                prop_assert!(!decoded.contains('\\'));
                prop_assert!(!decoded.chars().any(char::is_control));
            }
        }

        /// Anything at all: an answer, never a panic.
        #[test]
        fn any_string_gets_an_answer(raw in ".*") {
            let _ = decode_request_path(&raw);
        }
    }
}
