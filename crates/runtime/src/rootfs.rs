//! A minimal root filesystem from a static busybox binary: what the demo,
//! the tests and the benchmarks run containers from.

use std::path::{Path, PathBuf};

/// Where deploy/install-deps.sh puts busybox, unless FLOTILLA_BUSYBOX says otherwise.
pub fn busybox_path() -> PathBuf {
    std::env::var_os("FLOTILLA_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/flotilla/busybox/busybox"))
}

/// Build a busybox rootfs at `dest` (created; must not exist or be empty):
/// the binary, one symlink per applet, /etc/passwd and /etc/group, and the
/// mount point directories.
pub fn build_busybox_rootfs(busybox: &Path, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !busybox.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "busybox not found at {} (run deploy/install-deps.sh or set FLOTILLA_BUSYBOX)",
                busybox.display()
            ),
        ));
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var",
        "run",
    ] {
        std::fs::create_dir_all(dest.join(d))?;
    }
    std::fs::set_permissions(dest.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(busybox, dest.join("bin/busybox"))?;
    std::fs::set_permissions(
        dest.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other("busybox --list-full failed"));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let rel = line.trim().trim_start_matches('/');
        if rel.is_empty() || rel == "bin/busybox" || rel.contains("..") {
            continue;
        }
        let link = dest.join(rel);
        if let Some(p) = link.parent() {
            std::fs::create_dir_all(p)?;
        }
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
    }
    std::fs::write(
        dest.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dest.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}
