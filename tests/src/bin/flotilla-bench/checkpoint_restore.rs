//! `flotilla-bench checkpoint-restore` (issue 3): checkpoint and restore time of a container
//! holding 16, 256 and 1024 MiB resident, for Flotilla's runtime, runc and a plain `criu
//! dump`/`criu restore` of the same workload, interleaved in one run.
//!
//! The workload is `memcheck <MiB>` (crates/runtime/tests/fixtures/memcheck.c, compiled statically
//! with gcc at bench start): it fills its memory with a pseudo-random pattern, prints `ready
//! <sum>`, and on SIGUSR1 prints `check <sum>` of the memory as it is then. Every cycle waits for
//! `ready`, times the dump and the restore separately, then (untimed) sends SIGUSR1 and requires
//! the same sum, and removes everything of the cycle.
//!
//! - Flotilla: `Runtime::checkpoint(.., AfterCheckpoint::Kill)` and `Runtime::restore`, busybox
//!   rootfs plus a memcheck layer as overlay lower dirs, its own network namespace (by path).
//! - runc: `runc checkpoint` / `runc restore -d` of a container on a copy of the busybox rootfs with
//!   memcheck in it, stdio on pipes (runc hands the restored task new pipes through
//!   `descriptors.json`), a pre-created network namespace given by path (criu.md §1).
//! - plain CRIU: memcheck started directly as a session leader in the host's namespaces, stdout
//!   to a file; `criu dump -t PID -D I -o dump.log`, `criu restore -D I -o restore.log -d`.
//!
//! All three use the same CRIU binary. Images go to a per-run directory under /dev/shm that is
//! emptied after every cycle. Everything the bench creates (processes, runc containers, cgroups
//! under `/flotilla-bench-<pid>` in every hierarchy, network namespaces, the scratch and image
//! directories, Flotilla's containers and zygotes) is removed at the end, also on error or
//! SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_runtime::config::default_spec;
use flotilla_runtime::runtime::{
    AfterCheckpoint, CheckpointOptions, CreateOptions, RestoreOptions, Runtime, RuntimeConfig,
    Status,
};
use flotilla_runtime::sys;
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::{
    bundle_config, first_line_of, interrupted, load_avg_1m, ms, resolve, write_bundle, CgroupTree,
    FlotillaGuard, RuncGuard, Samples, Scratch, Stats,
};

/// Goal of issue 3: Flotilla within this factor of plain CRIU (and below runc).
const GOAL_VS_CRIU: f64 = 1.3;
/// Stop early after this many failed cycles.
const MAX_FAILURES: usize = 6;
const MEMCHECK_C: &str = include_str!("../../../../crates/runtime/tests/fixtures/memcheck.c");

#[derive(Args, Clone)]
pub(crate) struct CheckpointRestore {
    /// Resident sizes of the workload in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,256,1024")]
    sizes: Vec<u64>,
    /// Timed cycles (dump + restore) per runtime and size.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed cycles per runtime before the timed ones of each size.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// What to measure, comma-separated (subset of flotilla,runc,criu).
    #[arg(long, value_delimiter = ',', default_value = "flotilla,runc,criu")]
    runtimes: Vec<Who>,
    /// Directory (tmpfs) for the images; a per-run subdirectory is created in it.
    #[arg(long, default_value = "/dev/shm")]
    images_base: PathBuf,
    /// CRIU for all three (default: Flotilla's `criu::default_criu_path()`).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// Flotilla's shim binary (default: flotilla-shim next to this binary).
    #[arg(long)]
    shim: Option<PathBuf>,
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// Limit for every single step (a command, waiting for `ready` or `check`).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Keep every cycle's CRIU dump and restore logs in this directory (for finding where the
    /// time goes).
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Plain CRIU logs at -v4 like the runtimes do (default: CRIU's default level, as a user
    /// would run it). Also gives its own time from the log.
    #[arg(long)]
    plain_v4: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Who {
    Flotilla,
    Runc,
    Criu,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Flotilla => "flotilla",
            Who::Runc => "runc",
            Who::Criu => "criu",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Run `cmd` with the given stdio (stderr to `stderr_file`) and time it from just before the
/// spawn until its exit is reaped. A non-zero exit or a timeout is an error with its stderr.
fn time_cmd(
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    stderr_file: &Path,
    timeout: Duration,
) -> Result<Duration, String> {
    let errf = File::create(stderr_file).map_err(|e| format!("{}: {e}", stderr_file.display()))?;
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::from(errf));
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    // Close our copies of the child's stdio (pipe ends) right away.
    drop(cmd);
    let exited = match sys::pidfd_open(child.id() as i32) {
        Ok(fd) => sys::pidfd_wait(fd.as_raw_fd(), Some(timeout)).unwrap_or(true),
        Err(_) => true,
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "no exit after {timeout:?}, killed; stderr: {}",
            super::read_tail(stderr_file)
        ));
    }
    let st = child.wait().map_err(|e| format!("wait: {e}"))?;
    let dt = t0.elapsed();
    if !st.success() {
        return Err(format!("{st}; stderr: {}", super::read_tail(stderr_file)));
    }
    Ok(dt)
}

