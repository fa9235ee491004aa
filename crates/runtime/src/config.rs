//! The runtime's own container configuration: an OCI runtime spec checked and
//! lowered into plain data that the shim and the container init can apply
//! without further decisions. Every validation error names the OCI field.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroups::Resources;
use crate::security::{self, CapSets, Rlimit};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A message from a lower layer that already names the field.
    #[error("{0}")]
    Named(String),
}

pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsKind {
    Mount,
    Pid,
    Net,
    Uts,
    Ipc,
    User,
    Cgroup,
}

impl NsKind {
    pub fn clone_flag(self) -> u64 {
        (match self {
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
        }) as u64
    }
    /// Name of the file under /proc/PID/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::Mount => "mnt",
            NsKind::Pid => "pid",
            NsKind::Net => "net",
            NsKind::Uts => "uts",
            NsKind::Ipc => "ipc",
            NsKind::User => "user",
            NsKind::Cgroup => "cgroup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsSpec {
    pub kind: NsKind,
    /// Join this existing namespace instead of creating one.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub destination: PathBuf,
    pub fstype: Option<String>,
    pub source: Option<PathBuf>,
    pub flags: u64,
    /// Propagation flags applied after the mount (MS_PRIVATE, MS_SLAVE...).
    pub propagation: u64,
    pub data: String,
    pub bind: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub path: PathBuf,
    pub char_dev: bool,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeccompChoice {
    /// Flotilla's default filter (security::default_seccomp).
    Default,
    Unconfined,
    Oci(LinuxSeccomp),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub seccomp: SeccompChoice,
    pub oom_score_adj: Option<i32>,
}

/// Everything the container init needs, with no references to the OCI types
/// except the seccomp profile (compiled in the shim before clone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub hostname: Option<String>,
    pub readonly_root: bool,
    pub namespaces: Vec<NsSpec>,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub mounts: Vec<MountSpec>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub devices: Vec<DeviceSpec>,
    pub sysctls: BTreeMap<String, String>,
    pub process: ProcessSpec,
    pub resources: Resources,
}

impl ContainerConfig {
    pub fn ns(&self, kind: NsKind) -> Option<&NsSpec> {
        self.namespaces.iter().find(|n| n.kind == kind)
    }
    /// Namespaces to create at clone time (those without a path).
    pub fn clone_flags(&self) -> u64 {
        self.namespaces
            .iter()
            .filter(|n| n.path.is_none() && n.kind != NsKind::Cgroup)
            .fold(0, |f, n| f | n.kind.clone_flag())
    }
}

/// The devices every container gets (Docker's set); the device cgroup allows
/// exactly these plus ptys.
pub fn default_devices() -> Vec<DeviceSpec> {
    let d = |path: &str, major, minor| DeviceSpec {
        path: path.into(),
        char_dev: true,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        d("/dev/null", 1, 3),
        d("/dev/zero", 1, 5),
        d("/dev/full", 1, 7),
        d("/dev/random", 1, 8),
        d("/dev/urandom", 1, 9),
        d("/dev/tty", 5, 0),
    ]
}

/// Docker's masked paths (reliability.md §3).
pub fn default_masked_paths() -> Vec<String> {
    [
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/sys/devices/virtual/powercap",
        "/sys/firmware",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn default_readonly_paths() -> Vec<String> {
    [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A complete OCI spec with Flotilla's defaults (Docker's isolation floor):
/// all namespaces but user, the 14 default capabilities, masked and read-only
/// paths, the default seccomp filter (no `linux.seccomp` = default).
pub fn default_spec(args: Vec<String>) -> Spec {
    use oci_spec::runtime::*;
    let mut spec = Spec::default();
    let caps: std::collections::HashSet<Capability> = security::DEFAULT_CAPS
        .iter()
        .map(|c| {
            serde_json::from_value(serde_json::Value::String(c.to_string()))
                .expect("known capability")
        })
        .collect();
    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            // Inheritable and ambient stay empty (runc GHSA-f3fp-gc8g-vw66).
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()
            .expect("caps"),
    ));
    spec.set_process(Some(process));
    let mut root = Root::default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec.set_hostname(None);
    let mut mounts = get_default_mounts();
    // Docker's /dev and /dev/shm options.
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/dev/shm") {
            m.set_options(Some(
                ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ));
        }
    }
    spec.set_mounts(Some(mounts));
    let mut linux = Linux::default();
    let mut ns = get_default_namespaces();
    ns.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
    ns.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Cgroup)
            .build()
            .expect("ns"),
    );
    linux.set_namespaces(Some(ns));
    linux.set_masked_paths(Some(default_masked_paths()));
    linux.set_readonly_paths(Some(default_readonly_paths()));
    spec.set_linux(Some(linux));
    spec
}

