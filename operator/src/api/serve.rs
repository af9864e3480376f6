//! The control API's and the key service's listeners: two axum routers (the routes, each
//! route's body cap as a tower-http layer that refuses a declared length before reading, the
//! `authenticate` rate limit judged before the body), served by an accept loop that keeps
//! what `axum::serve` does not offer: the connection budget (one more is a 503 and closed at
//! once) and the header timeout.

use super::*;
use axum::extract::{ConnectInfo, RawPathParams, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The control API (and, for gateways rendered before the key service had its own
    /// listener, the key service too).
    Control,
    /// The key service alone (`GET /v2/keys/sync` and `/healthz`).
    Keys,
}

/// Runs `handler` off the async workers (it touches files and locks) and puts its answer on
/// the wire.
async fn off_workers(handler: impl FnOnce() -> Reply + Send + 'static) -> Response {
    http(
        tokio::task::spawn_blocking(handler)
            .await
            .unwrap_or_else(|e| {
                tracing::error!("control API: a handler failed: {e}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }),
    )
}

/// The bearer token of a request, if it sends one.
fn bearer_of(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
}

/// The client's address: the TCP peer the accept loop put in the request.
fn peer_of(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

impl Api {
    /// The control API's routes. Authentication and authority are judged by
    /// [`Api::answer`] for every `/v2/…` route, an unknown one too (so an unknown key route
    /// is a 401 or 403 before it is a 404).
    pub fn router(self: &Arc<Self>) -> Router {
        // `route` makes the call from the route's one parameter (a key's id or name, a
        // store's name; empty on routes without one).
        let on = |route: fn(String) -> Call| {
            move |axum::extract::State(api): axum::extract::State<Arc<Api>>,
                  params: RawPathParams,
                  req: Request| async move {
                let param = params.iter().next().map(|(_, v)| v.to_owned());
                api.answer(req, route(param.unwrap_or_default())).await
            }
        };
        // Every route, its other methods and the paths no route matches: judged, then 404.
        let unknown = || on(|_| Call::Unknown);
        // A route's methods with their body cap (the other methods get the smallest).
        let capped = |methods: MethodRouter<Arc<Api>>, cap: usize| {
            methods
                .fallback(unknown())
                .layer(RequestBodyLimitLayer::new(cap))
        };
        Router::new()
            .route("/healthz", get(Self::healthz))
            .route("/readyz", get(Self::readyz))
            .route("/metrics", get(Self::metrics))
            // Gateways rendered before the key service had its own listener sync here.
            .route(crate::keyservice::SYNC_PATH, get(Self::key_sync))
            .route(
                "/v2/keys/authenticate",
                post(on(|_| Call::Authenticate))
                    .layer(RequestBodyLimitLayer::new(AUTHENTICATE_BODY_BYTES))
                    .merge(capped(MethodRouter::new(), OTHER_BODY_BYTES)),
            )
            .route(
                "/v2/keys",
                post(on(|_| Call::Mint))
                    .layer(RequestBodyLimitLayer::new(MINT_BODY_BYTES))
                    .merge(capped(get(on(|_| Call::List)), OTHER_BODY_BYTES)),
            )
            .route(
                "/v2/keys/{id}",
                capped(
                    get(on(Call::Get)).delete(on(Call::Delete)),
                    OTHER_BODY_BYTES,
                ),
            )
            .route(
                "/v2/keys/{id}/revoke",
                capped(post(on(Call::Revoke)), OTHER_BODY_BYTES),
            )
            .route(
                "/v2/keys/{id}/usage",
                capped(get(on(Call::Usage)), OTHER_BODY_BYTES),
            )
            // Gateways rendered before the key service had its own listener report here; a
            // key named `usage` is still found, and deleted, by name.
            .route(
                layergate_filter::config::DEFAULT_USAGE_PATH,
                post(Self::key_usage_report)
                    .layer(RequestBodyLimitLayer::new(USAGE_BODY_BYTES))
                    .merge(capped(
                        get(on(|_| Call::Get("usage".into())))
                            .delete(on(|_| Call::Delete("usage".into()))),
                        OTHER_BODY_BYTES,
                    )),
            )
            .route(
                "/v2/keys/{id}/rotate",
                capped(post(on(Call::Rotate)), OTHER_BODY_BYTES),
            )
            .route(
                "/v2/vectorstores",
                capped(get(on(|_| Call::Stores)), OTHER_BODY_BYTES),
            )
            .route(
                "/v2/vectorstores/{name}",
                capped(get(on(Call::Store)), OTHER_BODY_BYTES),
            )
            .fallback_service(capped(any(unknown()), OTHER_BODY_BYTES).with_state(self.clone()))
            .layer(axum::middleware::map_response(json_413))
            .with_state(self.clone())
    }

    /// The key service's routes: `GET /v2/keys/sync`, `POST /v2/keys/usage` and `/healthz`;
    /// everything else is 404.
    pub fn key_service_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(crate::keyservice::SYNC_PATH, get(Self::key_sync))
            .route(
                layergate_filter::config::DEFAULT_USAGE_PATH,
                post(Self::key_usage_report).layer(RequestBodyLimitLayer::new(USAGE_BODY_BYTES)),
            )
            .route("/healthz", get(Self::healthz))
            .fallback(|req: Request| async move {
                http(error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "the key service has no route {} {}; it serves GET {} and POST {} only",
                        req.method(),
                        req.uri().path(),
                        crate::keyservice::SYNC_PATH,
                        layergate_filter::config::DEFAULT_USAGE_PATH,
                    ),
                ))
            })
            .with_state(self.clone())
    }

    async fn healthz(axum::extract::State(api): axum::extract::State<Arc<Api>>) -> Response {
        http(health(api.source.state()))
    }

    async fn readyz(axum::extract::State(api): axum::extract::State<Arc<Api>>) -> Response {
        http(match api.source.state().last() {
            Some(_) => reply(StatusCode::OK, &json!({"status": "ready"})),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no configuration rendered yet",
            ),
        })
    }

    async fn metrics(axum::extract::State(api): axum::extract::State<Arc<Api>>) -> Response {
        metrics(api.source.state())
    }

    async fn key_sync(
        axum::extract::State(api): axum::extract::State<Arc<Api>>,
        req: Request,
    ) -> Response {
        let bearer = bearer_of(&req);
        let query = req.uri().query().unwrap_or_default();
        key_sync(api.source.state().keys.sync(query, bearer.as_deref()).await)
    }

    /// `POST /v2/keys/usage`: the credential before the body, the body within its cap and the
    /// body timeout, then [`Api::take_usage`] off the async workers.
    async fn key_usage_report(
        axum::extract::State(api): axum::extract::State<Arc<Api>>,
        req: Request,
    ) -> Response {
        let bearer = bearer_of(&req);
        if !api.source.state().keys.accepts(bearer.as_deref()) {
            return close(http(api.take_usage(bearer.as_deref(), &[])));
        }
        let body = match api.read_body(req.into_body(), USAGE_BODY_BYTES).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        off_workers(move || api.take_usage(bearer.as_deref(), &body)).await
    }

    /// A request's body, within `cap` (a route's layer may cut it sooner) and the body
    /// timeout; the refusal otherwise (413 or 408, the connection closed after it).
    async fn read_body(
        &self,
        body: axum::body::Body,
        cap: usize,
    ) -> Result<bytes::Bytes, Response> {
        match tokio::time::timeout(self.limits.body_timeout, axum::body::to_bytes(body, cap)).await
        {
            Ok(Ok(b)) => Ok(b),
            // Over the cap (or the route's layer cut it there) or broken off.
            Ok(Err(_)) => Err(close(too_large())),
            Err(_) => Err(close(http(error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )))),
        }
    }

    /// One `/v2/…` call: the rate limit (before the body), the body (within its cap and the
    /// body timeout), then [`Api::reply`] off the async workers (it touches files and locks).
    async fn answer(self: Arc<Self>, req: Request, call: Call) -> Response {
        let peer = peer_of(&req);
        let (parts, body) = req.into_parts();
        let method = parts.method.as_str().to_owned();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        if call == Call::Authenticate {
            if let Some(limited) = self.rate_limited(&headers, peer) {
                return close(http(limited));
            }
        }
        // The route's layer cuts the body at its cap; the largest cap bounds it here too.
        let body = match self.read_body(body, MINT_BODY_BYTES).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        let api = self.clone();
        off_workers(move || api.reply(call, &method, &path, &headers, &body)).await
    }

    /// Serves `role`'s routes on a bound listener until `stop` completes, on a runtime of its
    /// own (one worker): for a caller without a runtime (the demo, tests). When `stop`
    /// completes the listener and every open connection (held key-service long polls too) are
    /// closed, as when the process dies; tests stop one operator replica and start another on
    /// the same address this way.
    pub fn serve_blocking(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        role: Role,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(self.listen(listener, role, stop))
    }

    /// Binds `addr` and serves `role`'s routes on the current runtime until `stop`.
    pub async fn serve_role(
        self: Arc<Self>,
        addr: SocketAddr,
        role: Role,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let what = match role {
            Role::Control => "control API",
            Role::Keys => "key service",
        };
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the {what} on {addr}"))?;
        self.listen(listener, role, stop).await
    }

    /// Serves `role`'s routes on a bound listener until `stop`: the accept loop, with a
    /// connection budget (one more is answered 503 and closed at once; the key service's is
    /// [`KEY_SERVICE_MAX_CONNECTIONS`], its own, so what clients of the public gateway do to
    /// the control API's listener never takes the capacity the gateways sync through) and the
    /// header timeout (also a kept-alive connection's idle time).
    pub async fn listen(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        role: Role,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let (what, max_connections, router) = match role {
            Role::Control => ("control API", self.limits.max_connections, self.router()),
            Role::Keys => (
                "key service",
                KEY_SERVICE_MAX_CONNECTIONS,
                self.key_service_router(),
            ),
        };
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(addr = %listener.local_addr()?, "{what} listening");
        let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let mut stop = std::pin::pin!(stop);
        let header_timeout = self.limits.header_timeout;
        // Connections end with the loop: when `stop` completes, every one is dropped.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = &mut stop => return Ok(()),
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
            let router = router.clone();
            while connections.try_join_next().is_some() {}
            connections.spawn(async move {
                let _permit = permit;
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        router.clone().oneshot(req.map(axum::body::Body::new))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// The 413 of a body over its route's cap, in the API's JSON shape; the connection is closed
/// after it, so nothing more of that body is read.
fn too_large() -> Response {
    close(http(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "the request body is over this route's limit (authenticate {AUTHENTICATE_BODY_BYTES} bytes, mint {MINT_BODY_BYTES}, usage reports {USAGE_BODY_BYTES}, others {OTHER_BODY_BYTES})"
        ),
    )))
}

/// tower-http answers a declared length over the cap itself, before any handler: in plain
/// text. Give it the API's shape.
async fn json_413(r: Response) -> Response {
    let json = r
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return too_large();
    }
    r
}

/// The key service's answer on the wire (see [`crate::keyservice`]).
fn key_sync(answer: crate::keyservice::Sync) -> Response {
    use crate::keyservice::Sync;
    match answer {
        Sync::Answer(body) => ([("content-type", "application/json")], body).into_response(),
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
