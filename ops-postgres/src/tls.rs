//! rustls configuration for tokio-postgres, following libpq's `sslmode` semantics.
//!
//! - `disable`: no TLS (the connector is never used).
//! - `prefer`/`require`: encrypted, the certificate is not verified — unless a root
//!   certificate is given (`sslrootcert`), in which case `require` behaves like
//!   `verify-ca`, as in libpq.
//! - `verify-ca`: the chain must lead to the root certificate; the host name is not
//!   checked.
//! - `verify-full`: chain and host name verified.
//!
//! The root certificate comes from `sslrootcert` (a PEM file, or `system` for the
//! platform's store), else `~/.postgresql/root.crt`. Client certificates come from
//! `sslcert`/`sslkey`. The crypto provider is aws-lc-rs, chosen explicitly so that a
//! process with several rustls providers linked in does not panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ops_core::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConnConfig, SslMode};

/// Builds the TLS connector for `config`.
pub(crate) fn connector(config: &ConnConfig) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("rustls setup failed: {e}")))?;

    let root_source = root_source(config);
    let verifier: Arc<dyn ServerCertVerifier> = match (config.sslmode, root_source) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(NoVerification(provider.signature_verification_algorithms))
        }
        (SslMode::Require | SslMode::VerifyCa, Some(src)) => {
            Arc::new(IgnoreHostName(webpki_verifier(&src, &provider)?))
        }
        (SslMode::VerifyFull, Some(src)) => webpki_verifier(&src, &provider)?,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(Error::invalid(format!(
                "sslmode={} needs a root certificate: set sslrootcert (a PEM file, or \
                 'system' for the system store) or PGSSLROOTCERT, or create \
                 ~/.postgresql/root.crt",
                config.sslmode.as_str()
            )));
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let tls = match (&config.sslcert, &config.sslkey) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::invalid(format!("client certificate rejected: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(tls))
}

/// The root certificate file the connection verifies against (`sslrootcert`, else
/// `~/.postgresql/root.crt` when it exists); `None` for none or the system store.
pub(crate) fn root_file(config: &ConnConfig) -> Option<PathBuf> {
    match root_source(config)? {
        RootSource::File(path) => Some(path),
        RootSource::System => None,
    }
}

enum RootSource {
    System,
    File(PathBuf),
}

fn root_source(config: &ConnConfig) -> Option<RootSource> {
    match config.sslrootcert.as_deref() {
        Some("system") => Some(RootSource::System),
        Some(path) => Some(RootSource::File(PathBuf::from(path))),
        None => {
            let default =
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt"))?;
            default.is_file().then_some(RootSource::File(default))
        }
    }
}

fn webpki_verifier(
    source: &RootSource,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    match source {
        RootSource::System => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        RootSource::File(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| {
                    Error::invalid(format!(
                        "root certificate {} is not usable: {e}",
                        path.display()
                    ))
                })?;
            }
        }
    }
    if roots.is_empty() {
        return Err(Error::invalid(
            "no root certificate found for TLS verification",
        ));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| Error::invalid(format!("TLS verifier setup failed: {e}")))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading certificate {}", path.display()), e))?;
    let certs: std::result::Result<Vec<_>, _> =
        rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs
        .map_err(|e| Error::invalid(format!("certificate {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem =
        std::fs::read(path).map_err(|e| Error::io(format!("reading key {}", path.display()), e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::invalid(format!("key {} is not PEM: {e}", path.display())))?
        .ok_or_else(|| Error::invalid(format!("{} holds no private key", path.display())))
}

/// `sslmode=prefer/require` without a root certificate: encrypted, not authenticated.
/// Handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is verified, a name mismatch is accepted.
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
