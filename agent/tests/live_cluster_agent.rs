//! Live test of the agent as a cluster member, all inside one network namespace this test
//! makes (a "host"): a real `flotilla-controller` process and the test registry with the
//! busybox image on that namespace's loopback, the agent with its node network there (node and
//! container addresses in 198.18.0.0/15). The agent joins with a token, heartbeats, runs what
//! is placed on it, reports state and IP, serves logs and exec to the controller over mTLS
//! (and refuses other clients), stops what is stopping, re-adopts its container after
//! `kill -9` without a duplicate, removes what is moved away, and restarts an instance whose
//! liveness probe fails until it gives up. Everything is removed at the end and checked.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_flotilla-agent");

fn live() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let bb = flotilla_runtime::rootfs::busybox_path();
    let why = if !root {
        Some("not root".to_string())
    } else if !bb.is_file() {
        Some(format!("no busybox at {}", bb.display()))
    } else if !Path::new("/usr/bin/docker-registry").exists() {
        Some("no docker-registry (deploy/install-deps.sh)".to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but this live test cannot run: {w}")
        }
        Some(w) => {
            eprintln!("skipping live test: {w}");
            false
        }
    }
}

/// The newest modification time of the files below `p`.
fn newest(p: &Path) -> std::time::SystemTime {
    let mut t = std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            t = t.max(newest(&e.path()));
        }
    }
    t
}

/// The controller binary of this workspace, copied to `into` (the target directory may be
/// shared with other checkouts). Built when it is older than the controller's or the api's
/// sources; a workspace build or test run has usually built it already.
/// `FLOTILLA_CONTROLLER_BIN` names another one.
fn controller_bin(into: &Path) -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("FLOTILLA_CONTROLLER_BIN") {
        let copy = into.join("flotilla-controller");
        std::fs::copy(&b, &copy).with_context(|| format!("FLOTILLA_CONTROLLER_BIN={b:?}"))?;
        return Ok(copy);
    }
    let dir = Path::new(AGENT).parent().context("binary directory")?;
    let bin = dir.join("flotilla-controller");
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace")?;
    let sources = [
        "controller/src",
        "controller/Cargo.toml",
        "api/src",
        "Cargo.lock",
    ]
    .iter()
    .map(|p| newest(&ws.join(p)))
    .max()
    .unwrap_or(std::time::UNIX_EPOCH);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b > sources) {
        let copy = into.join("flotilla-controller");
        std::fs::copy(&bin, &copy)?;
        return Ok(copy);
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "flotilla-controller",
            "--bin",
            "flotilla-controller",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("cannot run cargo build")?;
    ensure!(status.success(), "cannot build flotilla-controller");
    let bin = dir.join("flotilla-controller");
    ensure!(bin.exists(), "{} missing", bin.display());
    let copy = into.join("flotilla-controller");
    std::fs::copy(&bin, &copy)?;
    Ok(copy)
}

/// Make `cmd` start inside the network namespace open as `fd` (and nothing else changes:
/// `ip netns exec` would also give it a mount namespace of its own).
fn in_netns(cmd: &mut Command, fd: RawFd) -> &mut Command {
    // SAFETY: setns is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Run `f` on a thread of its own inside the namespace at `ns` (processes it spawns are born
/// there).
fn on_netns_thread<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&ns)?;
        // SAFETY: setns on this thread only.
        ensure!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0);
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// Everything the test made; removed on drop, whatever happened.
struct World {
    dir: tempfile::TempDir,
    netns: String,
    /// The namespace, open: children join it by this fd.
    ns_fd: Option<std::fs::File>,
    cgroup_parent: String,
    controller: Option<Child>,
    /// More controllers by id (the leader-change test).
    controllers: Vec<(u64, Child)>,
    agent: Option<Child>,
    agent_args: Vec<String>,
}

