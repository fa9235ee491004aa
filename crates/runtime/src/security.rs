//! Process isolation for container init: capabilities, seccomp, `no_new_privs` and rlimits.
//!
//! Defaults follow reliability.md §3 (Docker as the floor).
//!
//! The work is split in two phases:
//!
//! * **prepare** (in the agent, before the clone): everything that allocates or reads host files
//!   ([`CapSets::from_oci`], [`read_last_cap`], [`default_seccomp`], [`seccomp_from_oci`],
//!   [`rlimits_from_oci`], [`default_rlimits`]). The results are plain data.
//! * **apply** (in the freshly cloned, single-threaded container init, after `pivot_root`, just
//!   before `execve`): the `apply_*` functions and [`set_no_new_privs`] only issue syscalls. They
//!   never allocate, log or spawn threads, and their errors carry only static text and numbers,
//!   so even the error path is safe in a child cloned from a multi-threaded parent.
//!
//! [`SecurityPlan::apply`] runs the apply phase in the right order.

use std::collections::BTreeMap;
use std::fmt;

use nix::errno::Errno;
use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, PosixRlimit,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Errors from preparing or applying the isolation settings.
///
/// Variants returned by the `apply_*` functions hold no heap data (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A capability name that is not one of the 41 Linux capabilities.
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    /// A spec value that cannot be applied; `field` is its path in the OCI spec.
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },
    /// A syscall failed while applying a setting.
    #[error("{call} failed")]
    Syscall {
        call: &'static str,
        #[source]
        source: Errno,
    },
    /// A capability operation failed for one capability.
    #[error("{call} failed for {}", cap_label(*.cap))]
    Capability {
        call: &'static str,
        cap: u32,
        #[source]
        source: Errno,
    },
    /// `setrlimit` failed.
    #[error("setrlimit {} (soft {}, hard {}) failed", rlimit_name(*.resource), Lim(*.soft), Lim(*.hard))]
    Rlimit {
        resource: i32,
        soft: u64,
        hard: u64,
        #[source]
        source: Errno,
    },
    /// seccompiler refused the filter (for example more than 4096 BPF instructions).
    #[error("compiling the seccomp filter")]
    SeccompCompile(#[source] seccompiler::BackendError),
    /// Seccomp filters are built for x86_64 only.
    #[error("seccomp filters are only supported on x86_64")]
    UnsupportedArch,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SecurityError {
    SecurityError::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// Formats an rlimit value, `RLIM_INFINITY` as "unlimited".
struct Lim(u64);

impl fmt::Display for Lim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == libc::RLIM_INFINITY {
            f.write_str("unlimited")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------------

/// Capabilities kept by default (Docker's set, reliability.md §3).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Capability names indexed by number (linux/capability.h, up to CAP_CHECKPOINT_RESTORE = 40).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Capability number for `"CAP_SYS_ADMIN"` or `"SYS_ADMIN"` (case-insensitive).
pub fn cap_from_name(name: &str) -> Result<u32, SecurityError> {
    let bare = match name.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("CAP_") => &name[4..],
        _ => name,
    };
    CAP_NAMES
        .iter()
        .position(|known| known[4..].eq_ignore_ascii_case(bare))
        .map(|n| n as u32)
        .ok_or_else(|| SecurityError::UnknownCapability(name.to_string()))
}

/// `CAP_…` name of a capability number, if known.
pub fn cap_name(cap: u32) -> Option<&'static str> {
    CAP_NAMES.get(cap as usize).copied()
}

fn cap_label(cap: u32) -> &'static str {
    cap_name(cap).unwrap_or("a capability unknown to flotilla")
}

/// Comma-separated names of the capabilities in `mask` (for messages).
fn cap_list(mask: u64) -> String {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match cap_name(bit) {
            Some(name) => name.to_string(),
            None => format!("capability {bit}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The five capability sets of a process, one bit per capability number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    /// The 14 capabilities of [`DEFAULT_CAPS`] in bounding, effective and permitted; inheritable
    /// and ambient empty (runc GHSA-f3fp-gc8g-vw66).
    pub fn docker_default() -> Self {
        let mask = DEFAULT_CAPS
            .iter()
            .filter_map(|name| cap_from_name(name).ok())
            .fold(0u64, |mask, cap| mask | (1u64 << cap));
        CapSets {
            bounding: mask,
            effective: mask,
            permitted: mask,
            inheritable: 0,
            ambient: 0,
        }
    }

    /// Converts `process.capabilities`. A missing set is empty (as in runc). Rejects sets the
    /// kernel would refuse in [`apply_caps`]: effective outside permitted, inheritable outside
    /// bounding, ambient outside permitted ∩ inheritable.
    pub fn from_oci(caps: &LinuxCapabilities) -> Result<Self, SecurityError> {
        let sets = CapSets {
            bounding: oci_cap_mask(caps.bounding().as_ref(), "bounding")?,
            effective: oci_cap_mask(caps.effective().as_ref(), "effective")?,
            permitted: oci_cap_mask(caps.permitted().as_ref(), "permitted")?,
            inheritable: oci_cap_mask(caps.inheritable().as_ref(), "inheritable")?,
            ambient: oci_cap_mask(caps.ambient().as_ref(), "ambient")?,
        };
        let extra = sets.effective & !sets.permitted;
        if extra != 0 {
            return Err(invalid(
                "process.capabilities.effective",
                format!("{} not in the permitted set", cap_list(extra)),
            ));
        }
        let extra = sets.inheritable & !sets.bounding;
        if extra != 0 {
            return Err(invalid(
                "process.capabilities.inheritable",
                format!(
                    "{} not in the bounding set (the kernel refuses to add it)",
                    cap_list(extra)
                ),
            ));
        }
        let extra = sets.ambient & !(sets.permitted & sets.inheritable);
        if extra != 0 {
            return Err(invalid(
                "process.capabilities.ambient",
                format!(
                    "{} not in both the permitted and the inheritable set",
                    cap_list(extra)
                ),
            ));
        }
        if sets.inheritable != 0 {
            tracing::debug!(
                inheritable = %cap_list(sets.inheritable),
                "spec asks for inheritable capabilities; flotilla's default keeps them empty"
            );
        }
        Ok(sets)
    }
}

fn oci_cap_mask(set: Option<&Capabilities>, name: &str) -> Result<u64, SecurityError> {
    let mut mask = 0u64;
    for cap in set.into_iter().flatten() {
        let cap_name = cap.to_string();
        let n = cap_from_name(&cap_name)
            .map_err(|err| invalid(format!("process.capabilities.{name}"), err.to_string()))?;
        mask |= 1u64 << n;
    }
    Ok(mask)
}

/// Highest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`), at
/// most 63. Call it in the prepare phase: inside the container `/proc` is the container's.
/// Falls back to probing `PR_CAPBSET_READ` if the file is unreadable.
pub fn read_last_cap() -> u32 {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap") {
        if let Ok(n) = text.trim().parse::<u32>() {
            return n.min(63);
        }
    }
    let mut last = 0;
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ only reads the calling thread's bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc < 0 {
            break;
        }
        last = cap;
    }
    tracing::debug!(
        last_cap = last,
        "cap_last_cap unreadable, probed the bounding set"
    );
    last
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapUserHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapUserData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// (effective, permitted, inheritable) of the calling thread.
fn capget() -> Result<(u64, u64, u64), SecurityError> {
    let mut header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapUserData::default(); 2];
    // SAFETY: v3 header with two data words, both owned by this frame.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapUserHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(SecurityError::Syscall {
            call: "capget",
            source: Errno::last(),
        });
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), SecurityError> {
    let mut header = CapUserHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapUserData {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: v3 header with two data words, both owned by this frame.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapUserHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(SecurityError::Syscall {
            call: "capset",
            source: Errno::last(),
        });
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg2: u64, arg3: u64) -> Result<libc::c_int, Errno> {
    // SAFETY: the options used here take integer arguments only.
    let rc = unsafe {
        libc::prctl(
            option,
            arg2 as libc::c_ulong,
            arg3 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

/// Makes the effective set equal to the permitted set. `setuid` to a non-zero uid clears the
/// effective set even with `PR_SET_KEEPCAPS`; this brings back CAP_SETPCAP (for the bounding
/// set) and CAP_SYS_ADMIN (for seccomp without `no_new_privs`) if they are permitted.
fn raise_effective() -> Result<(), SecurityError> {
    let (effective, permitted, inheritable) = capget()?;
    if effective != permitted {
        capset(permitted, permitted, inheritable)?;
    }
    Ok(())
}

/// Applies `c`: drops every capability outside `c.bounding` from the bounding set (0 to
/// `last_cap`, from [`read_last_cap`] in the prepare phase), clears the ambient set, sets
/// effective/permitted/inheritable with `capset` (v3), then raises the requested ambient
/// capabilities (the kernel requires them to be permitted and inheritable first).
///
/// Call it after `setuid` with `PR_SET_KEEPCAPS` set around the `setuid`; the effective set that
/// `setuid` cleared is first restored from the permitted set so CAP_SETPCAP is usable.
/// Capabilities above `last_cap` are unknown to the kernel and ignored.
pub fn apply_caps(c: &CapSets, last_cap: u32) -> Result<(), SecurityError> {
    let last = last_cap.min(63);
    let known = if last == 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    raise_effective()?;

    for cap in 0..=last {
        if c.bounding & (1u64 << cap) != 0 {
            continue;
        }
        match prctl(libc::PR_CAPBSET_READ, u64::from(cap), 0) {
            Ok(0) | Err(Errno::EINVAL) => continue,
            Ok(_) => {}
            Err(source) => {
                return Err(SecurityError::Capability {
                    call: "prctl(PR_CAPBSET_READ)",
                    cap,
                    source,
                })
            }
        }
        prctl(libc::PR_CAPBSET_DROP, u64::from(cap), 0).map_err(|source| {
            SecurityError::Capability {
                call: "prctl(PR_CAPBSET_DROP)",
                cap,
                source,
            }
        })?;
    }

    let ambient = c.ambient & known;
    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
        0,
    ) {
        Ok(_) => {}
        // Kernels before 4.3 have no ambient set: fine unless ambient caps were requested.
        Err(Errno::EINVAL) if ambient == 0 => {}
        Err(source) => {
            return Err(SecurityError::Syscall {
                call: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
                source,
            })
        }
    }

    capset(
        c.effective & known,
        c.permitted & known,
        c.inheritable & known,
    )?;

    for cap in 0..=last {
        if ambient & (1u64 << cap) == 0 {
            continue;
        }
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            u64::from(cap),
        )
        .map_err(|source| SecurityError::Capability {
            call: "prctl(PR_CAP_AMBIENT_RAISE)",
            cap,
            source,
        })?;
    }
    Ok(())
}

/// Sets `PR_SET_NO_NEW_PRIVS`: execve can no longer grant privileges (setuid bits, file caps).
pub fn set_no_new_privs() -> Result<(), SecurityError> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
        .map(|_| ())
        .map_err(|source| SecurityError::Syscall {
            call: "prctl(PR_SET_NO_NEW_PRIVS)",
            source,
        })
}

// ---------------------------------------------------------------------------------------------
// Seccomp
// ---------------------------------------------------------------------------------------------

/// Compiled seccomp filters, ready to install with [`apply_seccomp`].
///
/// seccompiler gives every filter a single on-match action, so a profile with several actions
/// compiles to several BPF programs. The kernel runs all installed filters and takes the most
/// severe result (kill > trap > errno > trace > log > allow). If one call matches two entries
/// with equally severe actions but different data (two errno values), the group installed last
/// wins, which is usually the later entry in the profile. Every program starts with an
/// architecture check that kills the process on anything but x86_64, so 32-bit (i386) binaries
/// are not supported under a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    filters: Vec<BpfProgram>,
    flags: libc::c_ulong,
}

