//! Flotilla's node container runtime: containers from a rootfs and an OCI
//! runtime spec, created by a re-exec'd single-threaded shim (never a fork of
//! the agent), with cgroups v1/v2, overlayfs, named network namespaces, logs
//! and exec. See docs/ARCHITECTURE.md.
pub mod cgroups;
pub mod config;
pub mod criu;
pub mod exec;
pub mod ext_tmpfs;
pub mod init;
pub mod logs;
pub mod netlock;
pub mod rootfs;
pub mod runtime;
pub mod security;
pub mod shim;
pub mod sys;
