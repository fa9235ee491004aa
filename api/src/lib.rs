//! Serialized types at Flotilla's API boundaries. For now: the agent's
//! node-local API (unix socket). Every request type refuses unknown fields so
//! a typo is an error, not a silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod exec_stream;
pub mod rest;

/// A container to run on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerRequest {
    pub name: String,
    /// An image in the node's store (name or id); its layers become the
    /// root filesystem and its configuration the defaults.
    #[serde(default)]
    pub image: Option<String>,
    /// Read-only root filesystem directories, top-most first (instead of an image).
    #[serde(default)]
    pub rootfs: Vec<String>,
    /// Command and arguments (with an image: replaces its Cmd, keeps its Entrypoint).
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub user: Option<UserSpec>,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub read_only_root: bool,
    /// Run in a user namespace mapping container ids 0..size to host ids
    /// starting at the given base.
    #[serde(default)]
    pub user_namespace: Option<UserNamespaceSpec>,
    /// Create and start (default) or only create.
    #[serde(default = "yes")]
    pub start: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Attach to the node's container network (default: when the node has one).
    #[serde(default)]
    pub network: Option<bool>,
    /// Host ports forwarded to container ports (needs the network).
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// A full OCI runtime configuration; when given it replaces everything
    /// above except name, rootfs and labels.
    #[serde(default)]
    pub oci: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub host_port: u16,
    pub container_port: u16,
    /// tcp (default) or udp.
    #[serde(default)]
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserNamespaceSpec {
    pub host_uid: u32,
    pub host_gid: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceSpec {
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    /// CPU limit in millicores (500 = half a core).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Relative CPU weight (cgroup v1 shares, 2..=262144).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes and threads.
    #[serde(default)]
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub name: String,
    /// created, running or stopped.
    pub status: String,
    pub pid: i32,
    pub command: Vec<String>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub exit: Option<ExitStatus>,
    pub cgroup: String,
    pub netns: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Address on the node's container network, when attached.
    #[serde(default)]
    pub ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<UserSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usage_ns: u64,
    pub pids: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckpointRequest {
    /// Absolute directory for CRIU's images (created; must be empty).
    pub images_dir: String,
    #[serde(default)]
    pub tcp_established: bool,
    /// kill (default), stop (leave it paused) or run.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreRequest {
    pub images_dir: String,
    #[serde(default)]
    pub tcp_established: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    pub layers: usize,
    pub added_at: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullRequest {
    pub reference: String,
    /// Speak plain HTTP to the registry.
    #[serde(default)]
    pub plain_http: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImportRequest {
    /// An OCI layout directory, or an oci-archive / docker-archive tarball.
    pub path: String,
    /// oci-layout, oci-archive or docker-archive.
    pub format: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommitRequest {
    /// Name of the new image.
    pub name: String,
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}
