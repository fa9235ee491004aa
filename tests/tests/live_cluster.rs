//! Issue 5's acceptance, end to end as a user drives it: `clusterctl dev up` with 3 controllers
//! and 3 agents, each in its own network-namespace host; a workload pulled from the dev
//! cluster's registry, spread, scaled, rolled, health-checked; an agent killed and restarted; the
//! controller leader killed; an unplaceable and an invalid workload; `dev down` leaves nothing.
//!
//! Needs root, network namespaces, docker-registry and the busybox binary: without them it
//! fails when `CI=true` and is skipped (with a message) otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

fn target_dir() -> PathBuf {
    // <target>/debug/deps/live_cluster-HASH → <target>/debug
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// A workspace binary, built on demand when a lone `cargo test -p flotilla-tests` did not.
fn bin(package: &str, name: &str) -> PathBuf {
    let p = target_dir().join(name);
    if !p.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", package, "--bin", name])
            .status()
            .expect("cargo build");
        assert!(st.success(), "cannot build {name}");
    }
    p
}

fn can_run() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root".into());
    }
    if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("docker-registry missing (deploy/install-deps.sh)".into());
    }
    Ok(())
}

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("live test cannot run under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
    true
}

/// One dev cluster; `dev down` on drop, so a failing test leaves nothing behind.
struct Dev {
    name: String,
    dir: tempfile::TempDir,
    clusterctl: PathBuf,
    down: bool,
}

