//! The Flotilla node agent: the local API over the container runtime, its
//! client, and the demo. `main.rs` is a thin CLI over this.
pub mod client;
pub mod cluster;
pub mod demo;
pub mod exec_stream;
pub mod server;
pub mod spec;
