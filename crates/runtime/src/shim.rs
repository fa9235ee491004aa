//! The per-container shim: a freshly exec'd, single-threaded process that
//! creates the container with clone3 and then stays as its parent to pump
//! logs and record how it exited. It outlives agent restarts (own session),
//! so containers keep running and logging while the agent is down.
//!
//! Lifecycle: the runtime starts shims ahead of time as "zygotes" (on cgroup
//! v1 already attached to a fresh container cgroup, so the container is born
//! there without an attach and its RCU grace period). A zygote says `ready`,
//! waits for one create request, clones the container init, answers with its
//! pid, and becomes the monitor.

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::config::{ContainerConfig, NsKind, SeccompChoice};
use crate::init::{self, CgroupFs, InitArgs};
use crate::logs::{LogConfig, LogWriter, Stream};
use crate::security;
use crate::sys;

/// First argument that turns a binary into a shim (see `shim_main`).
pub const SHIM_ARG: &str = "__flotilla-shim";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZygoteArgs {
    /// cgroup.procs files to join before announcing readiness (v1 pool).
    pub attach: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub config: ContainerConfig,
    /// Bind the new network namespace here (None when joining one by path).
    pub netns_path: Option<PathBuf>,
    pub cgroup: Cgroup,
    /// Born directly in this cgroup v2 directory (CLONE_INTO_CGROUP).
    pub clone_into: Option<PathBuf>,
    pub cgroup_fs: CgroupFs,
    pub log: LogConfig,
}

