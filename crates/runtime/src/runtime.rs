//! The runtime API the agent calls: create, start, kill, stop, wait, delete,
//! list, exec. Blocking calls; the agent runs them on its blocking pool.
//!
//! On-disk layout under `root` (state survives agent restarts):
//!
//! ```text
//! containers/<id>/state.json   ContainerRecord, written atomically
//!                 exit.json    ExitInfo, written by the shim when init exits
//!                 exec.fifo    present between create and start
//!                 rootfs/      overlay mount (lower: image, upper/work below)
//!                 upper/ work/ container.log* shim.log
//!                 criu-ext/    tmpfs sources a restore binds (masked dirs, v1 cgroupfs)
//! netns/<id>                   bind mount of the container's network namespace
//! spare/<random>/              directory skeletons made ahead, renamed into containers/
//! ```

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::{Cgroup, CgroupLayout, CgroupMode, Usage};
use crate::config::{self, ContainerConfig, NsKind};
use crate::criu::{self as criu_mod, CheckpointMeta, CriuError, CriuInfo};
use crate::exec::ExecRequest;
use crate::ext_tmpfs;
use crate::init::CgroupFs;
use crate::logs::LogConfig;
use crate::shim::{
    self, CreateRequest, CreateResponse, ExitInfo, RestoreRequest, ShimRequest, ZygoteArgs,
    EXIT_FILE, FIFO_FILE, LOG_FILE, SHIM_ARG,
};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container {id:?} is {status}, {wanted}")]
    WrongState {
        id: String,
        status: Status,
        wanted: &'static str,
    },
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("creating container {id:?}: {msg}")]
    Create { id: String, msg: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("timed out after {0:?} waiting for the container to exit")]
    Timeout(Duration),
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error("checkpoint of {id:?}: {msg}")]
    Checkpoint { id: String, msg: String },
    #[error("restore of {id:?}: {msg}")]
    Restore { id: String, msg: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    /// Stopped in place by a checkpoint; `resume` continues it.
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub root: PathBuf,
    /// Parent of every cgroup we create, relative to each hierarchy's root.
    pub cgroup_parent: String,
    /// A binary whose `main` calls `shim::maybe_run_shim()` first.
    pub shim: PathBuf,
    /// Zygotes kept ready (0 disables the pool).
    pub pool_size: usize,
    pub log: LogConfig,
    pub netns_dir: PathBuf,
    /// CRIU binary (>= 4.2 on kernels >= 6.16).
    pub criu: PathBuf,
}

impl RuntimeConfig {
    pub fn new(root: impl Into<PathBuf>, shim: impl Into<PathBuf>) -> Self {
        let root = root.into();
        RuntimeConfig {
            netns_dir: root.join("netns"),
            root,
            cgroup_parent: "flotilla".into(),
            shim: shim.into(),
            pool_size: 2,
            log: LogConfig::default(),
            criu: criu_mod::default_criu_path(),
        }
    }
}

/// Persisted description of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub lower_dirs: Vec<PathBuf>,
    pub rootfs: PathBuf,
    pub config: ContainerConfig,
    pub cgroup: Cgroup,
    pub netns_path: Option<PathBuf>,
    pub init_pid: i32,
    pub init_start: u64,
    pub shim_pid: i32,
    pub shim_start: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Image directory of the last checkpoint that stopped this container.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Left stopped by a checkpoint (its network locked) until resumed.
    #[serde(default)]
    pub paused: bool,
}

/// A record plus what is true about it right now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub record: ContainerRecord,
    pub status: Status,
    pub exit: Option<ExitInfo>,
}

pub struct CheckpointOptions {
    pub images_dir: PathBuf,
    /// Dump established TCP connections (they survive the restore).
    pub tcp_established: bool,
    pub after: AfterCheckpoint,
}

/// What happens to the container once its checkpoint is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterCheckpoint {
    /// The processes are killed; the container is stopped and restorable.
    #[default]
    Kill,
    /// The processes stay, stopped, with the network locked (`paused`):
    /// `resume` continues them (a migration rolled back), `kill` ends them.
    Stop,
    /// The processes keep running.
    Run,
}

pub struct RestoreOptions {
    pub images_dir: PathBuf,
    pub tcp_established: bool,
}

pub struct CreateOptions {
    pub id: String,
    /// Read-only lower directories, top-most first (overlayfs order).
    pub lower_dirs: Vec<PathBuf>,
    pub spec: oci_spec::runtime::Spec,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// Extra KEY=VALUE entries on top of the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The fd number the exec helper finds its console socket on.
const CONSOLE_FD: i32 = 3;

/// The agent's end of a terminal exec's console socket.
#[derive(Debug)]
pub struct ConsoleSocket {
    ours: OwnedFd,
    theirs: Option<OwnedFd>,
}

impl ConsoleSocket {
    /// The terminal's master end, once the spawned helper has opened it. Call after spawning
    /// the command (and dropping it, or its copy of the helper's end keeps this waiting when
    /// the helper fails); a helper that fails before sending gives an error here and its
    /// reason on its stderr.
    pub fn receive(mut self, timeout: Duration) -> Result<OwnedFd, RuntimeError> {
        self.theirs = None;
        let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        nix::sys::socket::setsockopt(&self.ours, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| io_err("console socket timeout")(e.into()))?;
        match sys::recv_fd(self.ours.as_raw_fd()) {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(RuntimeError::Io {
                what: "the exec helper ended before opening a terminal".into(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            }),
            Err(e) => Err(io_err("receiving the exec terminal")(e)),
        }
    }
}

/// The processes a shim answered with.
struct Spawned {
    init_pid: i32,
    init_start: u64,
    shim_pid: i32,
    shim_start: u64,
}

struct Zygote {
    child: std::process::Child,
    sock: UnixStream,
    /// v1: the cgroup it sits in, which becomes the container's.
    cgroup: Option<Cgroup>,
}

/// A pooled inotify instance watching one directory; given back on drop.
struct DirWatch {
    rt: Runtime,
    fd: Option<std::os::fd::OwnedFd>,
    wd: i32,
}

impl DirWatch {
    fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            sys::inotify_unwatch(fd.as_raw_fd(), self.wd);
            self.rt.inner.inotify.lock().expect("lock").push(fd);
        }
    }
}

struct Inner {
    cfg: RuntimeConfig,
    /// Idle inotify instances for `wait` (never closed on its path).
    inotify: Mutex<Vec<std::os::fd::OwnedFd>>,
    /// Container directory skeletons made ahead (`make_spare`).
    spares: Mutex<Vec<Spare>>,
    /// Lower dirs of the last create: the pool mounts spare overlays on them.
    lower_hint: Mutex<Option<Vec<PathBuf>>>,
    /// Set by `shutdown`: the refill thread stops and mounts nothing more.
    shutting_down: std::sync::atomic::AtomicBool,
    layout: CgroupLayout,
    pool: Mutex<VecDeque<Zygote>>,
    /// Shims that are our children, reaped when they exit.
    children: Mutex<HashSet<i32>>,
    refilling: Mutex<bool>,
    /// The host's v1 hierarchies, read from mountinfo once: parsing it on
    /// every create cost ~0.15 ms on the start path.
    v1_hierarchies: std::sync::OnceLock<Vec<(String, String)>>,
}

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// Under the root: container directory skeletons made ahead.
const SPARE_DIR: &str = "spare";

/// The temporary file of start's state.json write (made ahead in spares).
const START_TMP: &str = "state.start.tmp";

/// A container directory skeleton made ahead (`Runtime::make_spare`).
struct Spare {
    dir: PathBuf,
    /// The overlay made on these lower dirs, detached: (path, device,
    /// inode) of each, so a directory replaced since is not taken for it.
    lowers: Option<(Vec<LowerId>, OwnedFd)>,
}

