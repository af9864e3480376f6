//! The control API's and the key service's listeners: accept loops with their connection
//! budgets, header and body timeouts, body caps judged before reading, and the key service's
//! routes.

use super::*;

impl Api {
    /// Binds `addr` and serves until the process stops.
    pub fn serve(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the control API on {addr}"))?;
        self.serve_on(listener)
    }

    /// Serves on a bound listener until the process stops.
    pub fn serve_on(self: Arc<Self>, listener: std::net::TcpListener) -> Result<()> {
        self.serve_until(listener, std::future::pending())
    }

    /// Serves on a bound listener until `stop` completes; then the listener and every open
    /// connection (held key-service long polls too) are closed, as when the process dies.
    /// Tests stop one operator replica and start another on the same address this way.
    pub fn serve_until(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.serve_role(listener, stop, Role::Control)
    }

    /// Binds `addr` and serves the key service alone (see [`Api::serve_keys_until`]).
    pub fn serve_keys(self: Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the key service on {addr}"))?;
        self.serve_keys_until(listener, std::future::pending())
    }

    /// Serves the key service (`GET /v2/keys/sync`, and `/healthz`) alone on its own
    /// listener, with its own connection budget ([`KEY_SERVICE_MAX_CONNECTIONS`]): what clients
    /// of the public gateway do to the control API's listener (slow bodies, many connections)
    /// never takes the capacity the gateways sync through (SPEC §7). Every other path is 404.
    pub fn serve_keys_until(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.serve_role(listener, stop, Role::Keys)
    }

    fn serve_role(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send,
        role: Role,
    ) -> Result<()> {
        let (what, max_connections) = match role {
            Role::Control => ("control API", self.limits.max_connections),
            Role::Keys => ("key service", KEY_SERVICE_MAX_CONNECTIONS),
        };
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(addr = %listener.local_addr()?, "{what} listening");
            let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
            let mut stop = std::pin::pin!(stop);
            loop {
                let accepted = tokio::select! {
                    () = &mut stop => return Ok::<(), anyhow::Error>(()),
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) and the like: log, let connections
                        // close, and keep serving.
                        tracing::warn!("{what}: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "{what}: connection limit reached");
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                };
                let api = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let header_timeout = api.limits.header_timeout;
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(match role {
                                Role::Control => api.handle(req, peer.ip()).await,
                                Role::Keys => api.handle_keys(req).await,
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }

    async fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: IpAddr,
    ) -> hyper::Response<Full<Bytes>> {
        let method = req.method().as_str().to_owned();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if method == "GET" && path == "/metrics" {
            return metrics(self.source.state());
        }
        let bare = path.split_once('?').map_or(path.as_str(), |(b, _)| b);
        if method == "GET" && bare == crate::keyservice::SYNC_PATH {
            // Gateways rendered before the key service had its own listener sync here.
            return self.handle_keys(req).await;
        }
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Some(limited) = self.rate_limited(&method, &path, &headers, peer) {
            return close(http(limited));
        }
        let cap = body_cap(&method, &path);
        let too_large = || {
            close(http(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {cap} bytes"),
            )))
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            return too_large();
        }
        let read = Limited::new(req.into_body(), cap).collect();
        let body = match tokio::time::timeout(self.limits.body_timeout, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                return close(http(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )))
            }
        };
        // The handlers touch files and locks: keep them off the async workers.
        http(tokio::task::block_in_place(|| {
            self.reply(&method, &path, &headers, &body, peer)
        }))
    }

    /// The key service's listener: `GET /v2/keys/sync` and `/healthz`, nothing else.
    async fn handle_keys(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (bare, query) = path.split_once('?').unwrap_or((path, ""));
        match (req.method().as_str(), bare) {
            ("GET", crate::keyservice::SYNC_PATH) => {
                let bearer = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim().to_owned());
                key_sync(
                    self.source
                        .state()
                        .keys
                        .sync(query, bearer.as_deref())
                        .await,
                )
            }
            ("GET", "/healthz") => http(health(self.source.state())),
            (method, _) => http(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "the key service has no route {method} {bare}; it serves GET {} only",
                    crate::keyservice::SYNC_PATH
                ),
            )),
        }
    }
}

/// The key service's answer on the wire (see [`crate::keyservice`]).
fn key_sync(answer: crate::keyservice::Sync) -> hyper::Response<Full<Bytes>> {
    use crate::keyservice::Sync;
    match answer {
        Sync::Answer(body) => {
            let mut out = hyper::Response::new(Full::new(body));
            out.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            out
        }
        Sync::Unauthorized => http(error(
            StatusCode::UNAUTHORIZED,
            "the key service accepts only the gateway credential (keyService.credential in the rendering)",
        )),
        Sync::NotReady => http(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no key table yet: the operator has not completed a pass; see its log",
        )),
    }
}