impl Dev {
    fn config(&self) -> PathBuf {
        self.dir.path().join("clusterctl.yaml")
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.clusterctl);
        c.args(args)
            .env("CLUSTERCTL_CONFIG", self.config())
            .env("FLOTILLA_DEV_RUN_DIR", self.run_dir())
            .env(
                "FLOTILLA_CONTROLLER_BIN",
                bin("flotilla-controller", "flotilla-controller"),
            )
            .env(
                "FLOTILLA_AGENT_BIN",
                bin("flotilla-agent", "flotilla-agent"),
            )
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run clusterctl")
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args);
        ensure!(
            out.status.success(),
            "clusterctl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let s = self.ok(&a)?;
        serde_json::from_str(&s).with_context(|| format!("clusterctl {args:?} -o json: {s}"))
    }

    fn apply(&self, yaml: &str) -> Output {
        let mut child = self
            .cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clusterctl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn apply_ok(&self, yaml: &str) -> Result<()> {
        let out = self.apply(yaml);
        ensure!(
            out.status.success(),
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn state(&self) -> Result<Value> {
        let p = self.run_dir().join(format!("{}.json", self.name));
        let s = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
        Ok(serde_json::from_str(&s)?)
    }

    /// Instances of `workload` (all phases).
    fn instances(&self, workload: &str) -> Result<Vec<Value>> {
        let v = self.json(&["get", "instances"])?;
        Ok(items(&v)
            .into_iter()
            .filter(|i| i["workload"] == workload)
            .collect())
    }

    /// Containers each agent runs (from its local API), per node.
    fn containers(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let state = self.state()?;
        let mut out = BTreeMap::new();
        for h in state["hosts"].as_array().into_iter().flatten() {
            let Some(agent) = h.get("agent").filter(|a| !a.is_null()) else {
                continue;
            };
            let socket = agent["socket"].as_str().context("agent socket")?;
            let o = Command::new(bin("flotilla-agent", "flotilla-agent"))
                .args(["--socket", socket, "ps", "-o", "json"])
                .output()?;
            ensure!(
                o.status.success(),
                "agent ps on {}: {}",
                h["name"],
                String::from_utf8_lossy(&o.stderr)
            );
            let v: Value = serde_json::from_slice(&o.stdout)?;
            let names = items(&v)
                .iter()
                .filter(|c| c["status"] == "running" || c["state"] == "running")
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect();
            out.insert(agent["nodeId"].as_str().unwrap_or("?").to_owned(), names);
        }
        Ok(out)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if !self.down {
            let out = self.run(&["dev", "down", "--name", &self.name]);
            if !out.status.success() {
                eprintln!(
                    "dev down after failure: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn is_running_ready(i: &Value) -> bool {
    i["phase"] == "running" && i["observed"]["state"] == "running" && i["observed"]["ready"] == true
}

/// The live (not stopping) instances of a workload when exactly `n` run and are ready.
fn running(dev: &Dev, workload: &str, n: usize) -> Result<Option<Vec<Value>>> {
    let all = dev.instances(workload)?;
    let ready: Vec<Value> = all
        .iter()
        .filter(|i| is_running_ready(i))
        .cloned()
        .collect();
    Ok((all.len() == n && ready.len() == n).then_some(ready))
}

fn nodes_of(instances: &[Value]) -> BTreeSet<String> {
    instances
        .iter()
        .filter_map(|i| i["ownerNode"].as_str().map(str::to_owned))
        .collect()
}

/// Every instance of the cluster runs in exactly one container, and no container runs that is
/// not an instance here: no duplicates, nothing orphaned.
fn containers_match_instances(dev: &Dev) -> Result<Option<()>> {
    let v = dev.json(&["get", "instances"])?;
    let want: BTreeMap<String, String> = items(&v)
        .iter()
        .filter(|i| i["phase"] == "running" || i["phase"] == "scheduled")
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_owned(),
                i["ownerNode"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut seen = BTreeMap::new();
    for (node, names) in dev.containers()? {
        for n in names {
            if seen.insert(n.clone(), node.clone()).is_some() {
                bail!("container {n} runs twice");
            }
        }
    }
    Ok((seen == want).then_some(()))
}

/// Read a terminal master until `want` shows up; everything read so far.
fn read_pty(master: &std::os::fd::OwnedFd, want: &str, timeout: Duration) -> Result<String> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(want) {
        ensure!(
            Instant::now() < deadline,
            "no {want:?} on the terminal within {timeout:?}; read: {:?}",
            String::from_utf8_lossy(&out)
        );
        let mut fds = [libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one valid fd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        ensure!(
            n > 0,
            "the terminal closed before {want:?}; read: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n as usize]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn type_pty(master: &std::os::fd::OwnedFd, s: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: write from a local buffer.
    let n = unsafe { libc::write(master.as_raw_fd(), s.as_ptr().cast(), s.len()) };
    ensure!(
        n == s.len() as isize,
        "typing on the terminal: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The processes of the instance's container, as `ps` inside it lists them.
fn container_ps(dev: &Dev, inst: &str) -> Result<String> {
    dev.ok(&["exec", inst, "--", "ps", "-o", "pid,args"])
}

/// `exec -i` passes input and separates stdout, stderr and the exit code; `exec -it` runs on a
/// terminal of the container's own devpts with this terminal's size, follows a resize, ends
/// with the command's status and puts this terminal back; a client that goes away hangs its
/// command up; errors name what is wrong.
fn exec_checks(dev: &Dev, inst: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let before = container_ps(dev, inst)?;

    let mut child = dev
        .cmd(&[
            "exec",
            "-i",
            inst,
            "--",
            "sh",
            "-c",
            "cat; echo done >&2; exit 4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from stdin\n")?;
    let out = child.wait_with_output()?;
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(4),
        "exec -i: {:?} {so} {se}",
        out.status
    );
    ensure!(so == "hello from stdin\n", "exec -i stdout: {so:?}");
    ensure!(
        se.contains("done") && !so.contains("done"),
        "exec -i stderr: {se:?}"
    );

    // A real terminal for clusterctl: it must be its controlling terminal (SIGWINCH).
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 37,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )?;
    // SAFETY: tcgetattr into a zeroed struct, on our fd.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(pty.slave.as_raw_fd(), &mut t);
        t
    };
    let slave = pty.slave.as_raw_fd();
    let mut cmd = dev.cmd(&["exec", "-it", inst, "--", "sh"]);
    cmd.env("TERM", "xterm-256color")
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?));
    // SAFETY: setsid and ioctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let master = pty.master;
    type_pty(&master, "tty; stty size; echo term=$TERM; echo $((6*7))x\r")?;
    let out = read_pty(&master, "42x", Duration::from_secs(30))?;
    ensure!(out.contains("/dev/pts/"), "exec -it: no terminal: {out:?}");
    ensure!(out.contains("37 101"), "exec -it: size not passed: {out:?}");
    ensure!(
        out.contains("term=xterm-256color"),
        "exec -it: TERM not passed: {out:?}"
    );
    let ws = libc::winsize {
        ws_row: 45,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our master: the kernel signals clusterctl (SIGWINCH).
    ensure!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } == 0);
    std::thread::sleep(Duration::from_millis(300));
    type_pty(&master, "stty size; echo re$((1+1))sized\r")?;
    let out = read_pty(&master, "re2sized", Duration::from_secs(30))?;
    ensure!(
        out.contains("45 120"),
        "exec -it: resize not passed: {out:?}"
    );
    type_pty(&master, "exit 3\r")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        ensure!(Instant::now() < deadline, "exec -it did not end after exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.code() == Some(3), "exec -it exit: {status:?}");
    // SAFETY: tcgetattr into a zeroed struct, on our fd.
    let after = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave, &mut t);
        t
    };
    ensure!(
        after.c_lflag == saved.c_lflag && after.c_iflag == saved.c_iflag,
        "the local terminal was not put back"
    );

    // A client that goes away (kill -9) hangs its command up: nothing stays in the container.
    let mut child = dev
        .cmd(&[
            "exec",
            "-i",
            inst,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 600",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )?;
    ensure!(line == "started\n", "exec -i: {line:?}");
    ensure!(container_ps(dev, inst)?.contains("sleep 600"));
    child.kill()?;
    child.wait()?;
    wait_for("the hung-up exec to end", Duration::from_secs(20), || {
        Ok((!container_ps(dev, inst)?.contains("sleep 600")).then_some(()))
    });
    let count = |s: &str| s.lines().filter(|l| !l.contains(" ps ")).count();
    let after = container_ps(dev, inst)?;
    ensure!(
        count(&after) == count(&before),
        "processes left in the container:\n{after}\nbefore:\n{before}"
    );

    // Errors name what is wrong.
    let out = dev.run(&["exec", "-i", "no-such-instance", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("no-such-instance"),
        "exec of a missing instance: {err}"
    );
    let out = dev.run(&["exec", "-i", inst, "--", "/no/such/binary"]);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(127) && err.contains("/no/such/binary"),
        "exec of a missing command: {:?} {err}",
        out.status
    );
    Ok(())
}

fn workload_yaml(name: &str, image: &str, replicas: u32, version: &str) -> String {
    format!(
        r#"kind: Workload
name: {name}
image: {image}
command: ["sh", "-c", "echo v{version} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
env:
  VERSION: "{version}"
replicas: {replicas}
resources:
  cpuMillis: 100
  memoryBytes: 33554432
ports:
  - name: http
    containerPort: 8080
placement:
  strategy: spread
readiness:
  tcp:
    port: 8080
  periodMs: 300
  timeoutMs: 250
updateStrategy:
  maxUnavailable: 0
  maxSurge: 1
stopGraceMs: 2000
"#
    )
}

#[test]
fn live_cluster_three_controllers_three_agents() {
    if let Err(why) = can_run() {
        if skip_or_fail(&why) {
            return;
        }
    }
    // Shims of a killed agent are re-parented to us, not to a PID 1 that may not reap them.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let dev = Dev {
        name: format!("t{:x}", std::process::id() % 0xffff),
        dir: tempfile::Builder::new()
            .prefix("flotilla-live-cluster-")
            .tempdir()
            .unwrap(),
        clusterctl: bin("clusterctl", "clusterctl"),
        down: false,
    };
    let state_dir = dev.dir.path().join("state");
    if let Err(e) = scenario(&dev, &state_dir) {
        // Keep the hosts' logs in the failure output.
        let logs = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for f in $(find {}/logs -name '*.log'); do echo \"== $f\"; tail -n 40 $f; done",
                state_dir.display()
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("{e:#}\n{logs}");
    }
    let mut dev = dev;
    dev.ok(&["dev", "down", "--name", &dev.name.clone()])
        .unwrap();
    dev.down = true;
    // Nothing left: no netns, no state, no processes of the cluster.
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&dev.name))
        .collect();
    assert!(netns.is_empty(), "netns left behind: {netns:?}");
    assert!(!state_dir.exists() || std::fs::read_dir(&state_dir).unwrap().next().is_none());
}

fn scenario(dev: &Dev, state_dir: &Path) -> Result<()> {
    let up = dev.ok(&[
        "dev",
        "up",
        "--controllers",
        "3",
        "--agents",
        "3",
        "--name",
        &dev.name,
        "--state-dir",
        state_dir.to_str().unwrap(),
    ])?;
    eprintln!("{up}");
    let state = dev.state()?;
    let image = state["registry"]["sample"]
        .as_str()
        .context("dev state names the sample image")?
        .to_owned();

    // Three agents registered and ready.
    wait_for("3 ready nodes", Duration::from_secs(60), || {
        let v = dev.json(&["get", "nodes"])?;
        let ready = items(&v).iter().filter(|n| n["ready"] == true).count();
        Ok((ready == 3).then_some(()))
    });

    // A 3-replica workload spreads over the 3 nodes.
    dev.apply_ok(&workload_yaml("web", &image, 3, "1"))?;
    let three = wait_for("3 ready replicas of web", Duration::from_secs(120), || {
        running(dev, "web", 3)
    });
    ensure!(nodes_of(&three).len() == 3, "not spread: {three:?}");
    wait_for("containers = instances", Duration::from_secs(30), || {
        containers_match_instances(dev)
    });

    // exec -i and exec -it through the controller to the owning agent.
    let inst = three[0]["id"].as_str().context("instance id")?.to_owned();
    exec_checks(dev, &inst)?;

    // Scale to 6 and back to 2.
    dev.ok(&["scale", "workload", "web", "--replicas", "6"])?;
    wait_for("6 ready replicas", Duration::from_secs(120), || {
        running(dev, "web", 6)
    });
    dev.ok(&["scale", "workload", "web", "--replicas", "2"])?;
    wait_for("2 replicas", Duration::from_secs(60), || {
        running(dev, "web", 2)
    });
    wait_for(
        "containers = instances after scale down",
        Duration::from_secs(30),
        || containers_match_instances(dev),
    );

    // Rolling update at 3 replicas with maxUnavailable 0: never fewer than 3 ready.
    dev.ok(&["scale", "workload", "web", "--replicas", "3"])?;
    wait_for("3 replicas", Duration::from_secs(60), || {
        running(dev, "web", 3)
    });
    let gen_before = dev.json(&["get", "workloads", "web"])?["generation"]
        .as_u64()
        .context("generation")?;
    dev.apply_ok(&workload_yaml("web", &image, 3, "2"))?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut min_ready = usize::MAX;
    loop {
        let all = dev.instances("web")?;
        let ready = all.iter().filter(|i| is_running_ready(i)).count();
        min_ready = min_ready.min(ready);
        let new = all
            .iter()
            .filter(|i| i["generation"].as_u64() > Some(gen_before) && is_running_ready(i))
            .count();
        if new == 3 && all.len() == 3 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "rolling update did not finish: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        min_ready >= 3,
        "rolling update dropped to {min_ready} ready replicas"
    );

    // A failing liveness check gets its instance restarted.
    dev.apply_ok(&format!(
        r#"kind: Workload
name: flaky
image: {image}
command: ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; exec sleep 600"]
replicas: 1
resources: {{cpuMillis: 50, memoryBytes: 16777216}}
liveness:
  exec: {{command: ["test", "-f", "/tmp/ok"]}}
  periodMs: 300
  timeoutMs: 250
  failureThreshold: 2
stopGraceMs: 500
"#
    ))?;
    wait_for(
        "a liveness restart of flaky",
        Duration::from_secs(90),
        || {
            let i = dev.instances("flaky")?;
            Ok(i.iter()
                .any(|i| i["observed"]["restarts"].as_u64().unwrap_or(0) >= 1)
                .then_some(()))
        },
    );
    dev.ok(&["delete", "workload", "flaky"])?;
    wait_for("flaky gone", Duration::from_secs(60), || {
        Ok(dev.instances("flaky")?.is_empty().then_some(()))
    });

    // kill -9 an agent and start it again: its containers are re-adopted, never duplicated.
    let web = dev.instances("web")?;
    let victim = web[0]["ownerNode"].as_str().context("owner")?.to_owned();
    let host = host_of_node(dev, &victim)?;
    dev.ok(&["dev", "kill", "--name", &dev.name, &host])?;
    dev.ok(&["dev", "start", "--name", &dev.name, &host])?;
    wait_for(
        "web still 3 after agent restart",
        Duration::from_secs(60),
        || running(dev, "web", 3),
    );
    wait_for(
        "no duplicates after agent restart",
        Duration::from_secs(30),
        || containers_match_instances(dev),
    );
    let after: BTreeSet<String> = dev
        .instances("web")?
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    let before: BTreeSet<String> = web
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        after == before,
        "instances were replaced by the agent restart: {before:?} → {after:?}"
    );

    // Kill the controller leader: reconciliation goes on under the new leader.
    let status = dev.json(&["cluster", "status"])?;
    let leader = status["leader"].as_u64().context("leader id")?;
    let leader_host = format!("c{leader}");
    dev.ok(&["dev", "kill", "--name", &dev.name, &leader_host])?;
    wait_for(
        "a scale through the new leader",
        Duration::from_secs(30),
        || {
            Ok(dev
                .run(&["scale", "workload", "web", "--replicas", "4"])
                .status
                .success()
                .then_some(()))
        },
    );
    wait_for(
        "4 replicas under the new leader",
        Duration::from_secs(120),
        || running(dev, "web", 4),
    );
    dev.ok(&["dev", "start", "--name", &dev.name, &leader_host])?;

    // Unplaceable: the reason is in the workload's status.
    dev.apply_ok(&format!(
        "kind: Workload\nname: huge\nimage: {image}\nreplicas: 1\nresources: {{cpuMillis: 100, memoryBytes: 1099511627776}}\n"
    ))?;
    wait_for("the unplaceable reason", Duration::from_secs(30), || {
        let w = dev.json(&["get", "workloads", "huge"])?;
        let text = w["status"].to_string().to_lowercase();
        Ok((text.contains("memory") && w["status"]["unplaced"].as_u64() == Some(1)).then_some(()))
    });
    dev.ok(&["delete", "workload", "huge"])?;

    // Invalid: refused naming the field, nothing stored.
    let out = dev.apply(&format!(
        "kind: Workload\nname: bad\nimage: {image}\nreplicas: 1\nports:\n  - name: http\n    containerPort: 0\n"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "an invalid spec was accepted");
    ensure!(
        err.contains("ports[0].containerPort"),
        "the field is not named: {err}"
    );
    ensure!(
        !dev.run(&["get", "workloads", "bad"]).status.success(),
        "the invalid workload was stored"
    );

    // Delete: graceful stop, nothing left on the agents.
    dev.ok(&["delete", "workload", "web"])?;
    wait_for("web gone", Duration::from_secs(60), || {
        Ok(dev.instances("web")?.is_empty().then_some(()))
    });
    wait_for("no containers left", Duration::from_secs(30), || {
        Ok(dev.containers()?.values().all(Vec::is_empty).then_some(()))
    });
    Ok(())
}

fn host_of_node(dev: &Dev, node: &str) -> Result<String> {
    let state = dev.state()?;
    for h in state["hosts"].as_array().into_iter().flatten() {
        if h["agent"]["nodeId"] == node {
            return Ok(h["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    bail!("no dev host runs node {node}")
}
