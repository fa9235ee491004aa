//! The agent's node-local API: HTTP/JSON over a unix socket (root only,
//! mode 0600). Every runtime call runs on tokio's blocking pool.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_api::{ContainerInfo, ContainerRequest, ExecRequest, ExecResult, ExitStatus, Problem};
use flotilla_runtime::runtime::{
    AfterCheckpoint, CheckpointOptions, ContainerState, ExecOptions, RestoreOptions, Runtime,
    RuntimeError,
};
use flotilla_runtime::shim::ExitInfo;
use serde::Deserialize;

#[derive(Clone)]
pub struct AppState {
    pub rt: Runtime,
    /// The node's container network, when the agent was given a subnet.
    pub net: Option<Arc<flotilla_net::NodeNetwork>>,
    pub images: Arc<flotilla_image::ImageStore>,
}

impl AppState {
    /// Addresses of attached containers, for listing.
    async fn leases(&self) -> std::collections::BTreeMap<String, std::net::Ipv4Addr> {
        match &self.net {
            Some(n) => n.leases().await.unwrap_or_default(),
            None => Default::default(),
        }
    }
}

fn net_err(e: flotilla_net::NetError) -> ApiError {
    let status = match &e {
        flotilla_net::NetError::PortInUse { .. } => StatusCode::CONFLICT,
        flotilla_net::NetError::InvalidPort { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError {
        status,
        detail: format!("network: {e}"),
    }
}

pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::Config(_)
            | RuntimeError::Rootfs(_)
            | RuntimeError::Create { .. }
            | RuntimeError::Checkpoint { .. }
            | RuntimeError::Restore { .. } => StatusCode::BAD_REQUEST,
            RuntimeError::Criu(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RuntimeError::AlreadyExists(_) | RuntimeError::WrongState { .. } => {
                StatusCode::CONFLICT
            }
            RuntimeError::NotFound(_) => StatusCode::NOT_FOUND,
            RuntimeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RuntimeError::Io { .. } | RuntimeError::Cgroup(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            src = s.source();
        }
        ApiError { status, detail }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = Problem {
            kind: "about:blank".into(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_string(&p).unwrap_or_default(),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: format!("task failed: {e}"),
        })?
        .map_err(ApiError::from)
}

pub fn exit_status(e: &ExitInfo) -> ExitStatus {
    ExitStatus {
        exit_code: e.exit_code,
        signal: e.signal,
        oom_killed: e.oom_killed,
        finished_at_ms: e.finished_at_ms,
    }
}

pub fn info(st: &ContainerState, ip: Option<std::net::Ipv4Addr>) -> ContainerInfo {
    let r = &st.record;
    ContainerInfo {
        name: r.id.clone(),
        status: st.status.to_string(),
        pid: r.init_pid,
        command: r.config.process.args.clone(),
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        exit: st.exit.as_ref().map(exit_status),
        cgroup: r.cgroup.rel_path().display().to_string(),
        netns: r.netns_path.as_ref().map(|p| p.display().to_string()),
        labels: r.labels.clone(),
        ip: ip.map(|i| i.to_string()),
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/containers", get(list).post(create))
        .route("/v1/containers/{id}", get(inspect).delete(remove))
        .route("/v1/containers/{id}/start", post(start))
        .route("/v1/containers/{id}/stop", post(stop))
        .route("/v1/containers/{id}/kill", post(kill))
        .route("/v1/containers/{id}/wait", post(wait))
        .route("/v1/containers/{id}/logs", get(logs))
        .route("/v1/containers/{id}/exec", post(exec))
        .route(
            "/v1/containers/{id}/exec/stream",
            get(crate::exec_stream::exec_stream),
        )
        .route("/v1/containers/{id}/stats", get(stats))
        .route("/v1/containers/{id}/checkpoint", post(checkpoint))
        .route("/v1/containers/{id}/restore", post(restore))
        .route("/v1/containers/{id}/resume", post(resume))
        .route("/v1/containers/{id}/commit", post(commit))
        .route("/v1/images", get(list_images))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/import", post(import_image))
        .route("/v1/images/{name}", axum::routing::delete(remove_image))
        .route("/v1/node", get(node))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                detail: "no such endpoint".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(Arc::new(state))
}

/// The subset of the API that controllers reach over mTLS (read containers, logs, exec).
pub fn remote_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/containers", get(list))
        .route("/v1/containers/{id}", get(inspect))
        .route("/v1/containers/{id}/logs", get(logs))
        .route("/v1/containers/{id}/exec", post(exec))
        .route(
            "/v1/containers/{id}/exec/stream",
            get(crate::exec_stream::exec_stream),
        )
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                detail: "no such endpoint".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(Arc::new(state))
}

type S = State<Arc<AppState>>;

async fn list(State(s): S) -> ApiResult<Json<Vec<ContainerInfo>>> {
    let rt = s.rt.clone();
    let v = blocking(move || rt.list()).await?;
    let leases = s.leases().await;
    Ok(Json(
        v.iter()
            .map(|c| info(c, leases.get(&c.record.id).copied()))
            .collect(),
    ))
}

/// Parse the body ourselves so malformed JSON gets a problem body naming
/// what is wrong instead of axum's plain-text rejection.
fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." || path == "?" {
            ApiError::bad_request(format!("request body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

async fn create(State(s): S, body: Bytes) -> ApiResult<(StatusCode, Json<ContainerInfo>)> {
    let req: ContainerRequest = parse_json(&body)?;
    let info = create_container(&s, req).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Create (and unless `start` is false, start) a container: image layers, OCI spec, node
/// network (address, /etc files, published ports). Nothing is left behind on failure.
pub async fn create_container(s: &AppState, req: ContainerRequest) -> ApiResult<ContainerInfo> {
    let image = match &req.image {
        Some(name) => {
            let store = s.images.clone();
            let name = name.clone();
            let img = tokio::task::spawn_blocking(move || {
                store.get(&name).map(|i| (store.layer_dirs(&i), i))
            })
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .map_err(|e| ApiError {
                status: StatusCode::NOT_FOUND,
                detail: format!("image: {}", flotilla_image::error_chain(&e)),
            })?;
            let (lower_dirs, i) = img;
            Some(crate::spec::ImageSource {
                name: req.image.clone().unwrap_or_default(),
                id: i.id.to_string(),
                lower_dirs,
                config: i.config.clone(),
            })
        }
        None => None,
    };
    let opts = crate::spec::to_create_options(&req, image.as_ref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let want_net = req.network.unwrap_or(s.net.is_some());
    if want_net && s.net.is_none() {
        return Err(ApiError::bad_request(
            "network: this node has no container network (start the agent with --subnet)",
        ));
    }
    if !want_net && !req.ports.is_empty() {
        return Err(ApiError::bad_request(
            "ports: publishing ports needs the network",
        ));
    }
    let ports: Vec<flotilla_net::PortMapping> = req.ports.iter().map(port_mapping).collect();
    flotilla_net::validate_mappings(&ports)
        .map_err(|e| ApiError::bad_request(format!("ports: {e}")))?;
    let rt = s.rt.clone();
    let st = blocking(move || rt.create(opts)).await?;
    let id = st.record.id.clone();
    let mut ip = None;
    if want_net {
        match plumb_network(s, &st, &ports).await {
            Ok(addr) => ip = Some(addr),
            Err(e) => {
                let rt = s.rt.clone();
                let id2 = id.clone();
                let _ = blocking(move || rt.delete(&id2, true)).await;
                if let Some(n) = &s.net {
                    let _ = n.detach(&id).await;
                }
                return Err(e);
            }
        }
    }
    let mut st = st;
    if req.start {
        let rt = s.rt.clone();
        let id2 = id.clone();
        if let Err(e) = blocking(move || rt.start(&id2)).await {
            let rt = s.rt.clone();
            let id2 = id.clone();
            let _ = blocking(move || rt.delete(&id2, true)).await;
            if let Some(n) = &s.net {
                let _ = n.detach(&id).await;
            }
            return Err(e);
        }
        st.status = flotilla_runtime::runtime::Status::Running;
    }
    tracing::info!(container = %id, pid = st.record.init_pid, ip = ?ip, started = req.start, "container created");
    Ok(info(&st, ip))
}

fn port_mapping(p: &flotilla_api::PortSpec) -> flotilla_net::PortMapping {
    flotilla_net::PortMapping {
        host_port: p.host_port,
        container_port: p.container_port,
        protocol: match p.protocol {
            Some(flotilla_api::Protocol::Udp) => flotilla_net::Protocol::Udp,
            _ => flotilla_net::Protocol::Tcp,
        },
        host_ip: None,
    }
}

/// Between create and start: address, /etc files, published ports.
async fn plumb_network(
    s: &AppState,
    st: &ContainerState,
    ports: &[flotilla_net::PortMapping],
) -> ApiResult<std::net::Ipv4Addr> {
    let net = s.net.as_ref().expect("checked by the caller");
    let id = st.record.id.clone();
    let ns = st.record.netns_path.clone().ok_or_else(|| {
        ApiError::bad_request("network: the container shares a network namespace")
    })?;
    let att = net.attach(&id, &ns).await.map_err(net_err)?;
    let hostname = st
        .record
        .config
        .hostname
        .clone()
        .unwrap_or_else(|| id.clone());
    let files = [
        (
            "/etc/hosts",
            flotilla_net::etc_hosts(&hostname, att.ip.into()),
        ),
        ("/etc/resolv.conf", net.resolv_conf()),
        ("/etc/hostname", format!("{hostname}\n")),
    ];
    for (path, text) in files {
        let rt = s.rt.clone();
        let id2 = id.clone();
        blocking(move || rt.write_rootfs_file(&id2, Path::new(path), text.as_bytes())).await?;
    }
    for p in ports {
        net.publish(&id, *p).await.map_err(net_err)?;
    }
    Ok(att.ip)
}

async fn ip_of(s: &AppState, id: &str) -> Option<std::net::Ipv4Addr> {
    match &s.net {
        Some(n) => n.attachment(id).await.ok().flatten().map(|a| a.ip),
        None => None,
    }
}

async fn inspect(State(s): S, UrlPath(id): UrlPath<String>) -> ApiResult<Json<ContainerInfo>> {
    let rt = s.rt.clone();
    let id2 = id.clone();
    let st = blocking(move || rt.state(&id2)).await?;
    Ok(Json(info(&st, ip_of(&s, &id).await)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceQ {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<ForceQ>,
) -> ApiResult<StatusCode> {
    remove_container(&s, &id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a container (`force`: kill it first) and release its address and ports.
pub async fn remove_container(s: &AppState, id: &str, force: bool) -> ApiResult<()> {
    let rt = s.rt.clone();
    let id2 = id.to_owned();
    blocking(move || rt.delete(&id2, force)).await?;
    if let Some(n) = &s.net {
        if n.attachment(id).await.ok().flatten().is_some() {
            n.detach(id).await.map_err(net_err)?;
        }
    }
    Ok(())
}

/// The address of a container on the node network.
pub async fn container_ip(s: &AppState, id: &str) -> Option<std::net::Ipv4Addr> {
    ip_of(s, id).await
}

async fn start(State(s): S, UrlPath(id): UrlPath<String>) -> ApiResult<StatusCode> {
    let rt = s.rt.clone();
    blocking(move || rt.start(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQ {
    /// Grace period in seconds before SIGKILL.
    timeout: Option<u64>,
}

async fn stop(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<StopQ>,
) -> ApiResult<Json<ExitStatus>> {
    let rt = s.rt.clone();
    let grace = Duration::from_secs(q.timeout.unwrap_or(10).min(3600));
    let e = blocking(move || rt.stop(&id, grace)).await?;
    Ok(Json(exit_status(&e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillQ {
    signal: Option<String>,
}

pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

async fn kill(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<KillQ>,
) -> ApiResult<StatusCode> {
    let sig_s = q.signal.unwrap_or_else(|| "TERM".into());
    let sig = parse_signal(&sig_s)
        .ok_or_else(|| ApiError::bad_request(format!("signal: unknown signal {sig_s:?}")))?;
    let rt = s.rt.clone();
    blocking(move || rt.kill(&id, sig)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wait(State(s): S, UrlPath(id): UrlPath<String>) -> ApiResult<Json<ExitStatus>> {
    let rt = s.rt.clone();
    let e = blocking(move || rt.wait(&id, None)).await?;
    Ok(Json(exit_status(&e)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQ {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

async fn logs(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQ>,
) -> ApiResult<Response> {
    let rt = s.rt.clone();
    let id2 = id.clone();
    let path: PathBuf = blocking(move || rt.log_path(&id2)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let rt = s.rt.clone();
    tokio::task::spawn_blocking(move || stream_logs(&rt, &id, &path, q.follow, q.tail, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn stream_logs(
    rt: &Runtime,
    id: &str,
    path: &Path,
    follow: bool,
    tail: Option<usize>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    use flotilla_runtime::logs;
    let to_bytes = |e: &logs::LogEntry| {
        let mut b = e.content.clone().into_bytes();
        if !e.partial {
            b.push(b'\n');
        }
        Bytes::from(b)
    };
    if !follow {
        if let Ok(entries) = logs::read_all(path, tail) {
            for e in &entries {
                if tx.blocking_send(to_bytes(e)).is_err() {
                    return;
                }
            }
        }
        return;
    }
    let stopped = || {
        tx.is_closed()
            || rt
                .state(id)
                .map(|s| s.status == flotilla_runtime::runtime::Status::Stopped)
                .unwrap_or(true)
    };
    let _ = logs::follow(path, tail, stopped, |e| {
        tx.blocking_send(to_bytes(&e)).is_ok()
    });
}

async fn exec(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<ExecResult>> {
    let req: ExecRequest = parse_json(&body)?;
    let opts = ExecOptions {
        args: req.command,
        env: req.env,
        cwd: req.cwd.map(PathBuf::from),
        uid: req.user.map(|u| u.uid),
        gid: req.user.map(|u| u.gid),
    };
    let rt = s.rt.clone();
    let cmd = blocking(move || rt.exec_command(&id, &opts)).await?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        detail: format!("starting exec helper: {e}"),
    })?;
    let code = out.status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)
    });
    Ok(Json(ExecResult {
        exit_code: code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }))
}

async fn stats(State(s): S, UrlPath(id): UrlPath<String>) -> ApiResult<Json<flotilla_api::Usage>> {
    let rt = s.rt.clone();
    let u = blocking(move || rt.stats(&id)).await?;
    Ok(Json(flotilla_api::Usage {
        memory_bytes: u.memory_bytes,
        memory_peak_bytes: u.memory_peak_bytes,
        cpu_usage_ns: u.cpu_usage_ns,
        pids: u.pids,
    }))
}

fn image_err(e: flotilla_image::ImageError) -> ApiError {
    let detail = flotilla_image::error_chain(&e);
    let status = if detail.contains("not found") || detail.contains("no image") {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError { status, detail }
}

fn image_info(i: &flotilla_image::Image) -> flotilla_api::ImageInfo {
    flotilla_api::ImageInfo {
        id: i.id.to_string(),
        names: i.names.clone(),
        size: i.size(),
        layers: i.layers.len(),
        added_at: i.added_at,
        entrypoint: i.config.entrypoint(),
        cmd: i.config.cmd(),
    }
}

async fn list_images(State(s): S) -> Json<Vec<flotilla_api::ImageInfo>> {
    Json(s.images.list().iter().map(image_info).collect())
}

async fn pull_image(State(s): S, body: Bytes) -> ApiResult<Json<flotilla_api::ImageInfo>> {
    let req: flotilla_api::PullRequest = parse_json(&body)?;
    let mut opts = flotilla_image::PullOptions::default();
    opts.registry.plain_http = req.plain_http;
    if let (Some(u), Some(p)) = (req.username, req.password) {
        opts.registry.auth = flotilla_image::RegistryAuth::Basic {
            username: u,
            password: p,
        };
    }
    let img = s
        .images
        .pull(&req.reference, &opts)
        .await
        .map_err(image_err)?;
    tracing::info!(reference = %req.reference, id = %img.id, "image pulled");
    Ok(Json(image_info(&img)))
}

async fn import_image(State(s): S, body: Bytes) -> ApiResult<Json<Vec<flotilla_api::ImageInfo>>> {
    let req: flotilla_api::ImportRequest = parse_json(&body)?;
    let store = s.images.clone();
    let imgs = tokio::task::spawn_blocking(move || {
        let p = Path::new(&req.path);
        let name = req.name.as_deref();
        match req.format.as_str() {
            "oci-layout" => Ok(store.import_oci_layout(p, None, name)),
            "oci-archive" => Ok(store.import_oci_archive(p, None, name)),
            "docker-archive" => Ok(store.import_docker_archive(p, name)),
            other => Err(ApiError::bad_request(format!(
                "format: must be oci-layout, oci-archive or docker-archive, got {other:?}"
            ))),
        }
    })
    .await
    .map_err(|e| ApiError::bad_request(e.to_string()))??
    .map_err(image_err)?;
    Ok(Json(imgs.iter().map(image_info).collect()))
}

async fn remove_image(State(s): S, UrlPath(name): UrlPath<String>) -> ApiResult<StatusCode> {
    // Images that containers run from stay.
    let rt = s.rt.clone();
    let containers = blocking(move || rt.list()).await?;
    let mut in_use = std::collections::HashSet::new();
    for c in containers {
        if let Some(id) = c.record.labels.get("flotilla.image.id") {
            if let Ok(d) = flotilla_image::Digest::parse(id) {
                in_use.insert(d);
            }
        }
    }
    let store = s.images.clone();
    let out = tokio::task::spawn_blocking(move || store.remove(&name, &in_use))
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .map_err(image_err)?;
    if out.untagged.is_empty() && out.deleted.is_none() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            detail: "image: in use by a container".into(),
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Snapshot a container's changes as a new image (frozen while its upper
/// layer is read).
async fn commit(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<flotilla_api::ImageInfo>> {
    let req: flotilla_api::CommitRequest = parse_json(&body)?;
    let rt = s.rt.clone();
    let id2 = id.clone();
    let st = blocking(move || rt.state(&id2)).await?;
    let base_id = st
        .record
        .labels
        .get("flotilla.image.id")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("commit: the container was not made from an image"))?;
    let store = s.images.clone();
    let rt = s.rt.clone();
    let img = tokio::task::spawn_blocking(move || -> Result<flotilla_image::Image, ApiError> {
        let base = store.get(&base_id).map_err(image_err)?;
        let upper = rt.upper_dir(&id).map_err(ApiError::from)?;
        let live = st.status == flotilla_runtime::runtime::Status::Running;
        if live {
            st.record
                .cgroup
                .freeze()
                .map_err(|e| ApiError::from(RuntimeError::from(e)))?;
        }
        let r = store.commit(&upper, &base, &req.name);
        if live {
            let _ = st.record.cgroup.thaw();
        }
        r.map_err(image_err)
    })
    .await
    .map_err(|e| ApiError::bad_request(e.to_string()))??;
    Ok(Json(image_info(&img)))
}

async fn node(State(s): S) -> Json<serde_json::Value> {
    let rt = s.rt.clone();
    let criu = tokio::task::spawn_blocking(move || rt.criu_info())
        .await
        .ok()
        .and_then(|r| r.ok());
    Json(serde_json::json!({
        "cgroupMode": format!("{:?}", s.rt.cgroup_mode()),
        "root": s.rt.config().root.display().to_string(),
        "criu": criu,
    }))
}

async fn checkpoint(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: flotilla_api::CheckpointRequest = parse_json(&body)?;
    let after = match req.after.as_deref().unwrap_or("kill") {
        "kill" => AfterCheckpoint::Kill,
        "stop" => AfterCheckpoint::Stop,
        "run" => AfterCheckpoint::Run,
        other => {
            return Err(ApiError::bad_request(format!(
                "after: must be kill, stop or run, got {other:?}"
            )))
        }
    };
    let dir = PathBuf::from(&req.images_dir);
    if !dir.is_absolute() {
        return Err(ApiError::bad_request("imagesDir: must be an absolute path"));
    }
    let opts = CheckpointOptions {
        images_dir: dir,
        tcp_established: req.tcp_established,
        after,
    };
    let rt = s.rt.clone();
    blocking(move || rt.checkpoint(&id, &opts)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore(
    State(s): S,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<ContainerInfo>> {
    let req: flotilla_api::RestoreRequest = parse_json(&body)?;
    let opts = RestoreOptions {
        images_dir: PathBuf::from(&req.images_dir),
        tcp_established: req.tcp_established,
    };
    // The namespace (re-created if needed) gets its address back before
    // CRIU restores sockets into it.
    if let Some(n) = &s.net {
        if n.attachment(&id).await.ok().flatten().is_some() {
            let rt = s.rt.clone();
            let id2 = id.clone();
            if let Some(ns) = blocking(move || rt.ensure_netns(&id2)).await? {
                n.attach(&id, &ns).await.map_err(net_err)?;
            }
        }
    }
    let rt = s.rt.clone();
    let id2 = id.clone();
    let st = blocking(move || rt.restore(&id2, &opts)).await?;
    Ok(Json(info(&st, ip_of(&s, &id).await)))
}

async fn resume(State(s): S, UrlPath(id): UrlPath<String>) -> ApiResult<StatusCode> {
    let rt = s.rt.clone();
    blocking(move || rt.resume(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serve the API on a unix socket until `shutdown` resolves.
pub async fn serve(
    rt: Runtime,
    net: Option<Arc<flotilla_net::NodeNetwork>>,
    images: Arc<flotilla_image::ImageStore>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(rt, net, images, socket, shutdown, None).await
}

/// Called once the containers are adopted and the network is up, before the socket serves
/// (cluster mode starts its member tasks here).
pub type OnReady = Box<dyn FnOnce(AppState) + Send>;

/// `serve`, calling `on_ready` with the agent's state once it is ready.
pub async fn serve_with(
    rt: Runtime,
    net: Option<Arc<flotilla_net::NodeNetwork>>,
    images: Arc<flotilla_image::ImageStore>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: Option<OnReady>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A stale socket from a killed agent would make bind fail.
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!("another agent is already serving on {}", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let removed = rt.cleanup_incomplete();
    for id in removed {
        tracing::warn!(container = %id, "removed a container whose create never finished");
    }
    let rt2 = rt.clone();
    let adopted = tokio::task::spawn_blocking(move || rt2.list()).await??;
    for c in &adopted {
        tracing::info!(container = %c.record.id, status = %c.status, pid = c.record.init_pid, "adopted");
    }
    if let Some(n) = &net {
        n.ensure().await?;
        let live: Vec<String> = adopted.iter().map(|c| c.record.id.clone()).collect();
        let freed = n.reconcile(&live).await?;
        if !freed.is_empty() {
            tracing::info!(freed = ?freed, "released addresses of containers that no longer exist");
        }
    }
    // Reap shims of containers that exit while nobody asks about them.
    let rt3 = rt.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rt = rt3.clone();
            let _ = tokio::task::spawn_blocking(move || rt.list()).await;
        }
    });
    let state = AppState {
        rt: rt.clone(),
        net,
        images,
    };
    if let Some(f) = on_ready {
        f(state.clone());
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = std::fs::remove_file(socket);
    rt.shutdown();
    Ok(())
}
