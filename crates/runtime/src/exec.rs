//! `exec`: a new process inside a running container. The runtime starts a
//! fresh shim process in exec mode (never a fork of the agent); it joins the
//! leader's cgroup and namespaces, forks so the child lands in the pid
//! namespace, and the child takes the container's identity, capabilities,
//! no_new_privs and seccomp filter before execve. The helper exits with the
//! child's status (128 + signal when killed) and forwards SIGTERM/SIGINT.
//!
//! With a console socket the command gets a terminal: the helper opens the
//! pseudo-terminal inside the container's own devpts (after joining its mount
//! namespace), sends the master end back over the socket (SCM_RIGHTS, as
//! runc's `--console-socket`) and makes the slave the child's controlling
//! terminal and stdio.

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
    /// The helper's fd of a unix socket to send a terminal's master end on.
    #[serde(default)]
    pub console_fd: Option<i32>,
    /// The terminal's initial size (rows, columns).
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
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
    let slave = match req.console_fd {
        None => None,
        Some(sock) => match open_console(sock, req.console_size, p.uid, p.gid) {
            Ok(s) => Some(s),
            Err(e) => return fail(e),
        },
    };
    // SAFETY: this helper is single-threaded (fresh exec), so fork is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        if let Some(s) = &slave {
            if let Err(e) = take_console(s.as_raw_fd()) {
                eprintln!("flotilla-exec: {e}");
                // SAFETY: end the child without unwinding.
                unsafe { libc::_exit(126) };
            }
        }
        let userns = req.namespaces.contains(&NsKind::User);
        let msg = child(p, seccomp.as_ref(), last_cap, userns);
        eprintln!("flotilla-exec: {msg}");
        // SAFETY: end the child without unwinding.
        unsafe { libc::_exit(127) };
    }
    // The child holds the only copy the terminal needs: its exit then ends the master's reads.
    drop(slave);
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
    // The command lives as long as its helper: a helper killed (an exec whose client went away
    // and did not stop on SIGTERM) takes the command with it instead of leaving it in the
    // container. Set after the identity change, which would clear it.
    // SAFETY: plain prctl and getppid.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // The helper is outside this pid namespace (ppid 0); a visible parent means the helper
        // already died and the container's init adopted us.
        if libc::getppid() != 0 {
            libc::_exit(137);
        }
    }
    crate::init::exec_process(p, seccomp)
}

/// Open a pseudo-terminal in the (already joined) container's devpts, size it, give the slave
/// to the command's user, send the master over `sock`; returns the slave.
fn open_console(
    sock: i32,
    size: Option<(u16, u16)>,
    uid: u32,
    gid: u32,
) -> Result<OwnedFd, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: `sock` was handed to this process for this purpose; we own it from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // /dev/ptmx is a symlink to the container's own pts/ptmx (a devpts of its own).
    let path = c"/dev/ptmx";
    // SAFETY: valid C string.
    let m = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(format!(
            "opening the container's /dev/ptmx: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd we own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our terminal fd with valid arguments.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(format!(
                "unlocking the terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
        if let Some((rows, cols)) = size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
    // The peer ioctl opens the slave without a path lookup in the container's /dev/pts.
    // SAFETY: ioctl on our master fd.
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(format!(
            "opening the terminal's slave: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd we own.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: fchown of our fd; the ids are the command's, as the container sees them.
    if unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) } != 0 {
        return Err(format!(
            "giving the terminal to uid {uid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    sys::send_fd(sock.as_raw_fd(), master.as_raw_fd())
        .map_err(|e| format!("sending the terminal: {e}"))?;
    Ok(slave)
}

/// In the child: a new session whose controlling terminal is `slave`, on stdin/out/err.
fn take_console(slave: i32) -> Result<(), String> {
    // SAFETY: plain syscalls on our own fds.
    unsafe {
        if libc::setsid() < 0 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!(
                "taking the terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
        for fd in 0..3 {
            if libc::dup2(slave, fd) < 0 {
                return Err(format!(
                    "terminal stdio: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}
