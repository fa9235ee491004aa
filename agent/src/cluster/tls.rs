//! The agent's TLS: CA pinning for the join, trust of the cluster CA afterwards, its key and
//! CSR, and the mTLS server configuration of its API for controllers.
//!
//! The pinned verifier is the controller's (`flotilla_controller::tls::PinnedCaVerifier`),
//! repeated here so that the agent does not link the controller.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Common name prefix of controller certificates: the only clients of the agent's TLS API.
pub const CONTROLLER_CN_PREFIX: &str = "controller-";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a DER certificate.
pub fn cert_hash(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Check and normalize `sha256:<64 hex>`.
pub fn parse_hash(s: &str) -> Result<String> {
    let hex = s
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("--ca-cert-hash {s:?}: expected sha256:<64 hex digits>"))?;
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn ca_der(ca_pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("malformed ca certificate")
}

/// The hash of the CA certificate in `ca_pem`.
pub fn ca_hash(ca_pem: &str) -> Result<String> {
    Ok(cert_hash(&ca_der(ca_pem)?))
}

/// A new P-256 key and a CSR with common name `node-<id>`; (csr pem, key pem).
pub fn generate_csr(node_id: &str, ip: std::net::IpAddr) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("node-{node_id}"));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .context("cannot make the csr")?;
    Ok((
        csr.pem().context("cannot encode the csr")?,
        key.serialize_pem(),
    ))
}

/// Client configuration trusting exactly the CA with `hash`, found in the server's chain
/// (the first contact, before the agent has the CA).
pub fn pinned_client_config(hash: &str) -> Result<ClientConfig> {
    let verifier = Arc::new(PinnedCaVerifier {
        hash: parse_hash(hash)?,
        provider: provider(),
    });
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// Client configuration trusting the cluster CA (every call after the join).
pub fn ca_client_config(ca_pem: &str) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der(ca_pem)?)?;
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// The agent's TLS API: presents the node certificate, requires a client certificate of the
/// cluster CA whose common name is `controller-<n>`.
pub fn api_server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der(ca_pem)?)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("cannot build the client verifier")?;
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .context("malformed node certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("malformed node key")?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(ControllersOnly { inner }))
        .with_single_cert(vec![leaf, ca_der(ca_pem)?], key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Whether a certificate's common name is a controller's.
pub fn is_controller_cert(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        cert.subject().iter_common_name().any(|cn| {
            cn.as_str()
                .is_ok_and(|s| s.starts_with(CONTROLLER_CN_PREFIX))
        })
    })
}

#[derive(Debug)]
struct ControllersOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ControllersOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !is_controller_cert(end_entity) {
            tracing::warn!("agent api refused a cluster certificate that names no controller");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trust the server when its chain holds the pinned CA and the leaf verifies against it.
#[derive(Debug)]
struct PinnedCaVerifier {
    hash: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| cert_hash(c) == self.hash)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuse a CA that does not match the pin (the join answer carries the CA).
pub fn check_pin(ca_pem: &str, pin: &str) -> Result<()> {
    if ca_hash(ca_pem)? != parse_hash(pin)? {
        bail!("the join answer's ca does not match --ca-cert-hash");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_and_csrs_name_the_node() {
        assert!(parse_hash("sha256:xyz").is_err());
        assert!(parse_hash(&format!("sha256:{}", "A".repeat(64))).is_ok());
        let (csr, key) = generate_csr("n1", "198.18.0.5".parse().unwrap()).unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST"), "{csr}");
        assert!(key.contains("PRIVATE KEY"));
    }
}
