//! Client for the agent's unix-socket API, used by the CLI subcommands.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "connecting to the agent at {} (is `flotilla-agent serve` running?)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "flotilla-agent");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(sender.send_request(req).await?)
    }

    /// Send a request and decode a JSON answer; a problem body becomes the error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_slice(b"null").map_err(|e| anyhow!("{e}"));
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("decoding the agent's answer to {path}"))
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let detail = serde_json::from_slice::<flotilla_api::Problem>(&bytes)
                .map(|p| p.detail)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("{detail}"));
        }
        Ok((status, bytes))
    }
}