fn check_abs_clean(field: &str, p: &Path) -> Result<(), ConfigError> {
    if !p.is_absolute() {
        return Err(invalid(
            field,
            format!("must be an absolute path, got {:?}", p),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(
            field,
            format!("must not contain '..', got {:?}", p),
        ));
    }
    Ok(())
}

/// Container names: DNS-label-like, safe as a directory and cgroup name.
pub fn validate_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id",
            format!(
                "{id:?} is not a valid container name (1-128 of [A-Za-z0-9_.-], starting with a letter or digit)"
            ),
        ))
    }
}

/// Parse OCI mount options into (flags, propagation, data).
pub fn parse_mount_options(opts: &[String]) -> (u64, u64, String, bool) {
    let mut flags: u64 = 0;
    let mut prop: u64 = 0;
    let mut data: Vec<&str> = vec![];
    let mut bind = false;
    for o in opts {
        let (set, clear): (u64, u64) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" => {
                prop |= libc::MS_PRIVATE;
                (0, 0)
            }
            "rprivate" => {
                prop |= libc::MS_PRIVATE | libc::MS_REC;
                (0, 0)
            }
            "shared" => {
                prop |= libc::MS_SHARED;
                (0, 0)
            }
            "rshared" => {
                prop |= libc::MS_SHARED | libc::MS_REC;
                (0, 0)
            }
            "slave" => {
                prop |= libc::MS_SLAVE;
                (0, 0)
            }
            "rslave" => {
                prop |= libc::MS_SLAVE | libc::MS_REC;
                (0, 0)
            }
            "unbindable" => {
                prop |= libc::MS_UNBINDABLE;
                (0, 0)
            }
            "runbindable" => {
                prop |= libc::MS_UNBINDABLE | libc::MS_REC;
                (0, 0)
            }
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, prop, data.join(","), bind)
}

fn ns_kind(t: LinuxNamespaceType) -> Option<NsKind> {
    Some(match t {
        LinuxNamespaceType::Mount => NsKind::Mount,
        LinuxNamespaceType::Pid => NsKind::Pid,
        LinuxNamespaceType::Network => NsKind::Net,
        LinuxNamespaceType::Uts => NsKind::Uts,
        LinuxNamespaceType::Ipc => NsKind::Ipc,
        LinuxNamespaceType::User => NsKind::User,
        LinuxNamespaceType::Cgroup => NsKind::Cgroup,
        LinuxNamespaceType::Time => return None,
    })
}

