//! Checkpoint and restore with CRIU, driven through its command line (the
//! same binary and flags runc uses; see /work/shared/criu.md). The network
//! namespace is always external (joined by path on restore), cgroups are the
//! runtime's job (`--manage-cgroups=ignore`), and the container's stdio pipes
//! to its shim are handed over with `--inherit-fd`.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// File in the image directory describing what the restore needs.
pub const META_FILE: &str = "flotilla-checkpoint.json";

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found at {0} (run deploy/install-deps.sh or set FLOTILLA_CRIU)")]
    NotFound(PathBuf),
    #[error("running {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// CRIU failed; the message carries the relevant lines of its log.
    #[error("criu {op} failed (exit {code:?}); log {log}:\n{lines}")]
    Failed {
        op: &'static str,
        code: Option<i32>,
        log: PathBuf,
        lines: String,
    },
}

/// Where to find CRIU: FLOTILLA_CRIU, then the path deploy/install-deps.sh
/// recorded, then `criu` on PATH.
pub fn default_criu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_CRIU") {
        return PathBuf::from(p);
    }
    if let Ok(s) = std::fs::read_to_string("/opt/flotilla/criu.path") {
        let p = PathBuf::from(s.trim());
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("criu")
}

/// CRIU's version and the kernel features the migration strategy depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuInfo {
    pub path: PathBuf,
    pub version: String,
    /// Soft-dirty tracking: pre-copy (iterative pre-dump) is possible.
    pub mem_dirty_track: bool,
    pub uffd: bool,
    /// Lazy pages (post-copy) need non-cooperative userfaultfd.
    pub uffd_noncoop: bool,
    pub network_lock_nftables: bool,
    pub timens: bool,
}

pub fn info(criu: &Path) -> Result<CriuInfo, CriuError> {
    let out = Command::new(criu)
        .arg("--version")
        .output()
        .map_err(|e| spawn_err(criu, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let feature = |name: &str| -> bool {
        Command::new(criu)
            .args(["check", "--feature", name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    Ok(CriuInfo {
        path: criu.to_path_buf(),
        version,
        mem_dirty_track: feature("mem_dirty_track"),
        uffd: feature("uffd"),
        uffd_noncoop: feature("uffd-noncoop"),
        network_lock_nftables: feature("network_lock_nftables"),
        timens: feature("timens"),
    })
}

fn spawn_err(criu: &Path, e: std::io::Error) -> CriuError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CriuError::NotFound(criu.to_path_buf())
    } else {
        CriuError::Spawn {
            what: criu.display().to_string(),
            source: e,
        }
    }
}

/// What a restore needs beyond CRIU's images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub id: String,
    pub config: crate::config::ContainerConfig,
    pub lower_dirs: Vec<PathBuf>,
    /// Targets of the init's fds 0-2 at dump time ("pipe:[123]", "/dev/null").
    pub descriptors: Vec<String>,
    pub tcp_established: bool,
    pub created_at_ms: u64,
    /// Masked directories were dumped as the external mount
    /// [`EXT_MASKED`]: the restore binds a fresh empty read-only tmpfs.
    #[serde(default)]
    pub masked_external: bool,
    /// The v1 cgroup tmpfs was dumped as the external mount
    /// [`EXT_CGROUPFS`]; the restore binds a fresh one holding these
    /// directories (the hierarchies' mountpoints).
    #[serde(default)]
    pub cgroupfs_external: Option<Vec<String>>,
    /// CRIU ran inside the container's network namespace, so the namespace
    /// is not in the images (CRIU dumps and restores a namespace only when
    /// the task's differs from its own), and the runtime held the network
    /// lock ([`crate::netlock`], `--network-lock skip`). The restore runs
    /// CRIU inside the namespace at the container's netns path too.
    #[serde(default)]
    pub criu_in_netns: bool,
    /// `/dev` and `/dev/shm`, dumped as external mounts and recorded by the
    /// runtime ([`crate::ext_tmpfs`]).
    #[serde(default)]
    pub ext_tmpfs: Vec<crate::ext_tmpfs::ExtTmpfs>,
}

/// External-mount keys for tmpfs that hold nothing worth archiving: the
/// runtime recreates them on restore instead of CRIU tar-ing and untar-ing
/// them (each costs a tar and a gzip process, ~10 ms, on dump and restore).
pub const EXT_MASKED: &str = "flotilla-masked";
pub const EXT_CGROUPFS: &str = "flotilla-cgroupfs";

/// The lines of a CRIU log worth showing: errors, with the rlimit warning
/// every run prints here (no CAP_SYS_RESOURCE) left out.
pub fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("BUG"))
        .filter(|l| !l.contains("Can't setup RLIMIT_NOFILE"))
        .collect();
    let tail = if lines.len() > 12 {
        &lines[lines.len() - 12..]
    } else {
        &lines[..]
    };
    if tail.is_empty() {
        // No error lines: show the end of the log instead.
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(8)..].join("\n")
    } else {
        tail.join("\n")
    }
}

