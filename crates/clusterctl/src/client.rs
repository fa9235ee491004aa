//! The API client of one context: TLS verified against the context's CA, a bearer token,
//! endpoints tried in order until one answers. Errors carry the server's problem document.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use flotilla_api::rest::Problem;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;

pub fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
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

/// A refusal by the server: its status and problem document (when it sent one).
#[derive(Debug)]
pub struct ApiFailure {
    pub endpoint: String,
    pub status: u16,
    pub problem: Option<Problem>,
    pub text: String,
}

impl ApiFailure {
    /// The route itself does not exist on this controller (an older build), as opposed to a
    /// missing object: the router's fallback names the path.
    pub fn no_such_route(&self) -> bool {
        self.status == 405
            || (self.status == 404
                && self
                    .problem
                    .as_ref()
                    .and_then(|p| p.detail.as_deref())
                    .is_some_and(|d| d.starts_with("path ")))
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            Some(p) => {
                let detail = p.detail.clone().unwrap_or_else(|| p.title.clone());
                write!(f, "{}: {detail}", self.endpoint)?;
                if let Some(field) = &p.field {
                    write!(f, " (field {field})")?;
                }
                write!(f, " [{}]", self.status)
            }
            None if self.text.trim().is_empty() => {
                write!(f, "{}: the server answered {}", self.endpoint, self.status)
            }
            None => write!(
                f,
                "{}: the server answered {}: {}",
                self.endpoint,
                self.status,
                self.text.trim()
            ),
        }
    }
}

impl std::error::Error for ApiFailure {}

async fn failure(endpoint: &str, resp: reqwest::Response) -> ApiFailure {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    ApiFailure {
        endpoint: endpoint.to_owned(),
        status,
        problem: serde_json::from_str::<Problem>(&text).ok(),
        text,
    }
}

/// An API client for one context.
pub struct Client {
    http: reqwest::Client,
    /// Without an overall timeout: log follows and watches last as long as the user wants.
    streaming: reqwest::Client,
    pub endpoints: Vec<String>,
    token: String,
    ca_pem: String,
}

/// A request: method, path and query, optional JSON body, extra headers.
pub struct Req<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<serde_json::Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Req<'a> {
    pub fn new(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn json(mut self, body: &(impl Serialize + ?Sized)) -> Result<Self> {
        self.body = Some(serde_json::to_value(body).context("cannot encode the request")?);
        Ok(self)
    }

    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl Client {
    pub fn new(config: &Config, name: Option<&str>) -> Result<Self> {
        let ctx = config.context(name)?;
        Self::from_parts(ctx.endpoints.clone(), &ctx.ca_cert, ctx.token.clone())
    }

    pub fn from_parts(endpoints: Vec<String>, ca_pem: &str, token: String) -> Result<Self> {
        let build = |timeout: Option<Duration>| -> Result<reqwest::Client> {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .tls_backend_preconfigured(tls_config(ca_pem)?);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().context("cannot build the http client")
        };
        Ok(Self {
            http: build(Some(Duration::from_secs(60)))?,
            streaming: build(None)?,
            endpoints,
            token,
            ca_pem: ca_pem.to_owned(),
        })
    }

    /// Send `req` to the first endpoint that answers (a connection failure tries the next);
    /// a success is returned, any other answer is an `ApiFailure`.
    pub async fn send(
        &self,
        req: &Req<'_>,
        endpoints: Option<&[String]>,
        streaming: bool,
    ) -> Result<reqwest::Response> {
        let endpoints = endpoints.unwrap_or(&self.endpoints);
        let http = if streaming {
            &self.streaming
        } else {
            &self.http
        };
        let mut last = None;
        for ep in endpoints {
            let mut r = http
                .request(req.method.clone(), format!("https://{ep}{}", req.path))
                .bearer_auth(&self.token);
            for (k, v) in &req.headers {
                r = r.header(*k, v);
            }
            if let Some(b) = &req.body {
                r = r.json(b);
            }
            match r.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => return Err(failure(ep, resp).await.into()),
                Err(e) => {
                    last = Some(anyhow::Error::new(e).context(format!("cannot reach {ep}")));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the context has no endpoints")))
    }

    /// Send and decode a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        endpoints: Option<&[String]>,
    ) -> Result<T> {
        let mut req = Req::new(method, path);
        if let Some(b) = body {
            req = req.json(b)?;
        }
        let resp = self.send(&req, endpoints, false).await?;
        let url = resp.url().clone();
        resp.json()
            .await
            .with_context(|| format!("malformed answer from {}", url.authority()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>, None).await
    }

    /// GET a JSON document and its `ETag`.
    pub async fn get_with_etag(&self, path: &str) -> Result<(serde_json::Value, Option<String>)> {
        let resp = self.send(&Req::new(Method::GET, path), None, false).await?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let v = resp.json().await.context("malformed answer")?;
        Ok((v, etag))
    }

    /// Send `req` and decode the answer with its HTTP status.
    pub async fn send_json(&self, req: &Req<'_>) -> Result<(u16, serde_json::Value)> {
        let resp = self.send(req, None, false).await?;
        let status = resp.status().as_u16();
        let v = resp.json().await.context("malformed answer")?;
        Ok((status, v))
    }
}

impl Client {
    /// Open a WebSocket on `path_and_query` (subprotocol `protocol`) at the first endpoint
    /// that accepts a connection; a refusal is an `ApiFailure` with the server's problem.
    pub async fn websocket(
        &self,
        path_and_query: &str,
        protocol: &'static str,
    ) -> Result<crate::exec_stream::Socket> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let mut tls = tls_config(&self.ca_pem)?;
        // WebSockets upgrade HTTP/1.1 connections.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let mut last = None;
        for ep in &self.endpoints {
            let attempt = async {
                let host = ep
                    .rsplit_once(':')
                    .map_or(ep.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{ep}: not a host name or address"))?;
                let tcp = tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect(ep.as_str()),
                )
                .await
                .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
                let _ = tcp.set_nodelay(true);
                let stream = connector.connect(name, tcp).await?;
                anyhow::Ok(stream)
            };
            let stream = match attempt.await {
                Ok(s) => s,
                Err(e) => {
                    last = Some(e.context(format!("cannot reach {ep}")));
                    continue;
                }
            };
            let mut req = format!("wss://{ep}{path_and_query}").into_client_request()?;
            let h = req.headers_mut();
            h.insert("authorization", format!("Bearer {}", self.token).parse()?);
            h.insert("sec-websocket-protocol", protocol.parse()?);
            return match tokio_tungstenite::client_async(req, stream).await {
                Ok((ws, _)) => Ok(ws),
                Err(tungstenite::Error::Http(resp)) => {
                    let text = resp
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    Err(ApiFailure {
                        endpoint: ep.clone(),
                        status: resp.status().as_u16(),
                        problem: serde_json::from_str::<Problem>(&text).ok(),
                        text,
                    }
                    .into())
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("{ep}: websocket handshake"))),
            };
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the context has no endpoints")))
    }
}

/// Encode one path segment (object names are DNS labels, but user input may be anything).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
