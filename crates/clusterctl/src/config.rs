//! The client configuration: contexts naming a cluster's endpoints, CA certificate and token.
//!
//! Location: `--config`, else `CLUSTERCTL_CONFIG`, else `~/.config/clusterctl/config.yaml`
//! (the platform's config directory). The file holds a token, so it is written with mode 0600.
//!
//! ```yaml
//! current-context: dev
//! contexts:
//!   - name: dev
//!     endpoints: [127.0.0.1:7001, 127.0.0.1:7002]
//!     ca-cert: |
//!       -----BEGIN CERTIFICATE-----
//!       ...
//!     token: abcdef.0123456789abcdef0123456789abcdef
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    pub name: String,
    /// API addresses (host:port) of the cluster's controllers, tried in order.
    pub endpoints: Vec<String>,
    /// PEM of the cluster CA certificate.
    pub ca_cert: String,
    /// Bearer token (`<id>.<secret>`).
    pub token: String,
}

/// Where the configuration lives.
pub fn path(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("CLUSTERCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = directories::BaseDirs::new()
        .context("cannot find the home directory; give --config or CLUSTERCTL_CONFIG")?;
    Ok(base.config_dir().join("clusterctl").join("config.yaml"))
}

impl Config {
    /// Load `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        yaml_serde::from_str(&text)
            .with_context(|| format!("malformed config file {}", path.display()))
    }

    /// Write `path` (0600), through a temporary file.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = yaml_serde::to_string(self).context("cannot encode the config")?;
        let tmp = path.with_extension("yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The context to use: `name`, else the current one.
    pub fn context(&self, name: Option<&str>) -> Result<&Context> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n,
            None if self.contexts.is_empty() => {
                bail!("no context configured; add one with `clusterctl context add`")
            }
            None => bail!("no current context; choose one with `clusterctl context use <name>`"),
        };
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no context named {name:?}"))
    }

    /// Add or replace a context.
    pub fn upsert(&mut self, ctx: Context) {
        match self.contexts.iter_mut().find(|c| c.name == ctx.name) {
            Some(old) => *old = ctx,
            None => self.contexts.push(ctx),
        }
    }
}
