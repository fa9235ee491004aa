//! `clusterctl`: the command line client of a Flotilla cluster's controller API.
//!
//! Contexts (`context add|use|ls`) name a cluster: its API endpoints, CA certificate and
//! token (see `config`). `cluster status|members`, `cluster member add|remove` talk to the
//! API over TLS verified against the context's CA; every error ends the process with a
//! non-zero status and a one-line message (the server's problem detail when there is one).

mod config;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use flotilla_api::cluster::{AddMemberRequest, ClusterStatus, ControllerAddr, TokenRole};
use flotilla_api::rest::{MembersResponse, MembershipChanged, Problem, TokenCreate, TokenCreated};
use serde::Serialize;

use crate::config::Config;

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
enum Output {
    Table,
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
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
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

/// An API client for one context.
struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    token: String,
}

fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("malformed ca certificate in the context")?)
            .context("unusable ca certificate in the context")?;
    }
    if roots.is_empty() {
        bail!("the context has no ca certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

/// The server's error as one line: the problem's detail and field, or the status.
async fn problem_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(p) => {
            let mut m = p.detail.unwrap_or(p.title);
            if let Some(f) = p.field {
                m.push_str(&format!(" (field {f})"));
            }
            format!("{m} [{}]", status.as_u16())
        }
        Err(_) if text.trim().is_empty() => format!("the server answered {status}"),
        Err(_) => format!("the server answered {status}: {}", text.trim()),
    }
}

impl Client {
    fn new(config: &Config, name: Option<&str>) -> Result<Self> {
        let ctx = config.context(name)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(tls_config(&ctx.ca_cert)?)
            .build()
            .context("cannot build the http client")?;
        Ok(Self {
            http,
            endpoints: ctx.endpoints.clone(),
            token: ctx.token.clone(),
        })
    }

    /// Send to the first endpoint that answers; decode a success, report a problem.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        endpoints: Option<&[String]>,
    ) -> Result<T> {
        let endpoints = endpoints.unwrap_or(&self.endpoints);
        let mut last = None;
        for ep in endpoints {
            let mut req = self
                .http
                .request(method.clone(), format!("https://{ep}{path}"))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    return r
                        .json()
                        .await
                        .with_context(|| format!("malformed answer from {ep}"));
                }
                Ok(r) => bail!("{ep}: {}", problem_message(r).await),
                Err(e) => last = Some(anyhow::Error::new(e).context(format!("cannot reach {ep}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the context has no endpoints")))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, None::<&()>, None)
            .await
    }
}

fn print<T: Serialize>(output: Output, value: &T, table: impl FnOnce() -> String) -> Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => yaml_serde::to_string(value)?,
        Output::Table => table(),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
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
