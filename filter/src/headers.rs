//! Zero-copy view of a proxy-wasm serialized header map, and the request facts the decision
//! needs, gathered in one pass.
//!
//! Wire format (proxy-wasm ABI): `u32 count`, then `count × (u32 key_len, u32 value_len)`, then
//! each key and each value followed by a NUL byte; all integers little-endian.

/// Iterates `(name, value)` pairs of a serialized header map without copying.
/// Malformed input ends the iteration early (the caller sees fewer headers, never garbage).
pub fn pairs(buf: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let u32_at = move |i: usize| -> Option<usize> {
        let b = buf.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0).unwrap_or(0);
    let mut data = 4 + count.saturating_mul(8);
    (0..count).map_while(move |n| {
        let (kl, vl) = (u32_at(4 + n * 8)?, u32_at(8 + n * 8)?);
        let key = buf.get(data..data + kl)?;
        let value = buf.get(data + kl + 1..data + kl + 1 + vl)?;
        data += kl + vl + 2;
        Some((key, value))
    })
}

/// Serializes pairs in the same format (used by tests and the wasmtime host).
pub fn serialize<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let items: Vec<(&str, &str)> = headers.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (k, v) in &items {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in &items {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The `Authorization` header(s) of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// None sent.
    Absent,
    /// Exactly one.
    One(&'a str),
    /// More than one (or one folded value with a comma): refused — which would count?
    Repeated,
}

/// What the decision needs from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` including the query string.
    pub path: &'a str,
    /// `:authority` (Envoy maps HTTP/1.1's `Host` to it).
    pub authority: &'a str,
    /// `authorization`.
    pub authorization: Authorization<'a>,
    /// `content-length`, when present and numeric.
    pub content_length: Option<u64>,
    /// `content-encoding`, when present.
    pub content_encoding: Option<&'a str>,
    /// True when the client sent any `x-layergate-*` header (they are stripped).
    pub has_layergate_headers: bool,
    /// `x-request-id` (Envoy sets it before the filter runs), for the audit line; `""` when
    /// absent or not UTF-8.
    pub request_id: &'a str,
    /// True when a header value is not valid UTF-8 where we need it.
    pub malformed: bool,
}

/// The prefix of headers the gateway owns; clients may not send them.
pub const LAYERGATE_HEADER_PREFIX: &str = "x-layergate-";

impl<'a> RequestHead<'a> {
    /// Gathers the facts in one pass over the header pairs (names are lower-case in HTTP/2 and
    /// in Envoy's map).
    pub fn from_pairs(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> RequestHead<'a> {
        let mut head = RequestHead {
            method: "",
            path: "",
            authority: "",
            authorization: Authorization::Absent,
            content_length: None,
            content_encoding: None,
            has_layergate_headers: false,
            request_id: "",
            malformed: false,
        };
        for (name, value) in pairs {
            let text = || std::str::from_utf8(value).ok();
            match name {
                b":method" => {
                    head.method = text().unwrap_or_else(|| {
                        head.malformed = true;
                        ""
                    })
                }
                b":path" => {
                    head.path = text().unwrap_or_else(|| {
                        head.malformed = true;
                        ""
                    })
                }
                b":authority" => head.authority = text().unwrap_or_default(),
                b"x-request-id" => head.request_id = text().unwrap_or_default(),
                b"authorization" => {
                    head.authorization = match head.authorization {
                        // Envoy folds repeated headers into one, comma-separated; a bearer
                        // token never contains a comma (RFC 6750 b64token).
                        Authorization::Absent => match text() {
                            Some(v) if v.contains(',') => Authorization::Repeated,
                            Some(v) => Authorization::One(v),
                            None => {
                                head.malformed = true;
                                Authorization::Absent
                            }
                        },
                        _ => Authorization::Repeated,
                    }
                }
                b"content-length" => {
                    head.content_length = text().and_then(|v| v.trim().parse().ok())
                }
                b"content-encoding" => head.content_encoding = text(),
                _ if name.len() >= LAYERGATE_HEADER_PREFIX.len()
                    && name[..LAYERGATE_HEADER_PREFIX.len()]
                        .eq_ignore_ascii_case(LAYERGATE_HEADER_PREFIX.as_bytes()) =>
                {
                    head.has_layergate_headers = true
                }
                _ => {}
            }
        }
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_serializes() {
        let buf = serialize([
            (":method", "GET"),
            (":path", "/x?y"),
            ("authorization", "Bearer t"),
        ]);
        let got: Vec<_> = pairs(&buf).collect();
        assert_eq!(
            got,
            vec![
                (&b":method"[..], &b"GET"[..]),
                (&b":path"[..], &b"/x?y"[..]),
                (&b"authorization"[..], &b"Bearer t"[..])
            ]
        );
    }

    #[test]
    fn truncated_maps_yield_only_whole_pairs() {
        let buf = serialize([("a", "1"), ("b", "2")]);
        assert_eq!(pairs(&buf[..buf.len() - 3]).count(), 1);
        assert_eq!(pairs(&[]).count(), 0);
        assert_eq!(pairs(&[255, 255, 255, 255]).count(), 0);
    }

    #[test]
    fn head_counts_authorization_headers_and_spots_layergate_headers() {
        let buf = serialize([
            (":method", "POST"),
            (":path", "/v2/namespaces/a"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("x-layergate-cluster", "store_archive"),
            ("content-length", "12"),
        ]);
        let head = RequestHead::from_pairs(pairs(&buf));
        assert_eq!(head.authorization, Authorization::Repeated);
        assert!(head.has_layergate_headers);
        assert_eq!(
            (head.method, head.path, head.content_length),
            ("POST", "/v2/namespaces/a", Some(12))
        );
    }
}
