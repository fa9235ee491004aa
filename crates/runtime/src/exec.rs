//! `exec`: a new process inside a running container. The runtime starts a
//! fresh shim process in exec mode (never a fork of the agent); it joins the
//! leader's cgroup and namespaces, forks so the child lands in the pid
//! namespace, and the child takes the container's identity, capabilities,
//! no_new_privs and seccomp filter before execve. The helper exits with the
//! child's status (128 + signal when killed) and forwards SIGTERM/SIGINT.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use serde::{Deserialize, Serialize};

use crate::config::{NsKind, ProcessSpec, SeccompChoice};
use crate::security;
use crate::sys;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub init_pid: i32,
    pub init_start: u64,
    pub namespaces: Vec<NsKind>,
    /// cgroup.procs files to join (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    pub process: ProcessSpec,
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn fail(msg: String) -> i32 {
    eprintln!("flotilla-exec: {msg}");
    126
}

pub fn exec_main(payload: &str) -> i32 {
    let req: ExecRequest = match serde_json::from_str(payload) {
        Ok(r) => r,
        Err(e) => return fail(format!("bad exec request: {e}")),
    };
    if !sys::process_matches(req.init_pid, req.init_start) {
        return fail("the container is not running".into());
    }
    // Open every namespace first: after joining the mount namespace the
    // host's /proc is out of reach.
    let mut order = req.namespaces.clone();
    order.sort_by_key(|k| match k {
        NsKind::User => 0,
        NsKind::Mount => 2,
        _ => 1,
    });
    let mut fds: Vec<(OwnedFd, NsKind)> = vec![];
    for k in order {
        let p = format!("/proc/{}/ns/{}", req.init_pid, k.proc_name());
        match std::fs::File::open(&p) {
            Ok(f) => fds.push((f.into(), k)),
            Err(e) => return fail(format!("opening {p}: {e}")),
        }
    }
    // The pid could have been reused between the check and the opens.
    if !sys::process_matches(req.init_pid, req.init_start) {
        return fail("the container is not running".into());
    }
    for f in &req.cgroup_procs {
        if let Err(e) = std::fs::write(f, "0") {
            return fail(format!("joining cgroup {}: {e}", f.display()));
        }
    }
    let p = &req.process;
    let seccomp = match &p.seccomp {
        SeccompChoice::Default => match security::default_seccomp() {
            Ok(s) => Some(s),
            Err(e) => return fail(format!("seccomp: {e}")),
        },
        SeccompChoice::Unconfined => None,
        SeccompChoice::Oci(s) => match security::seccomp_from_oci(s) {
            Ok(s) => Some(s),
            Err(e) => return fail(format!("linux.seccomp: {e}")),
        },
    };
    let last_cap = security::read_last_cap();
    for (fd, k) in &fds {
        // SAFETY: valid namespace fd.
        if unsafe { libc::setns(fd.as_raw_fd(), 0) } != 0 {
            return fail(format!(
                "joining {} namespace: {}",
                k.proc_name(),
                std::io::Error::last_os_error()
            ));
        }
    }
    drop(fds);
    // SAFETY: this helper is single-threaded (fresh exec), so fork is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let msg = child(p, seccomp.as_ref(), last_cap);
        eprintln!("flotilla-exec: {msg}");
        // SAFETY: end the child without unwinding.
        unsafe { libc::_exit(127) };
    }
    CHILD.store(pid, Ordering::Relaxed);
    // SAFETY: installing a plain async-signal-safe handler.
    unsafe {
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(s, forward as *const () as libc::sighandler_t);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return fail("lost the exec'd process".into());
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn child(p: &ProcessSpec, seccomp: Option<&security::SeccompProgram>, last_cap: u32) -> String {
    if let Err(e) = std::env::set_current_dir(&p.cwd) {
        return format!("cwd {}: {e}", p.cwd.display());
    }
    if let Err(e) = security::apply_rlimits(&p.rlimits) {
        return format!("rlimits: {e}");
    }
    let exe = match crate::init::resolve_command(&p.args[0], &p.env, &p.cwd) {
        Ok(e) => e,
        Err(e) => return e,
    };
    // SAFETY: plain syscalls.
    unsafe {
        if libc::setgroups(p.additional_gids.len(), p.additional_gids.as_ptr()) != 0
            && !p.additional_gids.is_empty()
        {
            return format!("additional gids: {}", std::io::Error::last_os_error());
        }
        if libc::setresgid(p.gid, p.gid, p.gid) != 0 {
            return format!("gid {}: {}", p.gid, std::io::Error::last_os_error());
        }
        for cap in 0..=last_cap {
            if p.caps.bounding & (1u64 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        if p.uid != 0 {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
        if libc::setresuid(p.uid, p.uid, p.uid) != 0 {
            return format!("uid {}: {}", p.uid, std::io::Error::last_os_error());
        }
    }
    if let Err(e) = security::apply_caps(&p.caps, last_cap) {
        return format!("capabilities: {e}");
    }
    if p.no_new_privs {
        if let Err(e) = security::set_no_new_privs() {
            return format!("no_new_privs: {e}");
        }
    }
    let argv: Vec<std::ffi::CString> = match p.args.iter().map(|s| sys::cstr(s)).collect() {
        Ok(v) => v,
        Err(e) => return format!("args: {e}"),
    };
    let envp: Vec<std::ffi::CString> = match p.env.iter().map(|s| sys::cstr(s)).collect() {
        Ok(v) => v,
        Err(e) => return format!("env: {e}"),
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    if let Err(e) = sys::cloexec_from(3) {
        return format!("closing inherited fds: {e}");
    }
    if let Some(s) = seccomp {
        if let Err(e) = security::apply_seccomp(s) {
            return format!("seccomp: {e}");
        }
    }
    // SAFETY: NUL-terminated arrays of valid C strings.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    format!("exec {:?}: {}", p.args[0], std::io::Error::last_os_error())
}
