//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, so tests can send what
//! well-behaved clients refuse to: repeated headers, NUL or `%2F` in paths, huge headers, any
//! method. One request per connection (`Connection: close`), bounded by timeouts.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A request to send; headers are sent exactly as given (repeats allowed).
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, sent verbatim.
    pub method: String,
    /// Path and query, sent verbatim.
    pub path: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body; `Content-Length` is added when present.
    pub body: Option<Vec<u8>>,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header (repeats allowed).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Request {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json(self, value: &serde_json::Value) -> Request {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// Serializes the request.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n",
            self.method, self.path
        )
        .into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if let Some(b) = &self.body {
            out.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if let Some(b) = &self.body {
            out.extend_from_slice(b);
        }
        out
    }

    /// Sends the request and reads the whole response (10 s timeouts).
    pub fn send(&self, addr: SocketAddr) -> Result<Response> {
        send_raw(addr, &self.to_bytes(&addr.to_string()))
    }
}

/// Sends raw bytes and reads one response: up to its `content-length`, the end of its
/// chunked body, or the end of the connection.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    // The server may answer and close before taking the whole body (e.g. a 413): keep going.
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(response) = complete_response(&raw)? {
            return Ok(response);
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(e).context("reading the response"),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the response after {} bytes", raw.len()))
            }
        }
    }
    parse_response(&raw, true)
}

/// The response, once `raw` holds all of it.
fn complete_response(raw: &[u8]) -> Result<Option<Response>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if head.contains("\r\ntransfer-encoding: chunked") {
        return body
            .ends_with(b"0\r\n\r\n")
            .then(|| parse_response(raw, true))
            .transpose();
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let no_body = head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304");
    match length {
        Some(n) if body.len() >= n => Ok(Some(parse_response(raw, false)?)),
        None if no_body => Ok(Some(parse_response(raw, false)?)),
        _ => Ok(None),
    }
}

fn parse_response(raw: &[u8], at_eof: bool) -> Result<Response> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "incomplete response ({} bytes, eof {at_eof}): {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        );
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match (chunked, length) {
        (true, _) => dechunk(rest)?,
        (false, Some(n)) => rest[..n.min(rest.len())].to_vec(),
        (false, None) => rest.to_vec(),
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body")
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
