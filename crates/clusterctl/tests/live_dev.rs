//! `clusterctl dev up|down` for real: controllers in network namespaces on an underlay bridge,
//! the core object commands through the context `dev up` wrote, and nothing left behind by
//! `dev down` (processes, namespaces, links, state) or by an `up` that fails half-way.
//! Needs root, `ip` and `nsenter`; under CI=true a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

const CTL: &str = env!("CARGO_BIN_EXE_clusterctl");

fn live() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |b: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let why = if !root {
        Some("not root".to_owned())
    } else if !has("ip") || !has("nsenter") {
        Some("ip or nsenter missing".to_owned())
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

fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The controller built from this tree, copied so a concurrent build cannot swap it mid-test.
fn controller_bin(dir: &Path) -> Result<PathBuf> {
    let (c, _) = built_bins(dir, &["flotilla-controller"])?;
    Ok(c)
}

/// Copies of workspace binaries next to clusterctl (the workspace build, which CI runs first,
/// makes them). Built only when missing: a `cargo build -p` here would resolve features
/// differently, rebuild half the workspace and overwrite binaries other tests are using.
fn built_bins(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf)> {
    let built = Path::new(CTL).parent().context("binary directory")?;
    let mut out = Vec::new();
    for b in names {
        if !built.join(b).exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", b, "--bin", b])
                .status()
                .context("cannot run cargo build")?;
            ensure!(status.success(), "cannot build {b}");
        }
        let copy = dir.join(b);
        std::fs::copy(built.join(b), &copy).with_context(|| format!("copy {b}"))?;
        out.push(copy);
    }
    let last = out.last().cloned().context("no binary named")?;
    Ok((out[0].clone(), last))
}

struct Ctl {
    config: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new(CTL);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CLUSTERCTL_CONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run clusterctl")?;
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None)?;
        ensure!(
            out.status.success(),
            "clusterctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ok(&a)?;
        serde_json::from_str(&out).with_context(|| format!("not json: {out}"))
    }

    /// Must fail with a message; returns stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        let err = String::from_utf8(out.stderr)?;
        ensure!(
            !out.status.success(),
            "clusterctl {args:?} succeeded: {err}"
        );
        ensure!(err.contains("error: "), "no error line: {err:?}");
        Ok(err)
    }
}

/// `dev down` whatever happened (the processes are killed by PID from the state file).
struct DownGuard<'a> {
    ctl: &'a Ctl,
    name: String,
}

impl Drop for DownGuard<'_> {
    fn drop(&mut self) {
        let _ = self.ctl.run(&["dev", "down", "--name", &self.name], None);
        reap();
    }
}