/// Poll `read` (the output so far) until a line starts with `prefix`; returns the rest of it.
fn wait_line(
    what: &str,
    prefix: &str,
    timeout: Duration,
    mut read: impl FnMut() -> Result<String, String>,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read()?;
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok(v.trim().to_string());
        }
        if interrupted() {
            return Err(format!(
                "interrupted while waiting for {prefix:?} from {what}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {prefix:?} line from {what} after {timeout:?}; output so far: {:?}",
                text.chars().take(400).collect::<String>()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send the check signal with `send` and wait for the `check` line, sending again every second
/// until it comes. memcheck tests its flag and then calls `pause()`; a signal that arrives while
/// a freshly restored task is still leaving CRIU's restorer runs the handler and then re-enters
/// the interrupted `pause()`, so a single SIGUSR1 right after `criu restore -d` returned was lost
/// in about half of the 256 MiB plain-CRIU cycles. Extra `check` lines are harmless.
fn signal_until_line(
    what: &str,
    timeout: Duration,
    mut read: impl FnMut() -> Result<String, String>,
    mut send: impl FnMut() -> Result<(), String>,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        send()?;
        let step = (deadline.saturating_duration_since(Instant::now())).min(Duration::from_secs(1));
        match wait_line(what, "check ", step, &mut read) {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline || interrupted() => return Err(e),
            Err(_) => {}
        }
    }
}

fn kill_pid(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: signalling a process the caller identified (pid checked by the caller).
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(format!(
            "kill -{sig} {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The read end of a pipe, read without blocking into a growing buffer.
struct PipeText {
    fd: Option<OwnedFd>,
    text: String,
}

impl PipeText {
    fn new(fd: OwnedFd) -> Self {
        PipeText {
            fd: Some(fd),
            text: String::new(),
        }
    }

    /// Everything read so far, after reading what is available now.
    fn poll(&mut self) -> Result<String, String> {
        let mut buf = [0u8; 4096];
        while let Some(fd) = &self.fd {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 0) };
            if r <= 0 {
                break;
            }
            // SAFETY: reading into our buffer from our pipe (readable, so it does not block).
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n > 0 {
                self.text
                    .push_str(&String::from_utf8_lossy(&buf[..n as usize]));
            } else {
                // EOF (every writer gone) or an error: nothing more will come.
                self.fd = None;
            }
        }
        Ok(self.text.clone())
    }
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CRIU's own duration: the largest `(SS.UUUUUU)` timestamp in its log (`-v4` logs carry one on
/// every line, counted from CRIU's start).
fn criu_log_duration(log: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('(')?;
            let (ts, _) = rest.split_once(')')?;
            ts.trim().parse::<f64>().ok()
        })
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        .map(Duration::from_secs_f64)
}

/// Names of the phases `criu_phases` splits a log into, in order.
const DUMP_PHASES: [&str; 7] = [
    "startup + kerndat probing",
    "seize + collect",
    "task: memory pages, files",
    "mounts (tmpfs archived with tar)",
    "namespaces",
    "  of which the network namespace",
    "kill + finish",
];
const RESTORE_PHASES: [&str; 7] = [
    "startup + kerndat probing",
    "read images, prepare",
    "namespaces + mounts (tmpfs untar)",
    "task: memory pages, files",
    "post-restore",
    "network unlock",
    "finish",
];

/// Split a CRIU `-v4` log into phases by the lines CRIU 4.2 logs at their boundaries (see
/// DUMP_PHASES and RESTORE_PHASES); None when the log has no timestamps or lacks a boundary.
fn criu_phases(log: &Path, dump: bool) -> Option<Vec<Duration>> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<(f64, &str)> = text
        .lines()
        .filter_map(|l| {
            let (ts, msg) = l.strip_prefix('(')?.split_once(')')?;
            Some((ts.trim().parse::<f64>().ok()?, msg.trim_start()))
        })
        .collect();
    let end = lines.last()?.0;
    let at = |f: &dyn Fn(&str) -> bool| lines.iter().find(|(_, m)| f(m)).map(|(t, _)| *t);
    let d = |a: f64, b: f64| Duration::from_secs_f64((b - a).max(0.0));
    if dump {
        let procs = at(&|m| m.starts_with("Dumping processes"))?;
        let task = at(&|m| m.starts_with("Dumping task (pid"))?;
        let mm = at(&|m| m.starts_with("Dumping mm (pid"))?;
        let pstree = at(&|m| m.starts_with("Dumping pstree"))?;
        let ns_done = at(&|m| m.starts_with("Namespaces dump complete")).unwrap_or(pstree);
        let net = at(&|m| m.starts_with("Dump NET namespace info")).unwrap_or(ns_done);
        Some(vec![
            d(0.0, procs),
            d(procs, task),
            d(task, mm),
            d(mm, pstree),
            d(pstree, ns_done),
            d(net, ns_done),
            d(ns_done, end),
        ])
    } else {
        let will = at(&|m| m.starts_with("Will restore in"))?;
        let fork = at(&|m| m.starts_with("Forking task"))?;
        let ns = at(&|m| m.starts_with("Running post-setup-namespaces")).unwrap_or(fork);
        let restored = at(&|m| m.ends_with("Restored"))?;
        let finished = at(&|m| m.starts_with("Restore finished"))?;
        let unlock = at(&|m| m.starts_with("Running network-unlock")).unwrap_or(finished);
        Some(vec![
            d(0.0, will),
            d(will, fork),
            d(fork, ns),
            d(ns, restored),
            d(restored, unlock),
            d(unlock, finished),
            d(finished, end),
        ])
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn remove_dir(p: &Path) -> Result<(), String> {
    if !p.exists() {
        return Ok(());
    }
    sys::remove_tree_one_fs(p).map_err(|e| format!("removing {}: {e}", p.display()))
}

/// Free bytes (for an unprivileged writer) of the filesystem holding `p`.
fn free_bytes(p: &Path) -> Result<u64> {
    let c = sys::cpath(p)?;
    // SAFETY: zeroed statvfs filled by the kernel from a valid C path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statvfs {}", p.display()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

fn mem_available_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}; {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Guards.

/// The per-run image directory on tmpfs.
struct ShmDir {
    path: PathBuf,
    done: bool,
}

impl ShmDir {
    fn finish(&mut self) -> Vec<String> {
        if self.done {
            return vec![];
        }
        self.done = true;
        remove_dir(&self.path).err().into_iter().collect()
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// Network namespaces the bench added with `ip netns add`.
#[derive(Default)]
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn add(&mut self, name: &str) -> Result<PathBuf, String> {
        self.names.push(name.to_string());
        run_quiet(Command::new("ip").args(["netns", "add", name]))?;
        run_quiet(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(PathBuf::from("/run/netns").join(name))
    }

    fn del(&mut self, name: &str) -> Result<(), String> {
        self.names.retain(|n| n != name);
        if !Path::new("/run/netns").join(name).exists() {
            return Ok(());
        }
        run_quiet(Command::new("ip").args(["netns", "del", name]))
    }

    fn finish(&mut self) -> Vec<String> {
        let names = std::mem::take(&mut self.names);
        names
            .iter()
            .filter_map(|n| self.del(n).err())
            .collect::<Vec<_>>()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// Plain processes the bench started or had CRIU restore, killed by pid (with the start time
/// checked, so a reused pid is never hit).
#[derive(Default)]
struct Procs {
    list: Vec<(i32, u64)>,
}

impl Procs {
    fn add(&mut self, pid: i32) {
        if let Ok(start) = sys::proc_start_time(pid) {
            self.list.push((pid, start));
        }
    }

    /// SIGKILL `pid` if it is one of ours and wait (up to 10 s) until it is gone.
    fn kill(&mut self, pid: i32) -> Result<(), String> {
        let mine: Vec<(i32, u64)> = self.list.iter().copied().filter(|p| p.0 == pid).collect();
        self.list.retain(|p| p.0 != pid);
        for (pid, start) in mine {
            let Ok(fd) = sys::pidfd_open(pid) else {
                continue; // already gone
            };
            if !sys::process_matches(pid, start) {
                continue;
            }
            let _ = sys::pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
            if !sys::pidfd_wait(fd.as_raw_fd(), Some(Duration::from_secs(10))).unwrap_or(false) {
                return Err(format!("process {pid} did not die after SIGKILL"));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Vec<String> {
        let pids: Vec<i32> = self.list.iter().map(|p| p.0).collect();
        pids.into_iter()
            .filter_map(|p| self.kill(p).err())
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One cycle.

#[derive(Clone, Debug)]
enum Verified {
    /// `check` after the restore printed the `ready` sum.
    Checksum,
    /// Only liveness and RSS could be checked (reason).
    AliveRss(String),
}

#[derive(Clone, Debug)]
struct Cycle {
    dump: Duration,
    restore: Duration,
    /// CRIU's own time from its `-v4` log (Flotilla and runc).
    criu_dump: Option<Duration>,
    criu_restore: Option<Duration>,
    /// CRIU's phases from its `-v4` logs (DUMP_PHASES, RESTORE_PHASES).
    dump_phases: Option<Vec<Duration>>,
    restore_phases: Option<Vec<Duration>>,
    /// Plain CRIU: from the start of `criu dump` until the dumped process had been reaped.
    dump_until_reaped: Option<Duration>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    image_bytes: u64,
    verified: Verified,
}

struct Failure {
    who: Who,
    size: u64,
    iteration: String,
    error: String,
}

struct Bench {
    tag: String,
    pid: u32,
    timeout: Duration,
    criu: PathBuf,
    runc: PathBuf,
    rootfs: PathBuf,
    layer: PathBuf,
    memcheck: PathBuf,
    runc_rootfs: PathBuf,
    runc_bundle: PathBuf,
    runc_root: PathBuf,
    runc_log: PathBuf,
    scratch: PathBuf,
    shm: PathBuf,
    flotilla: Option<FlotillaGuard>,
    netns: Netns,
    procs: Procs,
    keep_logs: Option<PathBuf>,
    plain_v4: bool,
}

fn memcheck_spec(mib: u64) -> Spec {
    let mut spec = default_spec(vec!["/memcheck".into(), mib.to_string()]);
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(true));
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
    }
    spec
}

impl Bench {
    fn cycle(&mut self, who: Who, mib: u64, iter: &str) -> Result<Cycle, String> {
        match who {
            Who::Flotilla => self.flotilla_cycle(mib, iter),
            Who::Runc => self.runc_cycle(mib, iter),
            Who::Criu => self.criu_cycle(mib, iter),
        }
    }

    /// Copy a CRIU log to --keep-logs (best effort).
    fn keep(&self, log: &Path, name: &str) {
        if let Some(d) = &self.keep_logs {
            let _ = std::fs::copy(log, d.join(name));
        }
    }

    // --- Flotilla ---------------------------------------------------------------------------

    fn flotilla_cycle(&mut self, mib: u64, iter: &str) -> Result<Cycle, String> {
        let id = format!("f-{}-{mib}-{iter}", self.pid);
        let images = self.shm.join(&id);
        let r = self.flotilla_inner(&id, mib, &images);
        let rt = &self.flotilla.as_ref().expect("flotilla").rt;
        let mut r = r;
        if rt.state(&id).is_ok() {
            if let Err(e) = rt.delete(&id, true) {
                if r.is_ok() {
                    r = Err(format!("delete: {e}"));
                }
            }
        }
        if let Err(e) = remove_dir(&images) {
            if r.is_ok() {
                r = Err(e);
            }
        }
        r
    }

    fn flotilla_inner(&self, id: &str, mib: u64, images: &Path) -> Result<Cycle, String> {
        let rt: &Runtime = &self.flotilla.as_ref().expect("flotilla").rt;
        let opts = CreateOptions {
            id: id.into(),
            lower_dirs: vec![self.layer.clone(), self.rootfs.clone()],
            spec: memcheck_spec(mib),
            labels: Default::default(),
        };
        let st = rt.run(opts).map_err(|e| format!("run: {e}"))?;
        let log = rt.log_path(id).map_err(|e| format!("log path: {e}"))?;
        let logs = || -> Result<String, String> {
            Ok(match flotilla_runtime::logs::read_all(&log, None) {
                Ok(v) => {
                    String::from_utf8_lossy(&flotilla_runtime::logs::raw_content(&v)).into_owned()
                }
                Err(_) => String::new(),
            })
        };
        let ready = wait_line("flotilla container", "ready ", self.timeout, &logs)?;
        let rss_before_kib = vm_rss_kib(st.record.init_pid);

        let t0 = Instant::now();
        rt.checkpoint(
            id,
            &CheckpointOptions {
                images_dir: images.to_path_buf(),
                tcp_established: false,
                after: AfterCheckpoint::Kill,
            },
        )
        .map_err(|e| format!("checkpoint: {e}"))?;
        let dump = t0.elapsed();
        let stopped = rt.state(id).map_err(|e| format!("state: {e}"))?;
        if stopped.status != Status::Stopped {
            return Err(format!(
                "after the checkpoint the container is {:?}",
                stopped.status
            ));
        }
        let criu_dump = criu_log_duration(&images.join("dump.log"));
        let dump_phases = criu_phases(&images.join("dump.log"), true);
        self.keep(&images.join("dump.log"), &format!("{id}-dump.log"));
        let image_bytes = dir_bytes(images);

        let t1 = Instant::now();
        let st = rt
            .restore(
                id,
                &RestoreOptions {
                    images_dir: images.to_path_buf(),
                    tcp_established: false,
                },
            )
            .map_err(|e| format!("restore: {e}"))?;
        let restore = t1.elapsed();
        let rlog = log
            .parent()
            .map(|d| d.join("criu-work/restore.log"))
            .unwrap_or_default();
        let criu_restore = criu_log_duration(&rlog);
        let restore_phases = criu_phases(&rlog, false);
        self.keep(&rlog, &format!("{id}-restore.log"));

        let check = signal_until_line("restored flotilla container", self.timeout, &logs, || {
            rt.kill(id, libc::SIGUSR1)
                .map_err(|e| format!("kill -USR1: {e}"))
        })?;
        if check != ready {
            return Err(format!("memory changed: ready {ready}, check {check}"));
        }
        Ok(Cycle {
            dump,
            restore,
            criu_dump,
            criu_restore,
            dump_phases,
            restore_phases,
            dump_until_reaped: None,
            rss_before_kib,
            rss_after_kib: vm_rss_kib(st.record.init_pid),
            image_bytes,
            verified: Verified::Checksum,
        })
    }

    // --- runc -------------------------------------------------------------------------------

    fn runc_cmd(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root")
            .arg(&self.runc_root)
            .arg("--criu")
            .arg(&self.criu)
            .arg("--log")
            .arg(&self.runc_log);
        c
    }

    fn runc_pid(&self, id: &str) -> Result<i32, String> {
        let out = self
            .runc_cmd()
            .args(["state", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("runc state: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "runc state {id}: {e}; {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if v["status"] != "running" {
            return Err(format!("runc state {id}: {}", v["status"]));
        }
        v["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("runc state {id}: no pid"))
    }

    fn runc_cycle(&mut self, mib: u64, iter: &str) -> Result<Cycle, String> {
        let id = format!("r-{}-{mib}-{iter}", self.pid);
        let ns = format!("{}-{mib}-{iter}", self.tag);
        let dir = self.shm.join(&id);
        let r = self
            .netns
            .add(&ns)
            .and_then(|nspath| self.runc_inner(&id, mib, &nspath, &dir));
        let mut problems = vec![];
        // A failed restore can leave criu-root mounted in the state dir: unmount before any
        // recursive delete (platform.md §4.6).
        for (p, e) in sys::unmount_all_under(&self.runc_root.join(&id)) {
            problems.push(format!("unmounting {}: {e}", p.display()));
        }
        let del = self
            .runc_cmd()
            .args(["delete", "-f", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.runc_root.join(&id).exists() {
            problems.push(format!("runc delete -f {id}: {del:?}, state left"));
        }
        if let Err(e) = self.netns.del(&ns) {
            problems.push(e);
        }
        if let Err(e) = remove_dir(&dir) {
            problems.push(e);
        }
        match (r, problems.is_empty()) {
            (Ok(c), true) => Ok(c),
            (Ok(_), false) => Err(problems.join("; ")),
            (Err(e), _) => Err(e),
        }
    }

    fn runc_inner(&self, id: &str, mib: u64, netns: &Path, dir: &Path) -> Result<Cycle, String> {
        let cg = format!("/{}/runc/{id}", self.tag);
        let mut cfg = bundle_config(&memcheck_spec(mib), &self.runc_rootfs, &cg)
            .map_err(|e| e.to_string())?;
        if let Some(nss) = cfg["linux"]["namespaces"].as_array_mut() {
            for n in nss.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = json!(netns);
                }
            }
        }
        write_bundle(&self.runc_bundle, &cfg).map_err(|e| e.to_string())?;
        let images = dir.join("images");
        let work = dir.join("work");
        let errf = self.scratch.join("runc.stderr");

        // The container's stdio: three pipes, as a shim would give it.
        let p = || sys::pipe().map_err(|e| format!("pipe: {e}"));
        let (in_r, in_w) = p()?;
        let (out_r, out_w) = p()?;
        let (err_r, err_w) = p()?;
        let mut cmd = self.runc_cmd();
        cmd.args(["run", "-d", "-b"]).arg(&self.runc_bundle).arg(id);
        let started = time_cmd_stdio3(
            cmd,
            Stdio::from(in_r),
            Stdio::from(out_w),
            Stdio::from(err_w),
            self.timeout,
        );
        drop(in_w);
        let mut out_text = PipeText::new(out_r);
        let mut err_text = PipeText::new(err_r);
        if let Err(e) = started {
            return Err(format!(
                "runc run: {e}; stderr: {}; log: {}",
                err_text.poll().unwrap_or_default().trim(),
                super::read_tail(&self.runc_log)
            ));
        }
        let ready = wait_line("runc container", "ready ", self.timeout, || out_text.poll())?;
        let pid = self.runc_pid(id)?;
        let rss_before_kib = vm_rss_kib(pid);

        let mut cmd = self.runc_cmd();
        cmd.arg("checkpoint")
            .arg("--image-path")
            .arg(&images)
            .arg("--work-path")
            .arg(&work)
            .arg(id);
        let dump = time_cmd(cmd, Stdio::null(), Stdio::null(), &errf, self.timeout)
            .map_err(|e| format!("runc checkpoint: {e}; log: {}", work_log(&work, "dump")))?;
        let criu_dump = criu_log_duration(&work.join("dump.log"));
        let dump_phases = criu_phases(&work.join("dump.log"), true);
        self.keep(&work.join("dump.log"), &format!("{id}-dump.log"));
        let image_bytes = dir_bytes(&images);
        drop(out_text);
        drop(err_text);

        let (in_r, in_w) = p()?;
        let (out_r, out_w) = p()?;
        let (err_r, err_w) = p()?;
        let mut cmd = self.runc_cmd();
        cmd.args(["restore", "-d", "--image-path"])
            .arg(&images)
            .arg("--work-path")
            .arg(&work)
            .arg("-b")
            .arg(&self.runc_bundle)
            .arg(id);
        // The pipes become the restored container's stdio (runc's own messages too).
        let restore = time_cmd_stdio3(
            cmd,
            Stdio::from(in_r),
            Stdio::from(out_w),
            Stdio::from(err_w),
            self.timeout,
        );
        drop(in_w);
        let mut out_text = PipeText::new(out_r);
        let mut err_text = PipeText::new(err_r);
        let restore = restore.map_err(|e| {
            format!(
                "runc restore: {e}; stderr: {}; criu log: {}",
                err_text.poll().unwrap_or_default().trim(),
                work_log(&work, "restore")
            )
        })?;
        let criu_restore = criu_log_duration(&work.join("restore.log"));
        let restore_phases = criu_phases(&work.join("restore.log"), false);
        self.keep(&work.join("restore.log"), &format!("{id}-restore.log"));
        let pid = self.runc_pid(id)?;
        // The restored container init (pid from runc state).
        let verified = match signal_until_line(
            "restored runc container",
            Duration::from_secs(60).min(self.timeout),
            || out_text.poll(),
            || kill_pid(pid, libc::SIGUSR1),
        ) {
            Ok(check) if check == ready => Verified::Checksum,
            Ok(check) => return Err(format!("memory changed: ready {ready}, check {check}")),
            Err(e) if interrupted() => return Err(e),
            Err(e) => {
                let rss = vm_rss_kib(pid);
                if rss < mib * 1024 {
                    return Err(format!(
                        "{e}; and the restored process {pid} has only {rss} KiB resident"
                    ));
                }
                Verified::AliveRss(format!("no checksum on the new stdout pipe ({e})"))
            }
        };
        Ok(Cycle {
            dump,
            restore,
            criu_dump,
            criu_restore,
            dump_phases,
            restore_phases,
            dump_until_reaped: None,
            rss_before_kib,
            rss_after_kib: vm_rss_kib(pid),
            image_bytes,
            verified,
        })
    }

    // --- plain CRIU -------------------------------------------------------------------------

    fn criu_cycle(&mut self, mib: u64, iter: &str) -> Result<Cycle, String> {
        let name = format!("c-{}-{mib}-{iter}", self.pid);
        let images = self.shm.join(&name);
        let outfile = self.scratch.join(format!("{name}.out"));
        let mut child: Option<Child> = None;
        let mut restored: Option<i32> = None;
        let r = self.criu_inner(&name, mib, &images, &outfile, &mut child, &mut restored);
        let mut problems = vec![];
        if let Some(mut c) = child {
            let pid = c.id() as i32;
            if let Err(e) = self.procs.kill(pid) {
                problems.push(e);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = restored {
            if let Err(e) = self.procs.kill(pid) {
                problems.push(e);
            }
        }
        if let Err(e) = remove_dir(&images) {
            problems.push(e);
        }
        let _ = std::fs::remove_file(&outfile);
        match (r, problems.is_empty()) {
            (Ok(c), true) => Ok(c),
            (Ok(_), false) => Err(problems.join("; ")),
            (Err(e), _) => Err(e),
        }
    }

    fn criu_inner(
        &mut self,
        name: &str,
        mib: u64,
        images: &Path,
        outfile: &Path,
        child: &mut Option<Child>,
        restored: &mut Option<i32>,
    ) -> Result<Cycle, String> {
        let out = File::create(outfile).map_err(|e| format!("{}: {e}", outfile.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.memcheck);
        cmd.arg(mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: setsid and close_range are plain syscalls (async-signal-safe).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Only stdio: no descriptor this bench inherited (from a shell, say) may be
                // dumped and restored with the workload.
                sys::cloexec_from(3)
            });
        }
        let c = cmd.spawn().map_err(|e| format!("starting memcheck: {e}"))?;
        let pid = c.id() as i32;
        self.procs.add(pid);
        *child = Some(c);
        let read =
            || std::fs::read_to_string(outfile).map_err(|e| format!("{}: {e}", outfile.display()));
        let ready = wait_line("plain memcheck", "ready ", self.timeout, read)?;
        let rss_before_kib = vm_rss_kib(pid);

        std::fs::create_dir_all(images).map_err(|e| format!("{}: {e}", images.display()))?;
        let errf = self.scratch.join("criu.stderr");
        let mut cmd = Command::new(&self.criu);
        cmd.args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(images)
            .args(["-o", "dump.log"]);
        if self.plain_v4 {
            cmd.arg("-v4");
        }
        let t0 = Instant::now();
        let dump =
            time_cmd(cmd, Stdio::null(), Stdio::null(), &errf, self.timeout).map_err(|e| {
                format!(
                    "criu dump: {e}; log: {}",
                    criu_errors(&images.join("dump.log"))
                )
            })?;
        // The dumped process is our child: reap it, so its pid is free for the restore.
        let mut c = child.take().expect("child");
        let _ = c.wait();
        self.procs.list.retain(|p| p.0 != pid);
        let dump_until_reaped = t0.elapsed();
        let image_bytes = dir_bytes(images);
        let criu_dump = criu_log_duration(&images.join("dump.log")).filter(|_| self.plain_v4);
        let dump_phases = criu_phases(&images.join("dump.log"), true).filter(|_| self.plain_v4);
        self.keep(&images.join("dump.log"), &format!("{name}-dump.log"));

        let mut cmd = Command::new(&self.criu);
        cmd.args(["restore", "-D"])
            .arg(images)
            .args(["-o", "restore.log", "-d"]);
        if self.plain_v4 {
            cmd.arg("-v4");
        }
        let restore =
            time_cmd(cmd, Stdio::null(), Stdio::null(), &errf, self.timeout).map_err(|e| {
                format!(
                    "criu restore: {e}; log: {}",
                    criu_errors(&images.join("restore.log"))
                )
            })?;
        let criu_restore = criu_log_duration(&images.join("restore.log")).filter(|_| self.plain_v4);
        let restore_phases =
            criu_phases(&images.join("restore.log"), false).filter(|_| self.plain_v4);
        self.keep(&images.join("restore.log"), &format!("{name}-restore.log"));
        // CRIU restores the same pid.
        self.procs.add(pid);
        *restored = Some(pid);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "memcheck" {
            return Err(format!("after the restore pid {pid} is {comm:?}"));
        }
        // The process CRIU just restored (pid and name checked).
        let check = signal_until_line("restored plain memcheck", self.timeout, read, || {
            kill_pid(pid, libc::SIGUSR1)
        })?;
        if check != ready {
            return Err(format!("memory changed: ready {ready}, check {check}"));
        }
        Ok(Cycle {
            dump,
            restore,
            criu_dump,
            criu_restore,
            dump_phases,
            restore_phases,
            dump_until_reaped: Some(dump_until_reaped),
            rss_before_kib,
            rss_after_kib: vm_rss_kib(pid),
            image_bytes,
            verified: Verified::Checksum,
        })
    }
}

/// Like `time_cmd`, with all three stdio given (runc restore: they become the container's).
fn time_cmd_stdio3(
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    timeout: Duration,
) -> Result<Duration, String> {
    cmd.stdin(stdin).stdout(stdout).stderr(stderr);
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    drop(cmd);
    let exited = match sys::pidfd_open(child.id() as i32) {
        Ok(fd) => sys::pidfd_wait(fd.as_raw_fd(), Some(timeout)).unwrap_or(true),
        Err(_) => true,
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("no exit after {timeout:?}, killed"));
    }
    let st = child.wait().map_err(|e| format!("wait: {e}"))?;
    let dt = t0.elapsed();
    if !st.success() {
        return Err(format!("{st}"));
    }
    Ok(dt)
}

/// The error lines of a CRIU log, without the rlimit warning every run prints here.
fn criu_errors(log: &Path) -> String {
    flotilla_runtime::criu::log_errors(log).replace('\n', " | ")
}

fn work_log(work: &Path, op: &str) -> String {
    criu_errors(&work.join(format!("{op}.log")))
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

#[derive(Default)]
struct Series {
    cycles: Vec<Cycle>,
}

impl Series {
    fn samples(&self, f: impl Fn(&Cycle) -> Option<Duration>) -> Samples {
        Samples {
            v: self.cycles.iter().filter_map(f).collect(),
        }
    }
    fn dump(&self) -> Samples {
        self.samples(|c| Some(c.dump))
    }
    fn restore(&self) -> Samples {
        self.samples(|c| Some(c.restore))
    }
    fn total(&self) -> Samples {
        self.samples(|c| Some(c.dump + c.restore))
    }
}

struct SizeResult {
    mib: u64,
    skipped: Option<String>,
    series: BTreeMap<Who, Series>,
}

fn build_memcheck(scratch: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = scratch.join("memcheck.c");
    std::fs::write(&src, MEMCHECK_C)?;
    let layer = scratch.join("memcheck-layer");
    std::fs::create_dir_all(&layer)?;
    let bin = layer.join("memcheck");
    let out = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running gcc (deploy/install-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "compiling memcheck.c: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((layer, bin))
}

fn fmt_ratio(a: Option<&Stats>, b: Option<&Stats>) -> (String, Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => {
            let r = a.median / b.median;
            (format!("{r:.2}"), Some(r))
        }
        _ => ("-".into(), None),
    }
}

fn stats_json(s: Option<&Stats>) -> Value {
    match s {
        Some(s) => {
            json!({ "n": s.n, "median_ms": s.median, "min_ms": s.min, "max_ms": s.max, "mean_ms": s.mean })
        }
        None => Value::Null,
    }
}

pub(crate) fn checkpoint_restore(o: &CheckpointRestore) -> Result<ExitCode> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (namespaces, mounts, cgroups, CRIU)");
    }
    let mut who: Vec<Who> = o.runtimes.clone();
    who.sort();
    who.dedup();
    if who.is_empty() {
        bail!("--runtimes is empty");
    }
    let has = |w: Who| who.contains(&w);
    let pid = std::process::id();
    let tag = format!("flotilla-bench-{pid}");
    let load_start = load_avg_1m();
    let timeout = Duration::from_secs(o.timeout_secs);
    let criu = o
        .criu
        .clone()
        .unwrap_or_else(flotilla_runtime::criu::default_criu_path);
    let criu = resolve(&criu)?;
    let criu_version = flotilla_runtime::criu::info(&criu)
        .map(|i| i.version)
        .with_context(|| format!("CRIU at {}", criu.display()))?;
    if criu_version.as_str() < "4.2" {
        bail!(
            "CRIU {} at {} is too old: 4.2 or later is needed on this kernel (platform.md §4.1)",
            criu_version,
            criu.display()
        );
    }
    let runc = if has(Who::Runc) {
        resolve(&o.runc)?
    } else {
        o.runc.clone()
    };

    // Guards, in reverse drop order: runtimes and processes first, then namespaces, images,
    // the scratch directory (mounts, state) and finally the cgroup tree.
    let mut cgroups = CgroupTree {
        tag: tag.clone(),
        done: false,
    };
    let mut scratch = Scratch::new()?;
    let base = scratch.path.clone();
    std::fs::create_dir_all(&o.images_base)
        .with_context(|| format!("creating {}", o.images_base.display()))?;
    let shm_path = o.images_base.join(&tag);
    std::fs::create_dir(&shm_path).with_context(|| format!("creating {}", shm_path.display()))?;
    let mut shm = ShmDir {
        path: shm_path.clone(),
        done: false,
    };
    let runc_root = base.join("runc-state");
    let mut runc_guard = RuncGuard {
        runc: runc.clone(),
        root: runc_root.clone(),
        done: !has(Who::Runc),
    };

    let rootfs = base.join("rootfs");
    let busybox = flotilla_runtime::rootfs::busybox_path();
    flotilla_runtime::rootfs::build_busybox_rootfs(&busybox, &rootfs)
        .context("building the busybox rootfs")?;
    let (layer, memcheck) = build_memcheck(&base)?;
    // runc: its own copy of the busybox rootfs with memcheck in it.
    let runc_rootfs = base.join("rootfs-runc");
    let runc_bundle = base.join("bundle-runc");
    if has(Who::Runc) {
        flotilla_runtime::rootfs::build_busybox_rootfs(&busybox, &runc_rootfs)
            .context("building runc's busybox rootfs")?;
        std::fs::copy(&memcheck, runc_rootfs.join("memcheck")).context("copying memcheck")?;
        std::fs::create_dir(&runc_bundle)?;
    }

    let flotilla = if has(Who::Flotilla) {
        let shim = match &o.shim {
            Some(s) => s.clone(),
            None => std::env::current_exe()?.with_file_name("flotilla-shim"),
        };
        if !shim.is_file() {
            bail!(
                "Flotilla's shim {} is missing: build it (cargo build --release -p flotilla-runtime --bins) or pass --shim",
                shim.display()
            );
        }
        let mut cfg = RuntimeConfig::new(base.join("flotilla"), shim);
        cfg.cgroup_parent = format!("{tag}/flotilla");
        cfg.pool_size = 2;
        cfg.criu = criu.clone();
        let rt = Runtime::new(cfg).context("starting Flotilla's runtime")?;
        Some(FlotillaGuard { rt, done: false })
    } else {
        None
    };

    let mut b = Bench {
        tag: tag.clone(),
        pid,
        timeout,
        criu: criu.clone(),
        runc: runc.clone(),
        rootfs,
        layer,
        memcheck,
        runc_rootfs,
        runc_bundle,
        runc_root,
        runc_log: base.join("runc.log"),
        scratch: base.clone(),
        shm: shm_path.clone(),
        flotilla,
        netns: Netns::default(),
        procs: Procs::default(),
        keep_logs: o.keep_logs.clone(),
        plain_v4: o.plain_v4,
    };
    if let Some(d) = &o.keep_logs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let runc_version = if has(Who::Runc) {
        first_line_of(&runc, "--version")
    } else {
        String::new()
    };
    eprintln!(
        "checkpoint-restore: sizes {:?} MiB, {} timed + {} warm-up cycles per runtime and size ({}), CRIU {} at {}, images in {}, scratch {}; load average {}",
        o.sizes,
        o.runs,
        o.warmup,
        who.iter().map(|w| w.name()).collect::<Vec<_>>().join(", "),
        criu_version,
        criu.display(),
        shm_path.display(),
        base.display(),
        load_start.map(|l| format!("{l:.2}")).unwrap_or("?".into()),
    );

    let mut results: Vec<SizeResult> = vec![];
    let mut failures: Vec<Failure> = vec![];
    'sizes: for &mib in &o.sizes {
        let mut res = SizeResult {
            mib,
            skipped: None,
            series: who.iter().map(|&w| (w, Series::default())).collect(),
        };
        let need = 2 * (mib << 20);
        let free = free_bytes(&o.images_base)?;
        if free < need {
            let msg = format!(
                "{} has {} MiB free, {} MiB (2x the size) needed: {mib} MiB skipped",
                o.images_base.display(),
                free >> 20,
                need >> 20
            );
            eprintln!("checkpoint-restore: {msg}");
            res.skipped = Some(msg);
            results.push(res);
            continue;
        }
        // The workload, its image on tmpfs and the restored copy can all be in memory at once.
        if let Some(avail) = mem_available_bytes() {
            if avail < 3 * (mib << 20) + (256 << 20) {
                let msg = format!(
                    "only {} MiB of memory available, about {} MiB needed: {mib} MiB skipped",
                    avail >> 20,
                    (3 * (mib << 20) + (256 << 20)) >> 20
                );
                eprintln!("checkpoint-restore: {msg}");
                res.skipped = Some(msg);
                results.push(res);
                continue;
            }
        }
        eprintln!("  {mib} MiB:");
        let total = o.warmup + o.runs;
        for i in 0..total {
            let warm = i < o.warmup;
            let iter = if warm {
                format!("w{i}")
            } else {
                format!("{}", i - o.warmup)
            };
            for k in 0..who.len() {
                if interrupted() {
                    results.push(res);
                    break 'sizes;
                }
                let w = who[(i as usize + k) % who.len()];
                match b.cycle(w, mib, &iter) {
                    Ok(c) => {
                        eprintln!(
                            "    {:<8} {iter:>3}: dump {:8.1} ms  restore {:8.1} ms{}",
                            w.name(),
                            ms(c.dump),
                            ms(c.restore),
                            if warm { "  (warm-up)" } else { "" }
                        );
                        if !warm {
                            res.series.get_mut(&w).expect("series").cycles.push(c);
                        }
                    }
                    Err(e) => {
                        eprintln!("    {:<8} {iter:>3}: FAILED: {e}", w.name());
                        failures.push(Failure {
                            who: w,
                            size: mib,
                            iteration: iter.clone(),
                            error: e,
                        });
                        if failures.len() >= MAX_FAILURES {
                            eprintln!("checkpoint-restore: {MAX_FAILURES} failed cycles, stopping");
                            results.push(res);
                            break 'sizes;
                        }
                    }
                }
            }
        }
        results.push(res);
    }
    let was_interrupted = interrupted();
    let load_end = load_avg_1m();

    // Cleanup in order, collecting problems (the guards would do the same on an early return).
    let mut problems = vec![];
    if let Some(mut f) = b.flotilla.take() {
        problems.extend(f.finish());
    }
    problems.extend(runc_guard.finish());
    problems.extend(b.procs.finish());
    problems.extend(b.netns.finish());
    problems.extend(shm.finish());
    problems.extend(scratch.finish());
    problems.extend(cgroups.finish());
    let left = cgroups.existing();
    if !left.is_empty() {
        problems.push(format!("cgroups left: {left:?}"));
    }

    // Report.
    use std::fmt::Write as _;
    let mut out = String::new();
    let fmt_load = |l: Option<f64>| l.map(|v| format!("{v:.2}")).unwrap_or("?".into());
    let _ = writeln!(
        out,
        "Checkpoint + restore of memcheck (static; fills N MiB, checksum verified after every restore){}",
        if was_interrupted {
            " -- INTERRUPTED, partial"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "kernel {kernel}, {ncpu} CPUs; CRIU {criu_version} ({}){}; images on {}; {} runs per size (+{} warm-up), interleaved",
        criu.display(),
        if has(Who::Runc) {
            format!("; {runc_version}")
        } else {
            String::new()
        },
        o.images_base.display(),
        o.runs,
        o.warmup
    );
    let _ = writeln!(
        out,
        "load average (1 min) at start: {}",
        fmt_load(load_start)
    );
    let mut json_sizes = vec![];
    let mut goal_all: Option<bool> = None;
    for r in &results {
        let _ = writeln!(out);
        if let Some(s) = &r.skipped {
            let _ = writeln!(out, "{} MiB: SKIPPED: {s}", r.mib);
            json_sizes.push(json!({ "mib": r.mib, "skipped": s }));
            continue;
        }
        let st: BTreeMap<Who, [Option<Stats>; 3]> = r
            .series
            .iter()
            .map(|(w, s)| {
                (
                    *w,
                    [s.dump().stats(), s.restore().stats(), s.total().stats()],
                )
            })
            .collect();
        let rss = r
            .series
            .values()
            .flat_map(|s| s.cycles.iter().map(|c| c.rss_before_kib))
            .max()
            .unwrap_or(0);
        let img = r
            .series
            .values()
            .flat_map(|s| s.cycles.iter().map(|c| c.image_bytes))
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "{} MiB (RSS up to {:.0} MiB, images up to {:.0} MiB), milliseconds:",
            r.mib,
            rss as f64 / 1024.0,
            img as f64 / (1 << 20) as f64
        );
        let _ = writeln!(
            out,
            "| runtime | n | dump median | dump min | dump max | restore median | restore min | restore max | dump+restore median |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for w in &who {
            let [d, rs, t] = &st[w];
            let cell = |s: &Option<Stats>, f: fn(&Stats) -> f64| {
                s.as_ref()
                    .map(|s| format!("{:.1}", f(s)))
                    .unwrap_or("-".into())
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                w.name(),
                d.as_ref().map(|s| s.n).unwrap_or(0),
                cell(d, |s| s.median),
                cell(d, |s| s.min),
                cell(d, |s| s.max),
                cell(rs, |s| s.median),
                cell(rs, |s| s.min),
                cell(rs, |s| s.max),
                cell(t, |s| s.median),
            );
        }
        let mut ratios = serde_json::Map::new();
        let mut goal: Option<bool> = None;
        if let Some(f) = st.get(&Who::Flotilla) {
            for other in [Who::Criu, Who::Runc] {
                let Some(s) = st.get(&other) else { continue };
                let (d, dv) = fmt_ratio(f[0].as_ref(), s[0].as_ref());
                let (rr, rv) = fmt_ratio(f[1].as_ref(), s[1].as_ref());
                let (t, tv) = fmt_ratio(f[2].as_ref(), s[2].as_ref());
                let _ = writeln!(
                    out,
                    "ratio flotilla/{:<5} dump {d}  restore {rr}  dump+restore {t}",
                    other.name()
                );
                ratios.insert(
                    format!("flotilla_over_{}", other.name()),
                    json!({ "dump": dv, "restore": rv, "dump_restore": tv }),
                );
                if let Some(tv) = tv {
                    let ok = match other {
                        Who::Criu => tv <= GOAL_VS_CRIU,
                        _ => tv < 1.0,
                    };
                    goal = Some(goal.unwrap_or(true) && ok);
                }
            }
        }
        if let Some(g) = goal {
            let _ = writeln!(
                out,
                "goal (dump+restore within {GOAL_VS_CRIU}x plain CRIU and below runc): {}",
                if g { "met" } else { "NOT met" }
            );
            goal_all = Some(goal_all.unwrap_or(true) && g);
        }
        // Where the time goes: CRIU's own time (its log) against the whole call.
        let mut diag = serde_json::Map::new();
        for w in [Who::Flotilla, Who::Runc, Who::Criu] {
            let Some(s) = r.series.get(&w) else { continue };
            let cd = s.samples(|c| c.criu_dump).stats();
            let cr = s.samples(|c| c.criu_restore).stats();
            let od = s
                .samples(|c| c.criu_dump.map(|x| c.dump.saturating_sub(x)))
                .stats();
            let or = s
                .samples(|c| c.criu_restore.map(|x| c.restore.saturating_sub(x)))
                .stats();
            if cd.is_some() || cr.is_some() {
                let f = |s: &Option<Stats>| {
                    s.as_ref()
                        .map(|s| format!("{:.1}", s.median))
                        .unwrap_or("-".into())
                };
                let _ = writeln!(
                    out,
                    "{}: CRIU's own time (from its -v4 log) median dump {} restore {}; the rest of the call (median of per-cycle differences) dump {} restore {}",
                    w.name(),
                    f(&cd),
                    f(&cr),
                    f(&od),
                    f(&or)
                );
            }
            diag.insert(
                w.name().into(),
                json!({
                    "criu_log_dump": stats_json(cd.as_ref()),
                    "criu_log_restore": stats_json(cr.as_ref()),
                    "outside_criu_dump": stats_json(od.as_ref()),
                    "outside_criu_restore": stats_json(or.as_ref()),
                }),
            );
        }
        if let Some(s) = r.series.get(&Who::Criu) {
            if let Some(x) = s.samples(|c| c.dump_until_reaped).stats() {
                let _ = writeln!(
                    out,
                    "criu: from the start of `criu dump` until the dumped process was reaped, median {:.1} (the runtimes' dump includes that wait)",
                    x.median
                );
                diag.insert("criu_dump_until_reaped".into(), stats_json(Some(&x)));
            }
        }
        // CRIU's phases, from its -v4 logs: what the container shape costs inside CRIU.
        for (dump, names) in [(true, &DUMP_PHASES), (false, &RESTORE_PHASES)] {
            let cols: Vec<(Who, Vec<Samples>)> = r
                .series
                .iter()
                .map(|(w, s)| {
                    let per: Vec<Samples> = (0..names.len())
                        .map(|k| {
                            s.samples(|c| {
                                let ph = if dump {
                                    &c.dump_phases
                                } else {
                                    &c.restore_phases
                                };
                                ph.as_ref().and_then(|v| v.get(k).copied())
                            })
                        })
                        .collect();
                    (*w, per)
                })
                .filter(|(_, per)| !per[0].v.is_empty())
                .collect();
            if cols.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "CRIU {} phases from its -v4 log, median ms:",
                if dump { "dump" } else { "restore" }
            );
            let _ = writeln!(
                out,
                "| phase | {} |",
                cols.iter()
                    .map(|(w, per)| format!("{} (n={})", w.name(), per[0].v.len()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
            let mut jp = serde_json::Map::new();
            for (k, name) in names.iter().enumerate() {
                let cells: Vec<String> = cols
                    .iter()
                    .map(|(_, per)| {
                        per[k]
                            .stats()
                            .map(|s| format!("{:.1}", s.median))
                            .unwrap_or("-".into())
                    })
                    .collect();
                let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
                jp.insert(
                    name.trim().to_string(),
                    cols.iter()
                        .map(|(w, per)| {
                            (
                                w.name().to_string(),
                                json!(per[k].stats().map(|s| s.median)),
                            )
                        })
                        .collect::<serde_json::Map<_, _>>()
                        .into(),
                );
            }
            diag.insert(
                format!(
                    "criu_{}_phases_median_ms",
                    if dump { "dump" } else { "restore" }
                ),
                jp.into(),
            );
        }
        for (w, s) in &r.series {
            for (i, c) in s.cycles.iter().enumerate() {
                if let Verified::AliveRss(why) = &c.verified {
                    let _ = writeln!(
                        out,
                        "note: {} run {i}: checksum not verified, only alive with {} KiB resident: {why}",
                        w.name(),
                        c.rss_after_kib
                    );
                }
            }
        }
        json_sizes.push(json!({
            "mib": r.mib,
            "rss_kib_max": rss,
            "image_bytes_max": img,
            "runtimes": r.series.iter().map(|(w, s)| (w.name().to_string(), json!({
                "dump": stats_json(st[w][0].as_ref()),
                "restore": stats_json(st[w][1].as_ref()),
                "dump_restore": stats_json(st[w][2].as_ref()),
                "cycles": s.cycles.iter().map(|c| json!({
                    "dump_ms": ms(c.dump),
                    "restore_ms": ms(c.restore),
                    "criu_log_dump_ms": c.criu_dump.map(ms),
                    "criu_log_restore_ms": c.criu_restore.map(ms),
                    "dump_until_reaped_ms": c.dump_until_reaped.map(ms),
                    "criu_dump_phases_ms": c.dump_phases.as_ref().map(|v| v.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
                    "criu_restore_phases_ms": c.restore_phases.as_ref().map(|v| v.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
                    "rss_before_kib": c.rss_before_kib,
                    "rss_after_kib": c.rss_after_kib,
                    "image_bytes": c.image_bytes,
                    "verified": match &c.verified {
                        Verified::Checksum => "checksum".to_string(),
                        Verified::AliveRss(w) => format!("alive+rss: {w}"),
                    },
                })).collect::<Vec<_>>(),
            }))).collect::<serde_json::Map<_, _>>(),
            "ratios": ratios,
            "goal_met": goal,
            "diagnostics": diag,
        }));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "load average (1 min): start {}, end {}",
        fmt_load(load_start),
        fmt_load(load_end)
    );
    let notes = vec![
        "each cycle: start, wait for `ready`, timed dump, timed restore, then untimed: SIGUSR1 and the `check` sum must equal the `ready` sum; then delete and remove the images".to_string(),
        "flotilla: Runtime::checkpoint(AfterCheckpoint::Kill) and Runtime::restore through the library (zygote pool of 2), busybox rootfs + memcheck layer as overlay lower dirs, its own netns by path".to_string(),
        "runc: whole `runc checkpoint --image-path I --work-path W` and `runc restore -d ... -b B` commands, default cgroup mode (soft), stdio on pipes (restore gets new pipes), busybox copy with memcheck, netns pre-created with `ip netns add` and given by path".to_string(),
        "criu: memcheck as a setsid session leader in the host namespaces (no container: no mount, pid or net namespace to dump), stdout to a file; `criu dump -t PID -D I -o dump.log` and `criu restore -D I -o restore.log -d`, default log level; the runtimes log at -v4".to_string(),
        "ratios are ratios of medians; dump+restore is the median of per-cycle sums".to_string(),
    ];
    for n in &notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "FAILED cycles: {}", failures.len());
        for f in &failures {
            let _ = writeln!(
                out,
                "  {} {} MiB iteration {}: {}",
                f.who.name(),
                f.size,
                f.iteration,
                f.error
            );
        }
    }
    if problems.is_empty() {
        let _ = writeln!(out, "cleanup: ok");
    } else {
        for p in &problems {
            let _ = writeln!(out, "cleanup problem: {p}");
        }
    }
    print!("{out}");

    if let Some(path) = &o.json {
        let doc = json!({
            "benchmark": "checkpoint-restore",
            "command": std::env::args().collect::<Vec<_>>(),
            "runs": o.runs,
            "warmup": o.warmup,
            "interrupted": was_interrupted,
            "kernel": kernel,
            "cpus": ncpu,
            "criu": { "path": criu, "version": criu_version },
            "runc": runc_version,
            "images_base": o.images_base,
            "load_avg_1m": { "start": load_start, "end": load_end },
            "sizes": json_sizes,
            "goal_met": goal_all,
            "failures": failures.iter().map(|f| json!({
                "runtime": f.who.name(), "mib": f.size, "iteration": f.iteration, "error": f.error,
            })).collect::<Vec<_>>(),
            "cleanup_problems": problems,
            "notes": notes,
        });
        let mut text = serde_json::to_vec_pretty(&doc)?;
        text.push(b'\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    Ok(
        if failures.is_empty() && problems.is_empty() && !was_interrupted {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_log_duration_takes_the_largest_timestamp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dump.log");
        std::fs::write(
            &p,
            "Warn  (criu/config.c:1063): no timestamp\n(00.000000) start\n(01.250000) late\n(00.900000) out of order\nno parens\n",
        )
        .unwrap();
        assert_eq!(criu_log_duration(&p), Some(Duration::from_millis(1250)));
        std::fs::write(&p, "Error (criu/util.c:1534): rlimit\n").unwrap();
        assert_eq!(criu_log_duration(&p), None);
        assert_eq!(criu_log_duration(&d.path().join("missing")), None);
    }

    #[test]
    fn criu_phases_split_a_dump_and_a_restore_log() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("dump.log");
        std::fs::write(
            &p,
            "(00.000000) CRIU run id\n(00.050000) Dumping processes (pid: 1)\n(00.060000) Dumping task (pid: 1)\n(00.100000) Dumping mm (pid: 1)\n(00.170000) Dumping pstree (pid: 1)\n(00.180000) Dump NET namespace info 10\n(00.230000) Namespaces dump complete\n(00.240000) Dumping finished successfully\n",
        )
        .unwrap();
        let ms: Vec<u64> = criu_phases(&p, true)
            .unwrap()
            .iter()
            .map(|d| (d.as_secs_f64() * 1e3).round() as u64)
            .collect();
        assert_eq!(ms, vec![50, 10, 40, 70, 60, 50, 10]);
        let r = d.path().join("restore.log");
        std::fs::write(
            &r,
            "(00.000000) x\n(00.080000) Will restore in 6c020000 namespaces\n(00.081000) Forking task with 1 pid\n(00.150000) Running post-setup-namespaces scripts\n(00.200000) pie: 1: 1: Restored\n(00.203000) Running network-unlock scripts\n(00.220000) Restore finished successfully. Tasks resumed.\n(00.221000) Running post-resume scripts\n",
        )
        .unwrap();
        let ms: Vec<u64> = criu_phases(&r, false)
            .unwrap()
            .iter()
            .map(|d| (d.as_secs_f64() * 1e3).round() as u64)
            .collect();
        assert_eq!(ms, vec![80, 1, 69, 50, 3, 17, 1]);
        // A default-level log has no timestamps.
        std::fs::write(&p, "Error (criu/util.c:1534): rlimit\n").unwrap();
        assert!(criu_phases(&p, true).is_none());
    }

    #[test]
    fn ratios_are_ratios_of_medians() {
        let a = Samples {
            v: vec![Duration::from_millis(300), Duration::from_millis(100)],
        }
        .stats();
        let b = Samples {
            v: vec![Duration::from_millis(100)],
        }
        .stats();
        let (text, v) = fmt_ratio(a.as_ref(), b.as_ref());
        assert_eq!(text, "2.00");
        assert_eq!(v, Some(2.0));
        assert_eq!(fmt_ratio(a.as_ref(), None).1, None);
    }
}