impl World {
    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn start_agent(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let before = self.agent_log().matches("\nready\n").count()
            + usize::from(self.agent_log().starts_with("ready\n"));
        let fd = self.ns_fd.as_ref().context("netns")?.as_raw_fd();
        let child = in_netns(&mut Command::new(AGENT), fd)
            .args(&self.agent_args)
            .env("FLOTILLA_LOG", "info,flotilla_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot spawn the agent")?;
        self.agent = Some(child);
        wait_for("the agent to print ready", Duration::from_secs(60), || {
            if let Some(c) = self.agent.as_mut() {
                if let Some(s) = c.try_wait()? {
                    bail!("the agent exited with {s}: {}", self.agent_log());
                }
            }
            let log = self.agent_log();
            Ok(log.matches("\nready\n").count() + usize::from(log.starts_with("ready\n")) > before)
        })
    }

    fn kill_agent(&mut self, sig: i32) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: signalling the agent process this test started, by PID.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    fn reap_orphans(&self) {
        loop {
            // SAFETY: reaping exited children of ours (shims re-parented to this subreaper).
            let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if r <= 0 {
                break;
            }
        }
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![];
        for h in ["memory", "pids", "cpu", "cpuacct", "devices", "freezer", ""] {
            let p = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&self.cgroup_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() && !name.starts_with("pool-") && name != "shims" {
                        v.push(e.path());
                    }
                }
            }
        }
        v
    }

    fn containers_on_disk(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("state/runtime/containers"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_agent(libc::SIGKILL);
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in &mut self.controllers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Container processes left by a failed test: kill them through their cgroups.
        for h in [
            "memory", "pids", "cpu", "cpuacct", "devices", "freezer", "blkio", "cpuset", "systemd",
            "",
        ] {
            let p = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&self.cgroup_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if let Ok(procs) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                        for pid in procs
                            .split_whitespace()
                            .filter_map(|p| p.parse::<i32>().ok())
                        {
                            // SAFETY: processes in this test's own cgroup.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        self.reap_orphans();
        // Every mount below the test directory (container roots, netns files), deepest
        // first: the directory itself is no mount point, so `umount -R` on it does nothing.
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<PathBuf> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(self.dir.path()))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in below {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: plain umount2 of a path below this test's own directory.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for h in [
            "memory", "pids", "cpu", "cpuacct", "devices", "freezer", "blkio", "cpuset", "systemd",
            "",
        ] {
            let p = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(&self.cgroup_parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&p);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
        self.reap_orphans();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                if e.to_string().contains("exited with") {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last_err:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller's REST API over TLS, trusting the cluster CA.
struct Api {
    rt: tokio::runtime::Runtime,
    /// `https://<controller api>`; tests move it to a surviving controller.
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// Run `f` on a worker thread (they live in the test's namespace).
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.rt.block_on(self.rt.spawn(f))?
    }

    fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, String)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.run(async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok((status, resp.text().await?))
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let (status, text) = self.raw(method, path, body)?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{path}: {text}"))?
        };
        Ok((status, v))
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (s, v) = self.call(method, path, body)?;
        ensure!((200..300).contains(&s), "{path}: {s} {v}");
        Ok(v)
    }

    fn get(&self, path: &str) -> Result<Value> {
        self.ok(reqwest::Method::GET, path, None)
    }

    fn command(&self, command: Value) -> Result<Value> {
        let v = self.ok(
            reqwest::Method::POST,
            "/v1/commands",
            Some(json!({"v": 1, "command": command})),
        )?;
        ensure!(v["result"]["outcome"] == "applied", "command refused: {v}");
        Ok(v)
    }

    fn instance(&self, id: &str) -> Result<Value> {
        self.get(&format!("/v1/instances/{id}"))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Containers of the agent labelled with `instance`, from its local API.
fn local_containers(w: &World, instance: &str) -> Result<Vec<flotilla_api::ContainerInfo>> {
    let out = Command::new(AGENT)
        .arg("--socket")
        .arg(w.dir.path().join("agent.sock"))
        .args(["ps", "-o", "json"])
        .output()?;
    ensure!(
        out.status.success(),
        "ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<flotilla_api::ContainerInfo> = serde_json::from_slice(&out.stdout)?;
    Ok(all
        .into_iter()
        .filter(|c| c.labels.get("flotilla.instance").map(String::as_str) == Some(instance))
        .collect())
}

#[test]
fn live_cluster_agent_joins_runs_reports_stops_readopts_and_restarts_on_liveness() -> Result<()> {
    if !live() {
        return Ok(());
    }
    // Shims of a killed agent are re-parented to us, not to a PID 1 that may not reap them.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let pid = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix("flotilla-cluster-agent-")
        .tempdir()?;
    let mut w = World {
        dir,
        netns: format!("flt-ca-{pid}"),
        ns_fd: None,
        cgroup_parent: format!("flotilla-cluster-agent-test-{pid}"),
        controller: None,
        controllers: vec![],
        agent: None,
        agent_args: vec![],
    };

    // The node's host: a network namespace with its loopback up.
    ensure!(Command::new("ip")
        .args(["netns", "add", &w.netns])
        .status()?
        .success());
    ensure!(Command::new("ip")
        .args(["-n", &w.netns, "link", "set", "lo", "up"])
        .status()?
        .success());
    w.ns_fd = Some(std::fs::File::open(w.netns_path())?);
    let ns_fd = w.ns_fd.as_ref().context("netns")?.as_raw_fd();

    // The controller.
    let bin = controller_bin(w.dir.path())?;
    // A fresh namespace: its loopback ports are all free.
    let (raft, api_addr) = ("127.0.0.1:17101".to_owned(), "127.0.0.1:17102".to_owned());
    let cdir = w.dir.path().join("c1");
    w.controller = Some(
        in_netns(&mut Command::new(&bin), ns_fd)
            .args(["--id", "1", "--raft-addr", &raft, "--api-addr", &api_addr])
            // The test makes the assignments itself (the reconcile loop would replace them).
            .arg("--no-orchestrator")
            .arg("--data-dir")
            .arg(&cdir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(w.dir.path().join("c1.log"))?)
            .spawn()
            .context("cannot spawn flotilla-controller")?,
    );
    wait_for(
        "the controller's admin token",
        Duration::from_secs(30),
        || Ok(cdir.join("admin.token").exists() && cdir.join("tls/ca.crt").exists()),
    )?;
    let ca_pem = std::fs::read_to_string(cdir.join("tls/ca.crt"))?;
    let ca_hash = flotilla_agent::cluster::tls::ca_hash(&ca_pem)?;
    let admin = std::fs::read_to_string(cdir.join("admin.token"))?
        .trim()
        .to_owned();
    let ns_path = w.netns_path();
    let api = Api {
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let f = std::fs::File::open(&ns_path).expect("netns");
                // SAFETY: setns on this new worker thread only.
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            })
            .build()?,
        http: reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(flotilla_agent::cluster::tls::ca_client_config(&ca_pem)?)
            .build()?,
        base: format!("https://{api_addr}"),
        token: admin,
    };
    wait_for("the controller's api", Duration::from_secs(30), || {
        Ok(api.get("/v1/nodes").is_ok())
    })?;
    let doc = api.get("/v1/openapi.json")?;
    ensure!(
        doc["paths"]["/v1/nodes/join"].is_object(),
        "{} is a controller without the node join endpoint (another checkout's build?)",
        bin.display()
    );

    // The registry with the busybox image built by our own code.
    let layout = w.dir.path().join("layout");
    flotilla_image::testimage::build_busybox_oci_layout(
        &flotilla_runtime::rootfs::busybox_path(),
        &layout,
        "1",
    )?;
    let reg = on_netns_thread(
        w.netns_path(),
        flotilla_image::testregistry::TestRegistry::start_plain,
    )??;
    let image = reg.reference("test/busybox:1");
    let opts = reg.options(flotilla_image::RegistryAuth::Anonymous);
    let (l2, i2) = (layout.clone(), image.clone());
    api.run(async move {
        flotilla_image::registry::push_oci_layout(&l2, None, &i2, &opts).await?;
        Ok(())
    })?;

    // A bad join is refused with the controller's reason and leaves no identity.
    let subnet_octet = 100 + pid % 100;
    let advertise = format!("198.18.{subnet_octet}.1:7443");
    let subnet = format!("198.18.{subnet_octet}.0/24");
    let bridge = format!("fc{}", pid % 100_000);
    let base_args = |token: &str| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--socket".into(),
            w.dir.path().join("agent.sock").display().to_string(),
            "serve".into(),
            "--root".into(),
            w.dir.path().join("state").display().to_string(),
            "--cgroup-parent".into(),
            w.cgroup_parent.clone(),
            "--subnet".into(),
            subnet.clone(),
            "--bridge".into(),
            bridge.clone(),
            "--registry-insecure".into(),
            reg.addr.clone(),
        ];
        v.extend(
            [
                "--join",
                &format!("https://{api_addr}"),
                "--token",
                token,
                "--ca-cert-hash",
                &ca_hash,
                "--node-id",
                "n1",
                "--advertise",
                &advertise,
                "--label",
                "zone=a",
                "--capacity-cpu-millis",
                "750",
                "--capacity-memory-bytes",
                "1073741824",
            ]
            .map(str::to_owned),
        );
        v
    };
    // A capacity above the machine's is refused before the join, naming the flag.
    let mut over = base_args("abcdef.0123456789abcdef");
    let at = over
        .iter()
        .position(|a| a == "--capacity-memory-bytes")
        .context("capacity flag")?;
    over[at + 1] = (u64::MAX / 2).to_string();
    let bad = in_netns(&mut Command::new(AGENT), ns_fd)
        .args(over)
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && err.contains("--capacity-memory-bytes"),
        "capacity above the machine's: {err}"
    );
    ensure!(
        !w.dir.path().join("state/cluster/identity.json").exists(),
        "identity written by a refused capacity"
    );
    let bad = in_netns(&mut Command::new(AGENT), ns_fd)
        .args(base_args("abcdef.0123456789abcdef"))
        .output()?;
    ensure!(!bad.status.success(), "joined with a forged token");
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(err.contains("refused the join"), "{err}");
    ensure!(
        !w.dir.path().join("state/cluster/identity.json").exists(),
        "identity written by a refused join"
    );

    // Join with a real token.
    let tok = api.ok(
        reqwest::Method::POST,
        "/v1/tokens",
        Some(json!({"role": "node_join"})),
    )?;
    let token = tok["token"].as_str().context("token")?.to_owned();
    w.agent_args = base_args(&token);
    w.start_agent()?;
    let node = api.get("/v1/nodes/n1")?;
    ensure!(node["address"] == advertise.as_str(), "{node}");
    ensure!(node["labels"]["zone"] == "a", "{node}");
    let ident = w.dir.path().join("state/cluster/identity.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ident)?.permissions());
    ensure!(mode & 0o077 == 0, "identity.json mode {mode:o}");
    // Heartbeats renew the lease and report the node's features.
    let seq = |n: &Value| {
        (
            n["lease"]["leaderTerm"].as_u64(),
            n["lease"]["seq"].as_u64(),
        )
    };
    wait_for("a lease", Duration::from_secs(10), || {
        Ok(api.get("/v1/nodes/n1")?["lease"].is_object())
    })?;
    let first = seq(&api.get("/v1/nodes/n1")?);
    wait_for("lease renewals", Duration::from_secs(10), || {
        Ok(seq(&api.get("/v1/nodes/n1")?) > first)
    })?;
    let node = api.get("/v1/nodes/n1")?;
    ensure!(node["features"]["cgroup"].is_string(), "{node}");
    // The node offers what the flags say, not the whole machine.
    ensure!(
        node["capacity"]["cpuMillis"].as_u64() == Some(750),
        "{node}"
    );
    ensure!(
        node["capacity"]["memoryBytes"].as_u64() == Some(1 << 30),
        "{node}"
    );

    // A workload and a placement on n1 (raw command: the leader's scheduler is not needed).
    api.ok(
        reqwest::Method::PUT,
        "/v1/workloads/web",
        Some(json!({"image": image, "command": ["sh", "-c", "echo started-$GREETING; trap 'exit 0' TERM; while true; do sleep 1; done"],
            "replicas": 1, "stopGraceMs": 3000, "env": {"GREETING": "hi"}})),
    )?;
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "web-0",
        "workload": "web", "ownerNode": "n1", "atMs": now_ms()}),
    )?;
    wait_for(
        "web-0 running with an address",
        Duration::from_secs(60),
        || {
            let i = api.instance("web-0")?;
            Ok(i["phase"] == "running"
                && i["observed"]["state"] == "running"
                && i["observed"]["ready"] == true
                && i["observed"]["ip"]
                    .as_str()
                    .is_some_and(|ip| ip.starts_with(&format!("198.18.{subnet_octet}."))))
        },
    )
    .with_context(|| w.agent_log())?;
    let local = local_containers(&w, "web-0")?;
    ensure!(local.len() == 1, "{local:?}");
    ensure!(local[0].status == "running" && local[0].labels["flotilla.epoch"] == "1");
    let pid_before = local[0].pid;
    let ip = api.instance("web-0")?["observed"]["ip"]
        .as_str()
        .context("ip")?
        .to_owned();
    ensure!(local[0].ip.as_deref() == Some(ip.as_str()));

    // Logs and exec through the controller, which dials the agent with its certificate.
    let (s, logs) = api.raw(
        reqwest::Method::GET,
        "/v1/instances/web-0/logs?tail=10",
        None,
    )?;
    ensure!(
        s == 200 && logs.contains("started-hi"),
        "logs: {s} {logs:?}"
    );
    let r = api.ok(
        reqwest::Method::POST,
        "/v1/instances/web-0/exec",
        Some(json!({"command": ["cat", "/etc/hostname"]})),
    )?;
    ensure!(r["exitCode"] == 0 && r["stdout"] == "web-0\n", "exec: {r}");
    // The agent's API admits only controllers: not a client without a certificate, nor one
    // with a cluster certificate that names a node.
    let agent_url = format!("https://{advertise}/v1/containers");
    let anonymous = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_backend_preconfigured(flotilla_agent::cluster::tls::ca_client_config(&ca_pem)?)
        .build()?;
    let u = agent_url.clone();
    ensure!(
        api.run(async move { Ok(anonymous.get(u).send().await.is_err()) })?,
        "the agent api answered a client without a certificate"
    );
    let node_client = {
        use rustls::pki_types::pem::PemObject;
        let cdir = w.dir.path().join("state/cluster");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
            ca_pem.as_bytes(),
        )?)?;
        let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(
            cdir.join("node.crt"),
        )?];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(cdir.join("node.key"))?;
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .tls_backend_preconfigured(cfg)
            .build()?
    };
    let u = agent_url.clone();
    ensure!(
        api.run(async move {
            Ok(match node_client.get(u).send().await {
                Err(_) => true,
                Ok(r) => !r.status().is_success(),
            })
        })?,
        "the agent api answered a node certificate"
    );

    // kill -9 the agent and start it again: it re-adopts, never duplicates.
    w.kill_agent(libc::SIGKILL);
    w.reap_orphans();
    w.start_agent()?;
    std::thread::sleep(Duration::from_secs(3));
    let local = local_containers(&w, "web-0")?;
    ensure!(local.len() == 1, "duplicate after restart: {local:?}");
    ensure!(
        local[0].pid == pid_before && local[0].status == "running",
        "the container was replaced: {local:?}"
    );
    ensure!(
        w.containers_on_disk().len() == 1,
        "{:?}",
        w.containers_on_disk()
    );
    let after = seq(&api.get("/v1/nodes/n1")?);
    wait_for(
        "heartbeats after the restart",
        Duration::from_secs(10),
        || Ok(seq(&api.get("/v1/nodes/n1")?) > after),
    )?;
    ensure!(api.instance("web-0")?["observed"]["state"] == "running");

    // Stopping: SIGTERM (the trap exits), report stopped, container removed.
    let epoch = api.instance("web-0")?["epoch"].as_u64().context("epoch")?;
    api.command(
        json!({"type": "change_instance_owner", "instanceId": "web-0",
        "expectEpoch": epoch, "newOwner": "n1", "phase": "stopping", "atMs": now_ms()}),
    )?;
    wait_for("web-0 stopped", Duration::from_secs(30), || {
        let i = api.instance("web-0")?;
        // The phase stays `stopping` (the controller's reconcile loop deletes it from there);
        // the agent's report is in `observed`.
        Ok(i["phase"] == "stopping" && i["observed"]["state"] == "stopped")
    })
    .with_context(|| w.agent_log())?;
    wait_for("web-0's container removed", Duration::from_secs(10), || {
        Ok(local_containers(&w, "web-0")?.is_empty())
    })?;

    // A failing liveness probe: restarted (counted), then failed after the budget.
    api.ok(
        reqwest::Method::PUT,
        "/v1/workloads/sick",
        Some(json!({"image": image, "command": ["sleep", "1000"], "replicas": 1, "stopGraceMs": 500,
            "liveness": {"exec": {"command": ["sh", "-c", "exit 1"]}, "periodMs": 300, "timeoutMs": 250, "failureThreshold": 2}})),
    )?;
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "sick-0",
        "workload": "sick", "ownerNode": "n1", "atMs": now_ms()}),
    )?;
    wait_for("sick-0 restarted twice", Duration::from_secs(60), || {
        Ok(api.instance("sick-0")?["observed"]["restarts"].as_u64() >= Some(2))
    })
    .with_context(|| w.agent_log())?;
    ensure!(
        local_containers(&w, "sick-0")?.len() <= 1,
        "two containers for one instance"
    );
    wait_for(
        "sick-0 failed after 5 restarts",
        Duration::from_secs(90),
        || {
            let i = api.instance("sick-0")?;
            Ok(i["phase"] == "failed" && i["observed"]["restarts"] == 5)
        },
    )
    .with_context(|| w.agent_log())?;
    wait_for(
        "sick-0's container removed",
        Duration::from_secs(10),
        || Ok(local_containers(&w, "sick-0")?.is_empty()),
    )?;

    // An instance taken away (moved to another node): the agent removes its container.
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "web-1",
        "workload": "web", "ownerNode": "n1", "atMs": now_ms()}),
    )?;
    wait_for("web-1 running", Duration::from_secs(30), || {
        Ok(local_containers(&w, "web-1")?
            .iter()
            .any(|c| c.status == "running"))
    })?;
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "web-1",
        "workload": "web", "ownerNode": "elsewhere", "atMs": now_ms()}),
    )?;
    wait_for("web-1's container removed", Duration::from_secs(30), || {
        Ok(local_containers(&w, "web-1")?.is_empty())
    })
    .with_context(|| w.agent_log())?;

    // Nothing left: no containers, mounts or cgroups of ours; then the processes and namespace.
    ensure!(
        w.containers_on_disk().is_empty(),
        "{:?}",
        w.containers_on_disk()
    );
    w.kill_agent(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    w.reap_orphans();
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    let d = w.dir.path().display().to_string();
    let mounts: Vec<&str> = mi.lines().filter(|l| l.contains(&d)).collect();
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cg = w.cgroup_dirs();
    ensure!(cg.is_empty(), "cgroups left: {cg:?}");
    let ns = w.netns.clone();
    drop(reg);
    drop(w);
    ensure!(
        !Path::new(&format!("/run/netns/{ns}")).exists(),
        "network namespace left"
    );
    Ok(())
}

