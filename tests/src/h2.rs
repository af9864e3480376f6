//! A small HTTP/2 cleartext (h2c, prior knowledge) client that sends a body exactly as the
//! test says: in any number of DATA frames, closed by trailers, or reset midway. Well-behaved
//! clients never end a request body with trailers; an attacker can.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

/// How the request body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The last DATA frame carries END_STREAM.
    Data,
    /// A HEADERS frame of trailers carries END_STREAM.
    Trailers(Vec<(String, String)>),
    /// The stream is reset (RST_STREAM) after the DATA frames.
    Reset,
}

/// The body as a queue of frames; a reset is a body error, which makes hyper reset the stream.
struct Frames {
    queue: VecDeque<Frame<Bytes>>,
    reset: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.queue.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None if self.reset => Poll::Ready(Some(Err(std::io::Error::other("reset midway")))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.queue.is_empty() && !self.reset
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A response (or `None` when the stream was reset before one arrived).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// Sends one request over a fresh h2c connection: `chunks` as separate DATA frames, then `end`.
/// Bounded by a 10 s timeout. Returns `None` when the request was reset (no response).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    end: End,
) -> Result<Option<Response>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            send_async(addr, method, path, headers, chunks, end),
        )
        .await
        .context("h2c request timed out")?
    })
}

async fn send_async(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    end: End,
) -> Result<Option<Response>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .context("h2c handshake")?;
    tokio::spawn(conn);
    let mut queue: VecDeque<Frame<Bytes>> = chunks
        .iter()
        .map(|c| Frame::data(Bytes::copy_from_slice(c)))
        .collect();
    let reset = end == End::Reset;
    if let End::Trailers(trailers) = &end {
        let mut map = hyper::HeaderMap::new();
        for (k, v) in trailers {
            map.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes())?,
                hyper::header::HeaderValue::from_str(v)?,
            );
        }
        queue.push_back(Frame::trailers(map));
    }
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Frames { queue, reset })?;
    let response = match sender.send_request(req).await {
        Ok(r) => r,
        Err(_) if reset => return Ok(None),
        Err(e) => return Err(e).context("h2c request"),
    };
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) if reset => return Ok(None),
        Err(e) => return Err(e).context("h2c response body"),
    };
    Ok(Some(Response { status, body }))
}
