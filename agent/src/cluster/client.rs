//! HTTPS client of the controllers' API with failover: a call goes to the current controller
//! and, when it cannot answer (connection error, timeout, 5xx), to the next one in the list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A refused call (4xx): the problem document's code and detail.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for Refused {}

pub struct ControllerClient {
    http: reqwest::Client,
    endpoints: RwLock<Vec<String>>,
    current: AtomicUsize,
    token: Option<String>,
}

impl ControllerClient {
    pub fn new(
        tls: rustls::ClientConfig,
        endpoints: Vec<String>,
        token: Option<String>,
    ) -> Result<Self> {
        anyhow::ensure!(!endpoints.is_empty(), "no controller endpoints");
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .tls_backend_preconfigured(tls)
            .build()
            .context("cannot build the controller client")?;
        Ok(Self {
            http,
            endpoints: RwLock::new(endpoints),
            current: AtomicUsize::new(0),
            token,
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the list (from the cluster's members), keeping the current one first.
    pub fn set_endpoints(&self, list: Vec<String>) {
        if list.is_empty() {
            return;
        }
        let mut e = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if *e != list {
            *e = list;
            self.current.store(0, Ordering::Relaxed);
        }
    }

    fn base(&self) -> String {
        let e = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        e[self.current.load(Ordering::Relaxed) % e.len()].clone()
    }

    /// Use the next controller for the following calls.
    pub fn fail_over(&self) {
        let n = self.endpoints.read().map(|e| e.len()).unwrap_or(1).max(1);
        let next = (self.current.load(Ordering::Relaxed) + 1) % n;
        self.current.store(next, Ordering::Relaxed);
    }

    /// One call to the current controller. A 4xx is `Refused` (no failover: another
    /// controller would answer the same); anything else that is not a success fails over.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T> {
        let base = self.base();
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.fail_over();
                return Err(anyhow!("{base}: {}", chain(&e)));
            }
        };
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .with_context(|| format!("{base}{path}: malformed answer"));
        }
        let text = resp.text().await.unwrap_or_default();
        let problem: Option<flotilla_api::rest::Problem> = serde_json::from_str(&text).ok();
        let (code, detail) = match problem {
            Some(p) => (p.code, p.detail.unwrap_or_default()),
            None => (String::new(), text),
        };
        if status.is_client_error() {
            return Err(Refused {
                status,
                code,
                detail,
            }
            .into());
        }
        self.fail_over();
        Err(anyhow!("{base}{path}: {status} {code}: {detail}"))
    }
}

/// The chain of an error's sources on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