impl SeccompProgram {
    /// The BPF programs, in installation order.
    pub fn filters(&self) -> &[BpfProgram] {
        &self.filters
    }

    /// `SECCOMP_FILTER_FLAG_*` passed to every `seccomp(2)` call.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

/// Blocked by [`default_seccomp`] with EPERM. Names that do not exist on the build architecture
/// (`stime`, `vm86`, `vm86old` on x86_64) are skipped.
const DEFAULT_DENY: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "syslog",
    // CRIU cannot checkpoint io_uring.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // Also outside Docker's allowlist without extra capabilities; same families as above.
    "open_tree_attr",
    "fanotify_init",
    "migrate_pages",
    "set_mempolicy_home_node",
    "pidfd_getfd",
    "process_madvise",
];

/// personality(2) values Docker allows.
const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Namespace flags refused in clone(2)'s flags argument.
const CLONE_NS_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Syscall number on the build architecture (x86_64 table, kernel 6.18).
#[cfg(target_arch = "x86_64")]
pub fn syscall_number(name: &str) -> Option<i64> {
    X86_64_SYSCALLS
        .binary_search_by(|(known, _)| known.cmp(&name))
        .ok()
        .map(|i| X86_64_SYSCALLS[i].1)
}

/// Syscall number on the build architecture (only x86_64 has a table).
#[cfg(not(target_arch = "x86_64"))]
pub fn syscall_number(_name: &str) -> Option<i64> {
    None
}

/// Rules of one syscall: unconditional, or any of several argument rules.
#[derive(Debug, Clone)]
enum Chain {
    Any,
    Rules(Vec<SeccompRule>),
}

/// All syscalls that share one action.
#[derive(Debug)]
struct ActionRules {
    action: SeccompAction,
    syscalls: BTreeMap<i64, Chain>,
}

impl ActionRules {
    fn new(action: SeccompAction) -> Self {
        ActionRules {
            action,
            syscalls: BTreeMap::new(),
        }
    }

    fn add_any(&mut self, nr: i64) {
        self.syscalls.insert(nr, Chain::Any);
    }

    fn add_rule(&mut self, nr: i64, rule: SeccompRule) {
        match self
            .syscalls
            .entry(nr)
            .or_insert_with(|| Chain::Rules(Vec::new()))
        {
            Chain::Any => {}
            Chain::Rules(rules) => rules.push(rule),
        }
    }

    fn merge(&mut self, other: &ActionRules) {
        for (nr, chain) in &other.syscalls {
            match chain {
                Chain::Any => self.add_any(*nr),
                Chain::Rules(rules) => {
                    for rule in rules {
                        self.add_rule(*nr, rule.clone());
                    }
                }
            }
        }
    }
}

/// A profile before compilation: a default action and rule groups in profile order.
struct Profile {
    default: SeccompAction,
    groups: Vec<ActionRules>,
    flags: libc::c_ulong,
}

impl Profile {
    fn group(&mut self, action: SeccompAction) -> &mut ActionRules {
        let i = match self.groups.iter().position(|g| g.action == action) {
            Some(i) => i,
            None => {
                self.groups.push(ActionRules::new(action));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    /// One filter per non-ALLOW action, returning that action on a match and ALLOW otherwise;
    /// then, unless the default is ALLOW, one filter returning ALLOW for every listed syscall
    /// and the default action otherwise. Permissive defaults also get the x32 guard first.
    ///
    /// Each filter is installed by its own `seccomp(2)` call, which the filters already in
    /// place must allow. So the default-action filter (which blocks `seccomp` unless the
    /// profile lists it) comes after the groups that do not mention `seccomp`, and groups that
    /// do come last.
    fn compile(self) -> Result<SeccompProgram, SecurityError> {
        let seccomp_nr = syscall_number("seccomp");
        let mentions_seccomp =
            |g: &ActionRules| seccomp_nr.is_some_and(|nr| g.syscalls.contains_key(&nr));
        let mut early = Vec::new();
        if matches!(self.default, SeccompAction::Allow | SeccompAction::Log) {
            early.push(x32_guard());
        }
        let mut listed = ActionRules::new(SeccompAction::Allow);
        for group in &self.groups {
            listed.merge(group);
        }
        let mut late = Vec::new();
        for group in self.groups {
            if group.action == SeccompAction::Allow || group.syscalls.is_empty() {
                continue;
            }
            let last = mentions_seccomp(&group);
            let filter = build_filter(group.syscalls, group.action, SeccompAction::Allow)?;
            if last {
                late.push(filter);
            } else {
                early.push(filter);
            }
        }
        if self.default != SeccompAction::Allow {
            early.push(build_filter(
                listed.syscalls,
                SeccompAction::Allow,
                self.default,
            )?);
        }
        early.extend(late);
        Ok(SeccompProgram {
            filters: early,
            flags: self.flags,
        })
    }
}

fn build_filter(
    syscalls: BTreeMap<i64, Chain>,
    on_match: SeccompAction,
    on_mismatch: SeccompAction,
) -> Result<BpfProgram, SecurityError> {
    let rules = syscalls
        .into_iter()
        .map(|(nr, chain)| match chain {
            Chain::Any => (nr, Vec::new()),
            Chain::Rules(rules) => (nr, rules),
        })
        .collect();
    let filter = SeccompFilter::new(rules, on_mismatch, on_match, TargetArch::x86_64)
        .map_err(SecurityError::SeccompCompile)?;
    BpfProgram::try_from(filter).map_err(SecurityError::SeccompCompile)
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refuses the x32 ABI (syscall numbers with bit 30 set, same audit arch as x86_64) with
/// ENOSYS. A denylist keyed on x86_64 numbers would not match x32 numbers, so without this a
/// kernel with CONFIG_X86_X32_ABI would let `mount` etc. through.
fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SecurityError> {
    SeccompCondition::new(arg, len, op, value).map_err(SecurityError::SeccompCompile)
}

/// Flotilla's default filter: Docker's default profile written as a denylist (default ALLOW).
///
/// EPERM for [`DEFAULT_DENY`], for `personality` except Docker's five values, for `clone` with
/// any namespace flag and for `socket(AF_VSOCK, …)`; ENOSYS for `clone3` (glibc then falls back
/// to `clone`, as under Docker); ENOSYS for the x32 ABI. Build it in the prepare phase.
///
/// One BPF program that finds the syscall number by binary search (see [`compile_tree`]): the
/// same decisions as the three programs seccompiler makes of this profile
/// ([`default_seccomp_per_action`], the fallback), but one `seccomp(2)` call instead of three
/// and about a tenth of the work at attach time, when the kernel runs each program once per
/// syscall number to find the always-allowed ones (~0.5 ms before, on every container start).
pub fn default_seccomp() -> Result<SeccompProgram, SecurityError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SecurityError::UnsupportedArch);
    }
    match default_seccomp_tree() {
        Some(p) => Ok(p),
        None => default_seccomp_per_action(),
    }
}

/// `seccomp_data` offsets: syscall number, audit arch, low 32 bits of argument 0.
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_DATA_ARG0_LO: u32 = 16;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// What the default filter does with one syscall number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Return this value (`SECCOMP_RET_*`).
    Ret(u32),
    /// Look at the arguments: a block of its own that ends in returns.
    Args(Vec<sock_filter>),
}

fn ret_errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// The default profile as one program: arch check (anything but x86_64 is killed, as every
/// seccompiler program does), x32 guard, then a binary search over ranges of syscall numbers
/// with the same verdict. None if a jump would not fit (then the per-action programs are used).
fn default_seccomp_tree() -> Option<SeccompProgram> {
    let eperm = ret_errno(libc::EPERM);
    let mut special: BTreeMap<u32, Verdict> = BTreeMap::new();
    for name in DEFAULT_DENY {
        if let Some(nr) = syscall_number(name) {
            special.insert(nr as u32, Verdict::Ret(eperm));
        }
    }
    // personality: EPERM unless the low 32 bits are one of Docker's values.
    let mut b = vec![insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARG0_LO)];
    let n = PERSONALITY_ALLOWED.len();
    for (i, v) in PERSONALITY_ALLOWED.iter().enumerate() {
        // To the ALLOW after the EPERM.
        b.push(insn(BPF_JEQ_K, (n - i) as u8, 0, *v as u32));
    }
    b.push(insn(BPF_RET_K, 0, 0, eperm));
    b.push(insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    special.insert(libc::SYS_personality as u32, Verdict::Args(b));
    // clone: EPERM if any namespace flag is set (each is one bit).
    let mask = CLONE_NS_FLAGS.iter().fold(0u32, |m, f| m | *f as u32);
    special.insert(
        libc::SYS_clone as u32,
        Verdict::Args(vec![
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARG0_LO),
            insn(BPF_JSET_K, 0, 1, mask),
            insn(BPF_RET_K, 0, 0, eperm),
            insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]),
    );
    special.insert(
        libc::SYS_socket as u32,
        Verdict::Args(vec![
            insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARG0_LO),
            insn(BPF_JEQ_K, 0, 1, libc::AF_VSOCK as u32),
            insn(BPF_RET_K, 0, 0, eperm),
            insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]),
    );
    special.insert(
        libc::SYS_clone3 as u32,
        Verdict::Ret(ret_errno(libc::ENOSYS)),
    );
    let mut prog = vec![
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, ret_errno(libc::ENOSYS)),
    ];
    prog.extend(compile_tree(&special, libc::SECCOMP_RET_ALLOW)?);
    Some(SeccompProgram {
        filters: vec![prog],
        flags: 0,
    })
}

/// A binary search over syscall numbers (in the accumulator) below [`X32_SYSCALL_BIT`]:
/// `special` numbers get their verdict, every other number `otherwise`. Neighbouring numbers
/// with the same verdict form one range, so each lookup costs about log2(ranges) jumps instead
/// of one comparison per listed syscall. None if a jump offset would exceed 255.
fn compile_tree(special: &BTreeMap<u32, Verdict>, otherwise: u32) -> Option<Vec<sock_filter>> {
    // (first number, verdict) of consecutive ranges covering 0..X32_SYSCALL_BIT.
    let mut ranges: Vec<(u32, Verdict)> = Vec::new();
    let mut push = |start: u32, v: Verdict| {
        if ranges.last().is_none_or(|(_, last)| *last != v) {
            ranges.push((start, v));
        }
    };
    let mut next = 0u32;
    for (nr, v) in special {
        if *nr >= X32_SYSCALL_BIT {
            return None;
        }
        if *nr > next {
            push(next, Verdict::Ret(otherwise));
        }
        push(*nr, v.clone());
        next = nr + 1;
    }
    push(next, Verdict::Ret(otherwise));
    emit_ranges(&ranges)
}

