//! flotilla-agent: the node agent daemon (`serve`) and node-local debugging
//! subcommands that talk to it over its unix socket.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flotilla_agent::client::Client;
use flotilla_agent::spec::parse_bytes;
use flotilla_api::{
    ContainerInfo, ContainerRequest, ExecRequest, ExecResult, ExitStatus, ResourceSpec, UserSpec,
};
use hyper::Method;

const DEFAULT_SOCKET: &str = "/run/flotilla/agent.sock";
const DEFAULT_ROOT: &str = "/var/lib/flotilla";

#[derive(Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla node agent")]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "FLOTILLA_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent daemon.
    Serve {
        /// State directory (containers, logs, rootfs upper layers).
        #[arg(long, env = "FLOTILLA_ROOT", default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// Parent cgroup for every container.
        #[arg(long, default_value = "flotilla")]
        cgroup_parent: String,
        /// Number of pre-started container shims.
        #[arg(long, default_value_t = 2)]
        pool: usize,
        /// The node's container subnet (e.g. 198.19.1.0/24); enables the network.
        #[arg(long)]
        subnet: Option<String>,
        /// Bridge the containers are attached to.
        #[arg(long, default_value = "flt0")]
        bridge: String,
        /// Network namespace of the node's network (default: the agent's own).
        #[arg(long)]
        node_netns: Option<PathBuf>,
        /// Nameservers written to containers' /etc/resolv.conf (default: the gateway).
        #[arg(long)]
        nameserver: Vec<std::net::IpAddr>,
        /// Join a cluster through this controller (https://IP:PORT); needed on the first
        /// start only, then `<root>/cluster/identity.json` is used.
        #[arg(long, requires_all = ["token", "ca_cert_hash", "node_id", "advertise"])]
        join: Option<String>,
        /// The node join token (`clusterctl` / `POST /v1/tokens {"role":"node_join"}`).
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN")]
        token: Option<String>,
        /// sha256:<hex> of the cluster CA certificate (pinned on the first connection).
        #[arg(long)]
        ca_cert_hash: Option<String>,
        /// This node's name (a DNS label, unique in the cluster).
        #[arg(long)]
        node_id: Option<String>,
        /// IP:PORT where the agent's TLS API listens and controllers dial it.
        #[arg(long)]
        advertise: Option<std::net::SocketAddr>,
        /// A node label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A registry HOST:PORT spoken to over plain HTTP (test registries; repeatable).
        #[arg(long)]
        registry_insecure: Vec<String>,
        /// CPU the node offers the scheduler, in millicores (default: every CPU; at most that).
        #[arg(long)]
        capacity_cpu_millis: Option<u64>,
        /// Memory the node offers the scheduler, in bytes (default: the machine's; at most that).
        #[arg(long)]
        capacity_memory_bytes: Option<u64>,
    },
    /// Create and start a container.
    Run(RunArgs),
    /// List containers.
    Ps {
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Show one container as JSON.
    Inspect { name: String },
    /// Start a created container.
    Start { name: String },
    /// Stop: SIGTERM, then SIGKILL after the grace period.
    Stop {
        name: String,
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Send a signal.
    Kill {
        name: String,
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Remove a container.
    Rm {
        name: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Print a container's output.
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Run a command in a running container.
    Exec {
        name: String,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(short = 'w', long)]
        workdir: Option<String>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Resource usage of a container.
    Stats { name: String },
    /// Wait for a container to exit and print its exit status.
    Wait { name: String },
    /// Checkpoint a running container with CRIU.
    Checkpoint {
        name: String,
        /// Directory for the images (absolute; created).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tcp_established: bool,
        /// Leave the container stopped (paused) instead of killing it.
        #[arg(long, conflicts_with = "leave_running")]
        leave_stopped: bool,
        #[arg(long)]
        leave_running: bool,
    },
    /// Restore a checkpointed container.
    Restore {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        tcp_established: bool,
    },
    /// Continue a container a checkpoint left paused.
    Resume { name: String },
    /// Node facts: cgroup mode, CRIU version and features.
    Node,
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Snapshot a container's changes as a new image.
    Commit { name: String, image: String },
    /// Start an agent on a scratch directory, run a container and show it working.
    Demo,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull from an OCI registry (host[:port]/repo[:tag|@digest]).
    Pull {
        reference: String,
        /// Plain HTTP instead of HTTPS.
        #[arg(long)]
        plain_http: bool,
        #[arg(long, env = "FLOTILLA_REGISTRY_USER")]
        username: Option<String>,
        #[arg(long, env = "FLOTILLA_REGISTRY_PASSWORD")]
        password: Option<String>,
    },
    /// Import an OCI layout directory or an oci-archive / docker-archive tarball.
    Import {
        path: PathBuf,
        /// oci-layout, oci-archive or docker-archive (default: guessed).
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    Ls,
    /// Remove an image name (the image goes with its last name).
    Rm { name: String },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    name: Option<String>,
    /// Image to run (from `image pull` or `image import`).
    #[arg(long, conflicts_with = "rootfs", required_unless_present = "rootfs")]
    image: Option<String>,
    /// Root filesystem directory (repeat for overlay layers, top-most first).
    #[arg(long)]
    rootfs: Vec<String>,
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit, e.g. 64m.
    #[arg(short, long)]
    memory: Option<String>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    cpu_shares: Option<u64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    /// uid:gid to run as.
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long)]
    read_only: bool,
    /// Return once started instead of following output until exit.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container after it exits.
    #[arg(long)]
    rm: bool,
    /// Publish a port: HOST:CONTAINER[/udp].
    #[arg(short, long)]
    publish: Vec<String>,
    /// Do not attach to the node's container network.
    #[arg(long)]
    no_network: bool,
    /// Command (with --image: replaces the image's Cmd).
    #[arg(trailing_var_arg = true)]
    command: Vec<String>,
}

fn main() {
    flotilla_runtime::shim::maybe_run_shim();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(real_main(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn shim_path() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let sibling = me.with_file_name("flotilla-shim");
    if sibling.exists() {
        sibling
    } else {
        me
    }
}

fn runtime_for(
    root: PathBuf,
    cgroup_parent: String,
    pool: usize,
) -> Result<flotilla_runtime::runtime::Runtime> {
    let mut cfg = flotilla_runtime::runtime::RuntimeConfig::new(root.join("runtime"), shim_path());
    cfg.cgroup_parent = cgroup_parent;
    cfg.pool_size = pool;
    flotilla_runtime::runtime::Runtime::new(cfg).context("starting the container runtime")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn real_main(cli: Cli) -> Result<i32> {
    let c = Client::new(&cli.socket);
    match cli.cmd {
        Cmd::Serve {
            root,
            cgroup_parent,
            pool,
            subnet,
            bridge,
            node_netns,
            nameserver,
            join,
            token,
            ca_cert_hash,
            node_id,
            advertise,
            labels,
            registry_insecure,
            capacity_cpu_millis,
            capacity_memory_bytes,
        } => {
            let mut label_map = std::collections::BTreeMap::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
                label_map.insert(k.to_owned(), v.to_owned());
            }
            let cluster = flotilla_agent::cluster::ClusterArgs {
                root: root.clone(),
                join,
                token,
                ca_cert_hash,
                node_id,
                advertise,
                labels: label_map,
                registry_insecure,
                node_netns: node_netns.clone(),
                capacity: flotilla_agent::cluster::CapacityOverride {
                    cpu_millis: capacity_cpu_millis,
                    memory_bytes: capacity_memory_bytes,
                },
            };
            let net = match subnet {
                Some(sn) => {
                    let subnet: flotilla_net::Ipv4Net =
                        sn.parse().map_err(|e| anyhow::anyhow!("--subnet: {e}"))?;
                    let mut cfg =
                        flotilla_net::NetConfig::new(bridge, subnet, root.join("network"));
                    cfg.netns = node_netns;
                    cfg.nameservers = nameserver;
                    Some(std::sync::Arc::new(
                        flotilla_net::NodeNetwork::new(cfg)
                            .await
                            .context("setting up the node network")?,
                    ))
                }
                None => None,
            };
            let images = std::sync::Arc::new(
                flotilla_image::ImageStore::open(root.join("images"))
                    .context("opening the image store")?,
            );
            let rt = runtime_for(root, cgroup_parent, pool)?;
            let on_ready: Option<flotilla_agent::server::OnReady> = if cluster.enabled() {
                let identity = match flotilla_agent::cluster::prepare(&cluster, &rt).await {
                    Ok(i) => i,
                    Err(e) => {
                        // Nothing of a refused join stays: the shim pool goes too.
                        rt.shutdown();
                        return Err(e);
                    }
                };
                Some(Box::new(move |st| {
                    if let Err(e) = flotilla_agent::cluster::start(identity, &cluster, st) {
                        eprintln!("error: cannot start the cluster member: {e:#}");
                        std::process::exit(1);
                    }
                }))
            } else {
                None
            };
            tracing::info!(socket = %cli.socket.display(), mode = ?rt.cgroup_mode(), network = net.is_some(), cluster = on_ready.is_some(), "agent serving");
            flotilla_agent::server::serve_with(
                rt,
                net,
                images,
                &cli.socket,
                shutdown_signal(),
                on_ready,
            )
            .await?;
            Ok(0)
        }
        Cmd::Run(a) => run(&c, a).await,
        Cmd::Ps { output } => {
            let v: Vec<ContainerInfo> = c.call(Method::GET, "/v1/containers", None).await?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                "table" => {
                    println!(
                        "{:<24} {:<9} {:>8}  {:<10} COMMAND",
                        "NAME", "STATUS", "PID", "EXIT"
                    );
                    for i in v {
                        let exit = i.exit.as_ref().map(describe_exit).unwrap_or_default();
                        println!(
                            "{:<24} {:<9} {:>8}  {:<10} {}",
                            i.name,
                            i.status,
                            i.pid,
                            exit,
                            i.command.join(" ")
                        );
                    }
                }
                o => bail!("-o: unknown output format {o:?} (use table or json)"),
            }
            Ok(0)
        }
        Cmd::Inspect { name } => {
            let v: ContainerInfo = c
                .call(Method::GET, &format!("/v1/containers/{name}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Start { name } => {
            c.call_raw(Method::POST, &format!("/v1/containers/{name}/start"), None)
                .await?;
            Ok(0)
        }
        Cmd::Stop { name, time } => {
            let e: ExitStatus = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{name}/stop?timeout={time}"),
                    None,
                )
                .await?;
            println!("{name} stopped: {}", describe_exit(&e));
            Ok(0)
        }
        Cmd::Kill { name, signal } => {
            c.call_raw(
                Method::POST,
                &format!("/v1/containers/{name}/kill?signal={signal}"),
                None,
            )
            .await?;
            Ok(0)
        }
        Cmd::Rm { name, force } => {
            c.call_raw(
                Method::DELETE,
                &format!("/v1/containers/{name}?force={force}"),
                None,
            )
            .await?;
            Ok(0)
        }
        Cmd::Logs { name, follow, tail } => {
            let mut path = format!("/v1/containers/{name}/logs?follow={follow}");
            if let Some(t) = tail {
                path.push_str(&format!("&tail={t}"));
            }
            print_stream(&c, &path).await?;
            Ok(0)
        }
        Cmd::Exec {
            name,
            env,
            workdir,
            command,
        } => {
            let req = ExecRequest {
                command,
                env,
                cwd: workdir,
                user: None,
            };
            let r: ExecResult = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{name}/exec"),
                    Some(serde_json::to_vec(&req)?),
                )
                .await?;
            print!("{}", r.stdout);
            eprint!("{}", r.stderr);
            Ok(r.exit_code)
        }
        Cmd::Stats { name } => {
            let u: flotilla_api::Usage = c
                .call(Method::GET, &format!("/v1/containers/{name}/stats"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&u)?);
            Ok(0)
        }
        Cmd::Wait { name } => {
            let e: ExitStatus = c
                .call(Method::POST, &format!("/v1/containers/{name}/wait"), None)
                .await?;
            println!("{}", describe_exit(&e));
            Ok(exit_code(&e))
        }
        Cmd::Checkpoint {
            name,
            dir,
            tcp_established,
            leave_stopped,
            leave_running,
        } => {
            let dir = std::path::absolute(&dir)?;
            let req = flotilla_api::CheckpointRequest {
                images_dir: dir.display().to_string(),
                tcp_established,
                after: Some(
                    if leave_stopped {
                        "stop"
                    } else if leave_running {
                        "run"
                    } else {
                        "kill"
                    }
                    .into(),
                ),
            };
            c.call_raw(
                Method::POST,
                &format!("/v1/containers/{name}/checkpoint"),
                Some(serde_json::to_vec(&req)?),
            )
            .await?;
            println!("{name} checkpointed to {}", dir.display());
            Ok(0)
        }
        Cmd::Restore {
            name,
            dir,
            tcp_established,
        } => {
            let dir = std::path::absolute(&dir)?;
            let req = flotilla_api::RestoreRequest {
                images_dir: dir.display().to_string(),
                tcp_established,
            };
            let i: ContainerInfo = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{name}/restore"),
                    Some(serde_json::to_vec(&req)?),
                )
                .await?;
            println!("{name} restored as pid {}", i.pid);
            Ok(0)
        }
        Cmd::Resume { name } => {
            c.call_raw(Method::POST, &format!("/v1/containers/{name}/resume"), None)
                .await?;
            Ok(0)
        }
        Cmd::Node => {
            let (_, b) = c.call_raw(Method::GET, "/v1/node", None).await?;
            let v: serde_json::Value = serde_json::from_slice(&b)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Cmd::Image(ic) => image_cmd(&c, ic).await,
        Cmd::Commit { name, image } => {
            let req = flotilla_api::CommitRequest { name: image };
            let i: flotilla_api::ImageInfo = c
                .call(
                    Method::POST,
                    &format!("/v1/containers/{name}/commit"),
                    Some(serde_json::to_vec(&req)?),
                )
                .await?;
            println!("{}", i.id);
            Ok(0)
        }
        Cmd::Demo => flotilla_agent::demo::run().await,
    }
}

fn describe_exit(e: &ExitStatus) -> String {
    let mut s = match (e.exit_code, e.signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    };
    if e.oom_killed {
        s.push_str(" (oom-killed)");
    }
    s
}

fn exit_code(e: &ExitStatus) -> i32 {
    e.exit_code.unwrap_or_else(|| 128 + e.signal.unwrap_or(0))
}

async fn print_stream(c: &Client, path: &str) -> Result<()> {
    use http_body_util::BodyExt;
    let resp = c.send(Method::GET, path, None).await?;
    if !resp.status().is_success() {
        let b = resp.into_body().collect().await?.to_bytes();
        let detail = serde_json::from_slice::<flotilla_api::Problem>(&b)
            .map(|p| p.detail)
            .unwrap_or_else(|_| String::from_utf8_lossy(&b).into_owned());
        bail!("{detail}");
    }
    let mut body = resp.into_body();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn run(c: &Client, a: RunArgs) -> Result<i32> {
    let name = a.name.unwrap_or_else(|| {
        format!(
            "c-{:x}",
            std::process::id() as u64 * 7919 + now_nanos() % 100_000
        )
    });
    let user = match a.user {
        Some(u) => {
            let (uid, gid) = u.split_once(':').unwrap_or((&u, &u));
            Some(UserSpec {
                uid: uid
                    .parse()
                    .with_context(|| format!("--user: {uid:?} is not a uid"))?,
                gid: gid
                    .parse()
                    .with_context(|| format!("--user: {gid:?} is not a gid"))?,
            })
        }
        None => None,
    };
    let cpu_millis = match a.cpus {
        Some(c) if c.is_finite() && c > 0.0 => Some((c * 1000.0).round() as u64),
        Some(c) => bail!("--cpus: must be a positive number of cores, got {c}"),
        None => None,
    };
    let memory_bytes = a
        .memory
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let req = ContainerRequest {
        name: name.clone(),
        image: a.image,
        rootfs: a.rootfs,
        command: a.command,
        env: a.env,
        cwd: a.workdir,
        hostname: a.hostname,
        user,
        resources: ResourceSpec {
            memory_bytes,
            cpu_millis,
            cpu_shares: a.cpu_shares,
            pids: a.pids_limit,
        },
        read_only_root: a.read_only,
        start: true,
        network: if a.no_network { Some(false) } else { None },
        ports: a
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_>>()?,
        ..Default::default()
    };
    let _info: ContainerInfo = c
        .call(
            Method::POST,
            "/v1/containers",
            Some(serde_json::to_vec(&req)?),
        )
        .await?;
    if a.detach {
        println!("{name}");
        return Ok(0);
    }
    print_stream(c, &format!("/v1/containers/{name}/logs?follow=true")).await?;
    let e: ExitStatus = c
        .call(Method::POST, &format!("/v1/containers/{name}/wait"), None)
        .await?;
    if a.rm {
        c.call_raw(
            Method::DELETE,
            &format!("/v1/containers/{name}?force=true"),
            None,
        )
        .await?;
    }
    if e.oom_killed {
        eprintln!("{name}: killed by the out-of-memory killer");
    }
    Ok(exit_code(&e))
}

async fn image_cmd(c: &Client, ic: ImageCmd) -> Result<i32> {
    match ic {
        ImageCmd::Pull {
            reference,
            plain_http,
            username,
            password,
        } => {
            let req = flotilla_api::PullRequest {
                reference,
                plain_http,
                username,
                password,
            };
            let i: flotilla_api::ImageInfo = c
                .call(
                    Method::POST,
                    "/v1/images/pull",
                    Some(serde_json::to_vec(&req)?),
                )
                .await?;
            println!("{} {}", i.id, i.names.join(","));
        }
        ImageCmd::Import { path, format, name } => {
            let path = std::path::absolute(&path)?;
            let format = match format {
                Some(f) => f,
                None if path.is_dir() => "oci-layout".into(),
                None => {
                    // A docker save archive has manifest.json at its top.
                    let f = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    let mut ar = tar::Archive::new(f);
                    let docker = ar.entries()?.flatten().any(|e| {
                        e.path()
                            .map(|p| p.as_os_str() == "manifest.json")
                            .unwrap_or(false)
                    });
                    if docker {
                        "docker-archive"
                    } else {
                        "oci-archive"
                    }
                    .into()
                }
            };
            let req = flotilla_api::ImportRequest {
                path: path.display().to_string(),
                format,
                name,
            };
            let v: Vec<flotilla_api::ImageInfo> = c
                .call(
                    Method::POST,
                    "/v1/images/import",
                    Some(serde_json::to_vec(&req)?),
                )
                .await?;
            for i in v {
                println!("{} {}", i.id, i.names.join(","));
            }
        }
        ImageCmd::Ls => {
            let v: Vec<flotilla_api::ImageInfo> = c.call(Method::GET, "/v1/images", None).await?;
            println!("{:<40} {:<20} {:>10}  LAYERS", "NAME", "ID", "SIZE");
            for i in v {
                let id = i.id.trim_start_matches("sha256:");
                println!(
                    "{:<40} {:<20} {:>10}  {}",
                    i.names.first().cloned().unwrap_or_else(|| "<none>".into()),
                    &id[..id.len().min(12)],
                    i.size,
                    i.layers
                );
            }
        }
        ImageCmd::Rm { name } => {
            c.call_raw(
                Method::DELETE,
                &format!("/v1/images/{}", encode_segment(&name)),
                None,
            )
            .await?;
        }
    }
    Ok(0)
}

/// Percent-encode a URL path segment (image names contain '/').
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_publish(s: &str) -> Result<flotilla_api::PortSpec> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, "tcp")) => (p, flotilla_api::Protocol::Tcp),
        Some((p, "udp")) => (p, flotilla_api::Protocol::Udp),
        Some((_, other)) => bail!("--publish {s:?}: unknown protocol {other:?} (tcp or udp)"),
        None => (s, flotilla_api::Protocol::Tcp),
    };
    let (h, c) = ports
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--publish {s:?}: expected HOST:CONTAINER"))?;
    Ok(flotilla_api::PortSpec {
        host_port: h
            .parse()
            .with_context(|| format!("--publish {s:?}: bad host port"))?,
        container_port: c
            .parse()
            .with_context(|| format!("--publish {s:?}: bad container port"))?,
        protocol: Some(proto),
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
