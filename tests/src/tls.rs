//! A test PKI made at test time: a CA and the server certificates it signs, for TLS devstores
//! ([`crate::devstore::DevStore::start_tls`]) and the operator's probe tests. Nothing is checked
//! in; every run has its own keys.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: Vec<u8>,
}

/// A server certificate (chain: leaf, then the CA) and its private key.
#[derive(Clone)]
pub struct ServerCert {
    /// The leaf certificate, DER.
    pub cert: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub key: Vec<u8>,
}

impl TestCa {
    /// A new CA (`CN=layergate test CA`).
    pub fn new() -> Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "layergate test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (what Envoy's `trusted_ca` file holds).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER (what a rustls root store takes).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Writes the CA certificate as a PEM file in `dir` and returns its path.
    pub fn write_pem(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A server certificate for exactly these names (DNS names, or IP addresses written as
    /// such), signed by this CA. Its subject names no host: only the SANs identify it.
    pub fn server_cert(&self, names: &[&str]) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "layergate test server");
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert: cert.der().to_vec(),
            key: key.serialize_der(),
        })
    }
}

impl ServerCert {
    /// A rustls server configuration presenting this certificate (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone().into()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