/// A lower dir as (path, device, inode).
type LowerId = (PathBuf, u64, u64);

fn lower_id(p: &Path, m: &std::fs::Metadata) -> LowerId {
    use std::os::unix::fs::MetadataExt;
    (p.to_path_buf(), m.dev(), m.ino())
}

/// Mount the container's overlay at `dir/rootfs` (upper and work dirs in
/// `dir`). The lower dirs were checked by `create` (absolute, no `,`/`:`).
fn mount_overlay(lowers: &[PathBuf], dir: &Path) -> std::io::Result<()> {
    let ov = sys::cstr("overlay")?;
    sys::mount(
        Some(&ov),
        &sys::cpath(&dir.join("rootfs"))?,
        Some(&ov),
        0,
        Some(&sys::cstr(&overlay_options(lowers, dir))?),
    )
}

/// Overlay mount options: lower dirs, and upper and work dirs in `dir`.
fn overlay_options(lowers: &[PathBuf], dir: &Path) -> String {
    let lower = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    format!(
        "lowerdir={lower},upperdir={},workdir={}",
        dir.join("upper").display(),
        dir.join("work").display()
    )
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..10)
        .map(|_| {
            let v: u8 = r.random_range(0..36);
            (if v < 10 { b'0' + v } else { b'a' + v - 10 }) as char
        })
        .collect()
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let layout = CgroupLayout::detect()?;
        Self::with_layout(cfg, layout)
    }

    pub fn with_layout(cfg: RuntimeConfig, layout: CgroupLayout) -> Result<Self, RuntimeError> {
        for d in [cfg.root.join("containers"), cfg.netns_dir.clone()] {
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        if !cfg.shim.exists() {
            return Err(RuntimeError::Io {
                what: format!("shim binary {}", cfg.shim.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let rt = Runtime {
            inner: Arc::new(Inner {
                cfg,
                layout,
                pool: Mutex::new(VecDeque::new()),
                inotify: Mutex::new(Vec::new()),
                spares: Mutex::new(Vec::new()),
                lower_hint: Mutex::new(None),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                children: Mutex::new(HashSet::new()),
                refilling: Mutex::new(false),
                v1_hierarchies: std::sync::OnceLock::new(),
            }),
        };
        // Skeletons of a previous run: plain files and directories (their
        // detached overlays went with that process).
        let _ = sys::remove_tree_one_fs(&rt.inner.cfg.root.join(SPARE_DIR));
        rt.shim_cgroup().create()?;
        rt.remove_stale_pool_cgroups();
        rt.refill_pool_async();
        Ok(rt)
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    pub fn cgroup_mode(&self) -> CgroupMode {
        self.inner.layout.mode()
    }

    fn v1(&self) -> bool {
        self.inner.layout.mode() != CgroupMode::V2
    }

    fn shim_cgroup(&self) -> Cgroup {
        Cgroup::new(
            self.inner.layout.clone(),
            format!("{}/shims", self.inner.cfg.cgroup_parent),
        )
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.root.join("containers").join(id)
    }

    /// Pool cgroups left by a previous agent whose zygotes have since exited.
    fn remove_stale_pool_cgroups(&self) {
        let Some(mem) = self
            .inner
            .layout
            .v1_mountpoint("memory")
            .or_else(|| self.inner.layout.v2_mountpoint())
            .map(Path::to_path_buf)
        else {
            return;
        };
        let parent = mem.join(&self.inner.cfg.cgroup_parent);
        let Ok(rd) = std::fs::read_dir(&parent) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pool-") {
                let cg = Cgroup::new(
                    self.inner.layout.clone(),
                    format!("{}/{}", self.inner.cfg.cgroup_parent, name),
                );
                if cg.pids().map(|p| p.is_empty()).unwrap_or(false) {
                    let _ = cg.remove();
                }
            }
        }
    }

    fn spawn_zygote(&self) -> Result<Zygote, RuntimeError> {
        let cgroup = if self.v1() {
            let cg = Cgroup::new(
                self.inner.layout.clone(),
                format!("{}/pool-{}", self.inner.cfg.cgroup_parent, rand_suffix()),
            );
            cg.create()?;
            cg.apply_default_devices()?;
            Some(cg)
        } else {
            None
        };
        let args = ZygoteArgs {
            attach: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
        };
        let (ours, theirs) = UnixStream::pair().map_err(io_err("socketpair"))?;
        let child = Command::new(&self.inner.cfg.shim)
            .arg(SHIM_ARG)
            .arg("zygote")
            .arg(serde_json::to_string(&args).expect("serializable"))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if let Some(cg) = &cgroup {
                    let _ = cg.remove();
                }
                RuntimeError::Io {
                    what: format!("starting shim {}", self.inner.cfg.shim.display()),
                    source: e,
                }
            })?;
        self.inner
            .children
            .lock()
            .expect("lock")
            .insert(child.id() as i32);
        Ok(Zygote {
            child,
            sock: ours,
            cgroup,
        })
    }

    /// A container directory skeleton made ahead of time: the directories
    /// `create` needs and the files it and the shim create, empty (and the
    /// exec fifo). Allocating an
    /// inode is costly on this machine's ext4 (no journal: it scans for one
    /// not recently deleted, ~0.25 ms each under churn), so the pool pays for
    /// them in the background. Renamed into `containers/<id>` by `create`.
    ///
    /// With `lowers` (the last create's), the overlay on them is made too,
    /// as a detached mount (`fsmount`): `ovl_fill_super` makes and removes
    /// inodes in the work dir to probe the upper filesystem (`work/work`, an
    /// O_TMPFILE, a whiteout rename: 0.3–1.2 ms here), off the start path
    /// that way; `create` attaches it with `move_mount`. Until then it is
    /// in no mount table, and it goes away with its fd if the agent dies.
    /// The upper dir is still the spare's own, empty and handed out once.
    fn make_spare(&self, lowers: Option<&[PathBuf]>) -> std::io::Result<Spare> {
        let d = self.inner.cfg.root.join(SPARE_DIR).join(rand_suffix());
        std::fs::create_dir_all(&d)?;
        for s in ["rootfs", "upper", "work"] {
            std::fs::create_dir(d.join(s))?;
        }
        // Same modes the shim would create them with.
        std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o640)
            .open(d.join(LOG_FILE))?;
        std::fs::File::create_new(d.join(shim::SHIM_LOG))?;
        std::fs::File::create_new(d.join(EXIT_FILE).with_extension("tmp"))?;
        // Reused by create's and start's state.json writes (write to temp,
        // rename).
        std::fs::File::create_new(d.join("state.tmp"))?;
        std::fs::File::create_new(d.join(START_TMP))?;
        nix::unistd::mkfifo(
            &d.join(FIFO_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(std::io::Error::from)?;
        let Some(lowers) = lowers else {
            return Ok(Spare {
                dir: d,
                lowers: None,
            });
        };
        let ids = lowers
            .iter()
            .map(|l| std::fs::metadata(l).map(|m| lower_id(l, &m)))
            .collect::<std::io::Result<Vec<_>>>();
        let made =
            ids.and_then(|ids| Ok((ids, sys::fsmount_overlay(&overlay_options(lowers, &d))?)));
        match made {
            Ok((ids, fd)) => Ok(Spare {
                dir: d,
                lowers: Some((ids, fd)),
            }),
            Err(e) => {
                let _ = sys::remove_tree_one_fs(&d);
                Err(e)
            }
        }
    }

    /// Remove a spare nobody will use (its detached overlay goes with the fd).
    fn discard_spare(&self, s: Spare) {
        drop(s.lowers);
        if let Err(e) = sys::remove_tree_one_fs(&s.dir) {
            tracing::warn!(dir = %s.dir.display(), error = %e, "could not remove a spare container directory");
        }
    }

    fn stopping(&self) -> bool {
        self.inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Make one spare and add it to the pool, unless the runtime is
    /// shutting down (then it is removed again). False when nothing was added.
    fn add_spare(&self, lowers: Option<&[PathBuf]>) -> bool {
        match self.make_spare(lowers) {
            Ok(sp) => {
                let mut spares = self.inner.spares.lock().expect("lock");
                if self.stopping() {
                    drop(spares);
                    self.discard_spare(sp);
                    return false;
                }
                spares.push(sp);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, premounted = lowers.is_some(), "could not prepare a container directory");
                false
            }
        }
    }

    fn refill_pool_async(&self) {
        if self.inner.cfg.pool_size == 0 || self.stopping() {
            return;
        }
        {
            let mut r = self.inner.refilling.lock().expect("lock");
            if *r {
                return;
            }
            *r = true;
        }
        let rt = self.clone();
        std::thread::spawn(move || {
            // Plain spares, and as many with the overlay mounted on the
            // last create's lower dirs; those on older lowers are dropped.
            let hint = rt.inner.lower_hint.lock().expect("lock").clone();
            let stale: Vec<Spare> = {
                let mut sp = rt.inner.spares.lock().expect("lock");
                let (stale, keep) = sp.drain(..).partition(|s: &Spare| {
                    s.lowers.as_ref().is_some_and(|(l, _)| {
                        let same = hint.as_ref().is_some_and(|h| {
                            l.iter().map(|x| &x.0).eq(h.iter())
                                && l.iter().all(|(p, dev, ino)| {
                                    std::fs::metadata(p)
                                        .is_ok_and(|m| lower_id(p, &m) == (p.clone(), *dev, *ino))
                                })
                        });
                        !same
                    })
                });
                *sp = keep;
                stale
            };
            for s in stale {
                rt.discard_spare(s);
            }
            loop {
                if rt.stopping() {
                    break;
                }
                let (plain, mounted) = {
                    let sp = rt.inner.spares.lock().expect("lock");
                    let m = sp.iter().filter(|s| s.lowers.is_some()).count();
                    (sp.len() - m, m)
                };
                let added = if plain < rt.inner.cfg.pool_size {
                    rt.add_spare(None)
                } else if mounted < rt.inner.cfg.pool_size && hint.is_some() {
                    rt.add_spare(hint.as_deref())
                } else {
                    break;
                };
                if !added {
                    break;
                }
            }
            loop {
                if rt.stopping() {
                    break;
                }
                let have = rt.inner.pool.lock().expect("lock").len();
                if have >= rt.inner.cfg.pool_size {
                    break;
                }
                match rt.spawn_zygote() {
                    Ok(z) => rt.inner.pool.lock().expect("lock").push_back(z),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a zygote");
                        break;
                    }
                }
            }
            *rt.inner.refilling.lock().expect("lock") = false;
        });
    }

    fn take_zygote(&self) -> Result<Zygote, RuntimeError> {
        // Refilled after the container started (`start`, `restore`, or a
        // failed create): a zygote's cgroup attach holds the kernel's cgroup
        // lock for an RCU grace period and would stall this container's
        // cgroup mounts.
        let pooled = self.inner.pool.lock().expect("lock").pop_front();
        let z = match pooled {
            Some(z) => z,
            None => self.spawn_zygote()?,
        };
        // Wait for "ready": it has joined its cgroup by then.
        z.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("shim socket"))?;
        let mut line = String::new();
        let ok = BufReader::new(&z.sock).read_line(&mut line).is_ok() && line == "ready\n";
        if !ok {
            self.discard_zygote(z);
            // One retry with a fresh zygote; a second failure is reported.
            let z2 = self.spawn_zygote()?;
            z2.sock
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(io_err("shim socket"))?;
            let mut line = String::new();
            if BufReader::new(&z2.sock).read_line(&mut line).is_err() || line != "ready\n" {
                let code = self.discard_zygote(z2);
                return Err(RuntimeError::Io {
                    what: format!(
                        "shim {} did not become ready (exit {code:?})",
                        self.inner.cfg.shim.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            return Ok(z2);
        }
        Ok(z)
    }

    fn discard_zygote(&self, mut z: Zygote) -> Option<i32> {
        let _ = z.child.kill();
        let st = z.child.wait().ok().and_then(|s| s.code());
        self.inner
            .children
            .lock()
            .expect("lock")
            .remove(&(z.child.id() as i32));
        if let Some(cg) = z.cgroup {
            let _ = cg.remove();
        }
        st
    }

    /// Reap shims that are our children and have exited.
    fn reap(&self) {
        let mut ch = self.inner.children.lock().expect("lock");
        ch.retain(|&pid| {
            // SAFETY: non-blocking wait for a specific child of ours.
            let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            r == 0
        });
    }

    /// The limits written to a container's cgroup. On v1 the shim lives in
    /// it (born there as a zygote) as exactly one task: the pids limit gets
    /// that one back so the workload keeps all it asked for.
    fn cgroup_resources(
        &self,
        r: &crate::cgroups::Resources,
        shim_inside: bool,
    ) -> crate::cgroups::Resources {
        let mut r = r.clone();
        if shim_inside {
            if let Some(p) = r.pids_limit.filter(|p| *p > 0) {
                r.pids_limit = Some(p + 1);
            }
        }
        r
    }

    fn cgroup_fs(&self) -> CgroupFs {
        match self.inner.layout.mode() {
            CgroupMode::V2 => CgroupFs::V2,
            _ => CgroupFs::V1(
                self.inner
                    .v1_hierarchies
                    .get_or_init(v1_hierarchies)
                    .clone(),
            ),
        }
    }

    pub fn create(&self, opts: CreateOptions) -> Result<ContainerState, RuntimeError> {
        config::validate_id(&opts.id)?;
        let mut cfg = config::from_spec(&opts.spec)?;
        if !self.v1() {
            // No device cgroup on v2 (it needs eBPF): without CAP_MKNOD no
            // node beyond the runtime's allowlist can exist in the container.
            const CAP_MKNOD: u32 = 27;
            let bit = 1u64 << CAP_MKNOD;
            let c = &mut cfg.process.caps;
            c.bounding &= !bit;
            c.effective &= !bit;
            c.permitted &= !bit;
            c.inheritable &= !bit;
            c.ambient &= !bit;
        }
        if opts.lower_dirs.is_empty() {
            return Err(RuntimeError::Rootfs(
                "at least one directory is required".into(),
            ));
        }
        let mut lower_ids = Vec::with_capacity(opts.lower_dirs.len());
        for d in &opts.lower_dirs {
            if !d.is_absolute() {
                return Err(RuntimeError::Rootfs(format!(
                    "{} is not an absolute path",
                    d.display()
                )));
            }
            match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => lower_ids.push(lower_id(d, &m)),
                Ok(_) => {
                    return Err(RuntimeError::Rootfs(format!(
                        "{} is not a directory",
                        d.display()
                    )))
                }
                Err(_) => {
                    return Err(RuntimeError::Rootfs(format!(
                        "{} does not exist",
                        d.display()
                    )))
                }
            }
            if d.to_string_lossy().contains([',', ':']) {
                return Err(RuntimeError::Rootfs(format!(
                    "{} contains ',' or ':' which overlayfs cannot take",
                    d.display()
                )));
            }
        }
        let dir = self.dir(&opts.id);
        // A skeleton made ahead takes the name atomically like mkdir would:
        // one with the overlay already mounted on exactly these lower dirs
        // (same paths, same directories), else a plain one.
        let spare = {
            let mut sp = self.inner.spares.lock().expect("lock");
            let i = sp
                .iter()
                .position(|s| s.lowers.as_ref().is_some_and(|(l, _)| *l == lower_ids))
                .or_else(|| sp.iter().position(|s| s.lowers.is_none()));
            i.map(|i| sp.swap_remove(i))
        };
        *self.inner.lower_hint.lock().expect("lock") = Some(opts.lower_dirs.clone());
        let (from_spare, overlay) = match spare {
            Some(mut sp) => match sys::rename_noreplace(&sp.dir, &dir) {
                Ok(()) => (true, sp.lowers.take().map(|(_, fd)| fd)),
                Err(e) => {
                    self.discard_spare(sp);
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        return Err(RuntimeError::AlreadyExists(opts.id));
                    }
                    (false, None)
                }
            },
            None => (false, None),
        };
        if !from_spare {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(RuntimeError::AlreadyExists(opts.id))
                }
                Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
            }
        }
        let mut guard = CreateGuard {
            rt: self.clone(),
            dir: dir.clone(),
            cgroup: None,
            netns: None,
            armed: true,
        };
        let rootfs = dir.join("rootfs");
        if !from_spare {
            for d in ["rootfs", "upper", "work"] {
                std::fs::create_dir(dir.join(d))
                    .map_err(io_err(format!("creating {d} in {}", dir.display())))?;
            }
        }
        let mounted = match overlay {
            Some(fd) => sys::move_mount_to(fd.as_raw_fd(), &rootfs).or_else(|e| {
                tracing::warn!(error = %e, "attaching the pool's overlay; mounting one");
                // Release its work dir first: an overlay refuses one in use.
                drop(fd);
                mount_overlay(&opts.lower_dirs, &dir)
            }),
            None => mount_overlay(&opts.lower_dirs, &dir),
        };
        mounted.map_err(io_err(format!(
            "mounting overlay rootfs at {}",
            rootfs.display()
        )))?;

        let zyg = self.take_zygote()?;
        let (cgroup, clone_into) = match &zyg.cgroup {
            Some(cg) => (cg.clone(), None),
            None => {
                let cg = Cgroup::new(
                    self.inner.layout.clone(),
                    format!("{}/{}", self.inner.cfg.cgroup_parent, opts.id),
                );
                cg.create()?;
                (cg.clone(), cg.v2_dir())
            }
        };
        guard.cgroup = Some(cgroup.clone());
        cgroup.apply(&self.cgroup_resources(&cfg.resources, zyg.cgroup.is_some()))?;
        let netns_path = cfg
            .ns(NsKind::Net)
            .filter(|n| n.path.is_none())
            .map(|_| self.inner.cfg.netns_dir.join(&opts.id));
        guard.netns = netns_path.clone();
        let req = CreateRequest {
            id: opts.id.clone(),
            dir: dir.clone(),
            rootfs: rootfs.clone(),
            config: cfg.clone(),
            netns_path: netns_path.clone(),
            cgroup: cgroup.clone(),
            clone_into,
            cgroup_fs: self.cgroup_fs(),
            log: self.inner.cfg.log,
        };
        let resp = self.send_request(zyg, &ShimRequest::Create(Box::new(req)), &opts.id)?;
        let Spawned {
            init_pid,
            init_start,
            shim_pid,
            shim_start,
        } = resp;
        let record = ContainerRecord {
            id: opts.id.clone(),
            created_at_ms: shim::now_ms(),
            started_at_ms: None,
            lower_dirs: opts.lower_dirs.clone(),
            rootfs,
            config: cfg,
            cgroup,
            netns_path,
            init_pid,
            init_start,
            shim_pid,
            shim_start,
            labels: opts.labels,
            checkpoint: None,
            paused: false,
        };
        if let Err(e) = shim::write_json_atomic(&dir.join("state.json"), &record) {
            // SAFETY: killing the init we just created.
            unsafe { libc::kill(init_pid, libc::SIGKILL) };
            let _ = self.wait_shim_gone(shim_pid, shim_start, Duration::from_secs(5));
            return Err(io_err("writing state.json")(e));
        }
        guard.armed = false;
        tracing::debug!(id = %record.id, pid = init_pid, "container created");
        Ok(ContainerState {
            record,
            status: Status::Created,
            exit: None,
        })
    }

    fn send_request(
        &self,
        mut z: Zygote,
        req: &ShimRequest,
        id: &str,
    ) -> Result<Spawned, RuntimeError> {
        let mut line = serde_json::to_string(req).expect("serializable");
        line.push('\n');
        let fail = |rt: &Runtime, z: Zygote, msg: String| {
            rt.discard_zygote(z);
            RuntimeError::Create {
                id: id.to_string(),
                msg,
            }
        };
        if let Err(e) = z.sock.write_all(line.as_bytes()) {
            return Err(fail(self, z, format!("sending request to shim: {e}")));
        }
        let _ = z.sock.set_read_timeout(Some(Duration::from_secs(30)));
        let mut resp = String::new();
        if let Err(e) = BufReader::new(&z.sock).read_line(&mut resp) {
            return Err(fail(self, z, format!("no answer from shim: {e}")));
        }
        match serde_json::from_str::<CreateResponse>(&resp) {
            Ok(CreateResponse::Ok {
                init_pid,
                init_start,
                shim_pid,
                shim_start,
            }) => Ok(Spawned {
                init_pid,
                init_start,
                shim_pid,
                shim_start,
            }),
            Ok(CreateResponse::Err(msg)) => {
                // The shim exits after a failed create; reap it so its cgroup empties.
                let _ = z.child.wait();
                self.inner
                    .children
                    .lock()
                    .expect("lock")
                    .remove(&(z.child.id() as i32));
                Err(RuntimeError::Create {
                    id: id.to_string(),
                    msg,
                })
            }
            Err(_) => Err(fail(self, z, "shim exited without an answer".into())),
        }
    }

    /// Release a created container's process: it runs its command now.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Created {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "only a created container can be started",
            });
        }
        self.start_created(id, st.record)
    }

    /// `start` of a container known to be created (`run` has its record in
    /// hand: reading and parsing state.json again cost ~0.15 ms).
    fn start_created(&self, id: &str, record: ContainerRecord) -> Result<(), RuntimeError> {
        let fifo = self.dir(id).join(FIFO_FILE);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(io_err(format!("opening {}", fifo.display())))?;
        // init opens the fifo for writing, writes one byte and moves on.
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 50) };
            if r > 0 {
                break;
            }
            if !sys::process_matches(record.init_pid, record.init_start) {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    status: Status::Stopped,
                    wanted: "it exited before start",
                });
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Io {
                    what: "waiting for the container init to take the start signal".into(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
        }
        let _ = std::fs::remove_file(&fifo);
        let mut rec = record;
        rec.started_at_ms = Some(shim::now_ms());
        let dir = self.dir(id);
        let res = shim::write_json_swap(&dir.join("state.json"), &dir.join(START_TMP), &rec)
            .map_err(io_err("writing state.json"));
        self.refill_pool_async();
        res
    }

    pub fn run(&self, opts: CreateOptions) -> Result<ContainerState, RuntimeError> {
        let id = opts.id.clone();
        let st = self.create(opts)?;
        if let Err(e) = self.start_created(&id, st.record.clone()) {
            let _ = self.delete(&id, true);
            return Err(e);
        }
        Ok(ContainerState {
            status: Status::Running,
            ..st
        })
    }

    fn load(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        config::validate_id(id).map_err(|_| RuntimeError::NotFound(id.into()))?;
        let p = self.dir(id).join("state.json");
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.into()))
            }
            Err(e) => return Err(io_err(format!("reading {}", p.display()))(e)),
        };
        serde_json::from_slice(&data).map_err(|e| RuntimeError::Io {
            what: format!("parsing {}", p.display()),
            source: std::io::Error::other(e),
        })
    }

    fn read_exit(&self, id: &str) -> Option<ExitInfo> {
        let data = std::fs::read(self.dir(id).join(EXIT_FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn derive(&self, record: ContainerRecord) -> ContainerState {
        self.reap();
        if let Some(exit) = self.read_exit(&record.id) {
            return ContainerState {
                record,
                status: Status::Stopped,
                exit: Some(exit),
            };
        }
        let init_alive = sys::process_matches(record.init_pid, record.init_start);
        let shim_alive = sys::process_matches(record.shim_pid, record.shim_start);
        let status = if init_alive {
            if record.paused {
                Status::Paused
            } else if self.dir(&record.id).join(FIFO_FILE).exists() {
                Status::Created
            } else {
                Status::Running
            }
        } else if shim_alive {
            // init is gone and the shim is writing exit.json right now.
            Status::Running
        } else {
            Status::Stopped
        };
        ContainerState {
            record,
            status,
            exit: None,
        }
    }

    pub fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        Ok(self.derive(self.load(id)?))
    }

    /// Every container under our root, including those created before an
    /// agent restart: they are re-adopted from their state files, never
    /// started again. Half-created directories (no state.json) are removed.
    pub fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let base = self.inner.cfg.root.join("containers");
        let mut out = vec![];
        let rd = std::fs::read_dir(&base).map_err(io_err(format!("reading {}", base.display())))?;
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            match self.load(&id) {
                Ok(r) => out.push(self.derive(r)),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => tracing::warn!(id = %id, error = %e, "unreadable container state"),
            }
        }
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(out)
    }

    /// Remove directories of creates that died half-way (agent killed during
    /// create): no state.json means nothing was ever handed out.
    pub fn cleanup_incomplete(&self) -> Vec<String> {
        let base = self.inner.cfg.root.join("containers");
        let mut removed = vec![];
        let Ok(rd) = std::fs::read_dir(&base) else {
            return removed;
        };
        for e in rd.flatten() {
            let dir = e.path();
            if !dir.join("state.json").exists() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = sys::unmount_all_under(&dir);
                if sys::remove_tree_one_fs(&dir).is_ok() {
                    removed.push(id);
                }
            }
        }
        removed
    }

    pub fn kill(&self, id: &str, sig: i32) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "nothing to signal",
            });
        }
        let r = &st.record;
        let fd = match sys::pidfd_open(r.init_pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(io_err("pidfd_open")(e)),
        };
        // Guard against pid reuse between load and pidfd_open.
        if !sys::process_matches(r.init_pid, r.init_start) {
            return Ok(());
        }
        match sys::pidfd_send_signal(fd.as_raw_fd(), sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(io_err(format!("sending signal {sig}"))(e)),
        }
    }

    /// Wait for the container to exit and return how it ended.
    pub fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<ExitInfo, RuntimeError> {
        let rec = self.load(id)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let shim_fd = if sys::process_matches(rec.shim_pid, rec.shim_start) {
            sys::pidfd_open(rec.shim_pid).ok()
        } else {
            None
        };
        let init_fd = sys::pidfd_open(rec.init_pid).ok();
        // The shim renames exit.json into place and only then exits (and
        // releases the container's mount namespace): watch for the file.
        let watch = self.watch_dir(&self.dir(id));
        loop {
            if let Some(e) = self.read_exit(id) {
                self.reap();
                return Ok(e);
            }
            let shim_alive = sys::process_matches(rec.shim_pid, rec.shim_start);
            let init_alive = sys::process_matches(rec.init_pid, rec.init_start);
            if !shim_alive && !init_alive {
                // The shim died before recording: the exit is unknown.
                self.reap();
                if let Some(e) = self.read_exit(id) {
                    return Ok(e);
                }
                return Ok(ExitInfo {
                    finished_at_ms: shim::now_ms(),
                    ..Default::default()
                });
            }
            let step = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RuntimeError::Timeout(timeout.unwrap_or_default()));
                    }
                    left.min(Duration::from_millis(200))
                }
                None => Duration::from_millis(200),
            };
            let fd = if shim_alive {
                shim_fd.as_ref()
            } else {
                init_fd.as_ref()
            };
            match (fd, &watch) {
                (Some(fd), Some(w)) => {
                    let _ = sys::poll_readable(&[fd.as_raw_fd(), w.fd()], step);
                    sys::inotify_drain(w.fd());
                }
                (Some(fd), None) => {
                    let _ = sys::pidfd_wait(fd.as_raw_fd(), Some(step));
                }
                (None, Some(w)) => {
                    let _ = sys::poll_readable(&[w.fd()], step.min(Duration::from_millis(20)));
                    sys::inotify_drain(w.fd());
                }
                (None, None) => std::thread::sleep(step.min(Duration::from_millis(20))),
            }
        }
    }

    /// An inotify watch on `dir` from the runtime's pool of instances.
    fn watch_dir(&self, dir: &Path) -> Option<DirWatch> {
        let fd = match self.inner.inotify.lock().expect("lock").pop() {
            Some(fd) => fd,
            None => sys::inotify_new().ok()?,
        };
        match sys::inotify_watch(fd.as_raw_fd(), dir) {
            Ok(wd) => Some(DirWatch {
                rt: self.clone(),
                fd: Some(fd),
                wd,
            }),
            Err(_) => {
                self.inner.inotify.lock().expect("lock").push(fd);
                None
            }
        }
    }

    fn wait_shim_gone(&self, pid: i32, start: u64, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        // Woken by the exit itself rather than polling (the shim may still be
        // releasing the container's mounts after writing exit.json).
        let fd = if sys::process_matches(pid, start) {
            sys::pidfd_open(pid).ok()
        } else {
            None
        };
        let mut exited = false;
        while sys::process_matches(pid, start) {
            self.reap();
            if !sys::process_matches(pid, start) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &fd {
                // Once it has exited only its reaping is left: poll for that
                // (the pidfd would stay readable and spin).
                Some(f) if !exited => {
                    exited =
                        sys::pidfd_wait(f.as_raw_fd(), Some(left.min(Duration::from_millis(50))))
                            .unwrap_or(true);
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.reap();
        true
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. A PID-1 process without a
    /// SIGTERM handler ignores SIGTERM, so the grace period then runs out.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<ExitInfo, RuntimeError> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return self.wait(id, Some(Duration::from_secs(1)));
        }
        if st.status == Status::Paused {
            // Stopped tasks cannot act on SIGTERM.
            self.kill(id, libc::SIGKILL)?;
            let _ = st
                .record
                .cgroup
                .kill_all_except(libc::SIGKILL, &[st.record.shim_pid]);
            return self.wait(id, Some(Duration::from_secs(10)));
        }
        self.kill(id, libc::SIGTERM)?;
        match self.wait(id, Some(grace)) {
            Ok(e) => Ok(e),
            Err(RuntimeError::Timeout(_)) => {
                self.kill(id, libc::SIGKILL)?;
                let _ = st
                    .record
                    .cgroup
                    .kill_all_except(libc::SIGKILL, &[st.record.shim_pid]);
                self.wait(id, Some(Duration::from_secs(10)))
            }
            Err(e) => Err(e),
        }
    }

    /// Remove a stopped container (or any, with `force`): unmount first,
    /// then remove cgroup, network namespace and state, in that order.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        let r = &st.record;
        if st.status != Status::Stopped {
            if !force {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    status: st.status,
                    wanted: "stop it first or force the delete",
                });
            }
            let _ = self.kill(id, libc::SIGKILL);
            let _ = r.cgroup.kill_all_except(libc::SIGKILL, &[r.shim_pid]);
            let _ = self.wait(id, Some(Duration::from_secs(10)));
        }
        // The shim may still be finishing its exit record.
        if !self.wait_shim_gone(r.shim_pid, r.shim_start, Duration::from_secs(5)) {
            // SAFETY: signalling the shim process we started (pid + start time checked).
            if sys::process_matches(r.shim_pid, r.shim_start) {
                unsafe { libc::kill(r.shim_pid, libc::SIGKILL) };
            }
            self.wait_shim_gone(r.shim_pid, r.shim_start, Duration::from_secs(2));
        }
        self.teardown(&self.dir(id), Some(&r.cgroup), r.netns_path.as_deref())
    }

    fn teardown(
        &self,
        dir: &Path,
        cg: Option<&Cgroup>,
        netns: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        if let Some(ns) = netns {
            if let Ok(c) = sys::cpath(ns) {
                let _ = sys::umount2(&c, libc::MNT_DETACH);
            }
            let _ = std::fs::remove_file(ns);
        }
        let failed = sys::unmount_all_under(dir);
        if let Some((p, e)) = failed.into_iter().next() {
            return Err(io_err(format!("unmounting {}", p.display()))(e));
        }
        if let Some(cg) = cg {
            cg.remove()?;
        }
        sys::remove_tree_one_fs(dir).map_err(io_err(format!("removing {}", dir.display())))
    }

    pub fn stats(&self, id: &str) -> Result<Usage, RuntimeError> {
        let rec = self.load(id)?;
        let mut u = rec.cgroup.stats()?;
        // The workload's tasks: not the shim that shares its v1 cgroup.
        if rec
            .cgroup
            .pids()
            .map(|p| p.contains(&rec.shim_pid))
            .unwrap_or(false)
        {
            u.pids = u.pids.saturating_sub(1);
        }
        Ok(u)
    }

    /// The container's overlay upper directory (its changes to the image).
    pub fn upper_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.load(id)?;
        Ok(self.dir(id).join("upper"))
    }

    pub fn log_path(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.load(id)?;
        Ok(self.dir(id).join(LOG_FILE))
    }

    /// A command that runs `opts.args` inside the running container. The
    /// caller chooses stdio and spawns it (std or tokio).
    pub fn exec_command(&self, id: &str, opts: &ExecOptions) -> Result<Command, RuntimeError> {
        let req = self.exec_request(id, opts)?;
        Ok(self.exec_helper(&req))
    }

    /// Like [`Runtime::exec_command`], with a terminal: the command runs as the session leader
    /// of a pseudo-terminal opened in the container's devpts, `size` (rows, columns) at first.
    /// Spawn the command, then [`ConsoleSocket::receive`] yields the terminal's master end.
    pub fn exec_tty_command(
        &self,
        id: &str,
        opts: &ExecOptions,
        size: Option<(u16, u16)>,
    ) -> Result<(Command, ConsoleSocket), RuntimeError> {
        use std::os::unix::process::CommandExt;
        let mut req = self.exec_request(id, opts)?;
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| io_err("console socket")(e.into()))?;
        req.console_fd = Some(CONSOLE_FD);
        req.console_size = size;
        let mut cmd = self.exec_helper(&req);
        let raw = theirs.as_raw_fd();
        // SAFETY: only dup2/fcntl (async-signal-safe) between fork and exec. The socket is
        // close-on-exec everywhere else, so no other child inherits it.
        unsafe {
            cmd.pre_exec(move || {
                if raw == CONSOLE_FD {
                    let fl = libc::fcntl(raw, libc::F_GETFD);
                    if fl < 0 || libc::fcntl(raw, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, CONSOLE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((
            cmd,
            ConsoleSocket {
                ours,
                theirs: Some(theirs),
            },
        ))
    }

    fn exec_request(&self, id: &str, opts: &ExecOptions) -> Result<ExecRequest, RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Running {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "exec needs a running container",
            });
        }
        if opts.args.is_empty() || opts.args[0].is_empty() {
            return Err(config::invalid("args", "must name a command").into());
        }
        let r = st.record;
        let mut process = r.config.process.clone();
        process.args = opts.args.clone();
        for (i, e) in opts.env.iter().enumerate() {
            let Some((k, _)) = e.split_once('=') else {
                return Err(config::invalid(
                    format!("env[{i}]"),
                    format!("must be KEY=VALUE, got {e:?}"),
                )
                .into());
            };
            process.env.retain(|x| !x.starts_with(&format!("{k}=")));
            process.env.push(e.clone());
        }
        if let Some(c) = &opts.cwd {
            if !c.is_absolute() {
                return Err(config::invalid("cwd", "must be an absolute path").into());
            }
            process.cwd = c.clone();
        }
        if let Some(u) = opts.uid {
            process.uid = u;
        }
        if let Some(g) = opts.gid {
            process.gid = g;
        }
        Ok(ExecRequest {
            init_pid: r.init_pid,
            init_start: r.init_start,
            namespaces: r.config.namespaces.iter().map(|n| n.kind).collect(),
            cgroup_procs: r.cgroup.procs_files(),
            process,
            console_fd: None,
            console_size: None,
        })
    }

    fn exec_helper(&self, req: &ExecRequest) -> Command {
        let mut cmd = Command::new(&self.inner.cfg.shim);
        cmd.arg(SHIM_ARG)
            .arg("exec")
            .arg(serde_json::to_string(req).expect("serializable"));
        cmd
    }

    /// CRIU's version and features, for choosing a migration strategy.
    pub fn criu_info(&self) -> Result<CriuInfo, RuntimeError> {
        Ok(criu_mod::info(&self.inner.cfg.criu)?)
    }

    /// Checkpoint a running container into `opts.images_dir` (created, must
    /// be new). Without `leave_running` the container is stopped by the dump
    /// and can be restored later; its rootfs, cgroup and network namespace
    /// stay until it is deleted.
    pub fn checkpoint(&self, id: &str, opts: &CheckpointOptions) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Running {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "only a running container can be checkpointed",
            });
        }
        let r = &st.record;
        if r.config.ns(NsKind::User).is_some() {
            return Err(RuntimeError::Checkpoint {
                id: id.into(),
                msg: "containers in a user namespace cannot be checkpointed yet".into(),
            });
        }
        let images = &opts.images_dir;
        if images.exists()
            && std::fs::read_dir(images)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(RuntimeError::Checkpoint {
                id: id.into(),
                msg: format!("image directory {} is not empty", images.display()),
            });
        }
        std::fs::create_dir_all(images)
            .map_err(io_err(format!("creating {}", images.display())))?;
        let descriptors: Vec<String> = (0..3)
            .map(|fd| {
                std::fs::read_link(format!("/proc/{}/fd/{fd}", r.init_pid))
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let cgroup_dests: Vec<PathBuf> = r
            .config
            .mounts
            .iter()
            .filter(|m| matches!(m.fstype.as_deref(), Some("cgroup") | Some("cgroup2")))
            .map(|m| m.destination.clone())
            .collect();
        let mountinfo =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", r.init_pid)).unwrap_or_default();
        let (mut externals, cgroupfs_dirs) =
            criu_mod::tmpfs_externals(&mountinfo, &r.config.masked_paths, &cgroup_dests);
        // /dev and /dev/shm are recorded by us once the dump has returned;
        // a dump that leaves the tasks running leaves them to CRIU (they
        // could write between the dump and the recording).
        let held = if matches!(opts.after, AfterCheckpoint::Run) {
            vec![]
        } else {
            ext_tmpfs::hold(&mountinfo, r.init_pid)
        };
        externals.extend(
            held.iter()
                .map(|h| (h.ext.mountpoint.clone(), h.ext.key.clone())),
        );
        let mut meta = CheckpointMeta {
            id: id.into(),
            config: r.config.clone(),
            lower_dirs: r.lower_dirs.clone(),
            descriptors,
            tcp_established: opts.tcp_established,
            created_at_ms: shim::now_ms(),
            masked_external: externals.iter().any(|(_, k)| k == criu_mod::EXT_MASKED),
            cgroupfs_external: cgroupfs_dirs,
            criu_in_netns: r.netns_path.is_some(),
            ext_tmpfs: vec![],
        };
        if let Some(ns) = &r.netns_path {
            // Our lock instead of CRIU's (see crate::netlock): the tasks run
            // a few ms longer with their network locked.
            if let Err(e) = crate::netlock::lock(ns) {
                let _ = sys::remove_tree_one_fs(images);
                return Err(RuntimeError::Checkpoint {
                    id: id.into(),
                    msg: format!("locking the network namespace {}: {e}", ns.display()),
                });
            }
        }
        let res = criu_mod::dump(&criu_mod::DumpArgs {
            criu: &self.inner.cfg.criu,
            pid: r.init_pid,
            images,
            rootfs: &r.rootfs,
            netns: r.netns_path.as_deref(),
            tcp_established: opts.tcp_established,
            after: opts.after,
            externals: &externals,
        });
        if let Err(e) = res {
            // A failed dump resumes the tasks; leave no half-written images.
            let _ = sys::remove_tree_one_fs(images);
            if let Some(ns) = &r.netns_path {
                criu_mod::remove_network_lock(ns);
            }
            return Err(e.into());
        }
        let recorded = ext_tmpfs::record(held, images).and_then(|v| {
            meta.ext_tmpfs = v;
            shim::write_json_atomic(&images.join(criu_mod::META_FILE), &meta)
        });
        if let Err(e) = recorded {
            let _ = sys::remove_tree_one_fs(images);
            // No usable checkpoint: a killed container is simply stopped, a
            // stopped one carries on as if no checkpoint had been asked for.
            if let Some(ns) = &r.netns_path {
                criu_mod::remove_network_lock(ns);
            }
            if matches!(opts.after, AfterCheckpoint::Stop) {
                let _ = r.cgroup.kill_all_except(libc::SIGCONT, &[r.shim_pid]);
            }
            return Err(RuntimeError::Checkpoint {
                id: id.into(),
                msg: format!("recording the checkpoint's /dev mounts and metadata: {e}"),
            });
        }
        match opts.after {
            AfterCheckpoint::Run => {
                // A running container needs its network back.
                if let Some(ns) = &r.netns_path {
                    crate::netlock::unlock(ns).map_err(|e| RuntimeError::Checkpoint {
                        id: id.into(),
                        msg: format!("unlocking the network namespace {}: {e}", ns.display()),
                    })?;
                }
                return Ok(());
            }
            AfterCheckpoint::Stop => {
                let mut rec = r.clone();
                rec.paused = true;
                rec.checkpoint = Some(images.clone());
                shim::write_json_atomic(&self.dir(id).join("state.json"), &rec)
                    .map_err(io_err("writing state.json"))?;
                return Ok(());
            }
            AfterCheckpoint::Kill => {}
        }
        // The dump killed the tasks: wait for the shim's exit record.
        let _ = self.wait(id, Some(Duration::from_secs(10)));
        let mut rec = r.clone();
        rec.checkpoint = Some(images.clone());
        shim::write_json_atomic(&self.dir(id).join("state.json"), &rec)
            .map_err(io_err("writing state.json"))?;
        tracing::info!(container = %id, images = %images.display(), "checkpointed");
        Ok(())
    }

    /// Continue a container that a checkpoint left stopped: lift CRIU's
    /// network lock, then wake every task.
    pub fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Paused {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "only a paused container can be resumed",
            });
        }
        if let Some(ns) = &st.record.netns_path {
            criu_mod::remove_network_lock(ns);
        }
        st.record
            .cgroup
            .kill_all_except(libc::SIGCONT, &[st.record.shim_pid])?;
        let mut rec = st.record;
        rec.paused = false;
        rec.checkpoint = None;
        shim::write_json_atomic(&self.dir(id).join("state.json"), &rec)
            .map_err(io_err("writing state.json"))
    }

    /// Write a file inside a container's root filesystem (e.g. /etc/hosts),
    /// resolved inside the rootfs so an image symlink cannot redirect it.
    pub fn write_rootfs_file(
        &self,
        id: &str,
        path: &Path,
        data: &[u8],
    ) -> Result<(), RuntimeError> {
        let rec = self.load(id)?;
        let root = std::fs::File::open(&rec.rootfs)
            .map_err(io_err(format!("opening {}", rec.rootfs.display())))?;
        let what = || format!("writing {} in {id}", path.display());
        if let Some(parent) = path.parent() {
            sys::mkdir_all_in_root(root.as_raw_fd(), parent, 0o755).map_err(io_err(what()))?;
        }
        let fd = sys::open_in_root(
            root.as_raw_fd(),
            path,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
            0o644,
        )
        .map_err(io_err(what()))?;
        sys::write_all_fd(fd.as_raw_fd(), data).map_err(io_err(what()))
    }

    /// The container's network namespace path, created (empty, lo up) when
    /// it is not mounted: a restore or migration target needs it to exist
    /// before the network is attached and CRIU joins it.
    pub fn ensure_netns(&self, id: &str) -> Result<Option<PathBuf>, RuntimeError> {
        let rec = self.load(id)?;
        match rec.netns_path {
            Some(p) if !sys::is_mount_point(&p) => {
                self.make_netns(&p)?;
                Ok(Some(p))
            }
            other => Ok(other),
        }
    }

    /// Create a fresh network namespace at the container's netns path (the
    /// old one, if any, is unmounted first), with lo up. Restore and
    /// migration targets re-create the namespace by path like this.
    pub fn recreate_netns(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Stopped {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "the network namespace of a live container cannot be replaced",
            });
        }
        let path = st
            .record
            .netns_path
            .clone()
            .unwrap_or_else(|| self.inner.cfg.netns_dir.join(id));
        self.make_netns(&path)?;
        Ok(path)
    }

    fn make_netns(&self, path: &Path) -> Result<(), RuntimeError> {
        if let Ok(c) = sys::cpath(path) {
            let _ = sys::umount2(&c, libc::MNT_DETACH);
        }
        let _ = std::fs::remove_file(path);
        let out = Command::new(&self.inner.cfg.shim)
            .arg(SHIM_ARG)
            .arg("netns")
            .arg(path)
            .output()
            .map_err(io_err("starting the netns helper"))?;
        if !out.status.success() {
            return Err(RuntimeError::Io {
                what: format!(
                    "creating network namespace {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("netns helper failed"),
            });
        }
        Ok(())
    }

    /// Restore a checkpointed container from `opts.images_dir`: same
    /// processes and memory, same network namespace path (and so the same IP
    /// when the namespace keeps it), the rootfs changes kept. A failed
    /// restore leaves the container stopped as it was.
    pub fn restore(&self, id: &str, opts: &RestoreOptions) -> Result<ContainerState, RuntimeError> {
        let st = self.state(id)?;
        if st.status != Status::Stopped {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.status,
                wanted: "only a stopped container can be restored",
            });
        }
        let r = st.record.clone();
        let meta_path = opts.images_dir.join(criu_mod::META_FILE);
        let meta: CheckpointMeta = std::fs::read(&meta_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| RuntimeError::Restore {
                id: id.into(),
                msg: format!("{} is missing or unreadable", meta_path.display()),
            })?;
        if meta.tcp_established && !opts.tcp_established {
            return Err(RuntimeError::Restore {
                id: id.into(),
                msg: "the checkpoint holds established TCP connections; restore it with tcp_established".into(),
            });
        }
        if meta.criu_in_netns && r.netns_path.is_none() {
            return Err(RuntimeError::Restore {
                id: id.into(),
                msg: "the checkpoint was taken in a network namespace; the container has none"
                    .into(),
            });
        }
        if let Some(ns) = &r.netns_path {
            if !sys::is_mount_point(ns) {
                self.make_netns(ns)?;
                // A fresh namespace (another host, a reboot) is locked like
                // the dump's until the restore returns: connections being
                // restored must not meet RSTs from a port not yet listening.
                if meta.criu_in_netns {
                    crate::netlock::lock(ns).map_err(|e| RuntimeError::Restore {
                        id: id.into(),
                        msg: format!("locking the network namespace {}: {e}", ns.display()),
                    })?;
                }
            }
        }
        if !self.wait_shim_gone(r.shim_pid, r.shim_start, Duration::from_secs(5)) {
            return Err(RuntimeError::Restore {
                id: id.into(),
                msg: "the previous shim is still running".into(),
            });
        }
        let dir = self.dir(id);
        let externals = prepare_restore_tmpfs(&dir, &meta, &opts.images_dir).map_err(|e| {
            RuntimeError::Restore {
                id: id.into(),
                msg: format!("preparing mounts for the restore: {e}"),
            }
        })?;
        let old_exit = std::fs::read(dir.join(EXIT_FILE)).ok();
        let _ = std::fs::remove_file(dir.join(EXIT_FILE));
        let zyg = self.take_zygote()?;
        let shim_inside = zyg.cgroup.is_some();
        let (cgroup, attach, return_to) = match &zyg.cgroup {
            Some(cg) => (cg.clone(), vec![], vec![]),
            None => (
                r.cgroup.clone(),
                r.cgroup.procs_files(),
                self.shim_cgroup().procs_files(),
            ),
        };
        let restore_back = |rt: &Runtime| {
            if let Some(e) = &old_exit {
                let _ = std::fs::write(dir.join(EXIT_FILE), e);
            }
            if let Some(ns) = &r.netns_path {
                criu_mod::remove_network_lock(ns);
            }
            let _ = rt;
        };
        if let Err(e) = cgroup.apply(&self.cgroup_resources(&r.config.resources, shim_inside)) {
            self.discard_zygote(zyg);
            restore_back(self);
            return Err(e.into());
        }
        let req = RestoreRequest {
            id: id.into(),
            dir: dir.clone(),
            rootfs: r.rootfs.clone(),
            images: opts.images_dir.clone(),
            netns_path: r.netns_path.clone(),
            cgroup: cgroup.clone(),
            attach,
            return_to,
            log: self.inner.cfg.log,
            criu: self.inner.cfg.criu.clone(),
            descriptors: meta.descriptors.clone(),
            tcp_established: opts.tcp_established,
            externals,
            criu_in_netns: meta.criu_in_netns,
        };
        let resp = match self.send_request(zyg, &ShimRequest::Restore(Box::new(req)), id) {
            Ok(r) => r,
            Err(e) => {
                restore_back(self);
                let msg = match e {
                    RuntimeError::Create { msg, .. } => msg,
                    other => other.to_string(),
                };
                return Err(RuntimeError::Restore { id: id.into(), msg });
            }
        };
        let Spawned {
            init_pid,
            init_start,
            shim_pid,
            shim_start,
        } = resp;
        // A pool zygote brought its own cgroup: the old one is empty now.
        if cgroup != r.cgroup {
            let _ = r.cgroup.remove();
        }
        let rec = ContainerRecord {
            init_pid,
            init_start,
            shim_pid,
            shim_start,
            cgroup,
            started_at_ms: Some(shim::now_ms()),
            checkpoint: None,
            paused: false,
            ..r
        };
        shim::write_json_atomic(&dir.join("state.json"), &rec)
            .map_err(io_err("writing state.json"))?;
        tracing::info!(container = %id, pid = init_pid, "restored");
        self.refill_pool_async();
        Ok(ContainerState {
            record: rec,
            status: Status::Running,
            exit: None,
        })
    }

    /// Stop the pool's zygotes (they exit when their socket closes) and
    /// remove their cgroups.
    pub fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A refill under way may be making a spare: let it finish (it stops
        // at the flag) so no spare directory is left after we return.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *self.inner.refilling.lock().expect("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let zs: Vec<Zygote> = self.inner.pool.lock().expect("lock").drain(..).collect();
        for z in zs {
            self.discard_zygote(z);
        }
        let spares: Vec<Spare> = self.inner.spares.lock().expect("lock").drain(..).collect();
        for s in spares {
            self.discard_spare(s);
        }
        let _ = sys::remove_tree_one_fs(&self.inner.cfg.root.join(SPARE_DIR));
        let _ = self.shim_cgroup().remove();
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// Host-side sources for the tmpfs mounts a checkpoint left to the runtime
/// (criu::EXT_*): mounted under the container's directory, so teardown
/// unmounts them with the rest, and reused by a later restore. Each is bound
/// into the restored container with its read-only flag.
fn prepare_restore_tmpfs(
    dir: &Path,
    meta: &CheckpointMeta,
    images: &Path,
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    let base = dir.join("criu-ext");
    let tmpfs = sys::cstr("tmpfs")?;
    let ro_remount = |p: &Path, extra: libc::c_ulong| {
        sys::mount(
            None,
            &sys::cpath(p)?,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | extra,
            None,
        )
    };
    if meta.masked_external {
        let p = base.join("masked");
        if !sys::is_mount_point(&p) {
            std::fs::create_dir_all(&p)?;
            let data = sys::cstr("size=0,mode=000")?;
            sys::mount(
                Some(&tmpfs),
                &sys::cpath(&p)?,
                Some(&tmpfs),
                libc::MS_RDONLY,
                Some(&data),
            )?;
        }
        out.push((criu_mod::EXT_MASKED.to_string(), p));
    }
    if let Some(dirs) = &meta.cgroupfs_external {
        let p = base.join("cgroupfs");
        if !sys::is_mount_point(&p) {
            std::fs::create_dir_all(&p)?;
            // As init mounts it: nosuid, nodev, noexec, mode 755, then read-only.
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;
            let data = sys::cstr("mode=755")?;
            sys::mount(
                Some(&tmpfs),
                &sys::cpath(&p)?,
                Some(&tmpfs),
                flags,
                Some(&data),
            )?;
            for d in dirs {
                if d.contains('/') || d == ".." || d == "." {
                    return Err(std::io::Error::other(format!("bad cgroup directory {d:?}")));
                }
                std::fs::create_dir(p.join(d))?;
            }
            ro_remount(&p, flags)?;
        }
        out.push((criu_mod::EXT_CGROUPFS.to_string(), p));
    }
    for e in &meta.ext_tmpfs {
        let Some((_, key, name)) = ext_tmpfs::MOUNTS.iter().find(|(_, k, _)| *k == e.key) else {
            return Err(std::io::Error::other(format!(
                "unknown external mount {:?}",
                e.key
            )));
        };
        let p = base.join(name);
        ext_tmpfs::prepare(e, &p, images)?;
        out.push((key.to_string(), p));
    }
    Ok(out)
}

/// The host's v1 hierarchies as (directory under /sys/fs/cgroup, mount
/// options), to mount the same ones inside containers.
fn v1_hierarchies() -> Vec<(String, String)> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut out = vec![];
    for line in mi.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split(' ');
        if post.next() != Some("cgroup") {
            continue;
        }
        let Some(mp) = pre.split(' ').nth(4) else {
            continue;
        };
        let Some(name) = mp.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let opts = post.nth(1).unwrap_or("");
        let keep: Vec<&str> = opts
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
            .collect();
        if !out.iter().any(|(n, _): &(String, String)| n == name) {
            out.push((name.to_string(), keep.join(",")));
        }
    }
    out
}

struct CreateGuard {
    rt: Runtime,
    dir: PathBuf,
    cgroup: Option<Cgroup>,
    netns: Option<PathBuf>,
    armed: bool,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.rt.refill_pool_async();
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill_all(libc::SIGKILL);
        }
        if let Err(e) = self
            .rt
            .teardown(&self.dir, self.cgroup.as_ref(), self.netns.as_deref())
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cleanup after failed create");
        }
    }
}
