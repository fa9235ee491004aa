//! The node's identity: joined once with a join token, then kept in `<root>/cluster/`
//! (`identity.json` and `node.key` mode 0600, `node.crt`, `ca.crt`) and reused on restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_api::cluster::Capacity;
use flotilla_api::rest::{NodeJoinRequest, NodeJoinResponse};
use serde::{Deserialize, Serialize};

use super::client::{ControllerClient, Refused};
use super::tls;

/// What `identity.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityFile {
    pub node_id: String,
    pub address: String,
    pub controllers: Vec<String>,
    pub api_token: String,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
}

/// The node's identity with its key material.
#[derive(Clone)]
pub struct NodeIdentity {
    pub file: IdentityFile,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.file.node_id)
            .finish_non_exhaustive()
    }
}

/// How to join when there is no identity yet.
pub struct JoinArgs {
    pub url: String,
    pub token: String,
    pub ca_cert_hash: String,
}

pub fn dir(root: &Path) -> PathBuf {
    root.join("cluster")
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

impl NodeIdentity {
    /// The identity saved under `root`, if any.
    pub fn load(root: &Path) -> Result<Option<Self>> {
        let d = dir(root);
        let path = d.join("identity.json");
        if !path.exists() {
            return Ok(None);
        }
        let read = |n: &str| {
            std::fs::read_to_string(d.join(n))
                .with_context(|| format!("cannot read {}", d.join(n).display()))
        };
        let file: IdentityFile = serde_json::from_str(&read("identity.json")?)
            .with_context(|| format!("malformed {}", path.display()))?;
        Ok(Some(Self {
            file,
            ca_pem: read("ca.crt")?,
            cert_pem: read("node.crt")?,
            key_pem: read("node.key")?,
        }))
    }

    /// Write the key material first and `identity.json` last: its presence means complete.
    pub fn save(&self, root: &Path) -> Result<()> {
        let d = dir(root);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        write_private(&d.join("node.key"), self.key_pem.as_bytes())?;
        write_private(&d.join("node.crt"), self.cert_pem.as_bytes())?;
        write_private(&d.join("ca.crt"), self.ca_pem.as_bytes())?;
        write_private(
            &d.join("identity.json"),
            &serde_json::to_vec_pretty(&self.file)?,
        )
    }

    /// Join through `args.url` (CA pinned by hash) and return the new identity.
    pub async fn join(
        args: &JoinArgs,
        node_id: &str,
        advertise: SocketAddr,
        labels: BTreeMap<String, String>,
        capacity: Capacity,
        features: BTreeMap<String, String>,
    ) -> Result<Self> {
        let (csr, key_pem) = tls::generate_csr(node_id, advertise.ip())?;
        let client = ControllerClient::new(
            tls::pinned_client_config(&args.ca_cert_hash)?,
            vec![args.url.trim_end_matches('/').to_owned()],
            None,
        )?;
        let body = NodeJoinRequest {
            token: args.token.clone(),
            node_id: node_id.to_owned(),
            address: advertise.to_string(),
            labels,
            capacity,
            features,
            csr,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let resp: NodeJoinResponse = loop {
            match client
                .call(
                    reqwest::Method::POST,
                    "/v1/nodes/join",
                    Some(&body),
                    Duration::from_secs(30),
                )
                .await
            {
                Ok(r) => break r,
                Err(e) => {
                    if let Some(r) = e.downcast_ref::<Refused>() {
                        bail!("{} refused the join: {r}", args.url);
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(
                            e.context(format!("could not join through {} within 60 s", args.url))
                        );
                    }
                    tracing::warn!(error = %e, via = %args.url, "join failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        tls::check_pin(&resp.ca_certificate, &args.ca_cert_hash)?;
        let mut controllers = resp.controllers.clone();
        if controllers.is_empty() {
            controllers.push(args.url.trim_end_matches('/').to_owned());
        }
        Ok(Self {
            file: IdentityFile {
                node_id: resp.node_id,
                address: advertise.to_string(),
                controllers,
                api_token: resp.api_token,
                heartbeat_interval_ms: resp.heartbeat_interval_ms.max(100),
                lease_ttl_ms: resp.lease_ttl_ms,
            },
            ca_pem: resp.ca_certificate,
            cert_pem: resp.certificate,
            key_pem,
        })
    }
}
