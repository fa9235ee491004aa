//! Live tests of the agent binary: its API, its CLI, and re-adoption of
//! running containers after `kill -9` of the agent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::client::Client;
use hyper::Method;

const AGENT: &str = env!("CARGO_BIN_EXE_flotilla-agent");

fn live() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let bb = flotilla_runtime::rootfs::busybox_path();
    let why = if !root {
        Some("not root".to_string())
    } else if !bb.is_file() {
        Some(format!("no busybox at {}", bb.display()))
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

struct Env {
    dir: tempfile::TempDir,
    parent: String,
    agent: Option<Child>,
    /// Extra `serve` arguments (the node network).
    serve_args: Vec<String>,
}

impl Env {
    fn new() -> Self {
        // Shims of a killed agent are re-parented to us, not to a PID 1
        // that may not reap them.
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let dir = tempfile::Builder::new()
            .prefix("flotilla-agent-")
            .tempdir()
            .unwrap();
        flotilla_runtime::rootfs::build_busybox_rootfs(
            &flotilla_runtime::rootfs::busybox_path(),
            &dir.path().join("rootfs"),
        )
        .unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let parent = format!(
            "flotilla-agent-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut e = Env {
            dir,
            parent,
            agent: None,
            serve_args: vec![],
        };
        e.start_agent();
        e
    }

    fn with_network(node_netns: &Path, subnet: &str, bridge: &str) -> Self {
        let mut e = Env::new();
        e.kill_agent(libc::SIGTERM);
        e.serve_args = vec![
            "--subnet".into(),
            subnet.into(),
            "--bridge".into(),
            bridge.into(),
            "--node-netns".into(),
            node_netns.display().to_string(),
        ];
        e.start_agent();
        e
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn rootfs(&self) -> String {
        self.dir.path().join("rootfs").display().to_string()
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(AGENT)
            .arg("--socket")
            .arg(self.socket())
            .arg("serve")
            .arg("--root")
            .arg(self.dir.path().join("state"))
            .arg("--cgroup-parent")
            .arg(&self.parent)
            .args(&self.serve_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent did not come up: {}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn kill_agent(&mut self, sig: i32) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: signalling the agent process we started.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(AGENT)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn reap_orphans(&self) {
        loop {
            // SAFETY: reaping any exited child of ours.
            let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if r <= 0 {
                break;
            }
        }
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![];
        for h in ["memory", "pids", "cpu", "cpuacct", "devices", "freezer"] {
            let p = Path::new("/sys/fs/cgroup").join(h).join(&self.parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.path().is_dir()
                        && !e.file_name().to_string_lossy().starts_with("pool-")
                        && e.file_name() != "shims"
                    {
                        v.push(e.path());
                    }
                }
            }
        }
        v
    }

    fn assert_clean(&self) {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let d = self.dir.path().display().to_string();
        let m: Vec<_> = mi.lines().filter(|l| l.contains(&d)).collect();
        assert!(m.is_empty(), "mounts left: {m:?}");
        let c = self.cgroup_dirs();
        assert!(c.is_empty(), "cgroups left: {c:?}");
        let st = self.dir.path().join("state/runtime/containers");
        let left: Vec<_> = std::fs::read_dir(&st)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state left: {left:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.agent.is_some() {
            let (_, out, _) = self.cli(&["ps", "-o", "json"]);
            if let Ok(v) = serde_json::from_str::<Vec<flotilla_api::ContainerInfo>>(&out) {
                for c in v {
                    self.cli(&["rm", "-f", &c.name]);
                }
            }
            self.kill_agent(libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(50));
        self.reap_orphans();
        // Anything still mounted below our directory (a failed test).
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path().join("state"))
            .stderr(Stdio::null())
            .status();
        for h in [
            "memory", "pids", "cpu", "cpuacct", "devices", "freezer", "blkio", "cpuset", "systemd",
        ] {
            let p = Path::new("/sys/fs/cgroup").join(h).join(&self.parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        if let Ok(procs) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                            for pid in procs
                                .split_whitespace()
                                .filter_map(|p| p.parse::<i32>().ok())
                            {
                                // SAFETY: processes in our own test cgroup.
                                unsafe { libc::kill(pid, libc::SIGKILL) };
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&p);
        }
        self.reap_orphans();
    }
}

fn info(e: &Env, name: &str) -> flotilla_api::ContainerInfo {
    let (code, out, err) = e.cli(&["inspect", name]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn live_agent_restart_readopts_running_containers() {
    if !live() {
        return;
    }
    let mut e = Env::new();
    let rootfs = e.rootfs();
    let (code, out, err) = e.cli(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let before = info(&e, "c1");
    assert_eq!(before.status, "running");
    let (code, out, _) = e.cli(&["exec", "c1", "--", "echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"));

    // kill -9 the agent: the container keeps running and logging.
    e.kill_agent(libc::SIGKILL);
    let logs_path = e
        .dir
        .path()
        .join("state/runtime/containers/c1/container.log");
    let n0 = std::fs::read_to_string(&logs_path).unwrap().lines().count();
    std::thread::sleep(Duration::from_millis(600));
    let n1 = std::fs::read_to_string(&logs_path).unwrap().lines().count();
    assert!(n1 > n0, "logs stopped while the agent was down");
    // SAFETY: probing whether the init pid exists.
    assert_eq!(
        unsafe { libc::kill(before.pid, 0) },
        0,
        "container died with the agent"
    );

    e.start_agent();
    let after = info(&e, "c1");
    assert_eq!(after.status, "running");
    assert_eq!(
        after.pid, before.pid,
        "the restarted agent started a duplicate"
    );
    // Exactly one copy of the workload's shell on the machine.
    let copies = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|d| std::fs::read(d.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains("echo tick $i"))
        .count();
    assert_eq!(copies, 1);
    let (code, out, _) = e.cli(&["exec", "c1", "--", "hostname"]);
    assert_eq!((code, out.as_str()), (0, "c1\n"));
    let (code, out, err) = e.cli(&["stop", "-t", "1", "c1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("signal 9"), "{out}");
    let (code, _, err) = e.cli(&["rm", "c1"]);
    assert_eq!(code, 0, "{err}");
    e.kill_agent(libc::SIGTERM);
    e.reap_orphans();
    e.assert_clean();
}

#[test]
fn live_agent_cli_run_logs_and_exit_codes() {
    if !live() {
        return;
    }
    let e = Env::new();
    let rootfs = e.rootfs();
    let (code, out, err) = e.cli(&[
        "run",
        "--rm",
        "--name",
        "fg",
        "--rootfs",
        &rootfs,
        "--memory",
        "32m",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("out\n") && out.contains("err\n"), "{out}");
    let (_, ps, _) = e.cli(&["ps", "-o", "json"]);
    assert_eq!(ps.trim(), "[]", "--rm left the container");
    // OOM through the CLI: exit 137 and a message.
    let (code, _, err) = e.cli(&[
        "run",
        "--rm",
        "--name",
        "hog",
        "--rootfs",
        &rootfs,
        "--memory",
        "16m",
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=128M",
        "count=1",
    ]);
    assert_eq!(code, 137, "{err}");
    assert!(err.contains("out-of-memory"), "{err}");
    // logs --tail of a stopped container.
    let (code, _, _) = e.cli(&[
        "run",
        "-d",
        "--name",
        "l",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done",
    ]);
    assert_eq!(code, 0);
    let (code, out, _) = e.cli(&["wait", "l"]);
    assert_eq!((code, out.trim()), (0, "exit 0"));
    let (_, out, _) = e.cli(&["logs", "--tail", "2", "l"]);
    assert_eq!(out, "line4\nline5\n");
    let (code, _, _) = e.cli(&["rm", "l"]);
    assert_eq!(code, 0);
    e.assert_clean();
}

#[test]
fn live_agent_api_refuses_bad_input_with_problem_details() {
    if !live() {
        return;
    }
    let e = Env::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = Client::new(e.socket());
    let rootfs = e.rootfs();
    let post = |body: String| {
        let c = c.clone();
        rt.block_on(async move {
            use http_body_util::BodyExt;
            let r = c
                .send(Method::POST, "/v1/containers", Some(body.into_bytes()))
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let b = r.into_body().collect().await.unwrap().to_bytes();
            (status, ct, String::from_utf8_lossy(&b).into_owned())
        })
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "request body"),
        (
            format!(r#"{{"name":"a","rootfs":["{rootfs}"],"command":["true"],"bogus":1}}"#),
            400,
            "bogus",
        ),
        (
            format!(r#"{{"name":"a","rootfs":["{rootfs}"],"command":"true"}}"#),
            400,
            "command",
        ),
        (
            r#"{"name":"a","rootfs":["/no/such/dir"],"command":["true"]}"#.to_string(),
            400,
            "/no/such/dir",
        ),
        (
            format!(r#"{{"name":"a","rootfs":["{rootfs}"],"command":["/bin/nope"]}}"#),
            400,
            "process.args[0]",
        ),
        (
            format!(r#"{{"name":"../x","rootfs":["{rootfs}"],"command":["true"]}}"#),
            400,
            "id:",
        ),
        (
            format!(
                r#"{{"name":"a","rootfs":["{rootfs}"],"command":["true"],"resources":{{"memoryBytes":1000}}}}"#
            ),
            400,
            "memory",
        ),
        (
            format!(
                r#"{{"name":"a","rootfs":["{rootfs}"],"command":["true"],"resources":{{"cpuMillis":0}}}}"#
            ),
            400,
            "cpuMillis",
        ),
        (
            format!(r#"{{"name":"a","rootfs":["{rootfs}"],"command":["true"],"env":["NOVALUE"]}}"#),
            400,
            "env[0]",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, ct, text) = post(body.clone());
        let short = &body[..body.len().min(120)];
        assert_eq!(status, want, "{short}: {text}");
        if want == 400 {
            assert_eq!(ct.as_deref(), Some("application/problem+json"), "{short}");
            assert!(text.contains(needle), "{short}: {text}");
        }
        e.assert_clean();
    }
    // An oversized body: 413. The body is written on a thread of its own that ignores a
    // broken pipe (the server may answer and close before reading it all); on a unix socket
    // the answer stays readable after the server closes.
    {
        use std::io::{Read, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(e.socket()).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut w = sock.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let body = format!(
                r#"{{"name":"a","command":["true"],"pad":"{}"}}"#,
                "x".repeat(2 << 20)
            );
            let _ = write!(
                w,
                "POST /v1/containers HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        let mut head = [0u8; 512];
        let n = sock.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
        drop(sock);
        writer.join().unwrap();
        e.assert_clean();
    }
    // Duplicate name: 409, the first container untouched.
    let ok = format!(r#"{{"name":"d","rootfs":["{rootfs}"],"command":["sleep","30"]}}"#);
    assert_eq!(post(ok.clone()).0, 201);
    let (status, _, text) = post(ok);
    assert_eq!(status, 409, "{text}");
    assert_eq!(info(&e, "d").status, "running");
    let (code, _, err) = e.cli(&["inspect", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = e.cli(&["rm", "d"]);
    assert_eq!(code, 1);
    assert!(err.contains("running"), "{err}");
    let (code, _, err) = e.cli(&["rm", "-f", "d"]);
    assert_eq!(code, 0, "{err}");
    e.assert_clean();
}

#[test]
fn live_agent_checkpoint_and_restore_through_the_cli() {
    if !live() {
        return;
    }
    let e = Env::new();
    let rootfs = e.rootfs();
    let (code, _, err) = e.cli(&[
        "run",
        "-d",
        "--name",
        "ck",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done",
    ]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_millis(400));
    let (code, out, _) = e.cli(&["node"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"version\": \"4."), "{out}");
    let dir = e.dir.path().join("images");
    let dir_s = dir.display().to_string();
    let (code, out, err) = e.cli(&["checkpoint", "ck", "--dir", &dir_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(info(&e, "ck").status, "stopped");
    let (code, out, err) = e.cli(&["restore", "ck", "--dir", &dir_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(info(&e, "ck").status, "running");
    // A second checkpoint into the same directory is refused by name.
    let (code, _, err) = e.cli(&["checkpoint", "ck", "--dir", &dir_s]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, err) = e.cli(&["rm", "-f", "ck"]);
    assert_eq!(code, 0, "{err}");
    e.assert_clean();
}

struct NodeNs {
    name: String,
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `f` on a thread that joined the network namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn live_agent_containers_get_addresses_reach_each_other_and_publish_ports() {
    if !live() {
        return;
    }
    // The node's network lives in a namespace of its own: all addresses stay
    // inside 198.18.0.0/15 and inside namespaces this test made.
    let node = NodeNs {
        name: format!("flt-an-{}", std::process::id()),
    };
    assert!(Command::new("ip")
        .args(["netns", "add", &node.name])
        .status()
        .unwrap()
        .success());
    // A host has its loopback up (local delivery needs it).
    assert!(Command::new("ip")
        .args(["-n", &node.name, "link", "set", "lo", "up"])
        .status()
        .unwrap()
        .success());
    let node_path = PathBuf::from(format!("/run/netns/{}", node.name));
    let bridge = format!("fb{}", std::process::id() % 100_000);
    let mut e = Env::with_network(&node_path, "198.19.77.0/24", &bridge);
    let rootfs = e.rootfs();
    let (code, _, err) = e.cli(&[
        "run",
        "-d",
        "--name",
        "web",
        "--rootfs",
        &rootfs,
        "-p",
        "18080:8080",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    assert_eq!(code, 0, "{err}{}", e.agent_log());
    let web = info(&e, "web");
    let ip = web.ip.clone().expect("web has no address");
    assert!(ip.starts_with("198.19.77."), "{ip}");
    let (code, _, err) = e.cli(&[
        "run", "-d", "--name", "client", "--rootfs", &rootfs, "--", "sleep", "60",
    ]);
    assert_eq!(code, 0, "{err}");
    let client_ip = info(&e, "client").ip.unwrap();
    assert_ne!(client_ip, ip, "an address was handed out twice");
    // Container to container by IP.
    let url = format!("http://{ip}:8080/index.html");
    let mut body = String::new();
    for _ in 0..50 {
        let (code, out, _) = e.cli(&["exec", "client", "--", "wget", "-qO-", &url]);
        if code == 0 {
            body = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(body, "hello-from-web\n");
    // /etc/hosts names the container.
    let (_, hosts, _) = e.cli(&["exec", "web", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&ip) && hosts.contains("web"), "{hosts}");
    // The published port answers from the host side (the node's own address).
    let resp = in_netns(node_path.clone(), || http_get("198.19.77.1:18080"));
    let resp = resp.expect("published port");
    assert!(resp.contains("hello-from-web"), "{resp}");
    // Addresses survive an agent restart.
    e.kill_agent(libc::SIGKILL);
    e.start_agent();
    assert_eq!(info(&e, "web").ip.as_deref(), Some(ip.as_str()));
    // Delete releases the address and the port.
    for n in ["web", "client"] {
        let (code, _, err) = e.cli(&["rm", "-f", n]);
        assert_eq!(code, 0, "{err}");
    }
    let gone = in_netns(node_path.clone(), || http_get("198.19.77.1:18080"));
    let ruleset = Command::new("ip")
        .args(["netns", "exec", &node.name, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let ruleset = String::from_utf8_lossy(&ruleset.stdout).into_owned();
    assert!(
        !ruleset.contains("18080"),
        "port still published after delete:\n{ruleset}"
    );
    // Nothing listens any more: refused at once, not a timeout.
    let err = gone.expect_err("port still answers after delete");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let state = std::fs::read_to_string(e.dir.path().join("state/network/network.json"))
        .unwrap_or_default();
    assert!(!state.contains(&ip), "lease kept after delete: {state}");
    e.assert_clean();
    drop(e);
}

#[test]
fn live_agent_images_import_pull_run_commit_and_remove() {
    if !live() {
        return;
    }
    let e = Env::new();
    // The test image is built by the project's own code from busybox-static.
    let layout = e.dir.path().join("layout");
    flotilla_image::testimage::build_busybox_oci_layout(
        &flotilla_runtime::rootfs::busybox_path(),
        &layout,
        "1",
    )
    .unwrap();
    let layout_s = layout.display().to_string();
    let (code, out, err) = e.cli(&["image", "import", &layout_s, "--name", "local/busybox:1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, ls, _) = e.cli(&["image", "ls"]);
    assert!(ls.contains("local/busybox:1"), "{ls}");
    // Run from the image: its layers are the rootfs, a file is changed.
    let (code, out, err) = e.cli(&[
        "run",
        "--name",
        "a",
        "--image",
        "local/busybox:1",
        "--",
        "sh",
        "-c",
        "echo committed > /hello; cat /etc/passwd | head -1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("root:x:0:0"), "{out}");
    let (code, out, err) = e.cli(&["commit", "a", "local/snap:1"]);
    assert_eq!(code, 0, "{out}{err}");
    // The snapshot carries the change.
    let (code, out, err) = e.cli(&[
        "run",
        "--rm",
        "--name",
        "b",
        "--image",
        "local/snap:1",
        "--",
        "cat",
        "/hello",
    ]);
    assert_eq!((code, out.as_str()), (0, "committed\n"), "{err}");
    // An image in use by a container is not removed.
    let (code, _, err) = e.cli(&["image", "rm", "local/snap:1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = e.cli(&["image", "rm", "local/busybox:1"]);
    assert_eq!(code, 1, "removed an image in use");
    assert!(err.contains("in use"), "{err}");
    let (code, _, err) = e.cli(&["rm", "a"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = e.cli(&["image", "rm", "local/busybox:1"]);
    assert_eq!(code, 0, "{err}");
    // Pull from Debian's docker-registry on loopback and run it.
    let reg = flotilla_image::testregistry::TestRegistry::start_plain().unwrap();
    let reference = reg.reference("test/busybox:1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(flotilla_image::registry::push_oci_layout(
        &layout,
        None,
        &reference,
        &reg.options(flotilla_image::RegistryAuth::Anonymous),
    ))
    .unwrap();
    let (code, out, err) = e.cli(&["image", "pull", "--plain-http", &reference]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = e.cli(&[
        "run", "--rm", "--name", "p", "--image", &reference, "--", "echo", "pulled",
    ]);
    assert_eq!((code, out.as_str()), (0, "pulled\n"), "{err}");
    // Unknown image: a clear error.
    let (code, _, err) = e.cli(&["run", "--name", "x", "--image", "nope:1", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("image"), "{err}");
    e.assert_clean();
}
