//! Store probes (SPEC §7): `GET {endpoint}/v1/namespaces?page_size=1` with the store's
//! credential, bounded by a timeout, a few at a time. `reachable` means the store answered at
//! all; `Ready` needs a 2xx. TLS uses rustls with the Mozilla roots (webpki-roots); plain HTTP is
//! only ever used for loopback endpoints (validation refuses it elsewhere).
//!
//! The probe sends the store credential, so it holds to the gateway's rule (SPEC §7, issue 11):
//! the certificate must chain to a trusted root **and** name the endpoint's host (rustls checks
//! the DNS name, or the IP address, against the certificate's subject alternative names). A
//! certificate for another host fails the handshake, and the credential is never written.

use crate::conditions::{condition, reason, READY};
use crate::validate::{StoreEndpoint, ValidStore};
use bytes::Bytes;
use http_body_util::Empty;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::sync::Arc;
use std::time::Duration;

/// Default probe timeout (connect, TLS and answer together).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes in flight at once.
pub const MAX_CONCURRENT: usize = 4;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The store answered with this status.
    Answered(u16),
    /// No answer: why.
    Unreachable(String),
}

impl ProbeResult {
    /// True when the store answered at all (`status.reachable`).
    pub fn reachable(&self) -> bool {
        matches!(self, ProbeResult::Answered(_))
    }

    /// The `Ready` condition for a valid store with this probe result.
    pub fn condition(&self, store: &str, generation: Option<i64>, now: i64) -> Condition {
        match self {
            ProbeResult::Answered(s) if (200..300).contains(s) => {
                condition(READY, true, reason::VALID, format!("valid, and the store answered the probe with {s}"), generation, now)
            }
            ProbeResult::Answered(s @ (401 | 403)) => condition(
                READY,
                false,
                reason::UNAUTHORIZED,
                format!("the store refused the credential of VectorStore {store:?} ({s}); check the Secret it references"),
                generation,
                now,
            ),
            ProbeResult::Answered(s) => {
                condition(READY, false, reason::UNHEALTHY, format!("the store answered the probe with {s}"), generation, now)
            }
            ProbeResult::Unreachable(why) => {
                condition(READY, false, reason::UNREACHABLE, format!("the store did not answer the probe: {why}"), generation, now)
            }
        }
    }
}

/// The roots a probe's TLS handshake trusts: the Mozilla roots (webpki-roots) in production;
/// tests, or a store behind a private CA, add their own.
#[derive(Clone)]
pub struct Trust(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trust")
    }
}

impl Default for Trust {
    /// The Mozilla roots.
    fn default() -> Trust {
        Trust(tls_config(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }))
    }
}

impl Trust {
    /// Trusts exactly these CA certificates (DER), instead of the Mozilla roots.
    pub fn only(cas: &[Vec<u8>]) -> Result<Trust, String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in cas {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        Ok(Trust(tls_config(roots)))
    }
}

fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this branch is unreachable in
        // practice, and an empty-roots config fails every handshake (fail closed).
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

async fn request(endpoint: &StoreEndpoint, credential: &str, trust: &Trust) -> Result<u16, String> {
    let host = endpoint
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = hyper::Request::get("/v1/namespaces?page_size=1")
        .header("host", &endpoint.host)
        .header("authorization", format!("Bearer {credential}"))
        .header("user-agent", "layergate-operator-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    macro_rules! send {
        ($io:expr) => {{
            let (mut sender, conn) = hyper::client::conn::http1::handshake($io)
                .await
                .map_err(|e| format!("http: {e}"))?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("http: {e}"))?;
            Ok(resp.status().as_u16())
        }};
    }
    if endpoint.tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("server name: {e}"))?;
        // The name the certificate must carry: the endpoint's host (rustls verifies it).
        let tls = tokio_rustls::TlsConnector::from(trust.0.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send!(hyper_util::rt::TokioIo::new(tls))
    } else {
        send!(hyper_util::rt::TokioIo::new(tcp))
    }
}

/// Probes one store, trusting the Mozilla roots.
pub async fn probe(endpoint: &StoreEndpoint, credential: &str, timeout: Duration) -> ProbeResult {
    probe_trusting(endpoint, credential, timeout, &Trust::default()).await
}

/// Probes one store, trusting the given roots.
pub async fn probe_trusting(
    endpoint: &StoreEndpoint,
    credential: &str,
    timeout: Duration,
    trust: &Trust,
) -> ProbeResult {
    match tokio::time::timeout(timeout, request(endpoint, credential, trust)).await {
        Ok(Ok(status)) => ProbeResult::Answered(status),
        Ok(Err(why)) => ProbeResult::Unreachable(why),
        Err(_) => ProbeResult::Unreachable(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Probes every store, at most [`MAX_CONCURRENT`] at a time; results in the stores' order.
pub async fn probe_all(stores: &[ValidStore], timeout: Duration) -> Vec<(String, ProbeResult)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let (limit, endpoint, credential, name) = (
                limit.clone(),
                s.endpoint.clone(),
                s.credential.clone(),
                s.name.clone(),
            );
            tokio::spawn(async move {
                let _permit = limit.acquire().await;
                (name, probe(&endpoint, &credential, timeout).await)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}