/// Lower and check an OCI spec. Nothing here touches the system except
/// reading this process's own rlimits.
pub fn from_spec(spec: &Spec) -> Result<ContainerConfig, ConfigError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "is required"))?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid("process.args", "must name a command"));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("process.args", "must not contain NUL bytes"));
    }
    let env = process.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(invalid(
                format!("process.env[{i}]"),
                format!("must be KEY=VALUE, got {e:?}"),
            ));
        }
    }
    let cwd = process.cwd().clone();
    check_abs_clean("process.cwd", &cwd)?;
    if process.terminal().unwrap_or(false) {
        return Err(invalid(
            "process.terminal",
            "terminals are not supported for the container's first process yet",
        ));
    }
    let user = process.user();
    let caps = match process.capabilities() {
        Some(c) => CapSets::from_oci(c).map_err(|e| ConfigError::Named(e.to_string()))?,
        None => CapSets::default(),
    };
    let rlimits = match process.rlimits() {
        Some(l) => {
            security::rlimits_from_oci(l).map_err(|e| invalid("process.rlimits", e.to_string()))?
        }
        None => security::default_rlimits(),
    };
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(
                "process.oomScoreAdj",
                format!("must be within -1000..=1000, got {adj}"),
            ));
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = vec![];
    for (i, n) in linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(kind) = ns_kind(n.typ()) else {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                "time namespaces are not supported",
            ));
        };
        if namespaces.iter().any(|x: &NsSpec| x.kind == kind) {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                format!("duplicate namespace {:?}", kind),
            ));
        }
        if let Some(p) = n.path() {
            check_abs_clean(&format!("linux.namespaces[{i}].path"), p)?;
            if !p.exists() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        namespaces.push(NsSpec {
            kind,
            path: n.path().clone(),
        });
    }
    for required in [NsKind::Mount, NsKind::Pid] {
        if !namespaces
            .iter()
            .any(|n| n.kind == required && n.path.is_none())
        {
            return Err(invalid(
                "linux.namespaces",
                format!("a new {:?} namespace is required", required),
            ));
        }
    }
    let map_ids = |v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
        v.clone()
            .unwrap_or_default()
            .iter()
            .map(|m| IdMap {
                container_id: m.container_id(),
                host_id: m.host_id(),
                size: m.size(),
            })
            .collect()
    };
    let uid_map = map_ids(linux.uid_mappings());
    let gid_map = map_ids(linux.gid_mappings());
    let has_user = namespaces
        .iter()
        .any(|n| n.kind == NsKind::User && n.path.is_none());
    if has_user && (uid_map.is_empty() || gid_map.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if !has_user && (!uid_map.is_empty() || !gid_map.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "id mappings need a new user namespace in linux.namespaces",
        ));
    }
    for (i, m) in uid_map.iter().chain(gid_map.iter()).enumerate() {
        if m.size == 0
            || m.host_id.checked_add(m.size).is_none()
            || m.container_id.checked_add(m.size).is_none()
        {
            return Err(invalid(
                format!("linux.uidMappings/gidMappings[{i}]"),
                "size must be positive and ids must not overflow",
            ));
        }
    }

    let mut mounts = vec![];
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("mounts[{i}]");
        check_abs_clean(&format!("{field}.destination"), m.destination())?;
        let opts = m.options().clone().unwrap_or_default();
        let (flags, propagation, data, mut bind) = parse_mount_options(&opts);
        let fstype = m.typ().clone();
        if fstype.as_deref() == Some("bind") {
            bind = true;
        }
        if bind {
            let src = m
                .source()
                .as_ref()
                .ok_or_else(|| invalid(format!("{field}.source"), "bind mounts need a source"))?;
            if !src.is_absolute() {
                return Err(invalid(
                    format!("{field}.source"),
                    format!("bind source must be absolute, got {}", src.display()),
                ));
            }
            if !src.exists() {
                return Err(invalid(
                    format!("{field}.source"),
                    format!("{} does not exist", src.display()),
                ));
            }
        } else if fstype.is_none() {
            return Err(invalid(
                format!("{field}.type"),
                "is required unless the mount is a bind",
            ));
        }
        mounts.push(MountSpec {
            destination: m.destination().clone(),
            fstype,
            source: m.source().clone(),
            flags: flags | if bind { libc::MS_BIND } else { 0 },
            propagation,
            data,
            bind,
        });
    }
    let mut devices = default_devices();
    for (i, d) in linux
        .devices()
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        check_abs_clean(&format!("linux.devices[{i}].path"), d.path())?;
        let char_dev = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::C | oci_spec::runtime::LinuxDeviceType::U => true,
            oci_spec::runtime::LinuxDeviceType::B => false,
            other => {
                return Err(invalid(
                    format!("linux.devices[{i}].type"),
                    format!("unsupported device type {other:?}"),
                ))
            }
        };
        if d.major() < 0 || d.minor() < 0 {
            return Err(invalid(
                format!("linux.devices[{i}]"),
                "major and minor must be >= 0",
            ));
        }
        devices.retain(|x| x.path != *d.path());
        devices.push(DeviceSpec {
            path: d.path().clone(),
            char_dev,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let paths = |v: &Option<Vec<String>>, field: &str| -> Result<Vec<PathBuf>, ConfigError> {
        v.clone()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let pb = PathBuf::from(p);
                check_abs_clean(&format!("{field}[{i}]"), &pb)?;
                Ok(pb)
            })
            .collect()
    };
    let masked_paths = paths(linux.masked_paths(), "linux.maskedPaths")?;
    let readonly_paths = paths(linux.readonly_paths(), "linux.readonlyPaths")?;
    let mut sysctls = BTreeMap::new();
    for (k, v) in linux.sysctl().clone().unwrap_or_default() {
        if k.contains('/') || k.contains("..") || k.is_empty() {
            return Err(invalid(
                format!("linux.sysctl.{k}"),
                "is not a valid sysctl name",
            ));
        }
        // Only namespaced sysctls are safe to set from a container.
        let ok = k.starts_with("net.")
            || k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k.starts_with("kernel.sem")
            || k.starts_with("fs.mqueue.")
            || k == "kernel.domainname";
        if !ok {
            return Err(invalid(
                format!("linux.sysctl.{k}"),
                "is not a namespaced sysctl and cannot be set per container",
            ));
        }
        sysctls.insert(k, v);
    }
    let seccomp = match linux.seccomp() {
        Some(s) => SeccompChoice::Oci(s.clone()),
        None => SeccompChoice::Default,
    };
    let resources = resources_from_oci(linux.resources().as_ref())?;
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if h.len() > 64 || h.contains('\0') {
            return Err(invalid("hostname", "must be at most 64 bytes without NUL"));
        }
    }
    Ok(ContainerConfig {
        hostname,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        namespaces,
        uid_map,
        gid_map,
        mounts,
        masked_paths,
        readonly_paths,
        devices,
        sysctls,
        process: ProcessSpec {
            args,
            env,
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
            caps,
            no_new_privs: process.no_new_privileges().unwrap_or(true),
            rlimits,
            seccomp,
            oom_score_adj: process.oom_score_adj(),
        },
        resources,
    })
}