/// Restore a checkpointed container; the shim runs `criu restore` so the
/// restored init becomes its child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub id: String,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub images: PathBuf,
    pub netns_path: Option<PathBuf>,
    pub cgroup: Cgroup,
    /// cgroup.procs files to join before running CRIU (v2: the container's),
    /// so the restored tasks land in the container's cgroup...
    pub attach: Vec<PathBuf>,
    /// ...and where the shim goes back to afterwards.
    pub return_to: Vec<PathBuf>,
    pub log: LogConfig,
    pub criu: PathBuf,
    /// Targets of the init's fds 0-2 at dump time.
    pub descriptors: Vec<String>,
    pub tcp_established: bool,
    /// (key, host path) of external mounts the runtime prepared.
    #[serde(default)]
    pub externals: Vec<(String, PathBuf)>,
    /// Run CRIU inside the network namespace instead of handing it over
    /// (the checkpoint's `criu_in_netns`).
    #[serde(default)]
    pub criu_in_netns: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShimRequest {
    Create(Box<CreateRequest>),
    Restore(Box<RestoreRequest>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CreateResponse {
    Ok {
        init_pid: i32,
        init_start: u64,
        shim_pid: i32,
        shim_start: u64,
    },
    Err(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
}

impl ExitInfo {
    /// Shell-style status: the exit code, or 128 + signal.
    pub fn status(&self) -> i32 {
        self.exit_code
            .unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }
}

pub const EXIT_FILE: &str = "exit.json";
pub const FIFO_FILE: &str = "exec.fifo";
pub const LOG_FILE: &str = "container.log";
pub const SHIM_LOG: &str = "shim.log";

/// Call first thing in `main` of any binary that the runtime uses as its
/// shim. Returns only if this process is not a shim.
pub fn maybe_run_shim() {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    match args.next() {
        Some(a) if a == SHIM_ARG => {}
        _ => return,
    }
    let mode = args.next().map(|s| s.to_string_lossy().into_owned());
    let payload = args.next().map(|s| s.to_string_lossy().into_owned());
    let code = match (mode.as_deref(), payload) {
        (Some("zygote"), Some(p)) => zygote_main(&p),
        (Some("netns"), Some(p)) => netns_main(Path::new(&p)),
        (Some("exec"), Some(p)) => crate::exec::exec_main(&p),
        _ => {
            eprintln!("usage: {SHIM_ARG} zygote|exec JSON");
            2
        }
    };
    std::process::exit(code);
}

/// Create a fresh network namespace bound at `path`, with lo up: a
/// namespace "re-created by path" for a restore or a migration target.
fn netns_main(path: &Path) -> i32 {
    // SAFETY: this fresh process is single-threaded; unshare affects only it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "flotilla-shim: unshare: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    if let Err(e) = init::loopback_up() {
        eprintln!("flotilla-shim: bringing up lo: {e}");
        return 1;
    }
    match bind_netns_from("/proc/self/ns/net", path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("flotilla-shim: binding {}: {e}", path.display());
            1
        }
    }
}

fn zygote_main(payload: &str) -> i32 {
    let zargs: ZygoteArgs = match serde_json::from_str(payload) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flotilla-shim: bad zygote args: {e}");
            return 2;
        }
    };
    // SAFETY: plain syscalls; our own session so agent restarts and terminal
    // signals never reach the container.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    for f in &zargs.attach {
        if let Err(e) = std::fs::write(f, "0") {
            eprintln!("flotilla-shim: joining {}: {e}", f.display());
            return 1;
        }
    }
    // fd 0 is our socket to the runtime.
    // SAFETY: fd 0 was set up by the runtime as a unix stream socket.
    let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(0) };
    let mut w = match sock.try_clone() {
        Ok(w) => w,
        Err(_) => return 1,
    };
    if w.write_all(b"ready\n").is_err() {
        return 1;
    }
    // Compile the default seccomp filter while idle: most containers use it.
    let default_filter = security::default_seccomp().ok();
    // Likewise the network namespace (with lo up), the costliest namespace
    // to create (~1 ms of CPU): a container that wants a new one joins this.
    let netns = prepare_netns();
    let mut line = String::new();
    let mut r = std::io::BufReader::new(sock);
    match r.read_line(&mut line) {
        Ok(0) | Err(_) => return 0, // pool shut down
        Ok(_) => {}
    }
    let req = match serde_json::from_str::<ShimRequest>(&line) {
        Ok(ShimRequest::Create(r)) => *r,
        Ok(ShimRequest::Restore(r)) => {
            drop(netns);
            return restore_main(&r, &mut w);
        }
        Err(e) => {
            let _ = reply(&mut w, &CreateResponse::Err(format!("bad request: {e}")));
            return 1;
        }
    };
    match create(&req, default_filter, netns) {
        Ok((child, init_start, pipes)) => {
            // Keep the container's mount namespace referenced until the exit
            // is recorded: otherwise init's exit unmounts its ~35 mounts and
            // waits for an RCU grace period before we even learn of it.
            let mnt_ns = std::fs::File::open(format!("/proc/{child}/ns/mnt")).ok();
            let resp = CreateResponse::Ok {
                init_pid: child,
                init_start,
                shim_pid: std::process::id() as i32,
                shim_start: sys::proc_start_time(std::process::id() as i32).unwrap_or(0),
            };
            let _ = reply(&mut w, &resp);
            drop(w);
            drop(r);
            release_stdin();
            let code = monitor(&req.dir, &req.cgroup, req.log, child, pipes);
            drop(mnt_ns);
            code
        }
        Err(msg) => {
            let _ = reply(&mut w, &CreateResponse::Err(msg));
            1
        }
    }
}

