//! Flotilla's benchmarks.
//!
//! `flotilla-bench start-latency`: start-to-exit latency of `/bin/true` for Flotilla's runtime,
//! runc and crun on the same busybox rootfs and the same OCI spec, interleaved round-robin in one
//! run, reported as median/p95/min/max and as ratios. Must run as root. Everything it creates
//! (temporary directory, overlay and netns mounts, runtime state, cgroups under
//! `flotilla-bench-<pid>` in every hierarchy, the crun worker's mount namespace) is removed at the
//! end, also when a run fails or the bench is interrupted with SIGINT/SIGTERM.
//!
//! crun refuses hybrid cgroup hosts unless `/sys/fs/cgroup/unified/cgroup.controllers` is hidden
//! (platform.md §3.2). The bench does not pay that workaround per run: it starts one worker (this
//! binary, hidden `__crun-worker` mode) in a private mount namespace with an empty file
//! bind-mounted over that file, and the worker times each `crun run`. The namespace, and with it
//! the bind mount, disappears when the worker exits.
//!
//! `flotilla-bench checkpoint-restore`: checkpoint and restore time for Flotilla, runc and plain
//! CRIU of the same memory-filling workload (see `flotilla-bench/checkpoint_restore.rs`).

#[path = "flotilla-bench/checkpoint_restore.rs"]
mod checkpoint_restore;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use flotilla_runtime::config::default_spec;
use flotilla_runtime::runtime::{CreateOptions, Runtime, RuntimeConfig};
use flotilla_runtime::sys;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Spec,
};
use serde_json::{json, Value};

const CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";
const WORKER_MODE: &str = "__crun-worker";
/// How long one start may take before it counts as failed (and the bench stops waiting).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Stop early after this many failed starts: the figures would mean nothing anyway.
const MAX_FAILURES: usize = 10;

#[derive(Parser)]
#[command(name = "flotilla-bench", about = "Flotilla benchmarks (run as root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start-to-exit latency of `/bin/true`: Flotilla vs runc vs crun, interleaved.
    StartLatency(StartLatency),
    /// Checkpoint and restore time at 16/256/1024 MiB resident: Flotilla vs runc vs plain CRIU.
    CheckpointRestore(checkpoint_restore::CheckpointRestore),
    /// Internal: times `crun run` inside the crun workaround's mount namespace.
    #[command(name = WORKER_MODE, hide = true)]
    CrunWorker(WorkerArgs),
}

#[derive(Args, Clone)]
struct StartLatency {
    /// Timed runs per runtime.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Untimed runs per runtime first.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Add memory 64 MiB, cpu quota 50000/100000, shares 512 and pids 64 to every runtime.
    #[arg(long)]
    limits: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Pause after every run (every runtime alike), so Flotilla's zygote pool refills in the
    /// background as it would in a real agent.
    #[arg(long, default_value_t = 20)]
    settle_ms: u64,
    /// Runtimes to measure, comma-separated (subset of flotilla,runc,crun).
    #[arg(long, value_delimiter = ',', default_value = "flotilla,runc,crun")]
    runtimes: Vec<Rt>,
    /// Flotilla's shim binary (default: flotilla-shim next to this binary).
    #[arg(long)]
    shim: Option<PathBuf>,
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    #[arg(long, default_value = "crun")]
    crun: PathBuf,
}