fn resources_from_oci(
    r: Option<&oci_spec::runtime::LinuxResources>,
) -> Result<Resources, ConfigError> {
    let mut out = Resources::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(m) = r.memory() {
        out.memory_limit = m.limit();
        out.memory_swap = m.swap();
    }
    if let Some(c) = r.cpu() {
        out.cpu_quota = c.quota();
        out.cpu_period = c.period();
        out.cpu_shares = c.shares();
    }
    if let Some(p) = r.pids() {
        out.pids_limit = Some(p.limit());
    }
    out.validate().map_err(|e| {
        // The cgroup validator already names the OCI field.
        invalid("linux.resources", e.to_string())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_lowers() {
        let c = from_spec(&default_spec(vec!["/bin/true".into()])).unwrap();
        assert_eq!(c.process.args, vec!["/bin/true"]);
        assert_eq!(c.process.caps, CapSets::docker_default());
        assert!(c.ns(NsKind::Net).is_some());
        assert!(c.ns(NsKind::Cgroup).is_some());
        assert!(c.masked_paths.contains(&PathBuf::from("/proc/kcore")));
        assert_eq!(c.process.seccomp, SeccompChoice::Default);
        assert!(c.process.no_new_privs);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut s = default_spec(vec![]);
        let e = from_spec(&s).unwrap_err().to_string();
        assert!(e.starts_with("process.args"), "{e}");
        s = default_spec(vec!["x".into()]);
        s.process_mut().as_mut().unwrap().set_cwd("rel".into());
        let e = from_spec(&s).unwrap_err().to_string();
        assert!(e.starts_with("process.cwd"), "{e}");
        s = default_spec(vec!["x".into()]);
        s.process_mut()
            .as_mut()
            .unwrap()
            .set_env(Some(vec!["NOEQUALS".into()]));
        let e = from_spec(&s).unwrap_err().to_string();
        assert!(e.starts_with("process.env[0]"), "{e}");
    }

    #[test]
    fn ids() {
        assert!(validate_id("web-1.a_b").is_ok());
        for bad in ["", "-x", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mount_options() {
        let (f, p, d, b) = parse_mount_options(&[
            "nosuid".into(),
            "rbind".into(),
            "rprivate".into(),
            "mode=755".into(),
            "ro".into(),
        ]);
        assert_eq!(
            f,
            libc::MS_NOSUID | libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY
        );
        assert_eq!(p, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(d, "mode=755");
        assert!(b);
    }
}
