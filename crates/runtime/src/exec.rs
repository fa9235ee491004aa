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
        let userns = req.namespaces.contains(&NsKind::User);
        let msg = child(p, seccomp.as_ref(), last_cap, userns);
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

fn child(
    p: &ProcessSpec,
    seccomp: Option<&security::SeccompProgram>,
    last_cap: u32,
    userns: bool,
) -> String {
    if let Err(e) = std::env::set_current_dir(&p.cwd) {
        return format!("cwd {}: {e}", p.cwd.display());
    }
    if let Err(e) = security::apply_rlimits(&p.rlimits) {
        return format!("rlimits: {e}");
    }
    // Fail early with a clear message if the command is missing.
    if let Err(e) = crate::init::resolve_command(&p.args[0], &p.env, &p.cwd) {
        return e;
    }
    if let Err(e) = crate::init::take_identity(p, last_cap, userns) {
        return e;
    }
    crate::init::exec_process(p, seccomp)
}
