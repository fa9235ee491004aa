//! The cluster's trust: a CA created by the first controller (rcgen, ECDSA P-256 via ring),
//! controller certificates it signs, and the rustls configurations of both listeners.
//!
//! * The **API listener** presents `[controller cert, CA cert]` and asks no client certificate
//!   (clients authenticate with a bearer token).
//! * The **Raft listener** is mTLS: a peer must present a certificate signed by the cluster CA
//!   (`WebPkiClientVerifier`); controllers use their own certificate as the client identity.
//! * A **joining controller** knows only a join token and the CA's hash (`sha256:<hex>` of
//!   the CA certificate's DER). It connects with `PinnedCaVerifier`, which accepts the server
//!   only if the chain it sends contains a certificate with that hash and the leaf verifies
//!   against it, then sends a CSR and receives its certificate (see `api::tokens`).
//!
//! Files in `<data dir>/tls/`: `ca.crt`, `ca.key` (0600), `controller.crt`, `controller.key`
//! (0600). Every controller keeps the CA key so that any of them can admit the next one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use flotilla_pki::provider;
pub use flotilla_pki::{cert_hash, hex, CONTROLLER_CN_PREFIX, NODE_CN_PREFIX};

pub const TLS_DIR: &str = "tls";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CERT: &str = "controller.crt";
const KEY: &str = "controller.key";

/// Why a TLS or CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate operation failed")]
    Cert(#[from] rcgen::Error),
    #[error("malformed pem in {what}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("rustls configuration failed")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Pki(#[from] flotilla_pki::PkiError),
}

/// Write a file readable by its owner only (mode 0600), replacing any old one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Validity from the start of last year for `years` years (no `time` dependency: the year is
/// derived from the wall clock; a year of slack on each side is fine for an internal CA).
fn validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// Subject alternative names for `host:port` addresses and extra names.
pub fn sans_for<'a>(addrs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        let host = match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => a,
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !host.is_empty() && !out.contains(&host) {
            out.push(host);
        }
    }
    out
}

fn san_types(names: &[String]) -> Result<Vec<SanType>, TlsError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect()
}

/// The cluster CA: its certificate and signing key.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA.
    pub fn create(cluster_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cluster_name} cluster ca"));
        dn.push(DnType::OrganizationName, "flotilla");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 10);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "ca certificate",
                source,
            }
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `sha256:<hex>` of the CA certificate, for pinning.
    pub fn hash(&self) -> String {
        cert_hash(&self.cert_der)
    }

    fn leaf_params(common_name: String, sans: &[String]) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = san_types(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "flotilla");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, 5);
        Ok(params)
    }

    /// Issue a key pair and certificate for controller `id` (the bootstrap controller's own).
    pub fn issue(&self, id: u64, sans: &[String]) -> Result<Identity, TlsError> {
        self.issue_named(format!("{CONTROLLER_CN_PREFIX}{id}"), sans)
    }

    /// Issue a key pair and certificate with common name `common_name` (a controller's is
    /// `controller-<id>`; other names, such as future node certificates, are refused by the
    /// Raft listener).
    pub fn issue_named(&self, common_name: String, sans: &[String]) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let cert = Self::leaf_params(common_name, sans)?.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign a CSR for controller `id`. The certificate's names are the CSR's plus `sans`; its
    /// subject, usages and validity are the CA's choice, never the CSR's.
    pub fn sign_csr(&self, csr_pem: &str, id: u64, sans: &[String]) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut names: Vec<String> = sans.to_vec();
        for san in &csr.params.subject_alt_names {
            let n = match san {
                SanType::IpAddress(ip) => ip.to_string(),
                SanType::DnsName(d) => d.as_str().to_owned(),
                _ => continue,
            };
            if !names.contains(&n) {
                names.push(n);
            }
        }
        csr.params = Self::leaf_params(format!("{CONTROLLER_CN_PREFIX}{id}"), &names)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Sign a node's CSR: common name `node-<node_id>`, names exactly `sans` (the node's
    /// advertise address; the CSR's own names are ignored, so a node cannot claim another
    /// host's name). Only the CSR's public key is taken.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        sans: &[String],
    ) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = Self::leaf_params(format!("{NODE_CN_PREFIX}{node_id}"), sans)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Save `ca.crt` and `ca.key` (0600) in `<data_dir>/tls`.
    pub fn save(&self, data_dir: &Path) -> Result<(), TlsError> {
        let dir = tls_dir(data_dir)?;
        write_public(&dir.join(CA_CERT), self.cert_pem.as_bytes())?;
        write_private(&dir.join(CA_KEY), self.key_pem.as_bytes())
    }

    /// Load the CA from `<data_dir>/tls` when its key is there.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        if !dir.join(CA_KEY).exists() {
            return Ok(None);
        }
        Self::from_pem(&read(&dir.join(CA_CERT))?, &read(&dir.join(CA_KEY))?).map(Some)
    }
}