/// A fresh network namespace with lo up, created while the zygote waits
/// in the pool; the zygote itself goes back to its own namespace.
fn prepare_netns() -> Option<OwnedFd> {
    let own = std::fs::File::open("/proc/self/ns/net").ok()?;
    // SAFETY: this process is single-threaded; unshare affects only it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let prepared = init::loopback_up()
        .and_then(|()| std::fs::File::open("/proc/self/ns/net"))
        .ok();
    // SAFETY: setns back into the namespace we came from.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // Never run a shim in a namespace of its own making.
        eprintln!(
            "flotilla-shim: returning to the host network namespace: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    prepared.map(OwnedFd::from)
}

/// fd 0 was the socket to the runtime; keep it occupied by /dev/null.
fn release_stdin() {
    // SAFETY: plain open/dup2/close on our own descriptors.
    unsafe {
        let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if n > 0 {
            libc::dup2(n, 0);
            libc::close(n);
        }
    }
}

fn redirect_own_output(dir: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SHIM_LOG))
    {
        // SAFETY: dup2 of a valid fd onto stdout/stderr.
        unsafe {
            libc::dup2(f.as_raw_fd(), 1);
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
}

fn restore_main(req: &RestoreRequest, w: &mut std::os::unix::net::UnixStream) -> i32 {
    redirect_own_output(&req.dir);
    match restore(req) {
        Ok((child, init_start, pipes)) => {
            let resp = CreateResponse::Ok {
                init_pid: child,
                init_start,
                shim_pid: std::process::id() as i32,
                shim_start: sys::proc_start_time(std::process::id() as i32).unwrap_or(0),
            };
            let _ = reply(w, &resp);
            release_stdin();
            monitor(&req.dir, &req.cgroup, req.log, child, pipes)
        }
        Err(msg) => {
            let _ = reply(w, &CreateResponse::Err(msg));
            1
        }
    }
}

fn restore(req: &RestoreRequest) -> Result<(i32, u64, Pipes), String> {
    for f in &req.attach {
        std::fs::write(f, "0").map_err(|e| format!("joining cgroup {}: {e}", f.display()))?;
    }
    let (out_r, out_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let netns = match &req.netns_path {
        Some(p) => Some(
            std::fs::File::open(p)
                .map_err(|e| format!("opening network namespace {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let work = req.dir.join("criu-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let pidfile = work.join("restore.pid");
    // The dumped init's stdout/stderr pipes are replaced by new ones to us.
    let pipe_key = |i: usize| {
        req.descriptors
            .get(i)
            .filter(|d| d.starts_with("pipe:"))
            .cloned()
    };
    let mut keys: Vec<(i32, String)> = vec![];
    if let Some(k) = pipe_key(1) {
        keys.push((4, k));
    }
    if let Some(k) = pipe_key(2) {
        if Some(&k) != pipe_key(1).as_ref() {
            keys.push((5, k));
        }
    }
    let args = crate::criu::restore_args(&crate::criu::RestoreArgs {
        images: &req.images,
        work: &work,
        rootfs: &req.rootfs,
        netns: netns.is_some() && !req.criu_in_netns,
        criu_in_netns: req.criu_in_netns,
        stdio_keys: &keys,
        pidfile: &pidfile,
        tcp_established: req.tcp_established,
        externals: &req.externals,
    });
    let ns_fd = netns.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let fds: [RawFd; 3] = [
        if req.criu_in_netns { -1 } else { ns_fd },
        out_w.as_raw_fd(),
        err_w.as_raw_fd(),
    ];
    let mut cmd = std::process::Command::new(&req.criu);
    cmd.args(&args).stdin(std::process::Stdio::null());
    if req.criu_in_netns {
        if ns_fd < 0 {
            return Err("the checkpoint needs the container's network namespace".into());
        }
        // Restored tasks inherit CRIU's namespace (the dump left it out).
        crate::criu::enter_netns_before_exec(&mut cmd, ns_fd);
    }
    // SAFETY: only fcntl/dup2 (async-signal-safe) between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // Move out of the way first so dup2 onto 3..5 cannot clobber a source.
            let mut high = [-1; 3];
            for (i, fd) in fds.iter().enumerate() {
                if *fd >= 0 {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if *fd >= 0 && libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", req.criu.display()))?;
    let status = match (&req.netns_path, req.criu_in_netns) {
        (Some(ns), true) => wait_unlocking(&mut child, &pidfile, ns),
        _ => child.wait(),
    }
    .map_err(|e| format!("waiting for {}: {e}", req.criu.display()))?;
    drop(netns);
    if !status.success() {
        let log = work.join("restore.log");
        let kept = req.dir.join("restore.log");
        let _ = std::fs::copy(&log, &kept);
        return Err(format!(
            "criu restore failed ({status}); log {}:\n{}",
            kept.display(),
            crate::criu::log_errors(&log)
        ));
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "criu restore succeeded but wrote no pid file".to_string())?;
    drop(out_w);
    drop(err_w);
    for f in &req.return_to {
        if let Err(e) = std::fs::write(f, "0") {
            eprintln!(
                "flotilla-shim: leaving the container cgroup via {}: {e}",
                f.display()
            );
        }
    }
    let start = sys::proc_start_time(pid).map_err(|e| format!("restored init {pid}: {e}"))?;
    Ok((
        pid,
        start,
        Pipes {
            stdout: out_r,
            stderr: err_r,
        },
    ))
}

/// Wait for `criu restore` and lift the runtime's network lock where CRIU
/// would lift its own: CRIU writes the pid file, unlocks the network, then
/// resumes the tasks (criu/cr-restore.c, `restore_root_task`), so the pid
/// file's appearance is the moment. The unlock keeps its netlink socket open
/// (closing it would wait ~10 ms for the table's destruction), so it costs
/// about as much as the lock. After a
/// successful restore the lock is always gone; after a failed one the
/// runtime removes it (as it removes CRIU's own).
fn wait_unlocking(
    child: &mut std::process::Child,
    pidfile: &Path,
    netns: &Path,
) -> std::io::Result<std::process::ExitStatus> {
    let unlock = || {
        if let Err(e) = crate::netlock::unlock_keeping_socket(netns) {
            eprintln!(
                "flotilla-shim: lifting the network lock of {}: {e}",
                netns.display()
            );
        }
    };
    loop {
        if let Some(st) = child.try_wait()? {
            if st.success() {
                unlock();
            }
            return Ok(st);
        }
        if pidfile.exists() {
            unlock();
            return child.wait();
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
}

fn reply(w: &mut std::os::unix::net::UnixStream, r: &CreateResponse) -> std::io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())
}

struct Pipes {
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn create(
    req: &CreateRequest,
    default_filter: Option<security::SeccompProgram>,
    prepared_netns: Option<OwnedFd>,
) -> Result<(i32, u64, Pipes), String> {
    let cfg = &req.config;
    // Our own diagnostics go next to the container's state.
    redirect_own_output(&req.dir);
    let fifo = req.dir.join(FIFO_FILE);
    let fifo_c = sys::cpath(&fifo).map_err(|e| e.to_string())?;
    // SAFETY: valid C string.
    if unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) } != 0 {
        let e = std::io::Error::last_os_error();
        // A directory skeleton made ahead by the runtime brings it already.
        use std::os::unix::fs::FileTypeExt;
        let made_ahead = e.raw_os_error() == Some(libc::EEXIST)
            && std::fs::symlink_metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo());
        if !made_ahead {
            return Err(format!("creating {}: {e}", fifo.display()));
        }
    }
    // init opens the fifo after taking the container's identity: it must
    // own it, as seen from the host.
    let host_id = |id: u32, map: &[crate::config::IdMap]| -> u32 {
        if cfg.ns(NsKind::User).is_none_or(|n| n.path.is_some()) {
            return id;
        }
        map.iter()
            .find(|m| id >= m.container_id && id - m.container_id < m.size)
            .map(|m| m.host_id + (id - m.container_id))
            .unwrap_or(65534)
    };
    let (fuid, fgid) = (
        host_id(cfg.process.uid, &cfg.uid_map),
        host_id(cfg.process.gid, &cfg.gid_map),
    );
    // SAFETY: valid C string.
    if unsafe { libc::chown(fifo_c.as_ptr(), fuid, fgid) } != 0 {
        return Err(format!(
            "chown {}: {}",
            fifo.display(),
            std::io::Error::last_os_error()
        ));
    }
    let fifo_fd = std::fs::OpenOptions::new()
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .read(true)
        .open(&fifo)
        .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
    let (out_r, out_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (sync_r, sync_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let userns = cfg.ns(NsKind::User).is_some_and(|n| n.path.is_none());
    let maps = if userns {
        Some(sys::pipe().map_err(|e| format!("pipe: {e}"))?)
    } else {
        None
    };
    let mut join = vec![];
    // The user namespace must be joined first so the others are permitted.
    let mut ns_sorted: Vec<_> = cfg.namespaces.iter().filter(|n| n.path.is_some()).collect();
    ns_sorted.sort_by_key(|n| n.kind != NsKind::User);
    for n in ns_sorted {
        let p = n.path.as_ref().expect("filtered");
        let f = std::fs::File::open(p).map_err(|e| {
            format!(
                "linux.namespaces {}: {}: {e}",
                n.kind.proc_name(),
                p.display()
            )
        })?;
        join.push((OwnedFd::from(f), n.kind));
    }
    let seccomp = match &cfg.process.seccomp {
        SeccompChoice::Default => match default_filter {
            Some(f) => Some(f),
            None => Some(security::default_seccomp().map_err(|e| format!("seccomp: {e}"))?),
        },
        SeccompChoice::Unconfined => None,
        SeccompChoice::Oci(s) => {
            Some(security::seccomp_from_oci(s).map_err(|e| format!("linux.seccomp: {e}"))?)
        }
    };
    let last_cap = security::read_last_cap();
    let cg_fd = match &req.clone_into {
        Some(d) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(d)
                .map_err(|e| format!("opening cgroup {}: {e}", d.display()))?,
        ),
        None => None,
    };
    let mut flags = cfg.clone_flags();
    // A new network namespace without a new user namespace (which would have
    // to own it) is the one prepared in the pool: joined, not created.
    let new_net = cfg.ns(NsKind::Net).is_some_and(|n| n.path.is_none());
    let mut joined_netns: Option<RawFd> = None;
    if new_net && cfg.ns(NsKind::User).is_none() {
        if let Some(fd) = prepared_netns {
            flags &= !(libc::CLONE_NEWNET as u64);
            joined_netns = Some(fd.as_raw_fd());
            join.push((fd, NsKind::Net));
        }
    }
    let join_raw: Vec<(RawFd, NsKind)> = join.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
    // SAFETY: this process is single-threaded here (no thread has been
    // spawned yet), so fork-like clone3 is sound.
    let pid = unsafe { sys::clone3(flags, cg_fd.as_ref().map(|f| f.as_raw_fd())) }
        .map_err(|e| format!("clone3: {e}"))?;
    if pid == 0 {
        init::run(InitArgs {
            cfg,
            rootfs: &req.rootfs,
            sync_fd: sync_w.as_raw_fd(),
            maps_fd: maps.as_ref().map(|(r, _)| r.as_raw_fd()),
            fifo_fd: fifo_fd.as_raw_fd(),
            stdout_fd: out_w.as_raw_fd(),
            stderr_fd: err_w.as_raw_fd(),
            join: join_raw,
            seccomp: seccomp.as_ref(),
            last_cap,
            cgroup_fs: &req.cgroup_fs,
            close: [
                Some(sync_r.as_raw_fd()),
                Some(out_r.as_raw_fd()),
                Some(err_r.as_raw_fd()),
                maps.as_ref().map(|(_, w)| w.as_raw_fd()),
            ]
            .into_iter()
            .flatten()
            .collect(),
        });
    }
    drop(sync_w);
    drop(out_w);
    drop(err_w);
    drop(fifo_fd);
    drop(cg_fd);
    let fail = |msg: String| -> String {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        msg
    };
    if let Some((maps_r, maps_w)) = maps {
        drop(maps_r);
        if let Err(e) = write_id_maps(pid, cfg) {
            return Err(fail(format!("linux.uidMappings: {e}")));
        }
        drop(maps_w);
    }
    let mut netns_bound = None;
    if let Some(p) = &req.netns_path {
        if cfg.ns(NsKind::Net).is_some_and(|n| n.path.is_none()) {
            // From our fd when init joins the prepared namespace: it may not
            // have joined it yet.
            let bound = match joined_netns {
                Some(fd) => bind_netns_from(&format!("/proc/self/fd/{fd}"), p),
                None => bind_netns(pid, p),
            };
            if let Err(e) = bound {
                return Err(fail(format!(
                    "binding network namespace to {}: {e}",
                    p.display()
                )));
            }
            netns_bound = Some(p.clone());
        }
    }
    let msg = sys::read_to_end_fd(sync_r.as_raw_fd()).unwrap_or_default();
    let undo_netns = || {
        if let Some(p) = &netns_bound {
            if let Ok(c) = sys::cpath(p) {
                let _ = sys::umount2(&c, libc::MNT_DETACH);
            }
            let _ = std::fs::remove_file(p);
        }
    };
    match msg.first() {
        Some(b'R') => {}
        Some(b'E') => {
            undo_netns();
            return Err(fail(String::from_utf8_lossy(&msg[1..]).into_owned()));
        }
        _ => {
            undo_netns();
            return Err(fail("container init exited during setup".into()));
        }
    }
    let start = sys::proc_start_time(pid).unwrap_or(0);
    Ok((
        pid,
        start,
        Pipes {
            stdout: out_r,
            stderr: err_r,
        },
    ))
}

use std::os::unix::fs::OpenOptionsExt;

fn write_id_maps(pid: i32, cfg: &ContainerConfig) -> std::io::Result<()> {
    let fmt = |m: &[crate::config::IdMap]| {
        m.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect::<String>()
    };
    std::fs::write(format!("/proc/{pid}/gid_map"), fmt(&cfg.gid_map))?;
    std::fs::write(format!("/proc/{pid}/uid_map"), fmt(&cfg.uid_map))
}

fn bind_netns(pid: i32, path: &Path) -> std::io::Result<()> {
    bind_netns_from(&format!("/proc/{pid}/ns/net"), path)
}

fn bind_netns_from(src: &str, path: &Path) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o444)
        .open(path)?;
    let src = sys::cstr(src)?;
    let dst = sys::cpath(path)?;
    sys::mount(Some(&src), &dst, None, libc::MS_BIND, None)
}

/// One thread for everything: the shim stays inside the container's cgroup
/// on v1 (it was born there as a zygote; leaving would cost an attach and
/// its RCU grace period), where it must count as exactly one task.
fn monitor(dir: &Path, cgroup: &Cgroup, log: LogConfig, child: i32, pipes: Pipes) -> i32 {
    let mut writer = match LogWriter::open(&dir.join(LOG_FILE), log) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("flotilla-shim: opening log: {e}");
            None
        }
    };
    let child_fd = sys::pidfd_open(child).ok();
    // The exit record's temporary file, created now: allocating an inode
    // (ext4 scans for one not recently deleted) is then off the exit path.
    let exit_tmp = dir.join(EXIT_FILE).with_extension("tmp");
    let exit_file = std::fs::File::create(&exit_tmp).ok();
    let mut streams: Vec<(Option<OwnedFd>, Stream)> = vec![
        (Some(pipes.stdout), Stream::Stdout),
        (Some(pipes.stderr), Stream::Stderr),
    ];
    let mut buf = vec![0u8; 32 * 1024];
    let mut status: Option<i32> = None;
    let mut drain_deadline: Option<std::time::Instant> = None;
    loop {
        if status.is_some() && streams.iter().all(|(f, _)| f.is_none()) {
            break;
        }
        if drain_deadline.is_some_and(|d| std::time::Instant::now() > d) {
            // A descriptor leaked to a process outside the pid namespace:
            // stop waiting for its EOF.
            break;
        }
        let mut pfds: Vec<libc::pollfd> = streams
            .iter()
            .filter_map(|(f, _)| f.as_ref())
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let watch_child = status.is_none() && child_fd.is_some();
        if watch_child {
            pfds.push(libc::pollfd {
                fd: child_fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = if status.is_some() || child_fd.is_none() {
            100
        } else {
            -1
        };
        // SAFETY: pfds is a valid array of pollfd.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
        let mut k = 0;
        for (slot, stream) in streams.iter_mut() {
            let Some(f) = slot.as_ref() else { continue };
            let rev = pfds[k].revents;
            k += 1;
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                continue;
            }
            // SAFETY: reading into our buffer from our pipe.
            let n = unsafe {
                libc::read(
                    f.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n > 0 {
                if let Some(w) = writer.as_mut() {
                    let _ = w.write_chunk(*stream, &buf[..n as usize]);
                }
            } else if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)
            {
                if let Some(w) = writer.as_mut() {
                    let _ = w.flush_partial(*stream);
                }
                *slot = None;
            }
        }
        let child_done = watch_child && pfds.last().is_some_and(|p| p.revents != 0);
        if status.is_none() && (child_done || child_fd.is_none()) {
            let mut st = 0;
            // SAFETY: waiting for our own child; WNOHANG when we have no pidfd.
            let flags = if child_fd.is_none() { libc::WNOHANG } else { 0 };
            let r = unsafe { libc::waitpid(child, &mut st, flags) };
            if r == child {
                status = Some(st);
                // Everything in the pid namespace dies with init, so the
                // pipes reach EOF promptly.
                drain_deadline =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
            } else if r < 0 {
                status = Some(0);
                drain_deadline = Some(std::time::Instant::now());
            }
        }
    }
    drop(writer);
    record_exit(dir, cgroup, status.unwrap_or(0), exit_file)
}

fn record_exit(dir: &Path, cgroup: &Cgroup, status: i32, tmp: Option<std::fs::File>) -> i32 {
    let mut info = ExitInfo {
        finished_at_ms: now_ms(),
        ..Default::default()
    };
    if libc::WIFEXITED(status) {
        info.exit_code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        info.signal = Some(libc::WTERMSIG(status));
    }
    info.oom_killed = cgroup.oom_kills().map(|n| n > 0).unwrap_or(false);
    let path = dir.join(EXIT_FILE);
    let written = match tmp {
        Some(mut f) => serde_json::to_vec(&info)
            .map_err(std::io::Error::other)
            .and_then(|data| f.write_all(&data))
            .and_then(|()| std::fs::rename(path.with_extension("tmp"), &path)),
        None => write_json_atomic(&path, &info),
    };
    if let Err(e) = written {
        eprintln!("flotilla-shim: recording exit: {e}");
        return 1;
    }
    0
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write JSON next to `path` and rename it into place, so readers see either
/// the old or the new content, never a torn file, whenever the writer dies.
/// No fsync: container state describes processes, which do not survive a
/// power loss either (runc keeps the same state on tmpfs).
pub fn write_json_atomic<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    // One write(2): serde_json on an unbuffered file issues one per token.
    let data = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Like [`write_json_atomic`], through the temporary file `tmp` (one made
/// ahead saves allocating an inode), swapped with `path` (RENAME_EXCHANGE)
/// when that exists: `tmp` then keeps the old content. Replacing the file
/// would free the old one's blocks, and on this machine's ext4 (no journal,
/// `discard`) that waits for a synchronous discard on the disk, 1–5 ms
/// while other builds wrote; it also held the directory lock the shim's
/// exit.json rename needs. `start` replaces state.json on the start path.
pub fn write_json_swap<T: Serialize>(path: &Path, tmp: &Path, v: &T) -> std::io::Result<()> {
    // One write(2): serde_json on an unbuffered file issues one per token.
    let data = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    std::fs::write(tmp, data)?;
    match sys::rename_exchange(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
            std::fs::rename(tmp, path)
        }
        Err(e) => Err(e),
    }
}
