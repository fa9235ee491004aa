//! The agent's TLS: CA pinning for the join, trust of the cluster CA afterwards, its key and
//! CSR, and the mTLS server configuration of its API for controllers. The certificate checks
//! themselves are `flotilla_pki`'s, shared with the controller.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use flotilla_pki::provider;
pub use flotilla_pki::{cert_hash, is_controller_cert, CONTROLLER_CN_PREFIX};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Check and normalize `sha256:<64 hex>`.
pub fn parse_hash(s: &str) -> Result<String> {
    flotilla_pki::parse_hash(s).context("--ca-cert-hash")
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
    flotilla_pki::pinned_client_config(&parse_hash(hash)?).context("pinned tls configuration")
}

/// Client configuration trusting the cluster CA (every call after the join).
pub fn ca_client_config(ca_pem: &str) -> Result<ClientConfig> {
    flotilla_pki::ca_client_config(ca_pem).context("cluster ca tls configuration")
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
        .with_client_cert_verifier(flotilla_pki::controllers_only(inner, "agent api"))
        .with_single_cert(vec![leaf, ca_der(ca_pem)?], key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
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