/// A test runtime whose worker threads live in the namespace at `ns`.
fn netns_runtime(ns: PathBuf) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let f = std::fs::File::open(&ns).expect("netns");
            // SAFETY: setns on this new worker thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        })
        .build()?)
}

fn spawn_controller(
    bin: &Path,
    ns_fd: RawFd,
    dir: &Path,
    id: u64,
    join: &[String],
) -> Result<Child> {
    let raft = format!("127.0.0.1:{}", 17200 + 2 * id);
    let api = format!("127.0.0.1:{}", 17201 + 2 * id);
    in_netns(&mut Command::new(bin), ns_fd)
        .args([
            "--id",
            &id.to_string(),
            "--raft-addr",
            &raft,
            "--api-addr",
            &api,
            "--no-orchestrator",
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("c{id}")))
        .args([
            "--heartbeat-ms",
            "50",
            "--election-min-ms",
            "300",
            "--election-max-ms",
            "600",
        ])
        .args(join)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("c{id}.log")))?)
        .spawn()
        .context("cannot spawn flotilla-controller")
}

#[test]
fn live_cluster_agent_keeps_reconciling_through_a_controller_leader_change() -> Result<()> {
    if !live() {
        return Ok(());
    }
    // SAFETY: plain prctl (shims of our agent are reaped by us).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let pid = std::process::id();
    let mut w = World {
        dir: tempfile::Builder::new()
            .prefix("flotilla-cluster-leader-")
            .tempdir()?,
        netns: format!("flt-cl-{pid}"),
        ns_fd: None,
        cgroup_parent: format!("flotilla-cluster-leader-test-{pid}"),
        controller: None,
        controllers: vec![],
        agent: None,
        agent_args: vec![],
    };
    ensure!(Command::new("ip")
        .args(["netns", "add", &w.netns])
        .status()?
        .success());
    ensure!(Command::new("ip")
        .args(["-n", &w.netns, "link", "set", "lo", "up"])
        .status()?
        .success());
    w.ns_fd = Some(std::fs::File::open(w.netns_path())?);
    let ns_fd = w.ns_fd.as_ref().context("netns")?.as_raw_fd();
    let bin = controller_bin(w.dir.path())?;
    let base = |id: u64| format!("https://127.0.0.1:{}", 17201 + 2 * id);

    // Three controllers: one bootstraps, two join with tokens.
    w.controllers
        .push((1, spawn_controller(&bin, ns_fd, w.dir.path(), 1, &[])?));
    let c1 = w.dir.path().join("c1");
    wait_for("the first controller", Duration::from_secs(30), || {
        Ok(c1.join("admin.token").exists() && c1.join("tls/ca.crt").exists())
    })?;
    let ca_pem = std::fs::read_to_string(c1.join("tls/ca.crt"))?;
    let ca_hash = flotilla_agent::cluster::tls::ca_hash(&ca_pem)?;
    let mut api = Api {
        rt: netns_runtime(w.netns_path())?,
        http: reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(flotilla_agent::cluster::tls::ca_client_config(&ca_pem)?)
            .build()?,
        base: base(1),
        token: std::fs::read_to_string(c1.join("admin.token"))?
            .trim()
            .to_owned(),
    };
    wait_for("the controller's api", Duration::from_secs(30), || {
        Ok(api.get("/v1/nodes").is_ok())
    })?;
    for id in [2u64, 3] {
        let t = api.ok(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"role": "controller_join"})),
        )?;
        let join = vec![
            "--join".to_owned(),
            base(1).trim_start_matches("https://").to_owned(),
            "--token".to_owned(),
            t["token"].as_str().context("token")?.to_owned(),
            "--ca-cert-hash".to_owned(),
            ca_hash.clone(),
        ];
        w.controllers
            .push((id, spawn_controller(&bin, ns_fd, w.dir.path(), id, &join)?));
    }
    wait_for("three voters", Duration::from_secs(60), || {
        let m = api.get("/v1/cluster/members")?;
        Ok(m["members"]
            .as_array()
            .is_some_and(|v| v.iter().filter(|x| x["voter"] == true).count() == 3))
    })?;

    // The registry and the agent.
    let layout = w.dir.path().join("layout");
    flotilla_image::testimage::build_busybox_oci_layout(
        &flotilla_runtime::rootfs::busybox_path(),
        &layout,
        "1",
    )?;
    let reg = on_netns_thread(
        w.netns_path(),
        flotilla_image::testregistry::TestRegistry::start_plain,
    )??;
    let image = reg.reference("test/busybox:1");
    let opts = reg.options(flotilla_image::RegistryAuth::Anonymous);
    let (l2, i2) = (layout.clone(), image.clone());
    api.run(async move {
        flotilla_image::registry::push_oci_layout(&l2, None, &i2, &opts).await?;
        Ok(())
    })?;
    let tok = api.ok(
        reqwest::Method::POST,
        "/v1/tokens",
        Some(json!({"role": "node_join"})),
    )?;
    let octet = 100 + (pid + 50) % 100;
    w.agent_args = [
        "--socket",
        &w.dir.path().join("agent.sock").display().to_string(),
        "serve",
        "--root",
        &w.dir.path().join("state").display().to_string(),
        "--cgroup-parent",
        &w.cgroup_parent,
        "--subnet",
        &format!("198.18.{octet}.0/24"),
        "--bridge",
        &format!("fl{}", pid % 100_000),
        "--registry-insecure",
        &reg.addr,
        "--join",
        &base(1),
        "--token",
        tok["token"].as_str().context("token")?,
        "--ca-cert-hash",
        &ca_hash,
        "--node-id",
        "n1",
        "--advertise",
        &format!("198.18.{octet}.1:7443"),
    ]
    .map(str::to_owned)
    .to_vec();
    w.start_agent()?;
    let controllers: Vec<String> = serde_json::from_str::<Value>(&std::fs::read_to_string(
        w.dir.path().join("state/cluster/identity.json"),
    )?)?["controllers"]
        .as_array()
        .context("controllers")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    ensure!(controllers.len() == 3, "the agent knows {controllers:?}");

    api.ok(
        reqwest::Method::PUT,
        "/v1/workloads/web",
        Some(json!({"image": image, "command": ["sleep", "1000"], "replicas": 1, "stopGraceMs": 200})),
    )?;
    let running = |api: &Api, id: &str| -> Result<bool> {
        let i = api.instance(id)?;
        Ok(i["phase"] == "running" && i["observed"]["state"] == "running")
    };
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "web-0",
        "workload": "web", "ownerNode": "n1", "atMs": now_ms()}),
    )?;
    wait_for("web-0 running", Duration::from_secs(60), || {
        running(&api, "web-0")
    })
    .with_context(|| w.agent_log())?;

    // Kill the leader (by PID); another controller takes over.
    let leader = api.get("/v1/cluster/leader")?["leader"]
        .as_u64()
        .context("no leader")?;
    let term = api.get("/v1/nodes/n1")?["lease"]["leaderTerm"]
        .as_u64()
        .context("lease")?;
    let (_, mut child) = w
        .controllers
        .iter()
        .position(|(id, _)| *id == leader)
        .map(|i| w.controllers.remove(i))
        .context("leader process")?;
    child.kill()?;
    child.wait()?;
    let survivor = [1u64, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .context("survivor")?;
    api.base = base(survivor);
    wait_for("a new leader", Duration::from_secs(30), || {
        let l = api.get("/v1/cluster/leader")?["leader"].as_u64();
        Ok(l.is_some() && l != Some(leader))
    })?;

    // The agent keeps its lease (renewed in the new term) and runs what is placed next.
    wait_for("a lease of the new term", Duration::from_secs(30), || {
        Ok(api.get("/v1/nodes/n1")?["lease"]["leaderTerm"].as_u64() > Some(term))
    })
    .with_context(|| w.agent_log())?;
    api.command(
        json!({"type": "put_instance_placement", "instanceId": "web-1",
        "workload": "web", "ownerNode": "n1", "atMs": now_ms()}),
    )?;
    wait_for(
        "web-1 running after the leader change",
        Duration::from_secs(60),
        || running(&api, "web-1"),
    )
    .with_context(|| w.agent_log())?;
    ensure!(running(&api, "web-0")?, "web-0 lost");
    ensure!(local_containers(&w, "web-0")?.len() == 1);

    // Move both away: the agent removes their containers; then everything goes.
    for id in ["web-0", "web-1"] {
        api.command(json!({"type": "put_instance_placement", "instanceId": id,
            "workload": "web", "ownerNode": "elsewhere", "atMs": now_ms()}))?;
    }
    wait_for("containers removed", Duration::from_secs(30), || {
        Ok(w.containers_on_disk().is_empty())
    })
    .with_context(|| w.agent_log())?;
    w.kill_agent(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    w.reap_orphans();
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    let d = w.dir.path().display().to_string();
    ensure!(!mi.lines().any(|l| l.contains(&d)), "mounts left below {d}");
    ensure!(
        w.cgroup_dirs().is_empty(),
        "cgroups left: {:?}",
        w.cgroup_dirs()
    );
    let ns = w.netns.clone();
    drop(reg);
    drop(w);
    ensure!(
        !Path::new(&format!("/run/netns/{ns}")).exists(),
        "network namespace left"
    );
    Ok(())
}