pub struct DumpArgs<'a> {
    pub criu: &'a Path,
    pub pid: i32,
    pub images: &'a Path,
    pub rootfs: &'a Path,
    pub netns: Option<&'a Path>,
    pub tcp_established: bool,
    pub after: crate::runtime::AfterCheckpoint,
    /// (mountpoint inside the container, key) dumped as external mounts.
    pub externals: &'a [(String, String)],
}

/// Dump the tasks. With a network namespace, CRIU runs inside it (it then
/// neither dumps the namespace nor walks the global conntrack table for it,
/// ~30 ms) and does not lock it: the caller holds [`crate::netlock`]'s lock.
pub fn dump(a: &DumpArgs) -> Result<(), CriuError> {
    let mut cmd = Command::new(a.criu);
    cmd.arg("dump")
        .arg("-t")
        .arg(a.pid.to_string())
        .arg("-D")
        .arg(a.images)
        .args(["-o", "dump.log", "-v4"])
        .arg("--root")
        .arg(a.rootfs)
        .arg("--manage-cgroups=ignore")
        .arg("--file-locks");
    let ns_file = match a.netns {
        Some(ns) => Some(std::fs::File::open(ns).map_err(|e| CriuError::Spawn {
            what: format!("opening {}", ns.display()),
            source: e,
        })?),
        None => None,
    };
    match &ns_file {
        Some(f) => {
            cmd.args(["--network-lock", "skip"]);
            enter_netns_before_exec(&mut cmd, f.as_raw_fd());
        }
        None => {
            cmd.args(["--network-lock", "nftables"]);
        }
    }
    for (mp, key) in a.externals {
        cmd.arg("--external").arg(format!("mnt[{mp}]:{key}"));
    }
    if a.tcp_established {
        cmd.arg("--tcp-established");
    }
    match a.after {
        crate::runtime::AfterCheckpoint::Kill => {}
        crate::runtime::AfterCheckpoint::Stop => {
            cmd.arg("--leave-stopped");
        }
        crate::runtime::AfterCheckpoint::Run => {
            cmd.arg("--leave-running");
        }
    }
    let out = cmd.output().map_err(|e| spawn_err(a.criu, e))?;
    drop(ns_file);
    if out.status.success() {
        return Ok(());
    }
    let log = a.images.join("dump.log");
    Err(CriuError::Failed {
        op: "dump",
        code: out.status.code(),
        lines: log_errors(&log),
        log,
    })
}

