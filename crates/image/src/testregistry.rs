//! A throw-away Debian `docker-registry` on `127.0.0.1:<free port>` for tests and benchmarks,
//! with its own configuration and storage in a private temporary directory; optional htpasswd
//! basic auth, bearer-token auth and TLS with a self-signed CA. Killed by PID and its directory
//! removed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{RegistryAuth, RegistryOptions};

/// Token authentication settings for the registry (`auth: token:`).
#[derive(Clone, Debug)]
pub struct TokenAuthConfig {
    /// URL of the token endpoint.
    pub realm: String,
    /// Service name (the token's audience).
    pub service: String,
    /// Token issuer.
    pub issuer: String,
    /// PEM certificate(s) whose keys sign tokens.
    pub root_cert_pem: String,
}

/// What kind of registry to start.
#[derive(Clone, Debug, Default)]
pub struct TestRegistryConfig {
    /// htpasswd users (bcrypt-hashed here).
    pub basic_users: Vec<(String, String)>,
    /// Serve HTTPS with a fresh self-signed CA.
    pub tls: bool,
    /// Bearer-token auth.
    pub token: Option<TokenAuthConfig>,
    /// Listen here instead of `127.0.0.1` (e.g. the host side of a test cluster's bridge,
    /// inside 198.18.0.0/15, so agents in their own network namespaces can pull).
    pub bind_ip: Option<std::net::IpAddr>,
}

/// A running registry.
pub struct TestRegistry {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:<port>` (or `bind_ip:<port>`).
    pub addr: String,
    /// PEM of the CA that signed the server certificate, when TLS is on.
    pub ca_pem: Option<String>,
}

/// A unique private temporary directory, removed by the owner.
pub fn temp_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir(&p)?;
    Ok(p)
}

fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// A self-signed CA and a server certificate for `127.0.0.1` and `localhost` signed by it:
/// (ca_pem, cert_pem, key_pem).
pub fn self_signed_ca_and_server() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flotilla test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

impl TestRegistry {
    /// Starts a plain-HTTP anonymous registry.
    pub fn start_plain() -> std::io::Result<Self> {
        Self::start(&TestRegistryConfig::default())
    }

    /// Starts a registry as configured and waits until it answers.
    pub fn start(cfg: &TestRegistryConfig) -> std::io::Result<Self> {
        let dir = temp_dir("flotilla-registry")?;
        let mut reg = Self {
            child: None,
            dir: dir.clone(),
            addr: String::new(),
            ca_pem: None,
        };
        let mut auth = String::new();
        if !cfg.basic_users.is_empty() {
            let mut lines = String::new();
            for (u, p) in &cfg.basic_users {
                let h = bcrypt::hash_with_result(p, 4).map_err(|e| err(format!("bcrypt: {e}")))?;
                lines.push_str(&format!(
                    "{u}:{}\n",
                    h.format_for_version(bcrypt::Version::TwoY)
                ));
            }
            std::fs::write(dir.join("htpasswd"), lines)?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        if let Some(t) = &cfg.token {
            std::fs::write(dir.join("token-root.pem"), &t.root_cert_pem)?;
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                dir.join("token-root.pem").display()
            );
        }
        let mut tls = String::new();
        if cfg.tls {
            let (ca, cert, key) =
                self_signed_ca_and_server().map_err(|e| err(format!("rcgen: {e}")))?;
            std::fs::write(dir.join("server.pem"), cert)?;
            std::fs::write(dir.join("server.key"), key)?;
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
            reg.ca_pem = Some(ca);
        }
        let mut last_err = None;
        for _attempt in 0..5 {
            let ip = cfg
                .bind_ip
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            let port = free_port(ip)?;
            let addr = std::net::SocketAddr::new(ip, port).to_string();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: {:016x}\n{tls}{auth}",
                dir.join("data").display(),
                rand::random::<u64>()
            );
            let cfg_path = dir.join("config.yml");
            std::fs::write(&cfg_path, config)?;
            let log = std::fs::File::create(dir.join("registry.log"))?;
            let child = std::os::unix::process::CommandExt::process_group(
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&cfg_path)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log),
                0,
            )
            .spawn()
            .map_err(|e| {
                err(format!(
                    "starting docker-registry (is it installed? deploy/install-deps.sh): {e}"
                ))
            })?;
            reg.child = Some(child);
            reg.addr = addr;
            match reg.wait_ready(Duration::from_secs(15)) {
                Ok(()) => {
                    tracing::info!(addr = %reg.addr, tls = cfg.tls, "test registry ready");
                    return Ok(reg);
                }
                Err(e) => {
                    reg.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| err("registry did not start")))
    }

    fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
                    return Err(err(format!("docker-registry exited with {status}: {log}")));
                }
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                if self.ca_pem.is_some() {
                    // TLS: listening is enough; the handshake is exercised by the test itself.
                    return Ok(());
                }
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n]);
                if line.starts_with("HTTP/1.0 200")
                    || line.starts_with("HTTP/1.1 200")
                    || line.contains(" 401 ")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err(format!(
            "registry on {} not ready after {timeout:?}",
            self.addr
        )))
    }

    /// `127.0.0.1:<port>/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Connection options for this registry (plain HTTP unless TLS, then trusting its CA).
    pub fn options(&self, auth: RegistryAuth) -> RegistryOptions {
        RegistryOptions {
            auth,
            plain_http: self.ca_pem.is_none(),
            ca_pem: self.ca_pem.as_ref().map(|c| c.as_bytes().to_vec()),
            timeout: None,
        }
    }

    /// The registry's private directory (config, storage, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The registry's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