#[derive(Args)]
struct WorkerArgs {
    #[arg(long)]
    crun: PathBuf,
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    stderr: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Rt {
    Flotilla,
    Runc,
    Crun,
}

impl Rt {
    fn name(self) -> &'static str {
        match self {
            Rt::Flotilla => "flotilla",
            Rt::Runc => "runc",
            Rt::Crun => "crun",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interruption: SIGINT/SIGTERM/SIGHUP set a flag; the loop stops and the guards clean up.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_flag() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; SA_RESTART keeps blocking calls going.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_signal_flag();
    match cli.cmd {
        Cmd::StartLatency(o) => match start_latency(&o) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("flotilla-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::CheckpointRestore(o) => match checkpoint_restore::checkpoint_restore(&o) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("flotilla-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::CrunWorker(w) => match crun_worker(&w) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flotilla-bench crun worker: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Timing an external runtime command (runc in the bench, crun in the worker).

/// Run `cmd` (stdin and stdout null, stderr to `stderr_file`) and time it from just before the
/// spawn to its exit being reaped. A non-zero exit or a timeout is an error with its stderr.
fn time_command(mut cmd: Command, stderr_file: &Path) -> Result<Duration, String> {
    let errf = File::create(stderr_file).map_err(|e| format!("{}: {e}", stderr_file.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errf));
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    let exited = match sys::pidfd_open(child.id() as i32) {
        Ok(fd) => sys::pidfd_wait(fd.as_raw_fd(), Some(RUN_TIMEOUT)).unwrap_or(true),
        Err(_) => true, // fall back to a plain blocking wait
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "no exit after {RUN_TIMEOUT:?}, killed; stderr: {}",
            read_tail(stderr_file)
        ));
    }
    let st = child.wait().map_err(|e| format!("wait: {e}"))?;
    let dt = t0.elapsed();
    if !st.success() {
        return Err(format!("{st}; stderr: {}", read_tail(stderr_file)));
    }
    Ok(dt)
}

fn read_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let s = s.trim();
    let start = s.len().saturating_sub(600);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].replace('\n', " | ")
}

// ---------------------------------------------------------------------------------------------
// The crun worker: one process in a private mount namespace (set up by the parent before exec).
// Protocol on stdin/stdout, one line each: "run ID" -> "ok NANOS" | "err MESSAGE"; "quit" or EOF
// -> delete leftover containers and exit.

fn crun_worker(w: &WorkerArgs) -> Result<()> {
    let controllers = std::fs::read_to_string(CONTROLLERS).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready controllers={:?}", controllers.trim())?;
    out.flush()?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut lock = stdin.lock();
    loop {
        line.clear();
        // A signal (the terminal's SIGINT reaches us too) only sets the flag: the parent decides.
        match lock.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let l = line.trim();
        if l == "quit" {
            break;
        }
        let Some(id) = l.strip_prefix("run ") else {
            writeln!(out, "err unknown command {l:?}")?;
            out.flush()?;
            continue;
        };
        let mut cmd = Command::new(&w.crun);
        cmd.arg("--root")
            .arg(&w.root)
            .arg("run")
            .arg("-b")
            .arg(&w.bundle)
            .arg(id);
        match time_command(cmd, &w.stderr) {
            Ok(d) => writeln!(out, "ok {}", d.as_nanos())?,
            Err(e) => {
                delete_leftovers(&w.crun, &w.root);
                writeln!(out, "err {}", e.replace('\n', " | "))?
            }
        }
        out.flush()?;
    }
    delete_leftovers(&w.crun, &w.root);
    Ok(())
}

/// `RUNTIME --root ROOT delete -f` every container in `root` (runc and crun alike). Returns the ids
/// it could not delete.
fn delete_leftovers(bin: &Path, root: &Path) -> Vec<String> {
    if !root.exists() {
        return vec![];
    }
    let Ok(out) = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return vec![];
    };
    let mut failed = vec![];
    for id in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|s| !s.is_empty())
    {
        let ok = Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            failed.push(id.to_string());
        }
    }
    failed
}

/// The bench's handle on the worker. Dropping it asks the worker to quit (it deletes its
/// leftover containers), and kills it by pid if it does not.
struct CrunWorker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What the worker saw in cgroup.controllers (must be empty on hybrid hosts).
    seen_controllers: String,
    hidden: bool,
}