fn emit_ranges(ranges: &[(u32, Verdict)]) -> Option<Vec<sock_filter>> {
    if let [(_, v)] = ranges {
        return Some(match v {
            Verdict::Ret(r) => vec![insn(BPF_RET_K, 0, 0, *r)],
            Verdict::Args(block) => block.clone(),
        });
    }
    let mid = ranges.len() / 2;
    let low = emit_ranges(&ranges[..mid])?;
    let high = emit_ranges(&ranges[mid..])?;
    let skip = u8::try_from(low.len()).ok()?;
    let mut out = Vec::with_capacity(1 + low.len() + high.len());
    out.push(insn(BPF_JGE_K, skip, 0, ranges[mid].0));
    out.extend(low);
    out.extend(high);
    Some(out)
}

/// The default profile compiled by seccompiler: x32 guard, one program for the EPERM group and
/// one for the ENOSYS group. Kept as the fallback of [`default_seccomp`] and as the reference
/// its single program is checked against.
fn default_seccomp_per_action() -> Result<SeccompProgram, SecurityError> {
    let mut eperm = ActionRules::new(SeccompAction::Errno(libc::EPERM as u32));
    for name in DEFAULT_DENY {
        match syscall_number(name) {
            Some(nr) => eperm.add_any(nr),
            None => tracing::debug!(syscall = name, "not on this architecture, skipped"),
        }
    }
    // personality(2) takes an unsigned int: compare the low 32 bits.
    let personality = PERSONALITY_ALLOWED
        .iter()
        .map(|&v| condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
        .collect::<Result<Vec<_>, _>>()?;
    eperm.add_rule(
        libc::SYS_personality,
        SeccompRule::new(personality).map_err(SecurityError::SeccompCompile)?,
    );
    // One rule per flag: the rules of a syscall are ORed.
    for flag in CLONE_NS_FLAGS {
        let flag = flag as u64;
        let cond = condition(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )?;
        eperm.add_rule(
            libc::SYS_clone,
            SeccompRule::new(vec![cond]).map_err(SecurityError::SeccompCompile)?,
        );
    }
    let vsock = condition(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )?;
    eperm.add_rule(
        libc::SYS_socket,
        SeccompRule::new(vec![vsock]).map_err(SecurityError::SeccompCompile)?,
    );

    let mut enosys = ActionRules::new(SeccompAction::Errno(libc::ENOSYS as u32));
    enosys.add_any(libc::SYS_clone3);

    Profile {
        default: SeccompAction::Allow,
        groups: vec![eperm, enosys],
        flags: 0,
    }
    .compile()
}

/// Largest errno a seccomp ERRNO action can meaningfully return (MAX_ERRNO).
const MAX_ERRNO: u32 = 4095;

fn errno_value(errno_ret: Option<u32>, field: &str) -> Result<u32, SecurityError> {
    match errno_ret {
        None => Ok(libc::EPERM as u32),
        Some(v) if v <= MAX_ERRNO => Ok(v),
        Some(v) => Err(invalid(
            field,
            format!("{v} is not a valid errno (0 to {MAX_ERRNO})"),
        )),
    }
}

/// Maps an OCI action name (`SCMP_ACT_…`). `field` names the action, `errno_field` its errno.
fn action_from_name(
    name: &str,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<SeccompAction, SecurityError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno_value(errno_ret, errno_field)?),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno_value(errno_ret, errno_field)?),
        "SCMP_ACT_NOTIFY" => {
            return Err(invalid(
                field,
                "unsupported action SCMP_ACT_NOTIFY (flotilla runs no seccomp agent)",
            ))
        }
        other => return Err(invalid(field, format!("unknown action {other}"))),
    })
}

fn oci_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<SeccompAction, SecurityError> {
    action_from_name(&action.to_string(), errno_ret, field, errno_field)
}

/// A compiled argument condition; `Never` for a MASKED_EQ that cannot match (libseccomp
/// compares `(arg & value) == valueTwo`, so bits of valueTwo outside the mask never match).
enum Cond {
    Check(SeccompCondition),
    Never,
}

fn op_from_name(
    name: &str,
    index: u8,
    value: u64,
    value_two: Option<u64>,
    field: &str,
) -> Result<Cond, SecurityError> {
    let (op, operand) = match name {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, value),
        "SCMP_CMP_MASKED_EQ" => {
            let want = value_two.unwrap_or(0);
            if want & !value != 0 {
                return Ok(Cond::Never);
            }
            (SeccompCmpOp::MaskedEq(value), want)
        }
        other => return Err(invalid(field, format!("unknown operator {other}"))),
    };
    Ok(Cond::Check(condition(
        index,
        SeccompCmpArgLen::Qword,
        op,
        operand,
    )?))
}

fn oci_op(
    op: LinuxSeccompOperator,
    index: u8,
    value: u64,
    value_two: Option<u64>,
    field: &str,
) -> Result<Cond, SecurityError> {
    op_from_name(&op.to_string(), index, value, value_two, field)
}