/// Make the command's child join the network namespace open at `fd` before
/// it executes (the fd must stay open until the command is spawned).
pub fn enter_netns_before_exec(cmd: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setns is async-signal-safe; the child is single-threaded.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What `criu restore` needs; fds 3 (netns), 4 and 5 (new stdout and stderr
/// pipes) must be open in the child as named here.
pub struct RestoreArgs<'a> {
    pub images: &'a Path,
    pub work: &'a Path,
    pub rootfs: &'a Path,
    /// The external network namespace is handed over as fd 3.
    pub netns: bool,
    /// The checkpoint has [`CheckpointMeta::criu_in_netns`]: CRIU runs
    /// inside the namespace and the runtime holds the network lock.
    pub criu_in_netns: bool,
    pub stdio_keys: &'a [(i32, String)],
    pub pidfile: &'a Path,
    pub tcp_established: bool,
    /// (key, host path) of external mounts.
    pub externals: &'a [(String, PathBuf)],
}

/// Arguments for `criu restore`.
pub fn restore_args(a: &RestoreArgs) -> Vec<String> {
    let RestoreArgs {
        images,
        work,
        rootfs,
        netns,
        criu_in_netns,
        stdio_keys,
        pidfile,
        tcp_established,
        externals,
    } = *a;
    let mut v: Vec<String> = vec![
        "restore".into(),
        "-D".into(),
        images.display().to_string(),
        "-W".into(),
        work.display().to_string(),
        "-o".into(),
        "restore.log".into(),
        "-v4".into(),
        "--root".into(),
        rootfs.display().to_string(),
        "--manage-cgroups=ignore".into(),
        // CRIU restores with the dump's lock method (the inventory's); said
        // here for readers of the command line.
        "--network-lock".into(),
        if criu_in_netns { "skip" } else { "nftables" }.into(),
        "--file-locks".into(),
        // The restored init becomes the caller's child, so the shim can wait for it.
        "--restore-sibling".into(),
        "--restore-detached".into(),
        "--pidfile".into(),
        pidfile.display().to_string(),
    ];
    if netns {
        v.push("--inherit-fd".into());
        v.push("fd[3]:extRootNetNS".into());
    }
    for (fd, key) in stdio_keys {
        v.push("--inherit-fd".into());
        v.push(format!("fd[{fd}]:{key}"));
    }
    for (key, path) in externals {
        v.push("--external".into());
        v.push(format!("mnt[{key}]:{}", path.display()));
    }
    if tcp_established {
        v.push("--tcp-established".into());
    }
    v
}

/// The container's tmpfs mounts that need no archive (see [`EXT_MASKED`]),
/// from its mountinfo: (mountpoint, key) pairs, and the directories of the
/// v1 cgroup tmpfs when it is one of them.
pub fn tmpfs_externals(
    mountinfo: &str,
    masked: &[PathBuf],
    cgroup_dests: &[PathBuf],
) -> (Vec<(String, String)>, Option<Vec<String>>) {
    let mut out = vec![];
    let mut cgroupfs: Option<(String, Vec<String>)> = None;
    let mut points: Vec<String> = vec![];
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let (Some(root), Some(mp)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let mp = crate::sys::unescape_mountinfo(mp);
        points.push(mp.clone());
        // A whole tmpfs, not a bind of a file in one (masked files are binds
        // of /dev/null and stay with /dev).
        if post.split(' ').next() != Some("tmpfs") || *root != "/" {
            continue;
        }
        let p = Path::new(&mp);
        if masked.iter().any(|m| m == p) {
            out.push((mp, EXT_MASKED.to_string()));
        } else if cgroup_dests.iter().any(|d| d == p) {
            cgroupfs = Some((mp, vec![]));
        }
    }
    let cgroupfs = cgroupfs.map(|(mp, mut dirs)| {
        for p in &points {
            if let Some(name) = Path::new(p)
                .strip_prefix(&mp)
                .ok()
                .filter(|r| r.components().count() == 1)
            {
                dirs.push(name.to_string_lossy().into_owned());
            }
        }
        out.push((mp, EXT_CGROUPFS.to_string()));
        dirs
    });
    (out, cgroupfs)
}

/// Remove the network lock from a namespace: after a failed dump or
/// restore (CRIU leaves its own, criu issue 2828) and after a dump that
/// leaves the container running. The runtime's lock is the
/// [`crate::netlock::TABLE`] table; a checkpoint taken with CRIU's
/// `--network-lock nftables` left one `inet CRIU-<id>` table.
pub fn remove_network_lock(netns: &Path) {
    if let Err(e) = crate::netlock::unlock(netns) {
        tracing::warn!(netns = %netns.display(), error = %e, "removing the network lock");
    }
    let ns_arg = format!("--net={}", netns.display());
    let Ok(out) = Command::new("nsenter")
        .args([ns_arg.as_str(), "nft", "list", "tables"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = line.split_whitespace();
        if let (Some("table"), Some(family), Some(name)) = (it.next(), it.next(), it.next()) {
            if name.starts_with("CRIU") {
                let _ = Command::new("nsenter")
                    .args([ns_arg.as_str(), "nft", "delete", "table", family, name])
                    .output();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_args_map_stdio_and_netns() {
        let a = restore_args(&RestoreArgs {
            images: Path::new("/img"),
            work: Path::new("/w"),
            rootfs: Path::new("/r"),
            netns: true,
            criu_in_netns: false,
            stdio_keys: &[(4, "pipe:[1]".into()), (5, "pipe:[2]".into())],
            pidfile: Path::new("/w/pid"),
            tcp_established: true,
            externals: &[(EXT_MASKED.to_string(), PathBuf::from("/x/masked"))],
        });
        let s = a.join(" ");
        assert!(s.contains("--inherit-fd fd[3]:extRootNetNS"), "{s}");
        assert!(s.contains("--network-lock nftables"), "{s}");
        // A checkpoint taken inside the netns: no fd handed over, our lock.
        let a = restore_args(&RestoreArgs {
            images: Path::new("/img"),
            work: Path::new("/w"),
            rootfs: Path::new("/r"),
            netns: false,
            criu_in_netns: true,
            stdio_keys: &[],
            pidfile: Path::new("/w/pid"),
            tcp_established: false,
            externals: &[],
        });
        let s2 = a.join(" ");
        assert!(!s2.contains("extRootNetNS"), "{s2}");
        assert!(s2.contains("--network-lock skip"), "{s2}");
        assert!(
            s.contains("--inherit-fd fd[4]:pipe:[1] --inherit-fd fd[5]:pipe:[2]"),
            "{s}"
        );
        assert!(s.contains("--tcp-established"));
        assert!(s.contains("--restore-sibling"));
        assert!(s.contains("--manage-cgroups=ignore"));
        assert!(
            s.contains("--external mnt[flotilla-masked]:/x/masked"),
            "{s}"
        );
    }

    #[test]
    fn tmpfs_externals_pick_masked_dirs_and_the_cgroup_tmpfs() {
        let mi = "\
60 59 0:50 / / ro,relatime - overlay overlay rw
61 60 0:51 / /dev rw,nosuid - tmpfs tmpfs rw,mode=755
62 60 0:52 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs rw,mode=755
63 62 0:30 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
64 62 0:31 / /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu
65 60 0:53 / /proc/acpi ro,relatime - tmpfs tmpfs ro,size=0k,mode=000
66 60 0:53 / /sys/firmware ro,relatime - tmpfs tmpfs ro,size=0k,mode=000
67 60 0:51 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,mode=755
";
        let masked: Vec<PathBuf> = ["/proc/acpi", "/sys/firmware", "/proc/kcore"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let (ext, cg) = tmpfs_externals(mi, &masked, &[PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(
            ext,
            vec![
                ("/proc/acpi".to_string(), EXT_MASKED.to_string()),
                ("/sys/firmware".to_string(), EXT_MASKED.to_string()),
                ("/sys/fs/cgroup".to_string(), EXT_CGROUPFS.to_string()),
            ]
        );
        assert_eq!(cg, Some(vec!["memory".to_string(), "cpu".to_string()]));
        // The /dev/null binds over masked files stay with /dev (archived).
        let (ext, cg) = tmpfs_externals(mi, &[], &[]);
        assert!(ext.is_empty() && cg.is_none());
    }

    #[test]
    fn log_errors_skip_the_rlimit_noise() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        std::fs::write(
            &p,
            "(0.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n(0.2) Error (criu/files.c:1): real problem\n",
        )
        .unwrap();
        let e = log_errors(&p);
        assert!(e.contains("real problem") && !e.contains("RLIMIT"), "{e}");
    }
}
