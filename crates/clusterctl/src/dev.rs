//! `clusterctl dev up|down`: a whole cluster on this machine, one network namespace per host.
//!
//! Layout of a dev cluster in slot `K` (64..=250, claimed machine-wide):
//! * underlay `198.18.K.0/24` on bridge `fdb<K>` in the root namespace (`.1` is the host side,
//!   so clusterctl reaches the controllers); controller `i` at `.1i` (`.11`, `.12`, ...),
//!   agent `j` at `.10j` (`.101`, ...); each host is a netns `fdev-<name>-<host>` with `lo` up
//!   and `eth0`, the peer of veth `fdb<K><host>` on the bridge;
//! * agent `j`'s containers in `198.19.K.(32(j-1))/27` on its own bridge `fcb<K>x<j>`.
//!
//! No default route anywhere: nothing leaves 198.18.0.0/15. Processes are started through
//! `nsenter --net=<netns> -- <binary>` (no fork without exec here), in their own session, with
//! logs under the state directory. Everything made is recorded in a state file
//! (`/run/flotilla-dev/<name>.json`) *before* it is made, so `down` removes exactly that, also
//! after a crash half-way through `up`; `up` tears down itself when it fails.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use flotilla_api::cluster::TokenRole;
use flotilla_api::rest::{MembersResponse, NodeList, TokenCreate, TokenCreated};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::config::{self, Config};
use crate::devregistry;

const CONTROLLER_RAFT_PORT: u16 = 7000;
const CONTROLLER_API_PORT: u16 = 7443;
const AGENT_API_PORT: u16 = 9443;
const SLOTS: std::ops::RangeInclusive<u16> = 64..=250;
const MAX_CONTROLLERS: u32 = 7;
const MAX_AGENTS: u32 = 8;

/// Where state files and slot claims live (tmpfs: gone with the namespaces at reboot).
fn run_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_DEV_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/run/flotilla-dev"), PathBuf::from)
}

#[derive(Debug, Clone)]
pub struct UpArgs {
    pub name: String,
    pub controllers: u32,
    pub agents: u32,
    pub state_dir: Option<PathBuf>,
    pub controller_bin: Option<PathBuf>,
    pub agent_bin: Option<PathBuf>,
    pub registry_insecure: Vec<String>,
    pub config_path: PathBuf,
    pub timeout: Duration,
}

/// A started process: (pid, start time) identify it, so a reused PID is never signalled.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentHost {
    pub node_id: String,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub bridge: String,
    pub subnet: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// `c1`, `c2`, ..., `a1`, ...
    pub name: String,
    /// Name under /run/netns.
    pub netns: String,
    /// Root-namespace end of the host's veth pair (the other end is the host's eth0).
    pub veth: String,
    pub ip: String,
    #[serde(default)]
    pub process: Option<Proc>,
    #[serde(default)]
    pub log: Option<PathBuf>,
    #[serde(default)]
    pub api_addr: Option<String>,
    #[serde(default)]
    pub agent: Option<AgentHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevState {
    pub name: String,
    pub state_dir: PathBuf,
    /// True when `up` created the directory (only then does `down` delete it).
    pub state_dir_created: bool,
    pub config_path: PathBuf,
    #[serde(default)]
    pub context_written: bool,
    #[serde(default)]
    pub slot: Option<u16>,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// The binaries `up` used, so `dev start` restarts a host with the same ones.
    #[serde(default)]
    pub controller_bin: Option<PathBuf>,
    #[serde(default)]
    pub agent_bin: Option<PathBuf>,
    /// The dev registry (started when there are agents).
    #[serde(default)]
    pub registry: Option<Registry>,
}

/// The dev cluster's image registry on the bridge's host side (see `devregistry`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    pub dir: PathBuf,
    /// `198.18.K.1:5000`; agents pull from it over plain HTTP.
    pub addr: String,
    #[serde(default)]
    pub process: Option<Proc>,
    /// The sample busybox image pushed at start.
    #[serde(default)]
    pub sample: Option<String>,
}

fn state_file(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.json"))
}

fn slot_file(slot: u16) -> PathBuf {
    run_dir().join("slots").join(slot.to_string())
}

