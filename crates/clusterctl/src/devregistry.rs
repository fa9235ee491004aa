//! The dev cluster's image registry: Debian's `docker-registry` on the host side of the dev
//! cluster's bridge (inside 198.18.0.0/15), plain HTTP, so every agent host can pull from it.
//! `dev up` starts it and pushes a sample busybox image built by Flotilla's own code from the
//! busybox-static binary that `deploy/install-deps.sh` installs.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_image::registry::{push_oci_layout, RegistryAuth, RegistryOptions};
use flotilla_image::testimage;

/// The registry's port on the bridge address.
pub const PORT: u16 = 5000;

/// Repository and tag of the sample image.
pub const SAMPLE: &str = "flotilla/busybox:latest";

/// A started registry: its address and process.
#[derive(Debug, Clone)]
pub struct DevRegistry {
    /// `ip:port`, what agents are told to pull from over plain HTTP.
    pub addr: String,
    pub pid: u32,
}

/// Start `docker-registry` with its data and log under `dir`, listening on `ip:PORT`, and
/// wait until it answers. The process is in its own process group and outlives the caller.
pub fn start(dir: &Path, ip: IpAddr) -> Result<DevRegistry> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let addr = SocketAddr::new(ip, PORT);
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: {:016x}\n",
        dir.join("data").display(),
        rand_u64()
    );
    let cfg_path = dir.join("config.yml");
    std::fs::write(&cfg_path, config).with_context(|| format!("writing {}", cfg_path.display()))?;
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
    .context("starting docker-registry (installed by deploy/install-deps.sh)")?;
    let reg = DevRegistry {
        addr: addr.to_string(),
        pid: child.id(),
    };
    // Not waited for here: `dev down` ends it by pid (with its start time checked).
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "docker-registry did not listen on {addr} within 15 s (log: {})",
                dir.join("registry.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(reg)
}

impl DevRegistry {
    /// The sample image's reference on this registry.
    pub fn sample_reference(&self) -> String {
        format!("{}/{SAMPLE}", self.addr)
    }

    /// Build the busybox sample image into a layout under `scratch` and push it.
    pub async fn push_sample(&self, scratch: &Path) -> Result<String> {
        let layout: PathBuf = scratch.join("sample-layout");
        let _ = std::fs::remove_dir_all(&layout);
        testimage::build_busybox_oci_layout(&testimage::busybox_path(), &layout, "latest")
            .context("building the sample busybox image")?;
        let reference = self.sample_reference();
        let opts = RegistryOptions {
            auth: RegistryAuth::Anonymous,
            plain_http: true,
            ..Default::default()
        };
        push_oci_layout(&layout, Some("latest"), &reference, &opts)
            .await
            .with_context(|| format!("pushing the sample image to {reference}"))?;
        let _ = std::fs::remove_dir_all(&layout);
        Ok(reference)
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_le_bytes(b)
}
