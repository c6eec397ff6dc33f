//! Trust for `https://` upstreams: rustls on ring, the system's root certificates plus the
//! certificates of an optional CA file (`upstream_ca_file`, PEM). The upstream's host name
//! is sent as SNI and checked against its certificate (rustls' verifier; never turned off).
//! Everything that can go wrong here goes wrong at start-up, as a [`UpstreamTlsError`].

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the gateway cannot trust https upstreams as configured.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("upstream_ca_file {path}: cannot be read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("upstream_ca_file {path}: not a PEM certificate file: {reason}")]
    NotPem { path: String, reason: String },
    #[error("upstream_ca_file {path} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)")]
    NoCertificate { path: String },
    #[error("upstream_ca_file {path}: certificate {index} cannot be used as a root: {reason}")]
    BadCertificate {
        path: String,
        index: usize,
        reason: String,
    },
    #[error("no trusted root certificates for the https upstream: the system has none keygate could read; set upstream_ca_file")]
    NoRoots,
    #[error("cannot set up TLS: {0}")]
    Setup(#[from] rustls::Error),
}

/// The certificates of a PEM CA file (other PEM sections, such as a key, are ignored). A
/// file that cannot be read or holds no certificate is an error.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| UpstreamTlsError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpstreamTlsError::NotPem {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(UpstreamTlsError::NoCertificate { path: shown });
    }
    Ok(certificates)
}

/// The rustls client configuration for upstream connections: the certificates of
/// `ca_file`, plus the system's roots when `https_needed` (some upstream is https; for
/// plain-http upstreams they would never be used). With an https upstream, an empty trust
/// store is an error rather than a gateway that can only ever answer 502.
pub fn client_config(
    ca_file: Option<&Path>,
    https_needed: bool,
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        for (index, certificate) in read_ca_file(path)?.into_iter().enumerate() {
            roots
                .add(certificate)
                .map_err(|e| UpstreamTlsError::BadCertificate {
                    path: path.display().to_string(),
                    index: index + 1,
                    reason: e.to_string(),
                })?;
        }
    }
    if https_needed {
        let system = rustls_native_certs::load_native_certs();
        for error in &system.errors {
            tracing::warn!(%error, "some system root certificates could not be loaded");
        }
        let (added, ignored) = roots.add_parsable_certificates(system.certs);
        tracing::debug!(
            added,
            ignored,
            "system root certificates for https upstreams"
        );
        if roots.is_empty() {
            return Err(UpstreamTlsError::NoRoots);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
