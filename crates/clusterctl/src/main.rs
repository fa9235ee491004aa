//! `clusterctl`: the command line client of a Flotilla cluster's controller API.
//!
//! Contexts (`context add|use|ls`) name a cluster: its API endpoints, CA certificate and
//! token (see `config`). `cluster status|members`, `cluster member add|remove` and the object
//! commands (`apply`, `get`, `describe`, `delete`, `scale`, `cordon`, `uncordon`, `drain`,
//! `logs`, `exec`, `events`; see `objects`) talk to the API over TLS verified against the
//! context's CA; `dev up|down` runs a whole cluster on this machine (see `dev`). Every error
//! ends the process with a non-zero status and a message (the server's problem detail and
//! field when there is one).

mod client;
mod config;
mod dev;
mod devregistry;
mod exec_stream;
mod manifest;
mod objects;
mod view;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use flotilla_api::cluster::{AddMemberRequest, ClusterStatus, ControllerAddr, TokenRole};
use flotilla_api::rest::{MembersResponse, MembershipChanged, TokenCreate, TokenCreated};
use serde::Serialize;

use crate::client::{tls_config, Client};
use crate::config::Config;
use crate::view::{opt, table};

#[derive(Parser, Debug)]
#[command(name = "clusterctl", version, about = "Control a Flotilla cluster")]
struct Cli {
    /// Configuration file (default: ~/.config/clusterctl/config.yaml).
    #[arg(long, global = true, env = "CLUSTERCTL_CONFIG")]
    config: Option<PathBuf>,
    /// Use this context instead of the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    /// A table with more columns (`get`).
    Wide,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Manage contexts (which cluster to talk to, and how).
    #[command(subcommand)]
    Context(ContextCmd),
    /// The controllers' cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Create or replace workloads and services from YAML or JSON (`-f -`: stdin).
    Apply {
        /// File with one or more documents (`---` between them); `-` reads stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List objects, or show one.
    Get {
        #[arg(value_enum)]
        kind: objects::GetKind,
        name: Option<String>,
    },
    /// Show an object in detail with its recent events.
    Describe {
        #[arg(value_enum)]
        kind: objects::DescribeKind,
        name: String,
    },
    /// Delete a workload (its instances are stopped gracefully) or a service.
    Delete {
        #[arg(value_enum)]
        kind: objects::DeleteKind,
        name: String,
    },
    /// Change a workload's replica count.
    Scale {
        #[arg(value_enum)]
        kind: objects::ScaleKind,
        name: String,
        #[arg(long)]
        replicas: u32,
    },
    /// Stop placing new instances on a node.
    Cordon { node: String },
    /// Allow placements on a node again.
    Uncordon { node: String },
    /// Cordon a node and move its instances elsewhere (cold).
    Drain {
        node: String,
        /// Return once the drain is requested instead of waiting for the node to be empty.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the node to be empty (seconds).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print an instance's output (through the controller, from its node's agent).
    Logs {
        instance: String,
        /// Keep streaming new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Run a command in an instance (through the controller, on its node's agent).
    Exec {
        instance: String,
        /// Pass this terminal's input to the command until its end (streaming exec).
        #[arg(short, long)]
        interactive: bool,
        /// Run the command on a terminal; this one goes raw for the session (streaming exec).
        #[arg(short, long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The cluster's events; `-w` keeps watching.
    Events {
        #[arg(short, long)]
        watch: bool,
    },
    /// A whole cluster on this machine, one network namespace per host.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(alias = "completion")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum DevCmd {
    /// Start N controllers and M agents from the built binaries, each in its own network
    /// namespace (addresses in 198.18.0.0/15), write a context and make it current.
    Up {
        #[arg(long, default_value_t = 3)]
        controllers: u32,
        #[arg(long, default_value_t = 0)]
        agents: u32,
        /// The cluster's name (also the context's).
        #[arg(long, default_value = "dev")]
        name: String,
        /// Data, logs and agent roots (default /var/lib/flotilla-dev/<name>); must be empty.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Default: flotilla-controller next to clusterctl.
        #[arg(long, env = "FLOTILLA_CONTROLLER_BIN")]
        controller_bin: Option<PathBuf>,
        /// Default: flotilla-agent next to clusterctl.
        #[arg(long, env = "FLOTILLA_AGENT_BIN")]
        agent_bin: Option<PathBuf>,
        /// A registry the agents may pull from over plain HTTP (host:port).
        #[arg(long)]
        registry_insecure: Vec<String>,
        /// Give up (and remove everything) after this many seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Stop every process of the cluster and remove its namespaces, links, mounts, cgroups,
    /// state and context.
    Down {
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// Print the dev registry's host:port (agents pull from it over plain HTTP).
    Registry {
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// SIGKILL one host's process (`c1`, `a2`, ...), as a crash would.
    Kill {
        #[arg(long, default_value = "dev")]
        name: String,
        host: String,
    },
    /// Start one host's process again from its data directory.
    Start {
        #[arg(long, default_value = "dev")]
        name: String,
        host: String,
    },
}

#[derive(Subcommand, Debug)]
enum ContextCmd {
    /// Add (or replace) a context; the first one added becomes current.
    Add {
        name: String,
        /// API endpoint host:port (repeat for several controllers).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// PEM file of the cluster CA certificate (`<data dir>/tls/ca.crt`).
        #[arg(long)]
        ca_file: PathBuf,
        /// Bearer token.
        #[arg(
            long,
            conflicts_with = "token_file",
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// File holding the bearer token (`<data dir>/admin.token`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Make it the current context.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make a context the current one.
    Use { name: String },
    /// List the contexts.
    Ls,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Raft status of the controller that answers.
    Status,
    /// The controllers with their roles and health.
    Members,
    /// Add or remove a controller.
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Add controller <ID> at Raft address <ADDR>. With --token: create a join token for it
    /// and print how to start it; without: add an already running controller.
    Add {
        id: u64,
        /// The new controller's Raft address (host:port).
        addr: String,
        /// Create a single-use join token instead of adding a running controller.
        #[arg(long)]
        token: bool,
        /// The new controller's API address (needed without --token).
        #[arg(long, required_unless_present = "token")]
        api_addr: Option<String>,
        /// Join token lifetime in seconds (at most 86400).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Add it as a learner only.
        #[arg(long)]
        learner: bool,
    },
    /// Remove controller <ID>.
    Remove { id: u64 },
}

pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => yaml_serde::to_string(value)?,
        Output::Table | Output::Wide => table(),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

async fn members(client: &Client) -> Result<MembersResponse> {
    let m: MembersResponse = client.get("/v1/cluster/members").await?;
    // Health and lag are known to the leader: ask it when another controller answered.
    if m.leader.is_some_and(|l| l != m.served_by) {
        let leader = m.members.iter().find(|x| Some(x.id) == m.leader);
        if let Some(api) = leader.map(|l| vec![l.api_addr.clone()]) {
            let from_leader = client
                .call::<MembersResponse>(
                    reqwest::Method::GET,
                    "/v1/cluster/members",
                    None::<&()>,
                    Some(&api),
                )
                .await;
            if let Ok(l) = from_leader {
                return Ok(l);
            }
        }
    }
    Ok(m)
}

async fn run(cli: Cli) -> Result<()> {
    let path = config::path(cli.config.as_deref())?;
    let output = cli.output;
    match cli.command {
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "clusterctl", &mut script);
            std::io::stdout().write_all(&script)?;
        }
        Cmd::Context(c) => {
            let mut config = Config::load(&path)?;
            match c {
                ContextCmd::Add {
                    name,
                    endpoints,
                    ca_file,
                    token,
                    token_file,
                    use_it,
                } => {
                    if name.is_empty() || name.chars().any(char::is_control) {
                        bail!("context name {name:?} is empty or has control characters");
                    }
                    let ca_cert = std::fs::read_to_string(&ca_file)
                        .with_context(|| format!("cannot read ca file {}", ca_file.display()))?;
                    tls_config(&ca_cert).with_context(|| {
                        format!("{} is not a ca certificate", ca_file.display())
                    })?;
                    let token = match (token, token_file) {
                        (Some(t), _) => t,
                        (None, Some(f)) => std::fs::read_to_string(&f)
                            .with_context(|| format!("cannot read token file {}", f.display()))?
                            .trim()
                            .to_owned(),
                        (None, None) => bail!("give --token or --token-file"),
                    };
                    if token.is_empty() || !token.contains('.') {
                        bail!("the token is not of the form <id>.<secret>");
                    }
                    for e in &endpoints {
                        if e.rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .is_none()
                        {
                            bail!("endpoint {e:?} is not host:port");
                        }
                    }
                    config.upsert(config::Context {
                        name: name.clone(),
                        endpoints,
                        ca_cert,
                        token,
                    });
                    if use_it || config.current_context.is_none() {
                        config.current_context = Some(name.clone());
                    }
                    config.save(&path)?;
                    eprintln!("context {name} saved in {}", path.display());
                }
                ContextCmd::Use { name } => {
                    config.context(Some(&name))?;
                    config.current_context = Some(name.clone());
                    config.save(&path)?;
                    eprintln!("current context: {name}");
                }
                ContextCmd::Ls => {
                    #[derive(Serialize)]
                    struct Row {
                        name: String,
                        current: bool,
                        endpoints: Vec<String>,
                    }
                    let rows: Vec<Row> = config
                        .contexts
                        .iter()
                        .map(|c| Row {
                            name: c.name.clone(),
                            current: config.current_context.as_deref() == Some(c.name.as_str()),
                            endpoints: c.endpoints.clone(),
                        })
                        .collect();
                    print(output, &rows, || {
                        let mut t = table(&["CURRENT", "NAME", "ENDPOINTS"]);
                        for r in &rows {
                            t.add_row(vec![
                                if r.current { "*" } else { "" }.to_owned(),
                                r.name.clone(),
                                r.endpoints.join(","),
                            ]);
                        }
                        format!("{t}\n")
                    })?;
                }
            }
        }
        Cmd::Dev(DevCmd::Up {
            controllers,
            agents,
            name,
            state_dir,
            controller_bin,
            agent_bin,
            registry_insecure,
            timeout,
        }) => {
            dev::up(dev::UpArgs {
                name,
                controllers,
                agents,
                state_dir,
                controller_bin,
                agent_bin,
                registry_insecure,
                config_path: path,
                timeout: Duration::from_secs(timeout),
            })
            .await?;
        }
        Cmd::Dev(DevCmd::Down { name }) => dev::down(&name)?,
        Cmd::Dev(DevCmd::Registry { name }) => println!("{}", dev::registry(&name)?),
        Cmd::Dev(DevCmd::Kill { name, host }) => dev::kill(&name, &host)?,
        Cmd::Dev(DevCmd::Start { name, host }) => dev::start(&name, &host)?,
        Cmd::Apply { files } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::apply(&client, &files, output).await?;
        }
        Cmd::Get { kind, name } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::get(&client, kind, name.as_deref(), output).await?;
        }
        Cmd::Describe { kind, name } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::describe(&client, kind, &name, output).await?;
        }
        Cmd::Delete { kind, name } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::delete(&client, kind, &name, output).await?;
        }
        Cmd::Scale {
            kind: objects::ScaleKind::Workload,
            name,
            replicas,
        } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::scale(&client, &name, replicas, output).await?;
        }
        Cmd::Cordon { node } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::set_schedulable(&client, &node, false, output).await?;
        }
        Cmd::Uncordon { node } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::set_schedulable(&client, &node, true, output).await?;
        }
        Cmd::Drain {
            node,
            no_wait,
            timeout,
        } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::drain(
                &client,
                &node,
                !no_wait,
                Duration::from_secs(timeout),
                output,
            )
            .await?;
        }
        Cmd::Logs {
            instance,
            follow,
            tail,
        } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::logs(&client, &instance, follow, tail).await?;
        }
        Cmd::Exec {
            instance,
            interactive,
            tty,
            command,
        } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            let code = if interactive || tty {
                exec_stream::exec(&client, &instance, command, interactive, tty).await?
            } else {
                objects::exec(&client, &instance, command).await?
            };
            if code != 0 {
                return Err(ExitWith(code).into());
            }
        }
        Cmd::Events { watch } => {
            let client = Client::new(&Config::load(&path)?, cli.context.as_deref())?;
            objects::events(&client, watch, output).await?;
        }
        Cmd::Cluster(c) => {
            let config = Config::load(&path)?;
            let client = Client::new(&config, cli.context.as_deref())?;
            match c {
                ClusterCmd::Status => {
                    let s: ClusterStatus = client.get("/v1/cluster/status").await?;
                    print(output, &s, || {
                        let mut t = table(&["FIELD", "VALUE"]);
                        t.add_row(vec!["id".to_owned(), s.id.to_string()]);
                        t.add_row(vec!["state".to_owned(), s.state.clone()]);
                        t.add_row(vec!["leader".to_owned(), opt(s.leader)]);
                        t.add_row(vec!["term".to_owned(), s.term.to_string()]);
                        t.add_row(vec!["last log index".to_owned(), opt(s.last_log_index)]);
                        t.add_row(vec!["applied index".to_owned(), opt(s.applied_index)]);
                        t.add_row(vec!["snapshot index".to_owned(), opt(s.snapshot_index)]);
                        t.add_row(vec!["members".to_owned(), s.members.len().to_string()]);
                        format!("{t}\n")
                    })?;
                }
                ClusterCmd::Members => {
                    let m = members(&client).await?;
                    print(output, &m, || {
                        let mut t = table(&[
                            "ID", "ROLE", "VOTER", "RAFT", "API", "MATCHED", "LAG", "HEALTHY",
                        ]);
                        for x in &m.members {
                            t.add_row(vec![
                                x.id.to_string(),
                                format!("{:?}", x.role).to_lowercase(),
                                x.voter.to_string(),
                                x.raft_addr.clone(),
                                x.api_addr.clone(),
                                opt(x.matched_index),
                                opt(x.lag),
                                opt(x.healthy),
                            ]);
                        }
                        format!("{t}\n")
                    })?;
                }
                ClusterCmd::Member(MemberCmd::Add {
                    id,
                    addr,
                    token,
                    api_addr,
                    ttl,
                    learner,
                }) => {
                    if token {
                        let req = TokenCreate {
                            role: TokenRole::ControllerJoin,
                            ttl_seconds: Some(ttl),
                            description: Some(format!("controller {id} at {addr}")),
                        };
                        let t: TokenCreated = client
                            .call(reqwest::Method::POST, "/v1/tokens", Some(&req), None)
                            .await?;
                        let hash = t
                            .ca_cert_hash
                            .clone()
                            .unwrap_or_else(|| "<ca cert hash>".into());
                        let command = format!(
                            "flotilla-controller --id {id} --raft-addr {addr} --api-addr <host:port> --data-dir <dir> --join {} --token {} --ca-cert-hash {hash}",
                            client.endpoints[0], t.token
                        );
                        #[derive(Serialize)]
                        #[serde(rename_all = "camelCase")]
                        struct Out<'a> {
                            #[serde(flatten)]
                            token: &'a TokenCreated,
                            join_command: String,
                        }
                        let out = Out {
                            token: &t,
                            join_command: command.clone(),
                        };
                        print(output, &out, || {
                            format!(
                                "join token: {}\nexpires at (ms since epoch): {}\nca cert hash: {hash}\nstart the new controller with:\n  {command}\n",
                                t.token,
                                opt(t.expires_at_ms)
                            )
                        })?;
                    } else {
                        let req = AddMemberRequest {
                            id,
                            addr: ControllerAddr {
                                raft_addr: addr,
                                api_addr: api_addr
                                    .context("--api-addr is needed without --token")?,
                            },
                            voter: !learner,
                        };
                        let r: MembershipChanged = client
                            .call(
                                reqwest::Method::POST,
                                "/v1/cluster/members",
                                Some(&req),
                                None,
                            )
                            .await?;
                        print(output, &r, || {
                            format!("controller {id} added at index {}\n", r.index)
                        })?;
                    }
                }
                ClusterCmd::Member(MemberCmd::Remove { id }) => {
                    let r: MembershipChanged = client
                        .call(
                            reqwest::Method::DELETE,
                            &format!("/v1/cluster/members/{id}"),
                            None::<&()>,
                            None,
                        )
                        .await?;
                    print(output, &r, || {
                        format!("controller {id} removed at index {}\n", r.index)
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// A non-zero exit status to pass through (the remote command's of `exec`).
#[derive(Debug)]
struct ExitWith(i32);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `exec`: the remote command's own status, already reported by its output.
        Err(e) if e.downcast_ref::<ExitWith>().is_some() => {
            let code = e.downcast_ref::<ExitWith>().map_or(1, |c| c.0);
            ExitCode::from(u8::try_from(code).unwrap_or(1).max(1))
        }
        // The reader went away (`clusterctl ... | head`): not an error of ours.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent_and_parses() {
        Cli::command().debug_assert();
        for args in [
            &["clusterctl", "completion", "bash"][..],
            &["clusterctl", "completions", "zsh"],
            &["clusterctl", "get", "nodes", "-o", "wide"],
            &["clusterctl", "get", "wl", "web", "-o", "yaml"],
            &["clusterctl", "apply", "-f", "-", "-f", "b.yaml"],
            &["clusterctl", "scale", "workload", "web", "--replicas", "3"],
            &["clusterctl", "logs", "-f", "--tail", "5", "web-0"],
            &["clusterctl", "exec", "web-0", "--", "sh", "-c", "echo hi"],
            &["clusterctl", "events", "-w"],
            &[
                "clusterctl",
                "dev",
                "up",
                "--controllers",
                "3",
                "--agents",
                "3",
            ],
            &["clusterctl", "dev", "down", "--name", "x"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for bad in [
            &["clusterctl", "get", "pods"][..],
            &["clusterctl", "scale", "workload", "web"],
            &["clusterctl", "exec", "web-0"],
            &["clusterctl", "get", "nodes", "-o", "xml"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
