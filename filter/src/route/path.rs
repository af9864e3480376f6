//! The request path before any route is looked up: the query split off, what normalization
//! must already have removed refused ([`check_path`]), and the segments, borrowed (no
//! allocation, at most `MAX_SEGMENTS`).

use crate::denial::Denial;

pub(super) const MAX_SEGMENTS: usize = 12;

/// Path segments without the query string, borrowed.
pub(super) struct Segments<'a> {
    items: [&'a str; MAX_SEGMENTS],
    len: usize,
    /// More segments than `MAX_SEGMENTS`: matches no default route.
    pub(super) overflow: bool,
}

impl<'a> Segments<'a> {
    pub(super) fn get(&self) -> &[&'a str] {
        &self.items[..self.len]
    }
}

/// Splits `:path` into the path (no query) and the query string.
pub fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// True when `path` holds a control character (NUL included), and when it holds `%2f`, `%5c`,
/// `%2e` or `%00` in any case: one pass over the bytes (four substring searches were about
/// two thousand instructions a request in the VM).
pub(super) fn control_and_encoded(path: &str) -> (bool, bool) {
    let b = path.as_bytes();
    let (mut control, mut encoded) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_control() {
            control = true;
        } else if c == b'%' && i + 2 < b.len() && !encoded {
            encoded = matches!(
                (b[i + 1], b[i + 2].to_ascii_lowercase()),
                (b'2', b'f' | b'e') | (b'5', b'c') | (b'0', b'0')
            );
        }
    }
    (control, encoded)
}

/// Rejects what Envoy's normalization should already have removed, and what it must not pass:
/// encoded slashes/backslashes/dots/NUL, dot segments, empty segments (`//`), raw NUL.
pub(super) fn check_path(path: &str) -> Result<(), Denial> {
    if !path.starts_with('/') {
        return Err(Denial::bad_request("the request path must start with '/'"));
    }
    let (control, encoded) = control_and_encoded(path);
    if control {
        return Err(Denial::bad_request(
            "the request path contains a control character (NUL?); remove it",
        ));
    }
    if encoded {
        return Err(Denial::bad_request(
            "the request path contains an encoded '/', '\\', '.' or NUL; send the path unencoded",
        ));
    }
    if path.len() > 1 {
        for seg in SlashSplit::new(&path[1..]) {
            if seg.is_empty() {
                return Err(Denial::bad_request(
                    "the request path contains an empty segment ('//'); remove it",
                ));
            }
            if seg == "." || seg == ".." {
                return Err(Denial::bad_request(
                    "the request path contains a '.' or '..' segment; remove it",
                ));
            }
        }
    }
    Ok(())
}

/// `str::split('/')` as a plain byte scan: the same pieces, without the generic searcher's
/// set-up on every call (in the VM, each `split` cost several hundred instructions).
pub(super) struct SlashSplit<'a>(Option<&'a str>);

impl<'a> SlashSplit<'a> {
    pub(super) fn new(s: &'a str) -> SlashSplit<'a> {
        SlashSplit(Some(s))
    }
}

impl<'a> Iterator for SlashSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

pub(super) fn segments(path: &str) -> Segments<'_> {
    let mut s = Segments {
        items: [""; MAX_SEGMENTS],
        len: 0,
        overflow: false,
    };
    if path.len() > 1 {
        for seg in SlashSplit::new(&path[1..]) {
            if s.len == MAX_SEGMENTS {
                s.overflow = true;
                break;
            }
            s.items[s.len] = seg;
            s.len += 1;
        }
    }
    s
}
