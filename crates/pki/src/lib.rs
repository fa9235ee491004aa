//! The cluster's certificate checks shared by controllers and agents (so the agent does not
//! link the controller): the `sha256:<hex>` CA pin, the verifier a joining member uses before
//! it has the CA (`PinnedCaVerifier`), and the client-certificate check that admits only
//! controllers (`controllers_only`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Common name prefix of controller certificates.
pub const CONTROLLER_CN_PREFIX: &str = "controller-";
/// Common name prefix of node (agent) certificates.
pub const NODE_CN_PREFIX: &str = "node-";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("malformed ca cert hash {0:?}: expected sha256:<64 hex digits>")]
    BadHash(String),
    #[error("malformed pem in {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("rustls configuration failed")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every Flotilla TLS configuration uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a DER certificate as `sha256:<hex>`.
pub fn cert_hash(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    format!("sha256:{}", hex(d.as_ref()))
}

/// Check and normalize `sha256:<64 hex>`.
pub fn parse_hash(s: &str) -> Result<String, PkiError> {
    let hex = s
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| PkiError::BadHash(s.to_owned()))?;
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The certificates in `pem` (at least one).
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what,
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

/// The hash of the (first) certificate in `ca_pem`.
pub fn ca_hash(ca_pem: &str) -> Result<String, PkiError> {
    Ok(cert_hash(&certs_from_pem(ca_pem, "ca certificate")?[0]))
}

/// A client configuration trusting the CA certificates in `ca_pem`.
pub fn ca_client_config(ca_pem: &str) -> Result<ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, "ca certificate")? {
        roots.add(c)?;
    }
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// A client configuration that trusts exactly the CA with `ca_hash` (`sha256:<hex>`), found in
/// the chain the server sends: the first contact of a joining member, before it has the CA.
pub fn pinned_client_config(ca_hash: &str) -> Result<ClientConfig, PkiError> {
    let verifier = Arc::new(PinnedCaVerifier {
        hash: parse_hash(ca_hash)?,
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

/// Trust the server when its chain holds the pinned CA and the leaf verifies against it.
#[derive(Debug)]
pub struct PinnedCaVerifier {
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

/// Whether a certificate's common name is a controller's.
pub fn is_controller_cert(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        cert.subject().iter_common_name().any(|cn| {
            cn.as_str()
                .is_ok_and(|s| s.starts_with(CONTROLLER_CN_PREFIX))
        })
    })
}

/// Wrap a client verifier of the cluster CA so that it also requires a controller's common
/// name (`controller-<id>`); `listener` names the listener in the refusal's log line.
pub fn controllers_only(
    inner: Arc<dyn ClientCertVerifier>,
    listener: &'static str,
) -> Arc<dyn ClientCertVerifier> {
    Arc::new(ControllersOnly { inner, listener })
}

#[derive(Debug)]
struct ControllersOnly {
    inner: Arc<dyn ClientCertVerifier>,
    listener: &'static str,
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
            tracing::warn!(
                listener = self.listener,
                "refused a certificate of the cluster ca that names no controller"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_and_normalized() {
        assert!(parse_hash("sha256:xyz").is_err());
        assert!(parse_hash(&"a".repeat(64)).is_err());
        let h = parse_hash(&format!("sha256:{}", "A".repeat(64))).unwrap();
        assert_eq!(h, format!("sha256:{}", "a".repeat(64)));
        let e = parse_hash("md5:00").unwrap_err().to_string();
        assert!(e.contains("md5:00") && e.contains("sha256"), "{e}");
        assert_eq!(
            cert_hash(b"x"),
            "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
        assert!(certs_from_pem("no pem here", "ca certificate").is_err());
    }
}
