//! `flotilla-agent demo`: the README's main job for now. Starts an agent on a
//! scratch directory, runs a container through the agent's API, shows it
//! working from the outside and the inside, then removes everything.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_api::{
    ContainerInfo, ContainerRequest, ExecRequest, ExecResult, ExitStatus, ResourceSpec,
};
use hyper::Method;

use crate::client::Client;

fn step(s: &str) {
    println!("\n==> {s}");
}

pub async fn run() -> Result<i32> {
    let scratch = tempfile_dir()?;
    let result = demo(&scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

async fn demo(scratch: &std::path::Path) -> Result<i32> {
    let rootfs = scratch.join("rootfs");
    step("building a busybox root filesystem");
    flotilla_runtime::rootfs::build_busybox_rootfs(
        &flotilla_runtime::rootfs::busybox_path(),
        &rootfs,
    )?;
    println!("{}", rootfs.display());

    step("starting the agent");
    let shim = std::env::current_exe()?.with_file_name("flotilla-shim");
    let mut cfg = flotilla_runtime::runtime::RuntimeConfig::new(
        scratch.join("state"),
        if shim.exists() {
            shim
        } else {
            std::env::current_exe()?
        },
    );
    let parent = format!("flotilla-demo-{}", std::process::id());
    cfg.cgroup_parent = parent.clone();
    let rt = flotilla_runtime::runtime::Runtime::new(cfg)?;
    let layout = flotilla_runtime::cgroups::CgroupLayout::detect()?;
    println!("cgroup mode: {:?}", rt.cgroup_mode());
    let socket = scratch.join("agent.sock");
    let images = std::sync::Arc::new(flotilla_image::ImageStore::open(scratch.join("images"))?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move {
            crate::server::serve(rt, None, images, &socket, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let c = Client::new(&socket);
    for _ in 0..100 {
        if c.call_raw(Method::GET, "/v1/node", None).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = walkthrough(&c, &rootfs).await;
    if out.is_err() {
        let _ = c
            .call_raw(Method::DELETE, "/v1/containers/demo-web?force=true", None)
            .await;
    }
    let _ = stop_tx.send(());
    server.await??;
    let _ = flotilla_runtime::cgroups::Cgroup::remove_parent_if_empty(
        &layout,
        std::path::Path::new(&parent),
    );
    out
}

async fn walkthrough(c: &Client, rootfs: &std::path::Path) -> Result<i32> {
    step("running container demo-web (64 MiB, half a core, 64 pids)");
    let req = ContainerRequest {
        name: "demo-web".into(),
        rootfs: vec![rootfs.display().to_string()],
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'echo bye; exit 0' TERM; echo hello from $(hostname); i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done".into(),
        ],
        hostname: Some("demo-web".into()),
        resources: ResourceSpec {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            cpu_shares: None,
            pids: Some(64),
        },
        start: true,
        ..Default::default()
    };
    let info: ContainerInfo = c
        .call(
            Method::POST,
            "/v1/containers",
            Some(serde_json::to_vec(&req)?),
        )
        .await?;
    println!(
        "{} is {} as host pid {} in cgroup {}",
        info.name, info.status, info.pid, info.cgroup
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    let exec = |cmd: &str| {
        let body = serde_json::to_vec(&ExecRequest {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
            ..Default::default()
        });
        async move {
            let r: ExecResult = c
                .call(Method::POST, "/v1/containers/demo-web/exec", Some(body?))
                .await?;
            anyhow::Ok(r)
        }
    };
    for (what, cmd) in [
        ("hostname inside", "hostname"),
        ("processes inside (pid 1 is the container's shell)", "ps"),
        (
            "network interfaces inside (only loopback)",
            "ls /sys/class/net",
        ),
        (
            "capabilities inside",
            "grep -E 'Cap(Eff|Bnd)|NoNewPrivs|Seccomp:' /proc/self/status",
        ),
        (
            "masked paths read empty",
            "wc -c /proc/timer_list /proc/keys",
        ),
    ] {
        step(what);
        let r = exec(cmd).await?;
        print!("{}{}", r.stdout, r.stderr);
    }
    step("logs");
    let (_, logs) = c
        .call_raw(Method::GET, "/v1/containers/demo-web/logs?tail=4", None)
        .await?;
    print!("{}", String::from_utf8_lossy(&logs));
    step("resource usage");
    let (_, stats) = c
        .call_raw(Method::GET, "/v1/containers/demo-web/stats", None)
        .await?;
    println!("{}", String::from_utf8_lossy(&stats));
    step("stopping (SIGTERM, then SIGKILL after 5 s)");
    let e: ExitStatus = c
        .call(Method::POST, "/v1/containers/demo-web/stop?timeout=5", None)
        .await?;
    println!("exit code {:?}, signal {:?}", e.exit_code, e.signal);
    step("removing");
    c.call_raw(Method::DELETE, "/v1/containers/demo-web", None)
        .await?;
    let left: Vec<ContainerInfo> = c.call(Method::GET, "/v1/containers", None).await?;
    println!("containers left: {}", left.len());
    println!("\ndemo finished: the container ran, was inspected from inside, stopped and removed");
    Ok(0)
}
