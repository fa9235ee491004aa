//! `clusterctl` against real `flotilla-controller` processes on 127.0.0.1: bootstrap one,
//! write a context, read the status, add two controllers with join tokens (three voters),
//! remove one; errors end with a non-zero status and a message. Every process is killed by
//! PID when the test ends, whatever happened.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

/// Controller processes, killed (SIGKILL) and reaped by PID on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_addr() -> Result<String> {
    Ok(format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    ))
}

/// The controller binary next to this package's binary (the workspace build makes both);
/// built on demand when a lone `cargo test -p clusterctl` did not.
fn controller_bin() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_clusterctl"))
        .parent()
        .context("binary directory")?
        .to_owned();
    let bin = dir.join("flotilla-controller");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "flotilla-controller",
                "--bin",
                "flotilla-controller",
            ])
            .status()
            .context("cannot run cargo build")?;
        ensure!(status.success(), "cannot build flotilla-controller");
    }
    ensure!(bin.exists(), "{} missing", bin.display());
    Ok(bin)
}

struct Ctl {
    config: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CLUSTERCTL_CONFIG")
            .output()
            .context("cannot run clusterctl")
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "clusterctl {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ok(&a)?;
        serde_json::from_str(&out).with_context(|| format!("not json: {out}"))
    }

    /// Run and require failure; returns stderr.
    fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(!out.status.success(), "clusterctl {args:?} succeeded");
        let err = String::from_utf8(out.stderr)?;
        ensure!(err.starts_with("error: "), "no error line: {err:?}");
        Ok(err)
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(bin: &Path, id: u64, dir: &Path, raft: &str, api: &str, join: &[&str]) -> Result<Child> {
    Command::new(bin)
        .args([
            "--id",
            &id.to_string(),
            "--raft-addr",
            raft,
            "--api-addr",
            api,
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
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot spawn flotilla-controller")
}

fn voters(members: &Value) -> usize {
    members["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|x| x["voter"] == true).count())
}

#[test]
fn clusterctl_bootstraps_adds_two_controllers_with_join_tokens_and_removes_one() -> Result<()> {
    let bin = controller_bin()?;
    let dir = TempDir::new()?;
    let ctl = Ctl {
        config: dir.path().join("home/.config/clusterctl/config.yaml"),
    };
    let addrs: Vec<(String, String)> = (0..3)
        .map(|_| Ok((free_addr()?, free_addr()?)))
        .collect::<Result<_>>()?;
    let mut procs = Procs(Vec::new());

    // --- bootstrap controller 1; it writes the CA and the admin token
    let t0 = Instant::now();
    procs
        .0
        .push(spawn(&bin, 1, dir.path(), &addrs[0].0, &addrs[0].1, &[])?);
    let c1 = dir.path().join("c1");
    wait_for("admin.token", Duration::from_secs(30), || {
        Ok(c1.join("admin.token").exists())
    })?;
    let bootstrap_ms = t0.elapsed().as_millis();
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in ["admin.token", "tls/ca.key", "tls/controller.key"] {
            let mode = std::fs::metadata(c1.join(secret))?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "{secret} has mode {mode:o}");
        }
    }

    // --- errors before any context exists
    let e = ctl.fails(&["cluster", "status"])?;
    ensure!(e.contains("no context"), "{e}");

    // --- a context, then the status
    let ca = c1.join("tls/ca.crt");
    let token_file = c1.join("admin.token");
    ctl.ok(&[
        "context",
        "add",
        "dev",
        "--endpoint",
        &addrs[0].1,
        "--ca-file",
        ca.to_str().context("path")?,
        "--token-file",
        token_file.to_str().context("path")?,
    ])?;
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&ctl.config)?.permissions().mode() & 0o777
    };
    ensure!(mode == 0o600, "config has mode {mode:o}");
    let ls = ctl.ok(&["context", "ls"])?;
    ensure!(ls.contains("dev") && ls.contains('*'), "{ls}");
    let status = ctl.json(&["cluster", "status"])?;
    ensure!(status["state"] == "leader" && status["id"] == 1, "{status}");
    let table = ctl.ok(&["cluster", "status"])?;
    ensure!(
        table.contains("leader") && table.contains("applied index"),
        "{table}"
    );
    let yaml = ctl.ok(&["cluster", "status", "-o", "yaml"])?;
    ensure!(yaml.contains("state: leader"), "{yaml}");

    // --- CLUSTERCTL_CONFIG is honoured
    let out = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["cluster", "status", "-o", "json"])
        .env("CLUSTERCTL_CONFIG", &ctl.config)
        .output()?;
    ensure!(
        out.status.success(),
        "CLUSTERCTL_CONFIG: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- two controllers join with join tokens made by `cluster member add --token`
    let t_join = Instant::now();
    for id in [2u64, 3] {
        let (raft, api) = &addrs[(id - 1) as usize];
        let created = ctl.json(&["cluster", "member", "add", &id.to_string(), raft, "--token"])?;
        let token = created["token"].as_str().context("token")?;
        let hash = created["caCertHash"].as_str().context("caCertHash")?;
        ensure!(
            created["joinCommand"]
                .as_str()
                .is_some_and(|c| c.contains(token)),
            "{created}"
        );
        procs.0.push(spawn(
            &bin,
            id,
            dir.path(),
            raft,
            api,
            &[
                "--join",
                &addrs[0].1,
                "--token",
                token,
                "--ca-cert-hash",
                hash,
            ],
        )?);
    }
    wait_for("three voters", Duration::from_secs(60), || {
        Ok(voters(&ctl.json(&["cluster", "members"])?) == 3)
    })?;
    let join_ms = t_join.elapsed().as_millis();
    // A new voter can miss a heartbeat or two on a loaded machine: wait for
    // health instead of sampling it once.
    wait_for("all members healthy", Duration::from_secs(30), || {
        let m = ctl.json(&["cluster", "members"])?;
        Ok(m["members"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| x["healthy"] == true)))
    })?;
    let members = ctl.json(&["cluster", "members"])?;
    ensure!(voters(&members) == 3, "{members}");
    let table = ctl.ok(&["cluster", "members"])?;
    ensure!(
        table.lines().count() == 4 && table.contains("HEALTHY"),
        "{table}"
    );

    // --- the joined controllers serve the API too (a context listing all three endpoints)
    ctl.ok(&[
        "context",
        "add",
        "all",
        "--endpoint",
        &addrs[2].1,
        "--endpoint",
        &addrs[1].1,
        "--endpoint",
        &addrs[0].1,
        "--ca-file",
        ca.to_str().context("path")?,
        "--token-file",
        token_file.to_str().context("path")?,
    ])?;
    let s3 = ctl.json(&["--context", "all", "cluster", "status"])?;
    ensure!(
        s3["id"] == 3 && s3["members"].as_array().map(Vec::len) == Some(3),
        "{s3}"
    );

    // --- remove controller 3
    let removed = ctl.json(&["cluster", "member", "remove", "3"])?;
    ensure!(removed["index"].as_u64().is_some(), "{removed}");
    wait_for("two members", Duration::from_secs(20), || {
        let m = ctl.json(&["cluster", "members"])?;
        Ok(m["members"].as_array().map(Vec::len) == Some(2) && voters(&m) == 2)
    })?;

    // --- errors: a clear message and a non-zero status
    let e = ctl.fails(&["cluster", "member", "remove", "99"])?;
    ensure!(
        e.contains("controller 99 not found") && e.contains("404"),
        "{e}"
    );
    let e = ctl.fails(&["context", "use", "nope"])?;
    ensure!(e.contains("no context named \"nope\""), "{e}");
    let e = ctl.fails(&["cluster", "member", "add", "4", "127.0.0.1:1"])?;
    ensure!(e.contains("--api-addr"), "{e}");
    let e = ctl.fails(&[
        "cluster",
        "member",
        "add",
        "4",
        "nowhere",
        "--api-addr",
        "127.0.0.1:2",
    ])?;
    ensure!(e.contains("addr.raftAddr") && e.contains("422"), "{e}");
    ctl.ok(&[
        "context",
        "add",
        "forged",
        "--endpoint",
        &addrs[0].1,
        "--ca-file",
        ca.to_str().context("path")?,
        "--token",
        &format!("abcdef.{}", "0".repeat(32)),
    ])?;
    let e = ctl.fails(&["--context", "forged", "cluster", "status"])?;
    ensure!(e.contains("401"), "{e}");
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, "not a certificate")?;
    let e = ctl.fails(&[
        "context",
        "add",
        "x",
        "--endpoint",
        "a:1",
        "--ca-file",
        other_ca.to_str().context("path")?,
        "--token",
        "a.b",
    ])?;
    ensure!(e.contains("ca"), "{e}");
    ctl.ok(&[
        "context",
        "add",
        "down",
        "--endpoint",
        &free_addr()?,
        "--ca-file",
        ca.to_str().context("path")?,
        "--token-file",
        token_file.to_str().context("path")?,
    ])?;
    let e = ctl.fails(&["--context", "down", "cluster", "status"])?;
    ensure!(e.contains("cannot reach"), "{e}");
    let e = ctl.fails(&["cluster", "status", "-o", "xml"])?;
    ensure!(e.contains("xml"), "{e}");

    // --- completions
    for shell in ["bash", "zsh", "fish"] {
        let c = ctl.ok(&["completions", shell])?;
        ensure!(
            c.contains("clusterctl") && c.len() > 500,
            "{shell} completion"
        );
    }
    println!(
        "bootstrap to admin token: {bootstrap_ms} ms; two joins to three voters: {join_ms} ms"
    );
    Ok(())
}