/// This test is a subreaper (PID 1 here does not reap): collect exited orphans.
fn reap() {
    loop {
        // SAFETY: waitpid on any child, non-blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

fn become_subreaper() {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Processes whose command line mentions `needle` (our unique state directory).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn links_starting(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn netns_of(name: &str) -> Vec<String> {
    let prefix = format!("fdev-{name}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Nothing of cluster `name` (state dir `state`, slot `slot` if known) is left.
fn assert_nothing_left(ctl: &Ctl, name: &str, state: &Path, slot: Option<u64>) -> Result<()> {
    reap();
    let procs = processes_mentioning(&state.display().to_string());
    ensure!(procs.is_empty(), "processes left: {procs:?}");
    let ns = netns_of(name);
    ensure!(ns.is_empty(), "network namespaces left: {ns:?}");
    if let Some(slot) = slot {
        let links = links_starting(&format!("fdb{slot}"));
        ensure!(links.is_empty(), "links left: {links:?}");
        ensure!(
            !Path::new(&format!("/run/flotilla-dev/slots/{slot}")).exists(),
            "slot claim left"
        );
    }
    ensure!(!state.exists(), "state dir {} left", state.display());
    ensure!(
        !Path::new(&format!("/run/flotilla-dev/{name}.json")).exists(),
        "state file left"
    );
    let ls = ctl.ok(&["context", "ls", "-o", "json"])?;
    ensure!(!ls.contains(&format!("\"{name}\"")), "context left: {ls}");
    Ok(())
}

const WORKLOAD: &str = r#"
kind: Workload
name: web
image: registry.invalid/web:1
command: [httpd, -f, -p, "8080"]
replicas: 3
resources: {cpuMillis: 100, memoryBytes: 33554432}
ports: [{name: http, containerPort: 8080}]
placement: {strategy: spread, antiAffinity: true}
---
kind: Service
name: web
workload: web
ports: [{name: http, port: 80, targetPort: 8080}]
"#;

#[test]
fn live_dev_up_three_controllers_serves_the_core_commands_and_down_leaves_nothing() -> Result<()> {
    if !live() {
        return Ok(());
    }
    become_subreaper();
    let dir = TempDir::new()?;
    let bin = controller_bin(dir.path())?;
    let ctl = Ctl {
        config: dir.path().join("config.yaml"),
    };
    let name = unique_name("up");
    let state = dir.path().join("state");
    let _guard = DownGuard {
        ctl: &ctl,
        name: name.clone(),
    };

    let t0 = std::time::Instant::now();
    let out = ctl.ok(&[
        "dev",
        "up",
        "--name",
        &name,
        "--controllers",
        "3",
        "--agents",
        "0",
        "--state-dir",
        state.to_str().context("path")?,
        "--controller-bin",
        bin.to_str().context("path")?,
    ])?;
    let up_ms = t0.elapsed().as_millis();
    ensure!(
        out.contains(&format!("context:     {name} (current)")),
        "{out}"
    );
    ensure!(
        out.contains("/ui/") && out.contains("https://198.18."),
        "{out}"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&state)?.permissions().mode() & 0o777
    };
    ensure!(
        mode == 0o700,
        "state dir (CA key, admin token) has mode {mode:o}"
    );
    let st: Value =
        serde_json::from_slice(&std::fs::read(format!("/run/flotilla-dev/{name}.json"))?)?;
    let slot = st["slot"].as_u64().context("slot")?;
    let hosts = st["hosts"].as_array().context("hosts")?;
    ensure!(hosts.len() == 3, "{st}");
    for h in hosts {
        let ip = h["ip"].as_str().context("ip")?;
        ensure!(ip.starts_with(&format!("198.18.{slot}.")), "{ip}");
        ensure!(
            Path::new("/run/netns")
                .join(h["netns"].as_str().context("netns")?)
                .exists(),
            "{h}"
        );
    }
    ensure!(
        links_starting(&format!("fdb{slot}")).len() == 4,
        "bridge and 3 veths"
    );

    // --- through the written context (no --context: it is the current one)
    let status = ctl.json(&["cluster", "status"])?;
    ensure!(
        status["leader"].as_u64().is_some()
            && status["members"].as_array().map(Vec::len) == Some(3),
        "{status}"
    );
    let members = ctl.json(&["cluster", "members"])?;
    ensure!(
        members["members"].as_array().is_some_and(|m| m
            .iter()
            .filter(|x| x["voter"] == true)
            .count()
            == 3),
        "{members}"
    );
    let nodes = ctl.ok(&["get", "nodes"])?;
    ensure!(
        nodes.contains("NAME") && nodes.contains("STATUS"),
        "{nodes}"
    );
    let nodes = ctl.json(&["get", "nodes"])?;
    ensure!(nodes["items"].as_array().is_some(), "{nodes}");

    // --- apply from a file, then from stdin (again: configured)
    let file = dir.path().join("web.yaml");
    std::fs::write(&file, WORKLOAD)?;
    let applied = ctl.ok(&["apply", "-f", file.to_str().context("path")?])?;
    ensure!(
        applied.contains("workload/web created") && applied.contains("service/web created"),
        "{applied}"
    );
    let again = ctl.run(&["apply", "-f", "-"], Some(WORKLOAD))?;
    ensure!(again.status.success(), "{again:?}");
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("workload/web configured"),
        "{again:?}"
    );
    let table = ctl.ok(&["get", "workloads"])?;
    let row = table
        .lines()
        .find(|l| l.contains(" web "))
        .with_context(|| format!("no web row: {table}"))?;
    ensure!(
        row.contains("/3") && row.contains("registry.invalid/web:1"),
        "{table}"
    );
    let wide = ctl.ok(&["get", "workloads", "-o", "wide"])?;
    ensure!(
        wide.contains("STRATEGY") && wide.contains("spread"),
        "{wide}"
    );
    let w = ctl.json(&["get", "workloads", "web"])?;
    ensure!(w["spec"]["replicas"] == 3, "{w}");
    let yaml = ctl.ok(&["get", "workloads", "-o", "yaml"])?;
    ensure!(yaml.contains("name: web"), "{yaml}");

    // --- invalid specs: refused with the field named, nothing written
    let e = ctl.fails(
        &["apply", "-f", "-"],
        Some("name: bad\nimage: x:1\nports: [{name: http, containerPort: 0}]\n"),
    )?;
    ensure!(
        e.contains("ports[0].containerPort") && e.contains("422"),
        "{e}"
    );
    let e = ctl.fails(
        &["apply", "-f", "-"],
        Some("name: bad\nimage: x:1\nreplicas: many\n"),
    )?;
    ensure!(e.contains("replicas") && e.contains("line 3"), "{e}");
    let e = ctl.fails(&["get", "workloads", "bad"], None)?;
    ensure!(e.contains("not found") && e.contains("404"), "{e}");

    // --- scale, describe, events
    ctl.ok(&["scale", "workload", "web", "--replicas", "5"])?;
    let w = ctl.json(&["get", "workloads", "web"])?;
    ensure!(w["spec"]["replicas"] == 5, "{w}");
    let d = ctl.ok(&["describe", "workload", "web"])?;
    ensure!(
        d.contains("Replicas:    5 desired") && d.contains("Events:"),
        "{d}"
    );
    ensure!(
        d.contains("workload/web"),
        "describe shows the workload's events: {d}"
    );
    let ev = ctl.ok(&["get", "events"])?;
    ensure!(ev.contains("workload/web"), "{ev}");
    let e = ctl.fails(&["cordon", "no-such-node"], None)?;
    ensure!(e.contains("node no-such-node not found"), "{e}");
    let e = ctl.fails(&["scale", "workload", "nope", "--replicas", "1"], None)?;
    ensure!(e.contains("nope") && e.contains("404"), "{e}");

    // --- delete
    ctl.ok(&["delete", "service", "web"])?;
    ctl.ok(&["delete", "workload", "web"])?;
    let e = ctl.fails(&["delete", "workload", "web"], None)?;
    ensure!(e.contains("not found"), "{e}");

    // --- down: nothing left; a second down is a no-op
    let t1 = std::time::Instant::now();
    ctl.ok(&["dev", "down", "--name", &name])?;
    let down_ms = t1.elapsed().as_millis();
    assert_nothing_left(&ctl, &name, &state, Some(slot))?;
    ctl.ok(&["dev", "down", "--name", &name])?;
    println!("dev up (3 controllers): {up_ms} ms; dev down: {down_ms} ms");
    Ok(())
}

#[test]
fn live_dev_up_with_bad_arguments_leaves_nothing_behind() -> Result<()> {
    if !live() {
        return Ok(());
    }
    become_subreaper();
    let dir = TempDir::new()?;
    let bin = controller_bin(dir.path())?;
    let ctl = Ctl {
        config: dir.path().join("config.yaml"),
    };
    let name = unique_name("bad");
    let state = dir.path().join("state");
    let _guard = DownGuard {
        ctl: &ctl,
        name: name.clone(),
    };
    let state_s = state.to_str().context("path")?;
    let bin_s = bin.to_str().context("path")?;
    let up = |extra: &[&str]| -> Result<String> {
        let mut args = vec![
            "dev",
            "up",
            "--name",
            &name,
            "--state-dir",
            state_s,
            "--controller-bin",
            bin_s,
        ];
        args.extend_from_slice(extra);
        ctl.fails(&args, None)
    };

    // Refused before anything exists.
    let e = up(&["--controllers", "0"])?;
    ensure!(e.contains("--controllers 0"), "{e}");
    assert_nothing_left(&ctl, &name, &state, None)?;
    let e = up(&["--agents", "99"])?;
    ensure!(e.contains("--agents 99"), "{e}");
    let e = up(&["--registry-insecure", "nohostport"])?;
    ensure!(e.contains("host:port"), "{e}");
    let e = ctl.fails(&["dev", "up", "--name", "Bad_Name"], None)?;
    ensure!(e.contains("--name \"Bad_Name\""), "{e}");
    let e = up(&[
        "--agents",
        "1",
        "--agent-bin",
        "/nonexistent/flotilla-agent",
    ])?;
    ensure!(e.contains("/nonexistent/flotilla-agent"), "{e}");
    assert_nothing_left(&ctl, &name, &state, None)?;

    let links_before = links_starting("fdb");
    // Fails half-way: two controllers run, then the "agent" exits at once. Everything made
    // so far (processes, namespaces, bridge, state, context) must go.
    let e = up(&[
        "--controllers",
        "2",
        "--agents",
        "1",
        "--agent-bin",
        "/bin/false",
        "--timeout",
        "60",
    ])?;
    ensure!(e.contains("agent a1 exited"), "{e}");
    assert_nothing_left(&ctl, &name, &state, None)?;
    let after: Vec<String> = links_starting("fdb")
        .into_iter()
        .filter(|l| !links_before.contains(l))
        .collect();
    ensure!(after.is_empty(), "links left: {after:?}");

    // And a controller that cannot start.
    let e = ctl.fails(
        &[
            "dev",
            "up",
            "--name",
            &name,
            "--state-dir",
            state_s,
            "--controller-bin",
            "/bin/false",
        ],
        None,
    )?;
    ensure!(e.contains("controller c1 exited"), "{e}");
    assert_nothing_left(&ctl, &name, &state, None)?;
    Ok(())
}

/// Controller and agent built from this tree, copied (see `controller_bin`); or prebuilt
/// ones named by FLOTILLA_TEST_CONTROLLER_BIN and FLOTILLA_TEST_AGENT_BIN (another branch's).
fn controller_and_agent_bins(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    if let (Some(c), Some(a)) = (
        std::env::var_os("FLOTILLA_TEST_CONTROLLER_BIN"),
        std::env::var_os("FLOTILLA_TEST_AGENT_BIN"),
    ) {
        return Ok((c.into(), a.into()));
    }
    built_bins(dir, &["flotilla-controller", "flotilla-agent"])
}

/// Live processes in a cgroup whose name starts with `prefix` (any hierarchy).
fn processes_in_cgroup(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        if !zombie && cg.contains(&format!("/{prefix}")) {
            out.push(pid);
        }
    }
    out
}

fn cgroups_named(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.to_owned()];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        dirs.push(e.path());
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix))
            {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn live_dev_up_with_agents_registers_nodes_and_down_removes_their_cgroups() -> Result<()> {
    if !live() {
        return Ok(());
    }
    become_subreaper();
    let dir = TempDir::new()?;
    let (cbin, abin) = controller_and_agent_bins(dir.path())?;
    let ctl = Ctl {
        config: dir.path().join("config.yaml"),
    };
    let name = unique_name("ag");
    let state = dir.path().join("state");
    let _guard = DownGuard {
        ctl: &ctl,
        name: name.clone(),
    };
    let t0 = std::time::Instant::now();
    let out = ctl.ok(&[
        "dev",
        "up",
        "--name",
        &name,
        "--controllers",
        "3",
        "--agents",
        "2",
        "--state-dir",
        state.to_str().context("path")?,
        "--controller-bin",
        cbin.to_str().context("path")?,
        "--agent-bin",
        abin.to_str().context("path")?,
    ])?;
    let up_ms = t0.elapsed().as_millis();
    ensure!(out.contains(&format!("node {name}-a2")), "{out}");
    let st: Value =
        serde_json::from_slice(&std::fs::read(format!("/run/flotilla-dev/{name}.json"))?)?;
    let slot = st["slot"].as_u64().context("slot")?;

    // Both nodes registered, with a live lease, through the written context.
    let nodes = ctl.json(&["get", "nodes"])?;
    let ids: Vec<&str> = nodes["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(
        ids.contains(&format!("{name}-a1").as_str())
            && ids.contains(&format!("{name}-a2").as_str()),
        "{nodes}"
    );
    let table = ctl.ok(&["get", "nodes"])?;
    ensure!(
        table
            .lines()
            .skip(1)
            .filter(|l| l.contains(" Ready "))
            .count()
            == 2,
        "{table}"
    );
    let a1 = format!("{name}-a1");
    ctl.ok(&["cordon", &a1])?;
    let table = ctl.ok(&["get", "nodes"])?;
    ensure!(table.contains("Ready,SchedulingDisabled"), "{table}");
    ctl.ok(&["uncordon", &a1])?;
    let d = ctl.ok(&["describe", "node", &a1])?;
    ensure!(
        d.contains("Schedulable: true") && d.contains("registered"),
        "{d}"
    );
    let cg = format!("flotilla-dev-{name}-");

    // A container on agent a1 (through its local API): dev down must remove it too, with
    // its shim, overlay and netns mounts and cgroup.
    let busybox = std::env::var("FLOTILLA_BUSYBOX")
        .unwrap_or_else(|_| "/opt/flotilla/busybox/busybox".into());
    if Path::new(&busybox).is_file() {
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
        for l in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l))?;
        }
        let socket = state.join("agents/a1/agent.sock");
        let out = Command::new(&abin)
            .arg("--socket")
            .arg(&socket)
            .args(["run", "-d", "--name", "leftover", "--rootfs"])
            .arg(&rootfs)
            .args(["--", "sleep", "1000"])
            .output()?;
        ensure!(
            out.status.success(),
            "agent run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        ensure!(
            mounts.contains(&state.display().to_string()),
            "the container has mounts below the state dir"
        );
        ensure!(!cgroups_named(&cg).is_empty(), "the agent's cgroups exist");
        ensure!(
            !processes_in_cgroup(&cg).is_empty(),
            "the container runs in the agent's cgroup"
        );
    } else if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("CI=true but no busybox at {busybox}");
    }

    ctl.ok(&["dev", "down", "--name", &name])?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&state.display().to_string()),
        "mounts left below the state dir"
    );
    assert_nothing_left(&ctl, &name, &state, Some(slot))?;
    let left = cgroups_named(&cg);
    ensure!(left.is_empty(), "cgroups left: {left:?}");
    reap();
    let left = processes_in_cgroup(&cg);
    ensure!(
        left.is_empty(),
        "processes left in the agents' cgroups: {left:?}"
    );
    println!("dev up (3 controllers, 2 agents): {up_ms} ms");
    Ok(())
}