impl DevState {
    fn save(&self) -> Result<()> {
        let path = state_file(&self.name);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(name: &str) -> Result<Option<Self>> {
        let path = state_file(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("malformed dev cluster state file {}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ensure!(
        ok,
        "--name {name:?} must be 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    );
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A binary: the flag or environment value, else next to this executable.
fn find_bin(given: Option<&Path>, name: &str, flag: &str) -> Result<PathBuf> {
    let p = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable's directory")?
            .parent()
            .context("this executable has no directory")?
            .join(name),
    };
    ensure!(
        is_executable(&p),
        "{name} not found or not executable at {} (build it, or give {flag})",
        p.display()
    );
    Ok(p)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/bin".into(),
            "/sbin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Run a command that must succeed; the error quotes it and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// (state, start time) of a process from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat is the start time; `rest` begins at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The process runs (not a zombie) and is still the one we started.
pub fn alive(p: &Proc) -> bool {
    matches!(proc_stat(p.pid), Some((st, start)) if start == p.start_time && st != 'Z' && st != 'X')
}

fn wait_gone(p: &Proc, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(p) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn signal(p: &Proc, sig: i32) {
    if alive(p) {
        // SAFETY: kill(2) on a PID whose start time we just checked.
        unsafe { libc::kill(p.pid, sig) };
    }
}

/// SIGTERM, then SIGKILL after `grace`; true when it is gone.
fn stop(p: &Proc, grace: Duration) -> bool {
    if !alive(p) {
        return true;
    }
    signal(p, libc::SIGTERM);
    if wait_gone(p, grace) {
        return true;
    }
    signal(p, libc::SIGKILL);
    wait_gone(p, Duration::from_secs(5))
}

/// Start `bin args` inside the netns, detached (own session), output appended to `log`.
fn spawn_in(
    netns: &str,
    bin: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Proc> {
    let nsenter = which("nsenter").context("nsenter (util-linux) is needed by dev up")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(nsenter);
    cmd.arg(format!("--net={}", netns_path(netns).display()))
        .arg("--")
        .arg(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id() as i32;
    // Our unreaped child: the PID cannot be reused before we read its start time.
    let (_, start_time) = proc_stat(pid).context("the started process vanished")?;
    // Dropping a Child neither kills nor waits: the process outlives clusterctl.
    drop(child);
    Ok(Proc { pid, start_time })
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    lines[from..].join("\n")
}

fn exited_error(what: &str, log: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} exited during start; last lines of {}:\n{}",
        log.display(),
        log_tail(log)
    )
}

// ---------------------------------------------------------------------------------------------
// up
// ---------------------------------------------------------------------------------------------

fn root_required() -> Result<()> {
    // SAFETY: plain syscall.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "dev up/down needs root (network namespaces, bridges, cgroups)"
    );
    Ok(())
}

/// Claim a free slot: no route to its /24s here and no claim file of another cluster.
fn claim_slot(name: &str) -> Result<u16> {
    let dir = run_dir().join("slots");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let span = (*SLOTS.end() - *SLOTS.start() + 1) as u64;
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    for i in 0..span {
        let slot = *SLOTS.start() + ((h + i) % span) as u16;
        // Used: a route inside the /24 or covering it (other than the default route), or
        // an address in it.
        let used = |net: &str| -> Result<bool> {
            let inside = run("ip", &["-4", "route", "show", "root", net])?;
            let covering = run("ip", &["-4", "route", "show", "match", net])?;
            let addrs = run("ip", &["-4", "addr", "show", "to", net])?;
            Ok(!inside.trim().is_empty()
                || covering.lines().any(|l| !l.starts_with("default"))
                || !addrs.trim().is_empty())
        };
        if used(&format!("198.18.{slot}.0/24"))?
            || used(&format!("198.19.{slot}.0/24"))?
            || link_exists(&format!("fdb{slot}"))
        {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(slot_file(slot))
        {
            Ok(mut f) => {
                f.write_all(name.as_bytes())?;
                return Ok(slot);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("cannot claim a dev cluster slot"),
        }
    }
    bail!("no free 198.18.K.0/24 slot for a dev cluster (all of 64..=250 are in use)")
}

pub async fn up(a: UpArgs) -> Result<()> {
    // --- everything that can be refused is refused before anything exists
    validate_name(&a.name)?;
    ensure!(
        (1..=MAX_CONTROLLERS).contains(&a.controllers),
        "--controllers {} is out of range: give 1 to {MAX_CONTROLLERS}",
        a.controllers
    );
    ensure!(
        a.agents <= MAX_AGENTS,
        "--agents {} is out of range: give 0 to {MAX_AGENTS}",
        a.agents
    );
    for r in &a.registry_insecure {
        ensure!(
            r.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_some(),
            "--registry-insecure {r:?} is not host:port"
        );
    }
    root_required()?;
    let controller_bin = find_bin(
        a.controller_bin.as_deref(),
        "flotilla-controller",
        "--controller-bin",
    )?;
    let agent_bin = if a.agents > 0 {
        Some(find_bin(
            a.agent_bin.as_deref(),
            "flotilla-agent",
            "--agent-bin",
        )?)
    } else {
        None
    };
    which("nsenter").context("nsenter (util-linux) is needed by dev up")?;
    which("ip").context("ip (iproute2) is needed by dev up")?;
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/flotilla-dev").join(&a.name));
    ensure!(
        state_dir.is_absolute(),
        "--state-dir {} must be an absolute path",
        state_dir.display()
    );
    let existed = state_dir.exists();
    if existed {
        let empty = std::fs::read_dir(&state_dir)
            .with_context(|| format!("cannot read --state-dir {}", state_dir.display()))?
            .next()
            .is_none();
        ensure!(
            empty,
            "--state-dir {} exists and is not empty",
            state_dir.display()
        );
    }
    let config = Config::load(&a.config_path)?;
    if config.contexts.iter().any(|c| c.name == a.name) {
        bail!(
            "a context named {:?} exists in {}; remove it or choose another --name",
            a.name,
            a.config_path.display()
        );
    }

    // --- the state file, created exclusively: the name is ours from here on
    std::fs::create_dir_all(run_dir())
        .with_context(|| format!("cannot create {}", run_dir().display()))?;
    let path = state_file(&a.name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "a dev cluster named {:?} exists ({}); run `clusterctl dev down --name {}` first",
            a.name,
            path.display(),
            a.name
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let mut st = DevState {
        name: a.name.clone(),
        state_dir: state_dir.clone(),
        state_dir_created: !existed,
        config_path: a.config_path.clone(),
        context_written: false,
        slot: None,
        bridge: None,
        hosts: Vec::new(),
        controller_bin: Some(controller_bin.clone()),
        agent_bin: agent_bin.clone(),
        registry: None,
    };
    st.save()?;
    match build(&mut st, &a, &controller_bin, agent_bin.as_deref()).await {
        Ok(summary) => {
            print!("{summary}");
            Ok(())
        }
        Err(e) => {
            eprintln!("dev up failed, removing what it made: {e:#}");
            match teardown(&st) {
                Ok(()) => Err(e),
                Err(t) => Err(e.context(format!(
                    "and cleaning up failed too: {t:#}; run `clusterctl dev down --name {}`",
                    a.name
                ))),
            }
        }
    }
}

async fn build(
    st: &mut DevState,
    a: &UpArgs,
    controller_bin: &Path,
    agent_bin: Option<&Path>,
) -> Result<String> {
    let deadline = Instant::now() + a.timeout;
    std::fs::create_dir_all(st.state_dir.join("logs"))
        .with_context(|| format!("cannot create {}", st.state_dir.display()))?;
    // Controller data below holds the CA key and the admin token.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&st.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", st.state_dir.display()))?;
    }
    let slot = claim_slot(&a.name)?;
    st.slot = Some(slot);
    st.save()?;

    // --- underlay bridge with the host side's address
    let bridge = format!("fdb{slot}");
    st.bridge = Some(bridge.clone());
    st.save()?;
    run("ip", &["link", "add", &bridge, "type", "bridge"])?;
    disable_ipv6(&bridge);
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("198.18.{slot}.1/24"),
            "dev",
            &bridge,
        ],
    )?;
    run("ip", &["link", "set", &bridge, "up"])?;

    // --- the dev registry on the bridge's host side, with the sample image
    let mut registries = a.registry_insecure.clone();
    if a.agents > 0 {
        let dir = st.state_dir.join("registry");
        let ip: std::net::IpAddr = format!("198.18.{slot}.1").parse()?;
        st.registry = Some(Registry {
            dir: dir.clone(),
            addr: std::net::SocketAddr::new(ip, devregistry::PORT).to_string(),
            process: None,
            sample: None,
        });
        st.save()?;
        let reg = devregistry::start(&dir, ip)?;
        let (_, start_time) = proc_stat(reg.pid as i32).context("the registry process vanished")?;
        if let Some(r) = st.registry.as_mut() {
            r.process = Some(Proc {
                pid: reg.pid as i32,
                start_time,
            });
        }
        st.save()?;
        let sample = reg.push_sample(&dir).await?;
        if let Some(r) = st.registry.as_mut() {
            r.sample = Some(sample);
        }
        st.save()?;
        registries.push(reg.addr.clone());
    }

    // --- one netns per host
    let mut names: Vec<(String, String)> = (1..=a.controllers)
        .map(|i| (format!("c{i}"), format!("198.18.{slot}.{}", 10 + i)))
        .collect();
    names.extend((1..=a.agents).map(|j| (format!("a{j}"), format!("198.18.{slot}.{}", 100 + j))));
    for (host, ip) in &names {
        let netns = format!("fdev-{}-{host}", a.name);
        let veth = format!("fdb{slot}{host}");
        st.hosts.push(Host {
            name: host.clone(),
            netns: netns.clone(),
            veth: veth.clone(),
            ip: ip.clone(),
            process: None,
            log: None,
            api_addr: None,
            agent: None,
        });
        st.save()?;
        ensure!(
            !netns_path(&netns).exists(),
            "network namespace {netns} exists already (left over from another run?)"
        );
        run("ip", &["netns", "add", &netns])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        disable_ipv6(&veth);
        run("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
    }

    // --- controller 1 bootstraps: CA and admin token in its data dir
    let sd = st.state_dir.clone();
    let cdir = |i: u32| st_dir(&sd, "controllers", &format!("c{i}"));
    let c1 = start_controller(st, 0, controller_bin, &cdir(1), None)?;
    let token_file = cdir(1).join("admin.token");
    let ca_file = cdir(1).join("tls/ca.crt");
    let log1 = st.hosts[0].log.clone().unwrap_or_default();
    loop {
        if token_file.exists() && ca_file.exists() {
            break;
        }
        if !alive(&c1) {
            return Err(exited_error("controller c1", &log1));
        }
        ensure!(
            Instant::now() < deadline,
            "controller c1 wrote no admin token within {:?}; see {}",
            a.timeout,
            log1.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The token file is written in one piece, but wait for its newline to be safe.
    let token = loop {
        let t = std::fs::read_to_string(&token_file).unwrap_or_default();
        if t.ends_with('\n') {
            break t.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ca_pem = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("cannot read {}", ca_file.display()))?;
    let c1_api = st.hosts[0].api_addr.clone().unwrap_or_default();
    let client = Client::from_parts(vec![c1_api.clone()], &ca_pem, token.clone())?;

    // --- the other controllers join with controller_join tokens, one at a time
    let mut ca_hash = String::new();
    for i in 2..=a.controllers {
        let t = create_token(
            &client,
            TokenRole::ControllerJoin,
            &format!("dev {} controller {i}", a.name),
        )
        .await?;
        ca_hash = t
            .ca_cert_hash
            .clone()
            .context("the token answer has no ca cert hash")?;
        let idx = (i - 1) as usize;
        let p = start_controller(
            st,
            idx,
            controller_bin,
            &cdir(i),
            Some((&c1_api, &t.token, &ca_hash)),
        )?;
        let log = st.hosts[idx].log.clone().unwrap_or_default();
        loop {
            let voter = client
                .get::<MembersResponse>("/v1/cluster/members")
                .await
                .ok()
                .is_some_and(|m| m.members.iter().any(|x| x.id == i as u64 && x.voter));
            if voter {
                break;
            }
            if !alive(&p) {
                return Err(exited_error(&format!("controller c{i}"), &log));
            }
            ensure!(
                Instant::now() < deadline,
                "controller c{i} did not become a voter within {:?}; see {}",
                a.timeout,
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // --- the context: every controller, the CA, the admin token
    let endpoints: Vec<String> = st.hosts.iter().filter_map(|h| h.api_addr.clone()).collect();
    st.context_written = true;
    st.save()?;
    let mut config = Config::load(&a.config_path)?;
    config.upsert(config::Context {
        name: a.name.clone(),
        endpoints: endpoints.clone(),
        ca_cert: ca_pem.clone(),
        token: token.clone(),
    });
    config.current_context = Some(a.name.clone());
    config.save(&a.config_path)?;
    let client = Client::from_parts(endpoints.clone(), &ca_pem, token.clone())?;

    // --- agents join with node_join tokens
    if let Some(agent_bin) = agent_bin {
        for j in 1..=a.agents {
            let t = create_token(
                &client,
                TokenRole::NodeJoin,
                &format!("dev {} agent {j}", a.name),
            )
            .await?;
            if ca_hash.is_empty() {
                ca_hash = t
                    .ca_cert_hash
                    .clone()
                    .context("the token answer has no ca cert hash")?;
            }
            let idx = (a.controllers + j - 1) as usize;
            start_agent(
                st,
                idx,
                j,
                slot,
                agent_bin,
                Some((&c1_api, &t.token, &ca_hash)),
                &registries,
            )?;
        }
        let want: BTreeSet<String> = st
            .hosts
            .iter()
            .filter_map(|h| h.agent.as_ref().map(|g| g.node_id.clone()))
            .collect();
        loop {
            // Registered and heartbeating (a lease), so `get nodes` shows them Ready.
            let have: BTreeSet<String> = client
                .get::<NodeList>("/v1/nodes")
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter(|n| n.lease.is_some())
                        .map(|n| n.info.id)
                        .collect()
                })
                .unwrap_or_default();
            if want.is_subset(&have) {
                break;
            }
            for h in st.hosts.iter().filter(|h| h.agent.is_some()) {
                if let (Some(p), Some(log)) = (&h.process, &h.log) {
                    if !alive(p) {
                        return Err(exited_error(&format!("agent {}", h.name), log));
                    }
                }
            }
            ensure!(
                Instant::now() < deadline,
                "agents {:?} did not register and heartbeat within {:?}; see the logs in {}",
                want.difference(&have).collect::<Vec<_>>(),
                a.timeout,
                st.state_dir.join("logs").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    let mut s = String::new();
    s.push_str(&format!("dev cluster {} is up\n", a.name));
    s.push_str(&format!("  context:     {} (current)\n", a.name));
    for h in &st.hosts {
        match (&h.api_addr, &h.agent) {
            (Some(api), _) => s.push_str(&format!(
                "  controller {}: https://{api}  (netns {}, pid {})\n",
                h.name,
                h.netns,
                h.process.map_or(0, |p| p.pid)
            )),
            (None, Some(g)) => s.push_str(&format!(
                "  agent {}: node {} at {}:{AGENT_API_PORT}, containers {}  (netns {}, pid {})\n",
                h.name,
                g.node_id,
                h.ip,
                g.subnet,
                h.netns,
                h.process.map_or(0, |p| p.pid)
            )),
            _ => {}
        }
    }
    if let Some(r) = &st.registry {
        s.push_str(&format!(
            "  registry:    {} (plain HTTP; sample image {})\n",
            r.addr,
            r.sample.as_deref().unwrap_or("-")
        ));
    }
    s.push_str(&format!("  dashboard:   https://{c1_api}/ui/\n"));
    s.push_str(&format!("  state:       {}\n", st.state_dir.display()));
    s.push_str(&format!(
        "  logs:        {}\n",
        st.state_dir.join("logs").display()
    ));
    s.push_str(&format!(
        "  remove with: clusterctl dev down --name {}\n",
        a.name
    ));
    Ok(s)
}

fn st_dir(state_dir: &Path, kind: &str, host: &str) -> PathBuf {
    state_dir.join(kind).join(host)
}

fn disable_ipv6(link: &str) {
    // No IPv6 link-local chatter on the underlay; harmless if IPv6 is off.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), b"1");
}

async fn create_token(client: &Client, role: TokenRole, description: &str) -> Result<TokenCreated> {
    let req = TokenCreate {
        role,
        ttl_seconds: Some(600),
        description: Some(description.to_owned()),
    };
    client
        .call(Method::POST, "/v1/tokens", Some(&req), None)
        .await
        .with_context(|| format!("cannot create a {role:?} token"))
}

fn start_controller(
    st: &mut DevState,
    idx: usize,
    bin: &Path,
    data_dir: &Path,
    join: Option<(&str, &str, &str)>,
) -> Result<Proc> {
    let h = st.hosts[idx].clone();
    let id = idx + 1;
    let api = format!("{}:{CONTROLLER_API_PORT}", h.ip);
    let mut args = vec![
        "--id".to_owned(),
        id.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
        "--raft-addr".to_owned(),
        format!("{}:{CONTROLLER_RAFT_PORT}", h.ip),
        "--api-addr".to_owned(),
        api.clone(),
    ];
    let mut env = vec![("RUST_LOG", "info,openraft=warn")];
    if let Some((via, token, hash)) = join {
        args.extend([
            "--join".into(),
            via.into(),
            "--ca-cert-hash".into(),
            hash.into(),
        ]);
        // Through the environment, not argv: a join token is a secret.
        env.push(("FLOTILLA_JOIN_TOKEN", token));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let log = st.state_dir.join("logs").join(format!("{}.log", h.name));
    let p = spawn_in(&h.netns, bin, &args, &env, &log)?;
    let host = &mut st.hosts[idx];
    host.process = Some(p);
    host.log = Some(log);
    host.api_addr = Some(api);
    st.save()?;
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
fn start_agent(
    st: &mut DevState,
    idx: usize,
    j: u32,
    slot: u16,
    bin: &Path,
    join: Option<(&str, &str, &str)>,
    registries: &[String],
) -> Result<Proc> {
    let h = st.hosts[idx].clone();
    let dir = st_dir(&st.state_dir, "agents", &h.name);
    let agent = AgentHost {
        node_id: format!("{}-{}", st.name, h.name),
        root: dir.join("root"),
        socket: dir.join("agent.sock"),
        cgroup_parent: format!("flotilla-dev-{}-{}", st.name, h.name),
        bridge: format!("fcb{slot}x{j}"),
        subnet: format!("198.19.{slot}.{}/27", 32 * (j - 1)),
    };
    // Recorded before the start: down cleans the cgroup and root even if the start fails.
    st.hosts[idx].agent = Some(agent.clone());
    st.save()?;
    std::fs::create_dir_all(&agent.root)
        .with_context(|| format!("cannot create {}", agent.root.display()))?;
    let mut args = vec![
        "--socket".to_owned(),
        agent.socket.display().to_string(),
        "serve".to_owned(),
        "--root".to_owned(),
        agent.root.display().to_string(),
        "--cgroup-parent".to_owned(),
        agent.cgroup_parent.clone(),
        "--subnet".to_owned(),
        agent.subnet.clone(),
        "--bridge".to_owned(),
        agent.bridge.clone(),
        "--node-netns".to_owned(),
        netns_path(&h.netns).display().to_string(),
        "--node-id".to_owned(),
        agent.node_id.clone(),
        "--advertise".to_owned(),
        format!("{}:{AGENT_API_PORT}", h.ip),
        "--label".to_owned(),
        format!("flotilla.dev/host={}", h.name),
    ];
    for r in registries {
        args.extend(["--registry-insecure".into(), r.clone()]);
    }
    // Only the first start joins; a restart finds its identity under the root.
    if let Some((via, token, ca_hash)) = join {
        args.extend([
            "--join".into(),
            format!("https://{via}"),
            "--token".into(),
            token.into(),
            "--ca-cert-hash".into(),
            ca_hash.into(),
        ]);
    }
    let log = st.state_dir.join("logs").join(format!("{}.log", h.name));
    let p = spawn_in(&h.netns, bin, &args, &[("RUST_LOG", "info")], &log)?;
    let host = &mut st.hosts[idx];
    host.process = Some(p);
    host.log = Some(log);
    st.save()?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// down
// ---------------------------------------------------------------------------------------------

pub fn down(name: &str) -> Result<()> {
    validate_name(name)?;
    root_required()?;
    let Some(st) = DevState::load(name)? else {
        eprintln!(
            "no dev cluster named {name:?} (no {}); nothing to remove",
            state_file(name).display()
        );
        return Ok(());
    };
    teardown(&st)?;
    eprintln!("dev cluster {name} removed");
    Ok(())
}

/// The network namespace inode of a bind-mounted netns file.
fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns_path(name)).ok().map(|m| m.ino())
}

/// Every process in one of `inodes`' network namespaces or below one of `cgroups` (any
/// hierarchy): the agents' shims and containers, and anything else started in our hosts.
fn stragglers(inodes: &[u64], cgroups: &[String]) -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let in_ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| {
                l.to_str()
                    .and_then(|s| s.strip_prefix("net:["))
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .is_some_and(|ino| inodes.contains(&ino));
        let in_cg = !cgroups.is_empty()
            && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|t| {
                    t.lines().any(|l| {
                        let path = l.splitn(3, ':').nth(2).unwrap_or("");
                        cgroups.iter().any(|cg| {
                            let top = format!("/{cg}");
                            path == top || path.starts_with(&format!("{top}/"))
                        })
                    })
                })
                .unwrap_or(false);
        if in_ns || in_cg {
            if let Some((state, start_time)) = proc_stat(pid) {
                if state != 'Z' && state != 'X' {
                    out.push(Proc { pid, start_time });
                }
            }
        }
    }
    out
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

fn umount(p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: a valid C string; MNT_DETACH so a busy mount still leaves the tree.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Cgroup directories named `parent` at the top of every hierarchy.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        out.push(root.join(parent));
    } else if let Ok(d) = std::fs::read_dir(root) {
        for e in d.flatten() {
            out.push(e.path().join(parent));
        }
    }
    out.retain(|p| p.is_dir());
    out
}

/// rmdir a cgroup tree, deepest first (cgroup files cannot be deleted, only directories).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(d) = std::fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path())?;
            }
        }
    }
    std::fs::remove_dir(dir)
}

/// Remove everything `st` records, in dependency order; every step tolerates "already gone".
/// Errors are collected, so one stuck step does not leave the rest behind.
pub fn teardown(st: &DevState) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();

    // 1. Agents first (they own containers), then controllers.
    for h in st.hosts.iter().filter(|h| h.agent.is_some()) {
        if let Some(p) = &h.process {
            if !stop(p, Duration::from_secs(10)) {
                problems.push(format!("agent {} (pid {}) did not exit", h.name, p.pid));
            }
        }
    }
    for h in st.hosts.iter().filter(|h| h.agent.is_none()) {
        if let Some(p) = &h.process {
            if !stop(p, Duration::from_secs(10)) {
                problems.push(format!(
                    "controller {} (pid {}) did not exit",
                    h.name, p.pid
                ));
            }
        }
    }

    if let Some(p) = st.registry.as_ref().and_then(|r| r.process.as_ref()) {
        if !stop(p, Duration::from_secs(5)) {
            problems.push(format!("the dev registry (pid {}) did not exit", p.pid));
        }
    }

    // 2. What the agents left running: shims and containers, found by netns and cgroup.
    let inodes: Vec<u64> = st
        .hosts
        .iter()
        .filter_map(|h| netns_inode(&h.netns))
        .collect();
    let cgroups: Vec<String> = st
        .hosts
        .iter()
        .filter_map(|h| h.agent.as_ref().map(|g| g.cgroup_parent.clone()))
        .collect();
    // A chance to exit cleanly first (a container's init without a handler ignores it).
    let first = stragglers(&inodes, &cgroups);
    if !first.is_empty() {
        for p in &first {
            signal(p, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && first.iter().any(alive) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for round in 0..50 {
        let left = stragglers(&inodes, &cgroups);
        if left.is_empty() {
            break;
        }
        for p in &left {
            signal(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        if round == 49 {
            problems.push(format!(
                "processes still running in the dev cluster: {:?}",
                left.iter().map(|p| p.pid).collect::<Vec<_>>()
            ));
        }
    }

    // 3. Mounts below the state directory (container roots, netns bind mounts).
    for m in mounts_below(&st.state_dir) {
        if let Err(e) = umount(&m) {
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                problems.push(format!("cannot unmount {}: {e}", m.display()));
            }
        }
    }

    // 4. The agents' cgroups.
    for cg in &cgroups {
        for dir in cgroup_dirs(cg) {
            let mut last = None;
            for _ in 0..20 {
                match remove_cgroup_tree(&dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(e) = last {
                problems.push(format!("cannot remove cgroup {}: {e}", dir.display()));
            }
        }
    }

    // 5. Namespaces (their eth0 goes with them, and so the veth peer), veths, the bridge.
    for h in &st.hosts {
        if netns_path(&h.netns).exists() {
            if let Err(e) = run("ip", &["netns", "del", &h.netns]) {
                problems.push(e.to_string());
            }
        }
    }
    // A veth whose peer's namespace was just deleted disappears asynchronously: a failed
    // delete of a link that is gone by then is no problem.
    let del_link = |name: &str, problems: &mut Vec<String>| {
        if link_exists(name) {
            if let Err(e) = run("ip", &["link", "del", name]) {
                if link_exists(name) {
                    problems.push(e.to_string());
                }
            }
        }
    };
    for h in &st.hosts {
        del_link(&h.veth, &mut problems);
    }
    if let Some(b) = &st.bridge {
        del_link(b, &mut problems);
    }

    // 6. The state directory, only if up made it and nothing is mounted below it any more.
    if st.state_dir_created && st.state_dir.exists() {
        let left = mounts_below(&st.state_dir);
        if left.is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&st.state_dir) {
                problems.push(format!("cannot remove {}: {e}", st.state_dir.display()));
            }
        } else {
            problems.push(format!(
                "not removing {}: still mounted below it: {left:?}",
                st.state_dir.display()
            ));
        }
    }

    // 7. The context.
    if st.context_written {
        match Config::load(&st.config_path) {
            Ok(mut c) => {
                let before = c.contexts.len();
                c.contexts.retain(|x| x.name != st.name);
                if c.current_context.as_deref() == Some(st.name.as_str()) {
                    c.current_context = None;
                }
                if before != c.contexts.len() {
                    if let Err(e) = c.save(&st.config_path) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }

    if !problems.is_empty() {
        bail!(
            "dev cluster {} was not removed completely (state kept in {}; run dev down again):\n  {}",
            st.name,
            state_file(&st.name).display(),
            problems.join("\n  ")
        );
    }
    // 8. The slot and the state file last: until here a rerun finds everything.
    if let Some(slot) = st.slot {
        let f = slot_file(slot);
        if std::fs::read_to_string(&f).is_ok_and(|n| n == st.name) {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_file(state_file(&st.name));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// registry, kill, start: what tests and demos need to poke a running dev cluster
// ---------------------------------------------------------------------------------------------

fn loaded(name: &str) -> Result<DevState> {
    validate_name(name)?;
    DevState::load(name)?.with_context(|| {
        format!(
            "no dev cluster named {name:?} (no {})",
            state_file(name).display()
        )
    })
}

/// The dev registry's `host:port`.
pub fn registry(name: &str) -> Result<String> {
    let st = loaded(name)?;
    st.registry.map(|r| r.addr).with_context(|| {
        format!("dev cluster {name} has no registry (it was started without agents)")
    })
}

fn host_index(st: &DevState, host: &str) -> Result<usize> {
    st.hosts
        .iter()
        .position(|h| h.name == host)
        .with_context(|| {
            format!(
                "dev cluster {} has no host {host:?} (hosts: {})",
                st.name,
                st.hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// SIGKILL a host's process (a crash, for tests and demos); its containers keep running.
pub fn kill(name: &str, host: &str) -> Result<()> {
    root_required()?;
    let st = loaded(name)?;
    let h = &st.hosts[host_index(&st, host)?];
    let p = h
        .process
        .filter(alive)
        .with_context(|| format!("{host} of dev cluster {name} is not running"))?;
    signal(&p, libc::SIGKILL);
    ensure!(
        wait_gone(&p, Duration::from_secs(10)),
        "{host} (pid {}) did not die",
        p.pid
    );
    eprintln!("{host} of dev cluster {name} killed (pid {})", p.pid);
    Ok(())
}

/// Start a host's process again from its data directory (no join: it is a member already).
pub fn start(name: &str, host: &str) -> Result<()> {
    root_required()?;
    let mut st = loaded(name)?;
    let idx = host_index(&st, host)?;
    let h = st.hosts[idx].clone();
    if let Some(p) = h.process.filter(alive) {
        bail!("{host} of dev cluster {name} is running (pid {})", p.pid);
    }
    let p = if h.agent.is_some() {
        let bin = find_bin(
            st.agent_bin.clone().as_deref(),
            "flotilla-agent",
            "--agent-bin",
        )?;
        let slot = st.slot.context("the state file has no slot")?;
        let j: u32 = host
            .strip_prefix('a')
            .and_then(|n| n.parse().ok())
            .context("agent host names are a<N>")?;
        let registries: Vec<String> = st.registry.iter().map(|r| r.addr.clone()).collect();
        start_agent(&mut st, idx, j, slot, &bin, None, &registries)?
    } else {
        let bin = find_bin(
            st.controller_bin.clone().as_deref(),
            "flotilla-controller",
            "--controller-bin",
        )?;
        let dir = st_dir(&st.state_dir, "controllers", host);
        start_controller(&mut st, idx, &bin, &dir, None)?
    };
    eprintln!("{host} of dev cluster {name} started (pid {})", p.pid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dev", "t-1", "abc123"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(33)] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("--name"), "{e}");
        }
    }

    #[test]
    fn own_process_identity() {
        let me = std::process::id() as i32;
        let (state, start) = proc_stat(me).unwrap();
        assert_ne!(state, 'Z');
        assert!(alive(&Proc {
            pid: me,
            start_time: start
        }));
        assert!(!alive(&Proc {
            pid: me,
            start_time: start + 1
        }));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