fn tls_dir(data_dir: &Path) -> Result<PathBuf, TlsError> {
    let dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Write {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// A new key pair and a CSR for controller `id` with `sans`; returns (csr pem, key pem).
pub fn generate_csr(id: u64, sans: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = san_types(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("controller-{id}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// A controller's certificate, key and the CA certificate.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    pub fn save(&self, data_dir: &Path) -> Result<(), TlsError> {
        let dir = tls_dir(data_dir)?;
        write_public(&dir.join(CA_CERT), self.ca_pem.as_bytes())?;
        write_public(&dir.join(CERT), self.cert_pem.as_bytes())?;
        write_private(&dir.join(KEY), self.key_pem.as_bytes())
    }

    /// Load the identity from `<data_dir>/tls` when it is there.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        if !dir.join(KEY).exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            ca_pem: read(&dir.join(CA_CERT))?,
            cert_pem: read(&dir.join(CERT))?,
            key_pem: read(&dir.join(KEY))?,
        }))
    }

    fn ca_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|source| TlsError::Pem {
            what: "ca certificate",
            source,
        })
    }

    /// `[leaf, ca]`: the CA goes along so that joining clients can pin it.
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let leaf = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: "certificate",
                source,
            }
        })?;
        Ok(vec![leaf, self.ca_der()?])
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| TlsError::Pem {
            what: "private key",
            source,
        })
    }

    pub fn ca_hash(&self) -> Result<String, TlsError> {
        Ok(cert_hash(&self.ca_der()?))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()?)?;
        Ok(Arc::new(roots))
    }

    /// The API listener: server authentication only.
    pub fn api_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain()?, self.key()?)?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The Raft listener: mTLS, client certificates must chain to the cluster CA and name a
    /// controller.
    pub fn raft_server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let verifier = flotilla_pki::controllers_only(inner, "raft");
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)?;
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(c.into())
    }

    /// Controller-to-controller client: trusts the cluster CA only and presents this
    /// controller's certificate.
    pub fn raft_client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(c)
    }
}

/// A client configuration that trusts exactly the CA with `ca_hash` (`sha256:<hex>`), found in
/// the chain the server sends (`flotilla_pki::PinnedCaVerifier`).
pub fn pinned_client_config(ca_hash: &str) -> Result<ClientConfig, TlsError> {
    Ok(flotilla_pki::pinned_client_config(ca_hash)?)
}

/// A client configuration trusting the CA in `ca_pem` (clients of the API: clusterctl, tests).
pub fn ca_client_config(ca_pem: &str) -> Result<ClientConfig, TlsError> {
    Ok(flotilla_pki::ca_client_config(ca_pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_pki::parse_hash;

    #[test]
    fn a_signed_csr_keeps_the_cas_choices_and_the_requested_names() {
        let ca = ClusterCa::create("t").unwrap();
        let (csr, _key) = generate_csr(7, &["127.0.0.1".into(), "ctl-7".into()]).unwrap();
        let pem = ca.sign_csr(&csr, 7, &["10.1.2.3".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(x.subject().to_string().contains("controller-7"));
        let sans = x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(sans, 3);
        assert!(!x.is_ca());
        let reloaded = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(reloaded.hash(), ca.hash());
        assert!(parse_hash(&ca.hash()).is_ok());
        assert!(parse_hash("sha256:xyz").is_err());
    }
}