impl CrunWorker {
    fn start(
        crun: &Path,
        state: &Path,
        bundle: &Path,
        stderr: &Path,
        empty: &Path,
    ) -> Result<Self> {
        // cgroupfs files stat as size 0: read the content to see whether a controller is listed.
        let hide = std::fs::read_to_string(CONTROLLERS)
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
        if hide {
            File::create(empty).with_context(|| format!("creating {}", empty.display()))?;
        }
        let empty_c = CString::new(empty.as_os_str().as_bytes())?;
        let target_c = CString::new(CONTROLLERS)?;
        let me = std::env::current_exe().context("current_exe")?;
        let mut cmd = Command::new(me);
        cmd.arg(WORKER_MODE)
            .arg("--crun")
            .arg(crun)
            .arg("--root")
            .arg(state)
            .arg("--bundle")
            .arg(bundle)
            .arg("--stderr")
            .arg(stderr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: between fork and exec only async-signal-safe syscalls on pre-built C strings.
        unsafe {
            cmd.pre_exec(move || {
                if !hide {
                    return Ok(());
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Like `unshare -m --propagation private`: nothing we mount reaches the host.
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    empty_c.as_ptr(),
                    target_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the crun worker")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut w = CrunWorker {
            child,
            stdin,
            stdout,
            seen_controllers: String::new(),
            hidden: hide,
        };
        let hello = w.read_line()?;
        let seen = hello
            .strip_prefix("ready controllers=")
            .ok_or_else(|| anyhow!("crun worker said {hello:?}"))?;
        w.seen_controllers = seen.trim_matches('"').to_string();
        if !w.seen_controllers.is_empty() {
            bail!(
                "crun worker still sees controllers {:?} in {CONTROLLERS}",
                w.seen_controllers
            );
        }
        Ok(w)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut l = String::new();
        loop {
            match self.stdout.read_line(&mut l) {
                Ok(0) => bail!("crun worker exited"),
                Ok(_) => return Ok(l.trim_end().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn run(&mut self, id: &str) -> Result<Result<Duration, String>> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker closed"))?;
        writeln!(stdin, "run {id}")?;
        stdin.flush()?;
        let l = self.read_line()?;
        if let Some(ns) = l.strip_prefix("ok ") {
            Ok(Ok(Duration::from_nanos(ns.parse()?)))
        } else if let Some(e) = l.strip_prefix("err ") {
            Ok(Err(e.to_string()))
        } else {
            bail!("crun worker said {l:?}")
        }
    }

    /// Ask the worker to quit; kill it (by pid, it is our child) if it does not within 30 s.
    fn finish(&mut self) -> Vec<String> {
        let mut problems = vec![];
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "quit");
            let _ = s.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    if !st.success() {
                        problems.push(format!("crun worker exited with {st}"));
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    problems.push("crun worker did not quit; killed".into());
                    break;
                }
            }
        }
        problems
    }
}

impl Drop for CrunWorker {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            for p in self.finish() {
                eprintln!("cleanup: {p}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Guards for what the bench creates on the host.

/// The scratch directory: everything mounted below it is unmounted before it is deleted, and the
/// delete never crosses a mount point (platform.md §4.6).
struct Scratch {
    path: PathBuf,
    done: bool,
}

impl Scratch {
    fn new() -> Result<Self> {
        let path = tempfile::Builder::new()
            .prefix("flotilla-bench-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep();
        Ok(Scratch { path, done: false })
    }

    fn finish(&mut self) -> Vec<String> {
        if self.done {
            return vec![];
        }
        self.done = true;
        let mut problems: Vec<String> = sys::unmount_all_under(&self.path)
            .into_iter()
            .map(|(p, e)| format!("unmounting {}: {e}", p.display()))
            .collect();
        let left = sys::mounts_under(&self.path);
        if !left.is_empty() {
            problems.push(format!(
                "mounts left under {}: {left:?}; not deleting it",
                self.path.display()
            ));
            return problems;
        }
        if let Err(e) = sys::remove_tree_one_fs(&self.path) {
            problems.push(format!("removing {}: {e}", self.path.display()));
        }
        problems
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// Every cgroup below `/<tag>` in every cgroup hierarchy (v1 and the unified one), removed
/// bottom-up; processes still in them (only ours can be) are killed first.
struct CgroupTree {
    tag: String,
    done: bool,
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = mi
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            pre.split(' ').nth(4).map(PathBuf::from)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

impl CgroupTree {
    fn existing(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(&self.tag))
            .filter(|p| p.is_dir())
            .collect()
    }

    fn finish(&mut self) -> Vec<String> {
        if self.done {
            return vec![];
        }
        self.done = true;
        let mut problems = vec![];
        for top in self.existing() {
            let mut dirs = vec![];
            collect_dirs(&top, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for d in dirs {
                if let Err(e) = rmdir_cgroup(&d) {
                    problems.push(format!("removing cgroup {}: {e}", d.display()));
                }
            }
        }
        problems
    }
}

fn collect_dirs(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn rmdir_cgroup(d: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                // Only processes the bench started can be in its cgroups.
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok())
                {
                    if pid > 0 {
                        // SAFETY: plain kill of a process in a cgroup this bench created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// Flotilla's runtime: every container deleted (forced), then the pool shut down.
struct FlotillaGuard {
    rt: Runtime,
    done: bool,
}

impl FlotillaGuard {
    fn finish(&mut self) -> Vec<String> {
        if self.done {
            return vec![];
        }
        self.done = true;
        let mut problems = vec![];
        match self.rt.list() {
            Ok(list) => {
                for c in list {
                    if let Err(e) = self.rt.delete(&c.record.id, true) {
                        problems.push(format!("deleting flotilla container {}: {e}", c.record.id));
                    }
                }
            }
            Err(e) => problems.push(format!("listing flotilla containers: {e}")),
        }
        self.rt.shutdown();
        problems
    }
}

impl Drop for FlotillaGuard {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

/// runc containers left in the bench's private state directory (a failed run).
struct RuncGuard {
    runc: PathBuf,
    root: PathBuf,
    done: bool,
}

impl RuncGuard {
    fn finish(&mut self) -> Vec<String> {
        if self.done {
            return vec![];
        }
        self.done = true;
        delete_leftovers(&self.runc, &self.root)
            .into_iter()
            .map(|id| format!("runc delete -f {id} failed"))
            .collect()
    }
}

impl Drop for RuncGuard {
    fn drop(&mut self) {
        for p in self.finish() {
            eprintln!("cleanup: {p}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

#[derive(Default)]
struct Samples {
    v: Vec<Duration>,
}

struct Stats {
    n: usize,
    median: f64,
    p95: f64,
    min: f64,
    max: f64,
    mean: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Samples {
    fn stats(&self) -> Option<Stats> {
        if self.v.is_empty() {
            return None;
        }
        let mut s: Vec<f64> = self.v.iter().copied().map(ms).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        // Nearest rank.
        let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
        Some(Stats {
            n,
            median,
            p95: s[rank - 1],
            min: s[0],
            max: s[n - 1],
            mean: s.iter().sum::<f64>() / n as f64,
        })
    }
}

fn load_avg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn first_line_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Resolve a command name through PATH once, so no run pays the search.
fn resolve(bin: &Path) -> Result<PathBuf> {
    if bin.components().count() > 1 {
        return Ok(bin.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join(bin);
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("{} not found in PATH", bin.display())
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

fn bench_spec(limits: bool) -> Spec {
    let mut spec = default_spec(vec!["/bin/true".into()]);
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(true));
    }
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
    }
    if limits {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .expect("memory"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000i64)
                    .period(100_000u64)
                    .shares(512u64)
                    .build()
                    .expect("cpu"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(64i64)
                    .build()
                    .expect("pids"),
            )
            .build()
            .expect("resources");
        if let Some(l) = spec.linux_mut() {
            l.set_resources(Some(r));
        }
    }
    spec
}

/// The bundle's config.json: the same spec, plus root.path and a unique cgroupsPath.
fn bundle_config(spec: &Spec, rootfs: &Path, cgroups_path: &str) -> Result<Value> {
    let mut v = serde_json::to_value(spec)?;
    v["root"] = json!({ "path": rootfs, "readonly": true });
    v["process"]["terminal"] = json!(false);
    v["linux"]["cgroupsPath"] = json!(cgroups_path);
    Ok(v)
}

fn write_bundle(dir: &Path, config: &Value) -> Result<()> {
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(config)?)?;
    std::fs::rename(&tmp, dir.join("config.json"))?;
    Ok(())
}

struct Failure {
    runtime: Rt,
    iteration: String,
    id: String,
    error: String,
}

struct Bench {
    pid: u32,
    tag: String,
    spec: Spec,
    rootfs: PathBuf,
    runc_bundle: PathBuf,
    crun_bundle: PathBuf,
    runc_root: PathBuf,
    runc_stderr: PathBuf,
    runc: PathBuf,
    flotilla: Option<FlotillaGuard>,
    crun: Option<CrunWorker>,
    samples: BTreeMap<Rt, Samples>,
    /// Flotilla only: time until rt.run() returned (create + start).
    flotilla_run: Samples,
    failures: Vec<Failure>,
}

impl Bench {
    /// One start of `rt`; returns the start-to-exit time, or the error.
    fn once(&mut self, rt: Rt, iter: &str) -> Result<Result<Duration, String>> {
        let id = format!("{}-{}-{iter}", &rt.name()[..1], self.pid);
        let r = match rt {
            Rt::Flotilla => {
                let g = self.flotilla.as_ref().expect("flotilla runtime");
                let opts = CreateOptions {
                    id: id.clone(),
                    lower_dirs: vec![self.rootfs.clone()],
                    spec: self.spec.clone(),
                    labels: Default::default(),
                };
                let t0 = Instant::now();
                let res = g.rt.run(opts).map_err(|e| format!("run: {e}"));
                let t_run = t0.elapsed();
                let res = res.and_then(|_| {
                    g.rt.wait(&id, Some(RUN_TIMEOUT))
                        .map_err(|e| format!("wait: {e}"))
                });
                let dt = t0.elapsed();
                let r = match res {
                    Ok(e) if e.exit_code == Some(0) => {
                        if !iter.starts_with('w') {
                            self.flotilla_run.v.push(t_run);
                        }
                        Ok(dt)
                    }
                    Ok(e) => Err(format!("/bin/true ended with {e:?}")),
                    Err(e) => Err(e),
                };
                // Untimed. A failed run already removed itself; a failed delete is a failure.
                match g.rt.delete(&id, r.is_err()) {
                    Ok(()) => r,
                    Err(e) if r.is_ok() => Err(format!("delete: {e}")),
                    Err(_) => r,
                }
            }
            Rt::Runc => {
                let cg = format!("/{}/runc/{id}", self.tag);
                write_bundle(
                    &self.runc_bundle,
                    &bundle_config(&self.spec, &self.rootfs, &cg)?,
                )?;
                let mut cmd = Command::new(&self.runc);
                cmd.arg("--root")
                    .arg(&self.runc_root)
                    .arg("run")
                    .arg("-b")
                    .arg(&self.runc_bundle)
                    .arg(&id);
                let r = time_command(cmd, &self.runc_stderr);
                if r.is_err() {
                    delete_leftovers(&self.runc, &self.runc_root);
                }
                r
            }
            Rt::Crun => {
                let cg = format!("/{}/crun/{id}", self.tag);
                write_bundle(
                    &self.crun_bundle,
                    &bundle_config(&self.spec, &self.rootfs, &cg)?,
                )?;
                self.crun.as_mut().expect("crun worker").run(&id)?
            }
        };
        if let Err(e) = &r {
            self.failures.push(Failure {
                runtime: rt,
                iteration: iter.to_string(),
                id,
                error: e.clone(),
            });
        }
        Ok(r)
    }
}

fn start_latency(o: &StartLatency) -> Result<ExitCode> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (namespaces, mounts, cgroups)");
    }
    let mut runtimes: Vec<Rt> = o.runtimes.clone();
    runtimes.sort();
    runtimes.dedup();
    if runtimes.is_empty() {
        bail!("--runtimes is empty");
    }
    let has = |r: Rt| runtimes.contains(&r);
    let pid = std::process::id();
    let tag = format!("flotilla-bench-{pid}");
    let load_start = load_avg_1m();

    // Guards, declared so that they drop in the right order on error: runtimes first, then
    // the scratch directory (mounts, state), then the cgroup tree.
    let mut cgroups = CgroupTree {
        tag: tag.clone(),
        done: false,
    };
    let mut scratch = Scratch::new()?;
    let base = scratch.path.clone();

    let rootfs = base.join("rootfs");
    flotilla_runtime::rootfs::build_busybox_rootfs(
        &flotilla_runtime::rootfs::busybox_path(),
        &rootfs,
    )
    .context("building the busybox rootfs")?;
    let spec = bench_spec(o.limits);
    let runc_bundle = base.join("bundle-runc");
    let crun_bundle = base.join("bundle-crun");
    for d in [&runc_bundle, &crun_bundle] {
        std::fs::create_dir(d)?;
    }

    let runc = if has(Rt::Runc) {
        resolve(&o.runc)?
    } else {
        o.runc.clone()
    };
    let crun = if has(Rt::Crun) {
        resolve(&o.crun)?
    } else {
        o.crun.clone()
    };
    let runc_root = base.join("runc-state");
    let crun_root = base.join("crun-state");
    let mut runc_guard = RuncGuard {
        runc: runc.clone(),
        root: runc_root.clone(),
        done: !has(Rt::Runc),
    };

    let flotilla = if has(Rt::Flotilla) {
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
        let rt = Runtime::new(cfg).context("starting Flotilla's runtime")?;
        Some(FlotillaGuard { rt, done: false })
    } else {
        None
    };
    let crun_worker = if has(Rt::Crun) {
        Some(CrunWorker::start(
            &crun,
            &crun_root,
            &crun_bundle,
            &base.join("crun.stderr"),
            &base.join("empty-controllers"),
        )?)
    } else {
        None
    };
    let crun_hidden = crun_worker.as_ref().map(|w| w.hidden).unwrap_or(false);

    let mut b = Bench {
        pid,
        tag: tag.clone(),
        spec,
        rootfs: rootfs.clone(),
        runc_bundle,
        crun_bundle,
        runc_root,
        runc_stderr: base.join("runc.stderr"),
        runc: runc.clone(),
        flotilla,
        crun: crun_worker,
        samples: runtimes.iter().map(|&r| (r, Samples::default())).collect(),
        flotilla_run: Samples::default(),
        failures: vec![],
    };

    let versions: BTreeMap<&str, String> = [(Rt::Runc, "runc", &runc), (Rt::Crun, "crun", &crun)]
        .into_iter()
        .filter(|(r, _, _)| has(*r))
        .map(|(_, n, p)| (n, first_line_of(p, "--version")))
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    eprintln!(
        "start-latency: {} timed runs + {} warm-up per runtime ({}), limits {}, scratch {}",
        o.runs,
        o.warmup,
        runtimes
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", "),
        if o.limits { "on" } else { "off" },
        base.display()
    );

    // Round-robin, rotating which runtime goes first, so drift and noise hit all alike.
    let settle = Duration::from_millis(o.settle_ms);
    let total = o.warmup + o.runs;
    let mut next_progress = 50;
    'outer: for i in 0..total {
        let warm = i < o.warmup;
        let iter = if warm {
            format!("w{i}")
        } else {
            format!("{}", i - o.warmup)
        };
        for k in 0..runtimes.len() {
            let rt = runtimes[(i as usize + k) % runtimes.len()];
            if interrupted() {
                break 'outer;
            }
            let r = b
                .once(rt, &iter)
                .with_context(|| format!("{} iteration {iter}", rt.name()))?;
            if let (Ok(d), false) = (r, warm) {
                b.samples.get_mut(&rt).expect("runtime").v.push(d);
            }
            if b.failures.len() >= MAX_FAILURES {
                eprintln!("start-latency: {MAX_FAILURES} failed starts, stopping early");
                break 'outer;
            }
            std::thread::sleep(settle);
        }
        if !warm && i + 1 - o.warmup >= next_progress {
            eprintln!("  {}/{} runs", i + 1 - o.warmup, o.runs);
            next_progress += 50;
        }
    }
    let was_interrupted = interrupted();
    let load_end = load_avg_1m();

    // Cleanup in order, collecting problems (the guards would do the same on an early return).
    let mut problems = vec![];
    if let Some(mut w) = b.crun.take() {
        problems.extend(w.finish());
    }
    if let Some(mut f) = b.flotilla.take() {
        problems.extend(f.finish());
    }
    problems.extend(runc_guard.finish());
    problems.extend(scratch.finish());
    problems.extend(cgroups.finish());
    let left = cgroups.existing();
    if !left.is_empty() {
        problems.push(format!("cgroups left: {left:?}"));
    }

    // Report.
    let stats: BTreeMap<Rt, Option<Stats>> =
        b.samples.iter().map(|(r, s)| (*r, s.stats())).collect();
    let get = |r: Rt| stats.get(&r).and_then(|s| s.as_ref());
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "Start latency, create to exit of /bin/true (busybox rootfs, {}limits){}",
        if o.limits { "" } else { "no " },
        if was_interrupted {
            " -- INTERRUPTED, partial"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "kernel {kernel}, {ncpu} CPUs; {}",
        versions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        out,
        "{:<10} {:>5} {:>9} {:>9} {:>9} {:>9}   (ms)",
        "runtime", "n", "median", "p95", "min", "max"
    );
    for r in &runtimes {
        match get(*r) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:<10} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    r.name(),
                    s.n,
                    s.median,
                    s.p95,
                    s.min,
                    s.max
                );
            }
            None => {
                let _ = writeln!(out, "{:<10} {:>5}   (no successful run)", r.name(), 0);
            }
        }
    }
    let mut ratios = serde_json::Map::new();
    if let Some(f) = get(Rt::Flotilla) {
        for other in [Rt::Crun, Rt::Runc] {
            if let Some(s) = get(other) {
                let m = f.median / s.median;
                let p = f.p95 / s.p95;
                let _ = writeln!(
                    out,
                    "ratio flotilla/{:<5} median {:.2}   p95 {:.2}",
                    other.name(),
                    m,
                    p
                );
                ratios.insert(format!("median_flotilla_over_{}", other.name()), json!(m));
                ratios.insert(format!("p95_flotilla_over_{}", other.name()), json!(p));
            }
        }
    }
    if let (Some(c), Some(r)) = (get(Rt::Crun), get(Rt::Runc)) {
        let _ = writeln!(
            out,
            "ratio crun/runc      median {:.2}   p95 {:.2}",
            c.median / r.median,
            c.p95 / r.p95
        );
        ratios.insert("median_crun_over_runc".into(), json!(c.median / r.median));
    }
    let fmt_load = |l: Option<f64>| l.map(|v| format!("{v:.2}")).unwrap_or("?".into());
    let _ = writeln!(
        out,
        "load average (1 min): start {}, end {}",
        fmt_load(load_start),
        fmt_load(load_end)
    );
    let breakdown = b.flotilla_run.stats();
    if let (Some(br), Some(f)) = (&breakdown, get(Rt::Flotilla)) {
        let _ = writeln!(
            out,
            "flotilla breakdown: rt.run() (create+start) median {:.2} ms, p95 {:.2}; the rest of the median ({:.2} ms) is until rt.wait() saw the exit",
            br.median,
            br.p95,
            f.median - br.median
        );
    }
    let goal = get(Rt::Flotilla).map(|f| {
        let under8 = f.median < 8.0;
        let vs_crun = get(Rt::Crun).map(|c| f.median <= c.median);
        let _ = writeln!(
            out,
            "goal: flotilla median < 8 ms: {}; flotilla median <= crun median: {}",
            if under8 { "yes" } else { "NO" },
            match vs_crun {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "n/a",
            }
        );
        json!({ "median_below_8ms": under8, "median_not_above_crun": vs_crun })
    });
    let mut notes = vec![
        format!(
            "runtimes interleaved round-robin per iteration (first runtime rotates); every run is followed by a {} ms pause, all runtimes alike, so Flotilla's zygote pool (pool_size 2) refills in the background as in a real agent",
            o.settle_ms
        ),
        "flotilla: timed from just before rt.run() (create+start) to rt.wait() returning with the exit observed; rt.delete() is not timed".to_string(),
        "runc, crun: the whole `run -b BUNDLE ID` command is timed (stdin/stdout null), which includes their own teardown after the exit".to_string(),
        "same OCI spec for all (Flotilla's default_spec, args /bin/true, root read-only, terminal false); without linux.seccomp Flotilla applies its default filter while runc and crun run unconfined".to_string(),
        format!("same busybox rootfs dir for all: runc/crun use it directly, Flotilla as the overlay lower dir; cgroups under /{tag} in every hierarchy, removed at the end"),
    ];
    if has(Rt::Crun) {
        notes.push(if crun_hidden {
            format!("crun: hybrid-cgroup workaround paid once, not per run: one worker process (this binary) in a private mount namespace with an empty file bind-mounted over {CONTROLLERS}; each `crun run` is timed inside that worker")
        } else {
            format!("crun: {CONTROLLERS} lists no controller here, no workaround needed; crun still runs from the same worker process")
        });
    }
    for n in &notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !b.failures.is_empty() {
        let _ = writeln!(out, "FAILED starts: {}", b.failures.len());
        for f in &b.failures {
            let _ = writeln!(
                out,
                "  {} iteration {} ({}): {}",
                f.runtime.name(),
                f.iteration,
                f.id,
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
        let rts: Vec<Value> = runtimes
            .iter()
            .map(|r| {
                let s = get(*r);
                json!({
                    "runtime": r.name(),
                    "n": s.map(|s| s.n).unwrap_or(0),
                    "median_ms": s.map(|s| s.median),
                    "p95_ms": s.map(|s| s.p95),
                    "min_ms": s.map(|s| s.min),
                    "max_ms": s.map(|s| s.max),
                    "mean_ms": s.map(|s| s.mean),
                    "samples_ms": b.samples[r].v.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = json!({
            "benchmark": "start-latency",
            "command": std::env::args().collect::<Vec<_>>(),
            "runs": o.runs,
            "warmup": o.warmup,
            "limits": o.limits,
            "settle_ms": o.settle_ms,
            "interrupted": was_interrupted,
            "kernel": kernel,
            "cpus": ncpu,
            "versions": versions,
            "load_avg_1m": { "start": load_start, "end": load_end },
            "runtimes": rts,
            "ratios": ratios,
            "flotilla_run_call": breakdown.as_ref().map(|s| json!({
                "median_ms": s.median, "p95_ms": s.p95, "min_ms": s.min, "max_ms": s.max,
            })),
            "goal": goal,
            "failures": b.failures.iter().map(|f| json!({
                "runtime": f.runtime.name(), "iteration": f.iteration, "id": f.id, "error": f.error,
            })).collect::<Vec<_>>(),
            "cleanup_problems": problems,
            "notes": notes,
        });
        let mut text = serde_json::to_vec_pretty(&doc)?;
        text.push(b'\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }

    Ok(
        if b.failures.is_empty() && problems.is_empty() && !was_interrupted {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