/// Builds a program from `linux.seccomp`.
///
/// Supports `defaultAction` (+ `defaultErrnoRet`), `flags` (LOG and SPEC_ALLOW; TSYNC is moot in
/// a single-threaded init) and `syscalls[]` with names, action, `errnoRet` (default EPERM) and
/// args (EQ, NE, LT, LE, GT, GE, MASKED_EQ; 64-bit compares). Like runc, the args of one entry
/// are ANDed unless two of them test the same argument, in which case each arg becomes its own
/// rule (ORed); entries whose action equals the default are redundant and skipped; unknown
/// syscall names are skipped. `architectures` is ignored: the filter is x86_64 only.
pub fn seccomp_from_oci(s: &LinuxSeccomp) -> Result<SeccompProgram, SecurityError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SecurityError::UnsupportedArch);
    }
    let default = oci_action(
        s.default_action(),
        s.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let mut flags: libc::c_ulong = 0;
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags |= libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            other => tracing::debug!(flag = %other, "seccomp flag not needed here, ignored"),
        }
    }
    if let Some(archs) = s.architectures() {
        tracing::debug!(
            ?archs,
            "seccomp architectures ignored; filter is x86_64 only"
        );
    }

    let mut profile = Profile {
        default: default.clone(),
        groups: Vec::new(),
        flags,
    };
    for (i, entry) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let action = oci_action(
            entry.action(),
            entry.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;

        let args = entry.args().as_deref().unwrap_or_default();
        let mut conds = Vec::with_capacity(args.len());
        let mut seen = [false; 6];
        let mut repeated = false;
        for (j, arg) in args.iter().enumerate() {
            let arg_field = format!("{field}.args[{j}]");
            let index = arg.index();
            if index > 5 {
                return Err(invalid(
                    format!("{arg_field}.index"),
                    format!("{index} is out of range (0 to 5)"),
                ));
            }
            repeated |= std::mem::replace(&mut seen[index], true);
            conds.push(oci_op(
                arg.op(),
                index as u8,
                arg.value(),
                arg.value_two(),
                &format!("{arg_field}.op"),
            )?);
        }
        if action == default {
            tracing::debug!(
                entry = i,
                "seccomp entry repeats the default action, skipped"
            );
            continue;
        }

        // The rules this entry adds; None = unconditional.
        let mut rules: Vec<Option<SeccompRule>> = Vec::new();
        let compile_rule = |conds: Vec<SeccompCondition>| {
            SeccompRule::new(conds).map_err(SecurityError::SeccompCompile)
        };
        if conds.is_empty() {
            rules.push(None);
        } else if repeated {
            for cond in conds {
                if let Cond::Check(cond) = cond {
                    rules.push(Some(compile_rule(vec![cond])?));
                }
            }
        } else {
            let mut all = Vec::with_capacity(conds.len());
            let mut possible = true;
            for cond in conds {
                match cond {
                    Cond::Check(cond) => all.push(cond),
                    Cond::Never => possible = false,
                }
            }
            if possible {
                rules.push(Some(compile_rule(all)?));
            }
        }
        if rules.is_empty() {
            tracing::debug!(entry = i, "seccomp entry can never match, skipped");
            continue;
        }

        let group = profile.group(action);
        for name in entry.names() {
            let Some(nr) = syscall_number(name) else {
                tracing::debug!(syscall = %name, entry = i, "unknown syscall, skipped");
                continue;
            };
            for rule in &rules {
                match rule {
                    None => group.add_any(nr),
                    Some(rule) => group.add_rule(nr, rule.clone()),
                }
            }
        }
    }
    profile.compile()
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Installs the filters with `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// The kernel accepts a filter only with `no_new_privs` set or CAP_SYS_ADMIN in the effective
/// set. `seccompiler::apply_filter` always sets `no_new_privs` first; this sets it only when the
/// kernel refuses the filter without it (EACCES). So a caller that installs the filter while it
/// still holds CAP_SYS_ADMIN (as [`SecurityPlan::apply`] does when `no_new_privs` is off) keeps
/// setuid binaries working, and a caller that has already dropped CAP_SYS_ADMIN still gets the
/// filter, with `no_new_privs` switched on as a side effect.
pub fn apply_seccomp(p: &SeccompProgram) -> Result<(), SecurityError> {
    for filter in &p.filters {
        let prog = SockFprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr(),
        };
        let install = || {
            // SAFETY: `prog` points into `filter`, which outlives the call; the kernel copies it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    p.flags,
                    &prog as *const SockFprog,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(Errno::last())
            }
        };
        let result = match install() {
            Err(Errno::EACCES) => {
                set_no_new_privs()?;
                install()
            }
            other => other,
        };
        result.map_err(|source| SecurityError::Syscall {
            call: "seccomp(SECCOMP_SET_MODE_FILTER)",
            source,
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------------------------

/// One resource limit (`resource` is a `libc::RLIMIT_*` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

const RLIMITS: [(&str, i32); 16] = [
    ("RLIMIT_CPU", libc::RLIMIT_CPU as i32),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE as i32),
    ("RLIMIT_DATA", libc::RLIMIT_DATA as i32),
    ("RLIMIT_STACK", libc::RLIMIT_STACK as i32),
    ("RLIMIT_CORE", libc::RLIMIT_CORE as i32),
    ("RLIMIT_RSS", libc::RLIMIT_RSS as i32),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC as i32),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE as i32),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK as i32),
    ("RLIMIT_AS", libc::RLIMIT_AS as i32),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS as i32),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING as i32),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE as i32),
    ("RLIMIT_NICE", libc::RLIMIT_NICE as i32),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO as i32),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME as i32),
];

/// `libc::RLIMIT_*` value of an OCI rlimit type such as `"RLIMIT_NOFILE"` (exact spelling).
pub fn rlimit_from_name(name: &str) -> Option<i32> {
    RLIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

fn rlimit_name(resource: i32) -> &'static str {
    RLIMITS
        .iter()
        .find(|(_, r)| *r == resource)
        .map_or("an unknown resource", |(n, _)| n)
}

/// This process's (soft, hard) limit for `resource`.
fn own_limit(resource: i32) -> Result<(u64, u64), SecurityError> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit owned by this frame.
    let rc = unsafe { libc::getrlimit(resource as _, &mut current) };
    if rc != 0 {
        return Err(SecurityError::Syscall {
            call: "getrlimit",
            source: Errno::last(),
        });
    }
    Ok((current.rlim_cur, current.rlim_max))
}

/// Converts `process.rlimits`, refusing what `setrlimit` would refuse in the container: soft above
/// hard, and a hard limit above this process's own hard limit (raising a hard limit needs
/// CAP_SYS_RESOURCE, which the agent does not have). Duplicate types are an error.
pub fn rlimits_from_oci(list: &[PosixRlimit]) -> Result<Vec<Rlimit>, SecurityError> {
    let mut out: Vec<Rlimit> = Vec::with_capacity(list.len());
    for (i, limit) in list.iter().enumerate() {
        let field = format!("process.rlimits[{i}]");
        let name = limit.typ().to_string();
        let resource = rlimit_from_name(&name)
            .ok_or_else(|| invalid(format!("{field}.type"), format!("unknown {name}")))?;
        if let Some(j) = out.iter().position(|r| r.resource == resource) {
            return Err(invalid(
                format!("{field}.type"),
                format!("{name} is already set by process.rlimits[{j}]"),
            ));
        }
        let (soft, hard) = (limit.soft(), limit.hard());
        if soft > hard {
            return Err(invalid(
                format!("{field}.soft"),
                format!(
                    "soft limit {} is above the hard limit {}",
                    Lim(soft),
                    Lim(hard)
                ),
            ));
        }
        let (_, own_hard) = own_limit(resource)?;
        if hard > own_hard {
            return Err(invalid(
                format!("{field}.hard"),
                format!(
                    "{name} hard limit {} is above this process's own hard limit {} \
                     (raising it needs CAP_SYS_RESOURCE)",
                    Lim(hard),
                    Lim(own_hard)
                ),
            ));
        }
        out.push(Rlimit {
            resource,
            soft,
            hard,
        });
    }
    Ok(out)
}

/// runc's template: RLIMIT_NOFILE 1024/1024, lowered to this process's own hard limit if that
/// is smaller.
pub fn default_rlimits() -> Vec<Rlimit> {
    let resource = libc::RLIMIT_NOFILE as i32;
    let limit = match own_limit(resource) {
        Ok((_, own_hard)) => own_hard.min(1024),
        Err(_) => 1024,
    };
    vec![Rlimit {
        resource,
        soft: limit,
        hard: limit,
    }]
}

/// Sets each limit with `setrlimit`.
pub fn apply_rlimits(l: &[Rlimit]) -> Result<(), SecurityError> {
    for limit in l {
        let value = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: `value` is a valid rlimit owned by this frame.
        let rc = unsafe { libc::setrlimit(limit.resource as _, &value) };
        if rc != 0 {
            return Err(SecurityError::Rlimit {
                resource: limit.resource,
                soft: limit.soft,
                hard: limit.hard,
                source: Errno::last(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Plan: everything prepared in the parent, applied in order in the child
// ---------------------------------------------------------------------------------------------

/// The isolation settings of one container process, prepared before the clone.
#[derive(Debug, Clone)]
pub struct SecurityPlan {
    pub caps: CapSets,
    /// From [`read_last_cap`].
    pub last_cap: u32,
    pub no_new_privs: bool,
    /// `None` runs unconfined.
    pub seccomp: Option<SeccompProgram>,
    pub rlimits: Vec<Rlimit>,
}

impl SecurityPlan {
    /// reliability.md §3: Docker's capabilities, `no_new_privs`, the default seccomp filter and
    /// RLIMIT_NOFILE 1024/1024.
    pub fn flotilla_default() -> Result<Self, SecurityError> {
        Ok(SecurityPlan {
            caps: CapSets::docker_default(),
            last_cap: read_last_cap(),
            no_new_privs: true,
            seccomp: Some(default_seccomp()?),
            rlimits: default_rlimits(),
        })
    }

    /// Applies the plan in the container init, after `setuid` (with `PR_SET_KEEPCAPS` held
    /// across it) and just before `execve`. Syscalls only.
    ///
    /// Order: rlimits; then, without `no_new_privs`, seccomp while CAP_SYS_ADMIN is still
    /// effective (restored from the permitted set if `setuid` cleared it; the filter must then
    /// allow `capset` and `prctl`), so `no_new_privs` stays off; capabilities; then
    /// `no_new_privs` and seccomp last, so the filter covers as little of the setup as possible.
    pub fn apply(&self) -> Result<(), SecurityError> {
        apply_rlimits(&self.rlimits)?;
        if !self.no_new_privs {
            if let Some(seccomp) = &self.seccomp {
                raise_effective()?;
                apply_seccomp(seccomp)?;
            }
        }
        apply_caps(&self.caps, self.last_cap)?;
        if self.no_new_privs {
            set_no_new_privs()?;
            if let Some(seccomp) = &self.seccomp {
                apply_seccomp(seccomp)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw-JSON validation
// ---------------------------------------------------------------------------------------------

/// Checks the names in a raw `config.json` that oci-spec parses into enums: capability names,
/// rlimit types, seccomp actions and operators. Typed deserialization rejects an unknown name
/// without saying where; call this first to get an error naming the field, such as
/// `linux.seccomp.syscalls[3].action: unknown action SCMP_ACT_FOO`.
pub fn validate_spec_json(spec: &serde_json::Value) -> Result<(), SecurityError> {
    fn present<'a>(v: &'a serde_json::Value, pointer: &str) -> Option<&'a serde_json::Value> {
        v.pointer(pointer).filter(|v| !v.is_null())
    }
    fn array<'a>(
        v: &'a serde_json::Value,
        field: &str,
    ) -> Result<&'a Vec<serde_json::Value>, SecurityError> {
        v.as_array()
            .ok_or_else(|| invalid(field, "expected an array"))
    }
    fn string<'a>(v: &'a serde_json::Value, field: &str) -> Result<&'a str, SecurityError> {
        v.as_str()
            .ok_or_else(|| invalid(field, "expected a string"))
    }

    for set in [
        "bounding",
        "effective",
        "inheritable",
        "permitted",
        "ambient",
    ] {
        let Some(list) = present(spec, &format!("/process/capabilities/{set}")) else {
            continue;
        };
        let field = format!("process.capabilities.{set}");
        for (i, name) in array(list, &field)?.iter().enumerate() {
            let field = format!("{field}[{i}]");
            cap_from_name(string(name, &field)?).map_err(|e| invalid(&field, e.to_string()))?;
        }
    }

    if let Some(list) = present(spec, "/process/rlimits") {
        for (i, limit) in array(list, "process.rlimits")?.iter().enumerate() {
            let field = format!("process.rlimits[{i}].type");
            let name = string(
                limit.get("type").unwrap_or(&serde_json::Value::Null),
                &field,
            )?;
            if rlimit_from_name(name).is_none() {
                return Err(invalid(field, format!("unknown {name}")));
            }
        }
    }

    if let Some(seccomp) = present(spec, "/linux/seccomp") {
        let field = "linux.seccomp.defaultAction";
        let name = string(
            seccomp
                .get("defaultAction")
                .unwrap_or(&serde_json::Value::Null),
            field,
        )?;
        action_from_name(name, None, field, "linux.seccomp.defaultErrnoRet")?;
        if let Some(list) = present(seccomp, "/syscalls") {
            for (i, entry) in array(list, "linux.seccomp.syscalls")?.iter().enumerate() {
                let field = format!("linux.seccomp.syscalls[{i}].action");
                let name = string(
                    entry.get("action").unwrap_or(&serde_json::Value::Null),
                    &field,
                )?;
                action_from_name(name, None, &field, &field)?;
                let Some(args) = present(entry, "/args") else {
                    continue;
                };
                let args_field = format!("linux.seccomp.syscalls[{i}].args");
                for (j, arg) in array(args, &args_field)?.iter().enumerate() {
                    let field = format!("{args_field}[{j}].op");
                    let name = string(arg.get("op").unwrap_or(&serde_json::Value::Null), &field)?;
                    op_from_name(name, 0, 0, None, &field)?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// x86_64 syscall table
// ---------------------------------------------------------------------------------------------

/// x86_64 syscall numbers by name, sorted by name (arch/x86/entry/syscalls/syscall_64.tbl up to
/// 470, kernel 6.18; x32-only entries excluded).
#[cfg(target_arch = "x86_64")]
const X86_64_SYSCALLS: &[(&str, i64)] = &[
    ("_sysctl", 156),
    ("accept", 43),
    ("accept4", 288),
    ("access", 21),
    ("acct", 163),
    ("add_key", 248),
    ("adjtimex", 159),
    ("afs_syscall", 183),
    ("alarm", 37),
    ("arch_prctl", 158),
    ("bind", 49),
    ("bpf", 321),
    ("brk", 12),
    ("cachestat", 451),
    ("capget", 125),
    ("capset", 126),
    ("chdir", 80),
    ("chmod", 90),
    ("chown", 92),
    ("chroot", 161),
    ("clock_adjtime", 305),
    ("clock_getres", 229),
    ("clock_gettime", 228),
    ("clock_nanosleep", 230),
    ("clock_settime", 227),
    ("clone", 56),
    ("clone3", 435),
    ("close", 3),
    ("close_range", 436),
    ("connect", 42),
    ("copy_file_range", 326),
    ("creat", 85),
    ("create_module", 174),
    ("delete_module", 176),
    ("dup", 32),
    ("dup2", 33),
    ("dup3", 292),
    ("epoll_create", 213),
    ("epoll_create1", 291),
    ("epoll_ctl", 233),
    ("epoll_ctl_old", 214),
    ("epoll_pwait", 281),
    ("epoll_pwait2", 441),
    ("epoll_wait", 232),
    ("epoll_wait_old", 215),
    ("eventfd", 284),
    ("eventfd2", 290),
    ("execve", 59),
    ("execveat", 322),
    ("exit", 60),
    ("exit_group", 231),
    ("faccessat", 269),
    ("faccessat2", 439),
    ("fadvise64", 221),
    ("fallocate", 285),
    ("fanotify_init", 300),
    ("fanotify_mark", 301),
    ("fchdir", 81),
    ("fchmod", 91),
    ("fchmodat", 268),
    ("fchmodat2", 452),
    ("fchown", 93),
    ("fchownat", 260),
    ("fcntl", 72),
    ("fdatasync", 75),
    ("fgetxattr", 193),
    ("file_getattr", 468),
    ("file_setattr", 469),
    ("finit_module", 313),
    ("flistxattr", 196),
    ("flock", 73),
    ("fork", 57),
    ("fremovexattr", 199),
    ("fsconfig", 431),
    ("fsetxattr", 190),
    ("fsmount", 432),
    ("fsopen", 430),
    ("fspick", 433),
    ("fstat", 5),
    ("fstatfs", 138),
    ("fsync", 74),
    ("ftruncate", 77),
    ("futex", 202),
    ("futex_requeue", 456),
    ("futex_wait", 455),
    ("futex_waitv", 449),
    ("futex_wake", 454),
    ("futimesat", 261),
    ("get_kernel_syms", 177),
    ("get_mempolicy", 239),
    ("get_robust_list", 274),
    ("get_thread_area", 211),
    ("getcpu", 309),
    ("getcwd", 79),
    ("getdents", 78),
    ("getdents64", 217),
    ("getegid", 108),
    ("geteuid", 107),
    ("getgid", 104),
    ("getgroups", 115),
    ("getitimer", 36),
    ("getpeername", 52),
    ("getpgid", 121),
    ("getpgrp", 111),
    ("getpid", 39),
    ("getpmsg", 181),
    ("getppid", 110),
    ("getpriority", 140),
    ("getrandom", 318),
    ("getresgid", 120),
    ("getresuid", 118),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("getsid", 124),
    ("getsockname", 51),
    ("getsockopt", 55),
    ("gettid", 186),
    ("gettimeofday", 96),
    ("getuid", 102),
    ("getxattr", 191),
    ("getxattrat", 464),
    ("init_module", 175),
    ("inotify_add_watch", 254),
    ("inotify_init", 253),
    ("inotify_init1", 294),
    ("inotify_rm_watch", 255),
    ("io_cancel", 210),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_pgetevents", 333),
    ("io_setup", 206),
    ("io_submit", 209),
    ("io_uring_enter", 426),
    ("io_uring_register", 427),
    ("io_uring_setup", 425),
    ("ioctl", 16),
    ("ioperm", 173),
    ("iopl", 172),
    ("ioprio_get", 252),
    ("ioprio_set", 251),
    ("kcmp", 312),
    ("kexec_file_load", 320),
    ("kexec_load", 246),
    ("keyctl", 250),
    ("kill", 62),
    ("landlock_add_rule", 445),
    ("landlock_create_ruleset", 444),
    ("landlock_restrict_self", 446),
    ("lchown", 94),
    ("lgetxattr", 192),
    ("link", 86),
    ("linkat", 265),
    ("listen", 50),
    ("listmount", 458),
    ("listns", 470),
    ("listxattr", 194),
    ("listxattrat", 465),
    ("llistxattr", 195),
    ("lookup_dcookie", 212),
    ("lremovexattr", 198),
    ("lseek", 8),
    ("lsetxattr", 189),
    ("lsm_get_self_attr", 459),
    ("lsm_list_modules", 461),
    ("lsm_set_self_attr", 460),
    ("lstat", 6),
    ("madvise", 28),
    ("map_shadow_stack", 453),
    ("mbind", 237),
    ("membarrier", 324),
    ("memfd_create", 319),
    ("memfd_secret", 447),
    ("migrate_pages", 256),
    ("mincore", 27),
    ("mkdir", 83),
    ("mkdirat", 258),
    ("mknod", 133),
    ("mknodat", 259),
    ("mlock", 149),
    ("mlock2", 325),
    ("mlockall", 151),
    ("mmap", 9),
    ("modify_ldt", 154),
    ("mount", 165),
    ("mount_setattr", 442),
    ("move_mount", 429),
    ("move_pages", 279),
    ("mprotect", 10),
    ("mq_getsetattr", 245),
    ("mq_notify", 244),
    ("mq_open", 240),
    ("mq_timedreceive", 243),
    ("mq_timedsend", 242),
    ("mq_unlink", 241),
    ("mremap", 25),
    ("mseal", 462),
    ("msgctl", 71),
    ("msgget", 68),
    ("msgrcv", 70),
    ("msgsnd", 69),
    ("msync", 26),
    ("munlock", 150),
    ("munlockall", 152),
    ("munmap", 11),
    ("name_to_handle_at", 303),
    ("nanosleep", 35),
    ("newfstatat", 262),
    ("nfsservctl", 180),
    ("open", 2),
    ("open_by_handle_at", 304),
    ("open_tree", 428),
    ("open_tree_attr", 467),
    ("openat", 257),
    ("openat2", 437),
    ("pause", 34),
    ("perf_event_open", 298),
    ("personality", 135),
    ("pidfd_getfd", 438),
    ("pidfd_open", 434),
    ("pidfd_send_signal", 424),
    ("pipe", 22),
    ("pipe2", 293),
    ("pivot_root", 155),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("pkey_mprotect", 329),
    ("poll", 7),
    ("ppoll", 271),
    ("prctl", 157),
    ("pread64", 17),
    ("preadv", 295),
    ("preadv2", 327),
    ("prlimit64", 302),
    ("process_madvise", 440),
    ("process_mrelease", 448),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("pselect6", 270),
    ("ptrace", 101),
    ("putpmsg", 182),
    ("pwrite64", 18),
    ("pwritev", 296),
    ("pwritev2", 328),
    ("query_module", 178),
    ("quotactl", 179),
    ("quotactl_fd", 443),
    ("read", 0),
    ("readahead", 187),
    ("readlink", 89),
    ("readlinkat", 267),
    ("readv", 19),
    ("reboot", 169),
    ("recvfrom", 45),
    ("recvmmsg", 299),
    ("recvmsg", 47),
    ("remap_file_pages", 216),
    ("removexattr", 197),
    ("removexattrat", 466),
    ("rename", 82),
    ("renameat", 264),
    ("renameat2", 316),
    ("request_key", 249),
    ("restart_syscall", 219),
    ("rmdir", 84),
    ("rseq", 334),
    ("rt_sigaction", 13),
    ("rt_sigpending", 127),
    ("rt_sigprocmask", 14),
    ("rt_sigqueueinfo", 129),
    ("rt_sigreturn", 15),
    ("rt_sigsuspend", 130),
    ("rt_sigtimedwait", 128),
    ("rt_tgsigqueueinfo", 297),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_getaffinity", 204),
    ("sched_getattr", 315),
    ("sched_getparam", 143),
    ("sched_getscheduler", 145),
    ("sched_rr_get_interval", 148),
    ("sched_setaffinity", 203),
    ("sched_setattr", 314),
    ("sched_setparam", 142),
    ("sched_setscheduler", 144),
    ("sched_yield", 24),
    ("seccomp", 317),
    ("security", 185),
    ("select", 23),
    ("semctl", 66),
    ("semget", 64),
    ("semop", 65),
    ("semtimedop", 220),
    ("sendfile", 40),
    ("sendmmsg", 307),
    ("sendmsg", 46),
    ("sendto", 44),
    ("set_mempolicy", 238),
    ("set_mempolicy_home_node", 450),
    ("set_robust_list", 273),
    ("set_thread_area", 205),
    ("set_tid_address", 218),
    ("setdomainname", 171),
    ("setfsgid", 123),
    ("setfsuid", 122),
    ("setgid", 106),
    ("setgroups", 116),
    ("sethostname", 170),
    ("setitimer", 38),
    ("setns", 308),
    ("setpgid", 109),
    ("setpriority", 141),
    ("setregid", 114),
    ("setresgid", 119),
    ("setresuid", 117),
    ("setreuid", 113),
    ("setrlimit", 160),
    ("setsid", 112),
    ("setsockopt", 54),
    ("settimeofday", 164),
    ("setuid", 105),
    ("setxattr", 188),
    ("setxattrat", 463),
    ("shmat", 30),
    ("shmctl", 31),
    ("shmdt", 67),
    ("shmget", 29),
    ("shutdown", 48),
    ("sigaltstack", 131),
    ("signalfd", 282),
    ("signalfd4", 289),
    ("socket", 41),
    ("socketpair", 53),
    ("splice", 275),
    ("stat", 4),
    ("statfs", 137),
    ("statmount", 457),
    ("statx", 332),
    ("swapoff", 168),
    ("swapon", 167),
    ("symlink", 88),
    ("symlinkat", 266),
    ("sync", 162),
    ("sync_file_range", 277),
    ("syncfs", 306),
    ("sysfs", 139),
    ("sysinfo", 99),
    ("syslog", 103),
    ("tee", 276),
    ("tgkill", 234),
    ("time", 201),
    ("timer_create", 222),
    ("timer_delete", 226),
    ("timer_getoverrun", 225),
    ("timer_gettime", 224),
    ("timer_settime", 223),
    ("timerfd_create", 283),
    ("timerfd_gettime", 287),
    ("timerfd_settime", 286),
    ("times", 100),
    ("tkill", 200),
    ("truncate", 76),
    ("tuxcall", 184),
    ("umask", 95),
    ("umount2", 166),
    ("uname", 63),
    ("unlink", 87),
    ("unlinkat", 263),
    ("unshare", 272),
    ("uretprobe", 335),
    ("uselib", 134),
    ("userfaultfd", 323),
    ("ustat", 136),
    ("utime", 132),
    ("utimensat", 280),
    ("utimes", 235),
    ("vfork", 58),
    ("vhangup", 153),
    ("vmsplice", 278),
    ("vserver", 236),
    ("wait4", 61),
    ("waitid", 247),
    ("write", 1),
    ("writev", 20),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // ---- capabilities -----------------------------------------------------------------------

    #[test]
    fn cap_from_name_accepts_prefix_bare_and_any_case() {
        assert_eq!(cap_from_name("CAP_SYS_ADMIN").unwrap(), 21);
        assert_eq!(cap_from_name("SYS_ADMIN").unwrap(), 21);
        assert_eq!(cap_from_name("cap_sys_admin").unwrap(), 21);
        assert_eq!(cap_from_name("Sys_Admin").unwrap(), 21);
        assert_eq!(cap_from_name("CAP_CHOWN").unwrap(), 0);
        assert_eq!(cap_from_name("checkpoint_restore").unwrap(), 40);
        assert_eq!(cap_name(21), Some("CAP_SYS_ADMIN"));
    }

    #[test]
    fn cap_from_name_rejects_unknown_naming_it() {
        for bad in ["CAP_FOO", "", "CAP_", "CAP_CAP_CHOWN", "SYS_ADMIN ", "ÿÿÿÿ"] {
            let err = cap_from_name(bad).unwrap_err();
            assert!(matches!(err, SecurityError::UnknownCapability(ref n) if n == bad));
        }
        assert_eq!(
            cap_from_name("CAP_FOO").unwrap_err().to_string(),
            "unknown capability \"CAP_FOO\""
        );
    }

    #[test]
    fn cap_names_agree_with_oci_spec() {
        for (n, name) in CAP_NAMES.iter().enumerate() {
            let cap: oci_spec::runtime::Capability = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(cap_from_name(&cap.to_string()).unwrap(), n as u32, "{name}");
        }
    }

    #[test]
    fn docker_default_is_the_14_caps() {
        let caps = CapSets::docker_default();
        assert_eq!(caps.bounding, 0xa804_25fb);
        assert_eq!(caps.effective, 0xa804_25fb);
        assert_eq!(caps.permitted, 0xa804_25fb);
        assert_eq!(caps.inheritable, 0);
        assert_eq!(caps.ambient, 0);
        assert_eq!(caps.bounding.count_ones(), 14);
    }

    fn oci_caps(v: serde_json::Value) -> LinuxCapabilities {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn caps_from_oci_converts_each_set() {
        let caps = oci_caps(json!({
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
            "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["NET_BIND_SERVICE"]
        }));
        let sets = CapSets::from_oci(&caps).unwrap();
        let (kill, nbs, audit) = (1u64 << 5, 1u64 << 10, 1u64 << 29);
        assert_eq!(
            sets,
            CapSets {
                bounding: kill | nbs | audit,
                effective: kill | nbs,
                permitted: kill | nbs,
                inheritable: nbs,
                ambient: nbs,
            }
        );
        // Missing sets are empty.
        let sets = CapSets::from_oci(&oci_caps(json!({"bounding": ["CAP_KILL"]}))).unwrap();
        assert_eq!(
            sets,
            CapSets {
                bounding: kill,
                ..CapSets::default()
            }
        );
    }

    #[test]
    fn caps_from_oci_rejects_sets_the_kernel_refuses() {
        let err = CapSets::from_oci(&oci_caps(json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL"]
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.capabilities.effective: CAP_CHOWN not in the permitted set"
        );

        let err = CapSets::from_oci(&oci_caps(json!({
            "bounding": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_NET_RAW"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL", "CAP_NET_RAW"]
        })))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.capabilities.ambient: CAP_NET_RAW not in both the permitted and the \
             inheritable set"
        );

        let err = CapSets::from_oci(&oci_caps(json!({
            "bounding": ["CAP_KILL"],
            "inheritable": ["CAP_SYS_ADMIN"]
        })))
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("process.capabilities.inheritable: CAP_SYS_ADMIN not in the bounding"));
    }

    #[test]
    fn syscall_errors_keep_errno_as_source_only() {
        let err = SecurityError::Capability {
            call: "prctl(PR_CAPBSET_DROP)",
            cap: 21,
            source: Errno::EPERM,
        };
        assert_eq!(
            err.to_string(),
            "prctl(PR_CAPBSET_DROP) failed for CAP_SYS_ADMIN"
        );
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(source.to_string(), Errno::EPERM.to_string());
        let err = SecurityError::Rlimit {
            resource: libc::RLIMIT_NOFILE as i32,
            soft: 10,
            hard: libc::RLIM_INFINITY,
            source: Errno::EPERM,
        };
        assert_eq!(
            err.to_string(),
            "setrlimit RLIMIT_NOFILE (soft 10, hard unlimited) failed"
        );
    }

    #[test]
    fn read_last_cap_is_plausible() {
        let last = read_last_cap();
        assert!((36..=63).contains(&last), "{last}");
    }

    // ---- rlimits ----------------------------------------------------------------------------

    fn oci_rlimits(v: serde_json::Value) -> Vec<PosixRlimit> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rlimits_from_oci_converts() {
        let (_, own_hard) = own_limit(libc::RLIMIT_NOFILE as i32).unwrap();
        let want = own_hard.min(64);
        let list = oci_rlimits(json!([
            {"type": "RLIMIT_NOFILE", "soft": want, "hard": want},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        ]));
        assert_eq!(
            rlimits_from_oci(&list).unwrap(),
            vec![
                Rlimit {
                    resource: libc::RLIMIT_NOFILE as i32,
                    soft: want,
                    hard: want
                },
                Rlimit {
                    resource: libc::RLIMIT_CORE as i32,
                    soft: 0,
                    hard: 0
                },
            ]
        );
    }

    #[test]
    fn rlimits_from_oci_rejects_hard_above_own_hard_limit() {
        let (_, own_hard) = own_limit(libc::RLIMIT_NOFILE as i32).unwrap();
        if own_hard == libc::RLIM_INFINITY {
            eprintln!("own RLIMIT_NOFILE hard limit is unlimited, nothing to exceed");
            return;
        }
        let list = oci_rlimits(json!([
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
            {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": own_hard + 1},
        ]));
        let err = rlimits_from_oci(&list).unwrap_err();
        assert!(matches!(err, SecurityError::InvalidSpec { ref field, .. }
            if field == "process.rlimits[1].hard"));
        let text = err.to_string();
        assert!(text.starts_with("process.rlimits[1].hard: RLIMIT_NOFILE hard limit"));
        assert!(text.contains(&(own_hard + 1).to_string()), "{text}");
        assert!(
            text.contains(&format!("own hard limit {own_hard}")),
            "{text}"
        );
    }

    #[test]
    fn rlimits_from_oci_rejects_soft_above_hard_and_duplicates() {
        let list = oci_rlimits(json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 10}]));
        assert_eq!(
            rlimits_from_oci(&list).unwrap_err().to_string(),
            "process.rlimits[0].soft: soft limit 100 is above the hard limit 10"
        );
        let list = oci_rlimits(json!([
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        ]));
        assert_eq!(
            rlimits_from_oci(&list).unwrap_err().to_string(),
            "process.rlimits[1].type: RLIMIT_CORE is already set by process.rlimits[0]"
        );
    }

    #[test]
    fn rlimit_names_agree_with_oci_spec() {
        for (name, resource) in RLIMITS {
            let typ: oci_spec::runtime::PosixRlimitType =
                serde_json::from_value(json!(name)).unwrap();
            assert_eq!(rlimit_from_name(&typ.to_string()), Some(resource), "{name}");
        }
        assert_eq!(rlimit_from_name("RLIMIT_FOO"), None);
    }

    #[test]
    fn default_rlimits_is_nofile_1024_within_own_limit() {
        let (_, own_hard) = own_limit(libc::RLIMIT_NOFILE as i32).unwrap();
        let want = own_hard.min(1024);
        assert_eq!(
            default_rlimits(),
            vec![Rlimit {
                resource: libc::RLIMIT_NOFILE as i32,
                soft: want,
                hard: want
            }]
        );
    }

    // ---- seccomp (compile only) -------------------------------------------------------------

    fn oci_seccomp(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn syscall_table_is_sorted_and_matches_libc() {
        for pair in X86_64_SYSCALLS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} / {}", pair[0].0, pair[1].0);
        }
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("mount", libc::SYS_mount),
            ("clone", libc::SYS_clone),
            ("clone3", libc::SYS_clone3),
            ("personality", libc::SYS_personality),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("mseal", libc::SYS_mseal),
            ("_sysctl", libc::SYS__sysctl),
        ] {
            assert_eq!(syscall_number(name), Some(nr), "{name}");
        }
        assert_eq!(syscall_number("open_tree_attr"), Some(467));
        assert_eq!(syscall_number("no_such_syscall"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_deny_names_resolve_except_32_bit_only_ones() {
        let missing: Vec<_> = DEFAULT_DENY
            .iter()
            .filter(|name| syscall_number(name).is_none())
            .collect();
        assert_eq!(missing, [&"stime", &"vm86", &"vm86old"]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_seccomp_per_action_builds_guard_eperm_and_enosys_filters() {
        let prog = default_seccomp_per_action().unwrap();
        assert_eq!(prog.filters().len(), 3);
        assert_eq!(prog.filters()[0], x32_guard());
        assert_eq!(prog.flags(), 0);
    }

    /// A classic BPF interpreter for seccomp programs (the instructions seccompiler and
    /// `compile_tree` emit); panics on anything else so a new opcode cannot pass unnoticed.
    fn bpf_run(prog: &[sock_filter], data: &[u8; 64]) -> u32 {
        let word =
            |k: u32| u32::from_ne_bytes(data[k as usize..k as usize + 4].try_into().unwrap());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(i.k),      // ld w abs
                0x00 => a = i.k,            // ld imm
                0x54 => a &= i.k,           // alu and k
                0x06 => return i.k,         // ret k
                0x16 => return a,           // ret a
                0x05 => pc += i.k as usize, // ja
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                c => panic!("opcode {c:#x} not interpreted"),
            }
        }
    }

    /// What the kernel returns with all of `p`'s programs installed: the most severe action;
    /// among equals, the program installed last.
    fn seccomp_verdict(p: &SeccompProgram, arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let mut best: Option<u32> = None;
        for f in p.filters().iter().rev() {
            let r = bpf_run(f, &data);
            let action = |v: u32| (v & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if best.is_none_or(|b| action(r) < action(b)) {
                best = Some(r);
            }
        }
        best.unwrap()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_seccomp_is_one_program_deciding_like_the_per_action_ones() {
        let tree = default_seccomp().unwrap();
        let reference = default_seccomp_per_action().unwrap();
        assert_eq!(tree.filters().len(), 1);
        assert_eq!(tree.flags(), reference.flags());
        // Much shorter to run: at most a dozen or so jumps to any verdict.
        assert!(tree.filters()[0].len() < 300, "{}", tree.filters()[0].len());
        let mut args: Vec<u64> = vec![0, 1, 8, 0x20000, 0x20008, 0xffff_ffff, 0x1_0000_0000];
        args.push(0x1_0000_0008);
        args.push(libc::AF_VSOCK as u64);
        args.push(libc::AF_VSOCK as u64 | 1 << 40);
        args.push(libc::AF_INET as u64);
        args.push(libc::CLONE_VM as u64 | libc::CLONE_FS as u64);
        for f in CLONE_NS_FLAGS {
            args.push(f as u64);
            args.push(f as u64 | libc::SIGCHLD as u64);
            args.push((f as u64) << 32);
        }
        let nrs: Vec<u32> = (0..1024)
            .chain([X32_SYSCALL_BIT - 1, X32_SYSCALL_BIT, X32_SYSCALL_BIT + 2])
            .chain([X32_SYSCALL_BIT + 165, 0x7fff_ffff, 0x8000_0000, u32::MAX])
            .collect();
        let mut checked = 0;
        for arch in [AUDIT_ARCH_X86_64, 0x4000_0003 /* i386 */, 0, u32::MAX] {
            for &nr in &nrs {
                for &a in &args {
                    assert_eq!(
                        seccomp_verdict(&tree, arch, nr, a),
                        seccomp_verdict(&reference, arch, nr, a),
                        "arch {arch:#x} nr {nr} arg0 {a:#x}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000);
        // And the verdicts are the intended ones, not just equal.
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let v = |nr: i64, a: u64| seccomp_verdict(&tree, AUDIT_ARCH_X86_64, nr as u32, a);
        assert_eq!(v(libc::SYS_mount, 0), eperm);
        assert_eq!(v(libc::SYS_read, 0), libc::SECCOMP_RET_ALLOW);
        assert_eq!(v(libc::SYS_clone3, 0), enosys);
        assert_eq!(v(libc::SYS_clone, libc::CLONE_NEWNET as u64), eperm);
        assert_eq!(
            v(libc::SYS_clone, libc::SIGCHLD as u64),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(v(libc::SYS_personality, 0x20008), libc::SECCOMP_RET_ALLOW);
        assert_eq!(v(libc::SYS_personality, 0x1), eperm);
        assert_eq!(v(libc::SYS_socket, libc::AF_VSOCK as u64), eperm);
        assert_eq!(v(X32_SYSCALL_BIT as i64, 0), enosys);
        assert_eq!(
            seccomp_verdict(&tree, 0x4000_0003, 3, 0),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_from_oci_rejects_notify_naming_the_field() {
        let s = oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"},
            ]
        }));
        assert_eq!(
            seccomp_from_oci(&s).unwrap_err().to_string(),
            "linux.seccomp.syscalls[1].action: unsupported action SCMP_ACT_NOTIFY \
             (flotilla runs no seccomp agent)"
        );
        let s = oci_seccomp(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(seccomp_from_oci(&s)
            .unwrap_err()
            .to_string()
            .starts_with("linux.seccomp.defaultAction: unsupported action SCMP_ACT_NOTIFY"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_from_oci_rejects_bad_args_and_errno() {
        let s = oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                   {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert_eq!(
            seccomp_from_oci(&s).unwrap_err().to_string(),
            "linux.seccomp.syscalls[0].args[1].index: 6 is out of range (0 to 5)"
        );
        let s = oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]
        }));
        assert_eq!(
            seccomp_from_oci(&s).unwrap_err().to_string(),
            "linux.seccomp.syscalls[0].errnoRet: 70000 is not a valid errno (0 to 4095)"
        );
    }

    #[test]
    fn unknown_action_and_operator_names_the_field() {
        let err = action_from_name(
            "SCMP_ACT_FOO",
            None,
            "linux.seccomp.syscalls[3].action",
            "x",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.seccomp.syscalls[3].action: unknown action SCMP_ACT_FOO"
        );
        let Err(err) = op_from_name("SCMP_CMP_FOO", 0, 0, None, "f.op") else {
            panic!("accepted an unknown operator");
        };
        assert_eq!(err.to_string(), "f.op: unknown operator SCMP_CMP_FOO");
    }

    #[test]
    fn every_oci_action_and_operator_is_mapped() {
        for name in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_LOG",
            "SCMP_ACT_ALLOW",
        ] {
            let action: LinuxSeccompAction = serde_json::from_value(json!(name)).unwrap();
            assert!(
                oci_action(action, Some(1), "f", "g").is_ok(),
                "{name} not mapped"
            );
        }
        for name in [
            "SCMP_CMP_NE",
            "SCMP_CMP_LT",
            "SCMP_CMP_LE",
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_MASKED_EQ",
        ] {
            let op: LinuxSeccompOperator = serde_json::from_value(json!(name)).unwrap();
            assert!(oci_op(op, 0, 1, Some(1), "f").is_ok(), "{name} not mapped");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_from_oci_compiles_a_docker_sized_allowlist() {
        let names: Vec<&str> = X86_64_SYSCALLS.iter().map(|(n, _)| *n).collect();
        let s = oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": names, "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["no_such_call"], "action": "SCMP_ACT_KILL_PROCESS"},
            ]
        }));
        let prog = seccomp_from_oci(&s).unwrap();
        // allowlist filter + ENOSYS filter; the EPERM entry repeats the default; the
        // kill entry names no known syscall.
        assert_eq!(prog.filters().len(), 2);
        assert_eq!(prog.flags(), libc::SECCOMP_FILTER_FLAG_LOG);
        assert!(prog.filters().iter().all(|f| f.len() < 4096));
    }

    #[test]
    fn validate_spec_json_names_the_field() {
        let ok = json!({
            "process": {
                "capabilities": {"bounding": ["CAP_KILL", "net_raw"], "ambient": null},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_GE"}]}
            ]}}
        });
        validate_spec_json(&ok).unwrap();
        validate_spec_json(&json!({})).unwrap();

        let cases = [
            (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["b"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["c"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["d"], "action": "SCMP_ACT_FOO"}]}}}),
                "linux.seccomp.syscalls[3].action: unknown action SCMP_ACT_FOO",
            ),
            (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_BAR"}}}),
                "linux.seccomp.defaultAction: unknown action SCMP_ACT_BAR",
            ),
            (
                json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                    {"names": ["a"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                              {"index": 1, "value": 0, "op": "SCMP_CMP_SIMILAR"}]}]}}}),
                "linux.seccomp.syscalls[0].args[1].op: unknown operator SCMP_CMP_SIMILAR",
            ),
            (
                json!({"process": {"rlimits": [{"type": "RLIMIT_FOO", "hard": 1, "soft": 1}]}}),
                "process.rlimits[0].type: unknown RLIMIT_FOO",
            ),
            (
                json!({"process": {"capabilities": {"effective": ["CAP_KILL", "CAP_FLY"]}}}),
                "process.capabilities.effective[1]: unknown capability \"CAP_FLY\"",
            ),
            (
                json!({"process": {"capabilities": {"effective": [7]}}}),
                "process.capabilities.effective[0]: expected a string",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(validate_spec_json(&spec).unwrap_err().to_string(), want);
        }
    }

    // ---- live tests: forked children ---------------------------------------------------------
    //
    // cargo runs tests on threads, so the children are made with libc::fork() and only issue
    // syscalls (no allocation, no locks) before libc::_exit. A failed check reports its source
    // line and values through a pipe.

    /// Whether live tests can run: root required; outside CI they are skipped otherwise.
    fn live_allowed() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("live security tests need root (CI=true)");
        }
        eprintln!("skipped: live security tests need root");
        false
    }

    /// A failed check in a child. `kind` 0: syscall (`got` = return value, `other` = errno);
    /// 1: value (`got` vs expected `other`); 2: apply function error (`other` = errno).
    struct Failure {
        line: u32,
        kind: i64,
        got: i64,
        other: i64,
    }

    fn apply_failed(line: u32, err: &SecurityError) -> Failure {
        let errno = match err {
            SecurityError::Syscall { source, .. }
            | SecurityError::Capability { source, .. }
            | SecurityError::Rlimit { source, .. } => *source as i64,
            _ => -1,
        };
        Failure {
            line,
            kind: 2,
            got: -1,
            other: errno,
        }
    }

    macro_rules! expect_errno {
        ($call:expr, $errno:expr) => {{
            let ret = ($call) as i64;
            let errno = Errno::last_raw();
            if ret != -1 || errno != $errno {
                return Err(Failure {
                    line: line!(),
                    kind: 0,
                    got: ret,
                    other: i64::from(errno),
                });
            }
        }};
    }

    macro_rules! expect_ok {
        ($call:expr) => {{
            let ret = ($call) as i64;
            if ret < 0 {
                return Err(Failure {
                    line: line!(),
                    kind: 0,
                    got: ret,
                    other: i64::from(Errno::last_raw()),
                });
            }
            ret
        }};
    }

    macro_rules! expect_eq {
        ($got:expr, $want:expr) => {{
            let (got, want) = (($got) as i64, ($want) as i64);
            if got != want {
                return Err(Failure {
                    line: line!(),
                    kind: 1,
                    got,
                    other: want,
                });
            }
        }};
    }

    macro_rules! apply {
        ($call:expr) => {
            if let Err(err) = $call {
                return Err(apply_failed(line!(), &err));
            }
        };
    }

    /// Runs `body` in a forked child and panics with the failed check, if any.
    fn run_in_child(what: &str, body: impl FnOnce() -> Result<(), Failure>) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: plain syscalls on owned descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes syscalls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let code = match outcome {
                Ok(Ok(())) => 0,
                Ok(Err(f)) => {
                    let record = [i64::from(f.line), f.kind, f.got, f.other];
                    // SAFETY: writes a stack array to our pipe.
                    unsafe {
                        libc::write(
                            fds[1],
                            record.as_ptr().cast(),
                            std::mem::size_of_val(&record),
                        )
                    };
                    1
                }
                Err(_) => 2,
            };
            // SAFETY: leaves the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut record = [0i64; 4];
        // SAFETY: reads into a stack array from our pipe.
        let n = unsafe {
            libc::close(fds[1]);
            let n = libc::read(
                fds[0],
                record.as_mut_ptr().cast(),
                std::mem::size_of_val(&record),
            );
            libc::close(fds[0]);
            n
        };
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            panic!("{what}: child killed by signal {}", libc::WTERMSIG(status));
        }
        let code = libc::WEXITSTATUS(status);
        if code == 0 {
            return;
        }
        if code == 1 && n == std::mem::size_of_val(&record) as isize {
            let [line, kind, got, other] = record;
            let detail = match kind {
                0 => format!(
                    "syscall returned {got}, errno {}",
                    Errno::from_raw(other as i32)
                ),
                1 => format!("got {got:#x}, want {other:#x}"),
                _ => format!("apply failed, errno {}", Errno::from_raw(other as i32)),
            };
            panic!("{what}: check at {}:{line} failed: {detail}", file!());
        }
        panic!("{what}: child exited with {code}");
    }

    /// Reads /proc/self/status into `buf` without allocating.
    fn read_status(buf: &mut [u8; 8192]) -> Result<&[u8], Failure> {
        // SAFETY: open/read/close on a descriptor owned here, into a caller-provided buffer.
        unsafe {
            let fd = expect_ok!(libc::open(
                c"/proc/self/status".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC
            )) as libc::c_int;
            let mut len = 0usize;
            while len < buf.len() {
                let n = expect_ok!(libc::read(
                    fd,
                    buf[len..].as_mut_ptr().cast(),
                    buf.len() - len
                ));
                if n == 0 {
                    break;
                }
                len += n as usize;
            }
            libc::close(fd);
            Ok(&buf[..len])
        }
    }

    /// Value of a `Key:\tvalue` line of /proc/self/status, parsed with `radix`; -1 if absent.
    fn status_field(status: &[u8], key: &[u8], radix: u32) -> i64 {
        for line in status.split(|&b| b == b'\n') {
            if line.len() > key.len() && line.starts_with(key) && line[key.len()] == b':' {
                let value = line[key.len() + 1..].trim_ascii();
                let mut n: u64 = 0;
                for &b in value {
                    let Some(d) = (b as char).to_digit(radix) else {
                        return -1;
                    };
                    n = n.wrapping_mul(u64::from(radix)).wrapping_add(u64::from(d));
                }
                return n as i64;
            }
        }
        -1
    }

    const DOCKER_CAPS: i64 = 0xa804_25fb;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn live_seccomp_default_profile() {
        if !live_allowed() {
            return;
        }
        let prog = default_seccomp().unwrap();
        use std::ptr::null;
        type L = libc::c_long;
        run_in_child("default seccomp", || {
            apply!(set_no_new_privs());
            apply!(apply_seccomp(&prog));
            // SAFETY: each call either fails (the point of the test) or has no effect outside
            // this child; without the filter they fail with other errnos or are harmless.
            unsafe {
                // ENOENT without the filter.
                expect_errno!(
                    libc::mount(
                        null(),
                        c"/nonexistent-flotilla-test".as_ptr(),
                        null(),
                        libc::MS_REMOUNT,
                        null()
                    ),
                    libc::EPERM
                );
                expect_errno!(libc::unshare(libc::CLONE_NEWNS), libc::EPERM);
                expect_errno!(libc::unshare(libc::CLONE_NEWUSER), libc::EPERM);
                // KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING
                expect_errno!(
                    libc::syscall(libc::SYS_keyctl, 0 as L, -3 as L, 0 as L),
                    libc::EPERM
                );
                // EINVAL without the filter.
                expect_errno!(
                    libc::syscall(libc::SYS_bpf, -1 as L, 0 as L, 0 as L),
                    libc::EPERM
                );
                // EFAULT without the filter.
                expect_errno!(
                    libc::syscall(
                        libc::SYS_perf_event_open,
                        0 as L,
                        0 as L,
                        -1 as L,
                        -1 as L,
                        0 as L
                    ),
                    libc::EPERM
                );
                expect_errno!(
                    libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME as L, 0 as L, 0 as L),
                    libc::EPERM
                );
                expect_errno!(
                    libc::syscall(libc::SYS_open_by_handle_at, -1 as L, 0 as L, 0 as L),
                    libc::EPERM
                );
                expect_errno!(libc::syscall(libc::SYS_setns, -1 as L, 0 as L), libc::EPERM);
                // EINVAL without the filter.
                expect_errno!(
                    libc::syscall(libc::SYS_clone3, 0 as L, 0 as L),
                    libc::ENOSYS
                );
                // CLONE_NEWNS | CLONE_FS is EINVAL without the filter, so nothing is cloned.
                expect_errno!(
                    libc::syscall(
                        libc::SYS_clone,
                        (libc::CLONE_NEWNS | libc::CLONE_FS) as L,
                        0 as L,
                        0 as L,
                        0 as L,
                        0 as L
                    ),
                    libc::EPERM
                );
                expect_errno!(
                    libc::syscall(
                        libc::SYS_clone,
                        (libc::CLONE_NEWUSER | libc::CLONE_FS | libc::CLONE_NEWNS) as L,
                        0 as L,
                        0 as L,
                        0 as L,
                        0 as L
                    ),
                    libc::EPERM
                );
                // ADDR_NO_RANDOMIZE is not one of Docker's values; 0xffffffff (query) is.
                expect_errno!(
                    libc::syscall(libc::SYS_personality, 0x0040000 as L),
                    libc::EPERM
                );
                expect_ok!(libc::syscall(libc::SYS_personality, 0xffff_ffff as L));
                expect_errno!(
                    libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
                    libc::EPERM
                );
                // EFAULT without the filter.
                expect_errno!(
                    libc::syscall(libc::SYS_io_uring_setup, 1 as L, 0 as L),
                    libc::EPERM
                );
                // x32 ABI getpid.
                expect_errno!(
                    libc::syscall(X32_SYSCALL_BIT as L | libc::SYS_getpid),
                    libc::ENOSYS
                );

                // Still allowed: getpid, fork (clone without namespace flags), open/read.
                expect_eq!(libc::syscall(libc::SYS_getpid) > 0, true);
                // Raw clone (libc::fork would run atfork handlers that take locks).
                let child = expect_ok!(libc::syscall(
                    libc::SYS_clone,
                    libc::SIGCHLD as L,
                    0 as L,
                    0 as L,
                    0 as L,
                    0 as L
                )) as libc::pid_t;
                if child == 0 {
                    libc::_exit(0);
                }
                let mut status = 0;
                expect_eq!(libc::waitpid(child, &mut status, 0), child);
                expect_eq!(status, 0);
                expect_ok!(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0));
            }
            let mut buf = [0u8; 8192];
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"NoNewPrivs", 10), 1);
            expect_eq!(status_field(status, b"Seccomp", 10), 2);
            // One program (binary search), not one per action.
            expect_eq!(status_field(status, b"Seccomp_filters", 10), 1);
            Ok(())
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn live_seccomp_oci_profiles() {
        if !live_allowed() {
            return;
        }
        type L = libc::c_long;
        // Denylist with per-entry errnos and argument filters.
        let deny = seccomp_from_oci(&oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid", "no_such_call"], "action": "SCMP_ACT_ERRNO",
                 "errnoRet": libc::EOPNOTSUPP},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EINVAL,
                 "args": [{"index": 0, "value": 0x1234, "op": "SCMP_CMP_EQ"}]},
                {"names": ["setns"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": libc::CLONE_NEWNET,
                           "valueTwo": libc::CLONE_NEWNET, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV,
                 "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GT"},
                          {"index": 0, "value": 200, "op": "SCMP_CMP_LT"}]},
            ]
        })))
        .unwrap();
        run_in_child("oci denylist", || {
            apply!(set_no_new_privs());
            apply!(apply_seccomp(&deny));
            // SAFETY: harmless calls whose results are checked.
            unsafe {
                expect_errno!(libc::syscall(libc::SYS_getppid), libc::EOPNOTSUPP);
                expect_errno!(
                    libc::syscall(libc::SYS_personality, 0x1234 as L),
                    libc::EINVAL
                );
                expect_ok!(libc::syscall(libc::SYS_personality, 0xffff_ffff as L));
                expect_errno!(
                    libc::syscall(libc::SYS_setns, -1 as L, libc::CLONE_NEWNET as L),
                    libc::EPERM
                );
                expect_errno!(libc::syscall(libc::SYS_setns, -1 as L, 0 as L), libc::EBADF);
                // Two args on the same index are ORed, as in runc: > 100 or < 200 = all.
                expect_errno!(libc::syscall(libc::SYS_getpgid, 50 as L), libc::EXDEV);
                expect_errno!(libc::syscall(libc::SYS_getpgid, 500 as L), libc::EXDEV);
            }
            Ok(())
        });

        // Allowlist: default errno, ENOSYS for one call (like Docker's clone3), kill for another.
        let allow = seccomp_from_oci(&oci_seccomp(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EOPNOTSUPP,
            "syscalls": [
                {"names": ["write", "exit_group", "exit", "getpid", "rt_sigreturn", "uname"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS},
                // Installed after the default-action filter, which then has to let it in.
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EMLINK},
                {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV,
                 "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GT"},
                          {"index": 1, "value": 200, "op": "SCMP_CMP_LT"}]},
            ]
        })))
        .unwrap();
        run_in_child("oci allowlist", || {
            apply!(set_no_new_privs());
            apply!(apply_seccomp(&allow));
            // SAFETY: harmless calls whose results are checked.
            unsafe {
                expect_ok!(libc::syscall(libc::SYS_getpid));
                expect_errno!(libc::syscall(libc::SYS_getppid), libc::EOPNOTSUPP);
                expect_errno!(libc::syscall(libc::SYS_uname, 0 as L), libc::ENOSYS);
                expect_errno!(
                    libc::syscall(libc::SYS_seccomp, 0 as L, 0 as L, 0 as L),
                    libc::EMLINK
                );
                // Different args are ANDed: arg0 > 100 and arg1 < 200.
                expect_errno!(
                    libc::syscall(libc::SYS_getpgid, 500 as L, 0 as L),
                    libc::EXDEV
                );
                expect_errno!(
                    libc::syscall(libc::SYS_getpgid, 50 as L, 0 as L),
                    libc::EOPNOTSUPP
                );
                expect_errno!(
                    libc::syscall(libc::SYS_getpgid, 500 as L, 300 as L),
                    libc::EOPNOTSUPP
                );
            }
            Ok(())
        });
    }

    #[test]
    fn live_caps_docker_default() {
        if !live_allowed() {
            return;
        }
        let caps = CapSets::docker_default();
        let last_cap = read_last_cap();
        run_in_child("docker default caps", || {
            // SAFETY: a private UTS namespace keeps a failed check from renaming the host.
            unsafe { expect_ok!(libc::unshare(libc::CLONE_NEWUTS)) };
            apply!(apply_caps(&caps, last_cap));
            let mut buf = [0u8; 8192];
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"CapEff", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapPrm", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapBnd", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapInh", 16), 0);
            expect_eq!(status_field(status, b"CapAmb", 16), 0);
            // SAFETY: fails without CAP_SYS_ADMIN; in our own UTS namespace anyway.
            unsafe {
                expect_errno!(
                    libc::sethostname(c"flotilla-test".as_ptr(), 13),
                    libc::EPERM
                );
            }
            Ok(())
        });
    }

    #[test]
    fn live_caps_after_setuid_with_ambient() {
        if !live_allowed() {
            return;
        }
        let nbs = 1u64 << 10;
        let caps = CapSets {
            inheritable: nbs,
            ambient: nbs,
            ..CapSets::docker_default()
        };
        let last_cap = read_last_cap();
        run_in_child("caps after setuid", || {
            // SAFETY: credential changes confined to this child.
            unsafe {
                expect_ok!(libc::prctl(
                    libc::PR_SET_KEEPCAPS,
                    1 as libc::c_ulong,
                    0,
                    0,
                    0
                ));
                expect_ok!(libc::setresgid(65534, 65534, 65534));
                expect_ok!(libc::setresuid(65534, 65534, 65534));
                expect_ok!(libc::prctl(
                    libc::PR_SET_KEEPCAPS,
                    0 as libc::c_ulong,
                    0,
                    0,
                    0
                ));
            }
            let mut buf = [0u8; 8192];
            // setuid cleared the effective set; apply_caps must restore it.
            expect_eq!(status_field(read_status(&mut buf)?, b"CapEff", 16), 0);
            apply!(apply_caps(&caps, last_cap));
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"CapEff", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapPrm", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapBnd", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapInh", 16), nbs);
            expect_eq!(status_field(status, b"CapAmb", 16), nbs);
            // SAFETY: reads credentials.
            unsafe { expect_eq!(libc::geteuid(), 65534) };
            Ok(())
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn live_caps_plan_applies_everything() {
        if !live_allowed() {
            return;
        }
        let plan = SecurityPlan::flotilla_default().unwrap();
        let nofile = plan.rlimits[0].hard;
        run_in_child("flotilla default plan", || {
            apply!(plan.apply());
            let mut buf = [0u8; 8192];
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"CapEff", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"CapBnd", 16), DOCKER_CAPS);
            expect_eq!(status_field(status, b"NoNewPrivs", 10), 1);
            expect_eq!(status_field(status, b"Seccomp", 10), 2);
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads into a local struct.
            unsafe {
                expect_ok!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit));
            }
            expect_eq!(limit.rlim_max, nofile);
            expect_eq!(limit.rlim_cur, nofile);
            Ok(())
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn live_seccomp_without_no_new_privs() {
        if !live_allowed() {
            return;
        }
        let plan = SecurityPlan {
            no_new_privs: false,
            ..SecurityPlan::flotilla_default().unwrap()
        };
        run_in_child("plan without no_new_privs", || {
            apply!(plan.apply());
            let mut buf = [0u8; 8192];
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"NoNewPrivs", 10), 0);
            expect_eq!(status_field(status, b"Seccomp", 10), 2);
            expect_eq!(status_field(status, b"CapEff", 16), DOCKER_CAPS);
            // SAFETY: fails under the filter (ENOENT without it).
            unsafe {
                expect_errno!(
                    libc::mount(
                        std::ptr::null(),
                        c"/nonexistent-flotilla-test".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT,
                        std::ptr::null()
                    ),
                    libc::EPERM
                );
            }
            Ok(())
        });
        // Without CAP_SYS_ADMIN the filter still goes in, with no_new_privs set on the way.
        let caps = CapSets::docker_default();
        let last_cap = read_last_cap();
        let prog = plan.seccomp.clone().unwrap();
        run_in_child("seccomp after dropping CAP_SYS_ADMIN", || {
            apply!(apply_caps(&caps, last_cap));
            apply!(apply_seccomp(&prog));
            let mut buf = [0u8; 8192];
            let status = read_status(&mut buf)?;
            expect_eq!(status_field(status, b"NoNewPrivs", 10), 1);
            expect_eq!(status_field(status, b"Seccomp", 10), 2);
            Ok(())
        });
    }

    #[test]
    fn rlimits_apply_in_child() {
        let (_, own_hard) = own_limit(libc::RLIMIT_NOFILE as i32).unwrap();
        let want = Rlimit {
            resource: libc::RLIMIT_NOFILE as i32,
            soft: own_hard.min(64),
            hard: own_hard.min(128),
        };
        run_in_child("rlimits", || {
            apply!(apply_rlimits(&[want]));
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads into a local struct.
            unsafe { expect_ok!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit)) };
            expect_eq!(limit.rlim_cur, want.soft);
            expect_eq!(limit.rlim_max, want.hard);
            Ok(())
        });
    }
}
