//! Pulling from (and pushing to) an OCI distribution (v2) registry over HTTP or HTTPS.
//!
//! A small client on `reqwest` rather than `oci-client`: blobs must stream straight into the
//! store's verified writer (hash and size cap while receiving, no second pass), layers are
//! unpacked on the blocking pool as soon as each blob lands (overlapping the other downloads),
//! the manifest `Accept` list must include the OCI types (Debian's docker-registry answers 404
//! otherwise), and a custom CA must replace the system roots for the test registry. Doing that
//! through oci-client would mean wrapping most of it; the protocol subset needed here (challenge
//! based basic/bearer auth, manifests, blobs, monolithic uploads) is small.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Document, Manifest};
use crate::store::{parse_config, LayerInfo};
use crate::{Image, ImageError, ImageStore};

/// Credentials for a registry.
#[derive(Clone, Default)]
pub enum RegistryAuth {
    /// No credentials (anonymous bearer tokens are still fetched when challenged).
    #[default]
    Anonymous,
    /// Username and password: sent as basic auth when challenged with `Basic`, and to the
    /// token endpoint when challenged with `Bearer`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token obtained elsewhere.
    Token(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Credentials.
    pub auth: RegistryAuth,
    /// Speak plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// PEM CA certificates to trust *instead of* the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Per-request timeout for everything but blob bodies (default 60 s).
    pub timeout: Option<Duration>,
}

/// A progress event of a pull.
#[derive(Clone, Debug)]
pub enum PullProgress {
    /// The manifest was resolved.
    Resolved {
        /// Manifest digest (the image id).
        manifest: Digest,
        /// Number of layers.
        layers: usize,
        /// Sum of layer blob sizes.
        total_bytes: u64,
    },
    /// Bytes of a layer blob received so far.
    Downloading {
        /// Blob digest.
        digest: Digest,
        /// Bytes received.
        done: u64,
        /// Blob size.
        total: u64,
    },
    /// A blob is stored (`cached`: it was already there).
    Downloaded {
        /// Blob digest.
        digest: Digest,
        /// Whether the store already had it.
        cached: bool,
    },
    /// A layer is unpacked (or was already).
    Unpacked {
        /// The layer's diff_id.
        diff_id: Digest,
    },
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// Options of [`ImageStore::pull`].
#[derive(Clone)]
pub struct PullOptions {
    /// Connection and credentials.
    pub registry: RegistryOptions,
    /// OS to pick from an index.
    pub os: String,
    /// Architecture to pick from an index.
    pub architecture: String,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            registry: RegistryOptions::default(),
            os: "linux".into(),
            architecture: "amd64".into(),
            concurrency: 4,
            progress: None,
        }
    }
}

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTP client could not be built (bad CA PEM, TLS setup).
    #[error("building the registry client")]
    Client(#[source] reqwest::Error),
    /// A request failed at the transport level.
    #[error("{method} {url}")]
    Transport {
        /// HTTP method.
        method: Method,
        /// URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: status {status}: {body}")]
    Status {
        /// HTTP method.
        method: Method,
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// 401 with a challenge we cannot answer.
    #[error("{url}: authentication failed or unsupported challenge {challenge:?}")]
    Auth {
        /// URL.
        url: String,
        /// The WWW-Authenticate header.
        challenge: String,
    },
    /// The token endpoint's answer had no token.
    #[error("token endpoint {realm}: no token in the response")]
    NoToken {
        /// The realm URL.
        realm: String,
    },
    /// A body larger than announced or than the cap.
    #[error("{url}: body exceeds {limit} bytes")]
    TooLarge {
        /// URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A blob whose size differs from its descriptor.
    #[error("blob {digest}: received {got} bytes, the descriptor says {expected}")]
    Size {
        /// Blob digest.
        digest: Digest,
        /// Bytes received.
        got: u64,
        /// Size from the descriptor.
        expected: u64,
    },
    /// A reference that is not absolute or has no repository.
    #[error("invalid registry url {0:?}")]
    Url(String),
}

#[derive(Clone)]
enum AuthState {
    None,
    Basic,
    Bearer(String),
}

/// A client for one repository on one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repo: String,
    auth: RegistryAuth,
    state: tokio::sync::Mutex<AuthState>,
    timeout: Duration,
}

fn install_crypto_provider() {
    // reqwest is built with `rustls-no-provider`: install ring once (an Err means some other
    // part of the process already installed one, which is fine).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm=…`).
fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, rest) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((k, v));
        s = rest.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl RegistryClient {
    /// A client for `registry` (host[:port]) and `repo`.
    pub fn new(registry: &str, repo: &str, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("flotilla-image/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30));
        if let Some(pem) = &opts.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(RegistryError::Client)?;
            b = b.tls_certs_only(certs);
        }
        let http = b.build().map_err(RegistryError::Client)?;
        let scheme = if opts.plain_http { "http" } else { "https" };
        let auth = opts.auth.clone();
        let state = match &auth {
            RegistryAuth::Token(t) => AuthState::Bearer(t.clone()),
            _ => AuthState::None,
        };
        Ok(Self {
            http,
            base: format!("{scheme}://{registry}"),
            repo: repo.to_owned(),
            auth,
            state: tokio::sync::Mutex::new(state),
            timeout: opts.timeout.unwrap_or(Duration::from_secs(60)),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{}", self.base, self.repo, tail)
    }

    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    /// Sends a request, answering one 401 challenge (basic or bearer) and retrying.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<bytes_body::Body>,
        actions: &str,
        timeout: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        for attempt in 0..2 {
            let mut rb = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if timeout {
                rb = rb.timeout(self.timeout);
            }
            if let Some(b) = &body {
                rb = rb.body(b.clone().into_reqwest());
            }
            match self.state.lock().await.clone() {
                AuthState::None => {}
                AuthState::Basic => {
                    if let RegistryAuth::Basic { username, password } = &self.auth {
                        rb = rb.basic_auth(username, Some(password));
                    }
                }
                AuthState::Bearer(t) => rb = rb.bearer_auth(t),
            }
            let resp = rb.send().await.map_err(|source| RegistryError::Transport {
                method: method.clone(),
                url: url.to_owned(),
                source,
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let auth_err = || RegistryError::Auth {
                url: url.to_owned(),
                challenge: challenge.clone(),
            };
            let (scheme, params) = parse_challenge(&challenge).ok_or_else(auth_err)?;
            let new_state = match scheme.as_str() {
                "basic" => match &self.auth {
                    RegistryAuth::Basic { .. } => AuthState::Basic,
                    _ => return Err(auth_err()),
                },
                "bearer" => {
                    let get = |k: &str| {
                        params
                            .iter()
                            .find(|(pk, _)| pk == k)
                            .map(|(_, v)| v.clone())
                    };
                    let realm = get("realm").ok_or_else(auth_err)?;
                    let scope = get("scope")
                        .unwrap_or_else(|| format!("repository:{}:{actions}", self.repo));
                    AuthState::Bearer(
                        self.fetch_token(&realm, get("service").as_deref(), &scope)
                            .await?,
                    )
                }
                _ => return Err(auth_err()),
            };
            tracing::debug!(%url, scheme = %scheme, "answering registry auth challenge");
            *self.state.lock().await = new_state;
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut url =
            reqwest::Url::parse(realm).map_err(|_| RegistryError::Url(realm.to_owned()))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut rb = self.http.get(url.clone()).timeout(self.timeout);
        if let RegistryAuth::Basic { username, password } = &self.auth {
            rb = rb.basic_auth(username, Some(password));
        }
        let resp = rb.send().await.map_err(|source| RegistryError::Transport {
            method: Method::GET,
            url: url.to_string(),
            source,
        })?;
        let resp = check(Method::GET, url.as_str(), resp, &[StatusCode::OK]).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|source| RegistryError::Transport {
                method: Method::GET,
                url: url.to_string(),
                source,
            })?;
        #[derive(serde::Deserialize)]
        struct T {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: T = serde_json::from_slice(&body).map_err(|_| RegistryError::NoToken {
            realm: realm.to_owned(),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::NoToken {
                realm: realm.to_owned(),
            })
    }

    /// Fetches a manifest or index by tag or digest: (bytes, content type, Docker-Content-Digest).
    pub async fn get_manifest(
        &self,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<String>), RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(manifest::MANIFEST_ACCEPT));
        let resp = self.send(Method::GET, &url, h, None, "pull", true).await?;
        let resp = check(Method::GET, &url, resp, &[StatusCode::OK]).await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let dcd = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(resp, &url, manifest::MAX_MANIFEST_BYTES as u64).await?;
        Ok((body, ct, dcd))
    }

    /// Fetches a small blob into memory, verified.
    async fn get_small_blob(&self, d: &Descriptor, cap: usize) -> Result<Vec<u8>, ImageError> {
        let url = self.url(&format!("blobs/{}", d.digest));
        let resp = self
            .send(Method::GET, &url, HeaderMap::new(), None, "pull", true)
            .await?;
        let resp = check(Method::GET, &url, resp, &[StatusCode::OK]).await?;
        let body = read_capped(resp, &url, cap as u64).await?;
        d.digest.verify(&Digest::of(&body))?;
        Ok(body)
    }

    /// Streams a blob into the store, verifying size and digest.
    /// With `tee`, every chunk is also sent there (to an unpacker running while the blob
    /// downloads); returns `Ok(false)` if the receiver went away first (the unpacker failed),
    /// in which case the blob is not stored.
    async fn download_blob(
        &self,
        store: &ImageStore,
        d: &Descriptor,
        progress: &Option<ProgressFn>,
        tee: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    ) -> Result<bool, ImageError> {
        let url = self.url(&format!("blobs/{}", d.digest));
        let resp = self
            .send(Method::GET, &url, HeaderMap::new(), None, "pull", false)
            .await?;
        let mut resp = check(Method::GET, &url, resp, &[StatusCode::OK]).await?;
        let mut w = store.blob_writer(Some(&d.digest), d.size)?;
        let mut done = 0u64;
        let mut last_report = 0u64;
        let transport = |source| RegistryError::Transport {
            method: Method::GET,
            url: url.clone(),
            source,
        };
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            done += chunk.len() as u64;
            if done > d.size {
                return Err(RegistryError::Size {
                    digest: d.digest.clone(),
                    got: done,
                    expected: d.size,
                }
                .into());
            }
            w.write_all(&chunk).map_err(crate::store::io_err(
                "writing blob",
                store.blob_path(&d.digest),
            ))?;
            if let Some(t) = &tee {
                if t.send(chunk.to_vec()).await.is_err() {
                    return Ok(false);
                }
            }
            if let Some(p) = progress {
                if done - last_report >= (1 << 20) || done == d.size {
                    last_report = done;
                    p(&PullProgress::Downloading {
                        digest: d.digest.clone(),
                        done,
                        total: d.size,
                    });
                }
            }
        }
        if done != d.size {
            return Err(RegistryError::Size {
                digest: d.digest.clone(),
                got: done,
                expected: d.size,
            }
            .into());
        }
        w.commit()?;
        Ok(true)
    }

    /// Whether the registry has the blob.
    async fn has_blob(&self, d: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{d}"));
        let resp = self
            .send(
                Method::HEAD,
                &url,
                HeaderMap::new(),
                None,
                "pull,push",
                true,
            )
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Uploads a blob with a monolithic POST-then-PUT (skipped when already present).
    pub async fn push_blob(&self, d: &Digest, data: bytes_body::Body) -> Result<(), RegistryError> {
        if self.has_blob(d).await? {
            return Ok(());
        }
        let url = self.url("blobs/uploads/");
        let resp = self
            .send(
                Method::POST,
                &url,
                HeaderMap::new(),
                None,
                "pull,push",
                true,
            )
            .await?;
        let resp = check(Method::POST, &url, resp, &[StatusCode::ACCEPTED]).await?;
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Url("upload without Location".into()))?;
        let mut put = self.resolve(loc);
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={d}"));
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = self
            .send(Method::PUT, &put, h, Some(data), "pull,push", false)
            .await?;
        check(Method::PUT, &put, resp, &[StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Uploads a manifest under `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::Url(media_type.into()))?,
        );
        let resp = self
            .send(
                Method::PUT,
                &url,
                h,
                Some(bytes_body::Body::from(bytes)),
                "pull,push",
                true,
            )
            .await?;
        check(Method::PUT, &url, resp, &[StatusCode::CREATED]).await?;
        Ok(())
    }
}

/// A cheaply clonable request body (retries after an auth challenge resend it).
pub mod bytes_body {
    /// Shared bytes.
    #[derive(Clone)]
    pub struct Body(std::sync::Arc<Vec<u8>>);
    impl From<Vec<u8>> for Body {
        fn from(v: Vec<u8>) -> Self {
            Self(std::sync::Arc::new(v))
        }
    }
    impl Body {
        pub(crate) fn into_reqwest(self) -> reqwest::Body {
            let v = std::sync::Arc::try_unwrap(self.0).unwrap_or_else(|a| (*a).clone());
            reqwest::Body::from(v)
        }
    }
}

async fn check(
    method: Method,
    url: &str,
    resp: reqwest::Response,
    ok: &[StatusCode],
) -> Result<reqwest::Response, RegistryError> {
    if ok.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(RegistryError::Status {
        method,
        url: url.to_owned(),
        status,
        body: body.trim().to_owned(),
    })
}

async fn read_capped(
    mut resp: reqwest::Response,
    url: &str,
    cap: u64,
) -> Result<Vec<u8>, RegistryError> {
    if resp.content_length().is_some_and(|l| l > cap) {
        return Err(RegistryError::TooLarge {
            url: url.to_owned(),
            limit: cap,
        });
    }
    let mut v = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::Transport {
            method: Method::GET,
            url: url.to_owned(),
            source,
        })?
    {
        if v.len() as u64 + c.len() as u64 > cap {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                limit: cap,
            });
        }
        v.extend_from_slice(&c);
    }
    Ok(v)
}

/// Splits a reference into (registry host, repository, tag-or-digest, normalised name).
pub fn split_reference(reference: &str) -> Result<(String, String, String, String), ImageError> {
    let r: oci_spec::distribution::Reference =
        reference.parse().map_err(|source| ImageError::Reference {
            reference: reference.to_owned(),
            source,
        })?;
    let target = match (r.digest(), r.tag()) {
        (Some(d), _) => {
            Digest::parse(d)?;
            d.to_owned()
        }
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    };
    Ok((
        r.resolve_registry().to_owned(),
        r.repository().to_owned(),
        target,
        r.whole(),
    ))
}

impl ImageStore {
    /// Pulls `reference` (`host:port/repo:tag` or `…@sha256:…`): resolves an index to the
    /// wanted platform, fetches config and layers (concurrently, skipping blobs already
    /// stored), unpacks each layer on the blocking pool as soon as it lands, and records the
    /// image under the reference's normalised name.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, ImageError> {
        let started = std::time::Instant::now();
        let (registry, repo, target, name) = split_reference(reference)?;
        let client = RegistryClient::new(&registry, &repo, &opts.registry)?;
        let mut lease = self.lease();
        let (bytes, ct, dcd) = client.get_manifest(&target).await?;
        let mut md = Digest::of(&bytes);
        if target.starts_with("sha256:") {
            Digest::parse(&target)?.verify(&md)?;
        } else if let Some(h) = dcd.as_deref().and_then(|h| Digest::parse(h).ok()) {
            h.verify(&md)?;
        }
        let mut manifest_bytes = bytes;
        let mut doc = manifest::parse_document(&manifest_bytes, ct.as_deref(), reference)?;
        if let Document::Index(idx) = &doc {
            let d =
                manifest::select_platform(idx, &opts.os, &opts.architecture, reference)?.clone();
            let (b, ct, _) = client.get_manifest(&d.digest.to_string()).await?;
            d.digest.verify(&Digest::of(&b))?;
            md = d.digest.clone();
            doc = manifest::parse_document(
                &b,
                ct.as_deref().or(Some(&d.media_type)),
                &md.to_string(),
            )?;
            manifest_bytes = b;
        }
        let Document::Manifest(m) = doc else {
            return Err(ImageError::Invalid {
                what: md.to_string(),
                detail: "index inside an index".into(),
            });
        };
        lease.hold(&md);
        lease.hold(&m.config.digest);
        let config_bytes = if self.has_blob(&m.config.digest) {
            self.read_blob(&m.config.digest, manifest::MAX_CONFIG_BYTES)?
        } else {
            let b = client
                .get_small_blob(&m.config, manifest::MAX_CONFIG_BYTES)
                .await?;
            self.put_blob_bytes(&b, Some(&m.config.digest))?;
            b
        };
        let config = parse_config(&config_bytes, &m.config.digest.to_string())?;
        let layers = crate::store::layer_infos(&m, &config, &md.to_string())?;
        let total: u64 = layers.iter().map(|l| l.size).sum();
        tracing::info!(%reference, manifest = %md, layers = layers.len(), total_bytes = total, "pulling image");
        if let Some(p) = &opts.progress {
            p(&PullProgress::Resolved {
                manifest: md.clone(),
                layers: layers.len(),
                total_bytes: total,
            });
        }
        for l in &layers {
            lease.hold(&l.digest);
            lease.hold(&l.diff_id);
        }
        // Same blob twice in one manifest: fetch it once.
        let mut seen = HashSet::new();
        let unique: Vec<(LayerInfo, Descriptor)> = layers
            .iter()
            .zip(&m.layers)
            .filter(|(l, _)| seen.insert(l.digest.clone()))
            .map(|(l, d)| (l.clone(), d.clone()))
            .collect();
        let client = &client;
        stream::iter(unique)
            .map(|(info, desc)| async move {
                self.pull_layer(client, info, desc, &opts.progress).await
            })
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        self.put_blob_bytes(&manifest_bytes, Some(&md))?;
        let store = self.clone();
        let img =
            tokio::task::spawn_blocking(move || store.add_image(&md, &m, config, Some(&name)))
                .await
                .map_err(|e| ImageError::Io {
                    op: "joining the index task",
                    path: self.root().to_path_buf(),
                    source: std::io::Error::other(e),
                })??;
        tracing::info!(%reference, id = %img.id, ms = started.elapsed().as_millis() as u64, "image pulled");
        drop(lease);
        Ok(img)
    }
}

impl ImageStore {
    /// Fetches one layer blob and unpacks it. When neither the blob nor the layer is present,
    /// the blob streams into the store and, at the same time, through a channel into the
    /// unpacker on the blocking pool; the layer is moved into place only once the blob's
    /// digest and the layer's diff_id both check out.
    async fn pull_layer(
        &self,
        client: &RegistryClient,
        info: LayerInfo,
        desc: Descriptor,
        progress: &Option<ProgressFn>,
    ) -> Result<(), ImageError> {
        let join = |e: tokio::task::JoinError| ImageError::Io {
            op: "joining the unpack task",
            path: self.layer_dir(&info.diff_id),
            source: std::io::Error::other(e),
        };
        let cached = self.has_blob(&desc.digest);
        let store = self.clone();
        let diff_id = info.diff_id.clone();
        let slot = tokio::task::spawn_blocking(move || store.reserve_layer(&diff_id))
            .await
            .map_err(join)??;
        match slot {
            None => {
                if !cached {
                    client.download_blob(self, &desc, progress, None).await?;
                }
            }
            Some(slot) if cached => {
                let store = self.clone();
                let i = info.clone();
                tokio::task::spawn_blocking(move || {
                    slot.unpack(&i, store.open_blob(&i.digest)?)?;
                    slot.install()
                })
                .await
                .map_err(join)??;
            }
            Some(slot) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                let i = info.clone();
                let unpack = tokio::task::spawn_blocking(move || {
                    let r = slot.unpack(
                        &i,
                        ChanReader {
                            rx,
                            cur: Vec::new(),
                            pos: 0,
                        },
                    );
                    r.map(|_| slot)
                });
                let downloaded = client.download_blob(self, &desc, progress, Some(tx)).await;
                let unpacked = unpack.await.map_err(join)?;
                match (downloaded, unpacked) {
                    (Ok(true), Ok(slot)) => {
                        tokio::task::spawn_blocking(move || slot.install())
                            .await
                            .map_err(join)??;
                    }
                    (Err(e), _) => return Err(e),
                    (Ok(_), Err(e)) => return Err(e),
                    (Ok(false), Ok(_)) => {
                        return Err(ImageError::Invalid {
                            what: desc.digest.to_string(),
                            detail: "the unpacker stopped reading before the blob ended".into(),
                        })
                    }
                }
            }
        }
        if let Some(p) = progress {
            p(&PullProgress::Downloaded {
                digest: desc.digest.clone(),
                cached,
            });
            p(&PullProgress::Unpacked {
                diff_id: info.diff_id.clone(),
            });
        }
        Ok(())
    }
}

/// A blocking reader over chunks sent from async code.
struct ChanReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Pushes the image of an OCI layout (the manifest whose ref name is `ref_name`, or the only
/// one) to `reference` on a registry: blobs (config, then layers) by POST + PUT, then the
/// manifest. Returns the manifest digest.
pub async fn push_oci_layout(
    layout: &Path,
    ref_name: Option<&str>,
    reference: &str,
    opts: &RegistryOptions,
) -> Result<Digest, ImageError> {
    let (registry, repo, target, _) = split_reference(reference)?;
    let client = RegistryClient::new(&registry, &repo, opts)?;
    let read = |p: &Path| std::fs::read(p).map_err(crate::store::io_err("reading", p));
    let idx_path = layout.join("index.json");
    let idx = match manifest::parse_document(
        &read(&idx_path)?,
        Some(manifest::OCI_INDEX),
        &idx_path.display().to_string(),
    )? {
        Document::Index(i) => i,
        Document::Manifest(_) => {
            return Err(ImageError::Invalid {
                what: idx_path.display().to_string(),
                detail: "not an index".into(),
            })
        }
    };
    let d = idx
        .manifests
        .iter()
        .find(|d| {
            ref_name.is_none_or(|r| {
                d.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(r)
            })
        })
        .ok_or_else(|| ImageError::Invalid {
            what: idx_path.display().to_string(),
            detail: format!("no manifest {ref_name:?}"),
        })?;
    let blob = |dg: &Digest| layout.join("blobs/sha256").join(dg.hex());
    let mbytes = read(&blob(&d.digest))?;
    d.digest.verify(&Digest::of(&mbytes))?;
    let m: Manifest =
        match manifest::parse_document(&mbytes, Some(&d.media_type), &d.digest.to_string())? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(ImageError::Invalid {
                    what: d.digest.to_string(),
                    detail: "pushing an index is not supported".into(),
                })
            }
        };
    for desc in std::iter::once(&m.config).chain(&m.layers) {
        let data = read(&blob(&desc.digest))?;
        desc.digest.verify(&Digest::of(&data))?;
        client.push_blob(&desc.digest, data.into()).await?;
    }
    let mt = m
        .media_type
        .clone()
        .unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
    client.push_manifest(&target, &mt, mbytes).await?;
    tracing::info!(%reference, manifest = %d.digest, "pushed layout");
    Ok(d.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "http://127.0.0.1:1/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(s, "basic");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn references() {
        let (reg, repo, t, n) = split_reference("127.0.0.1:5000/test/busybox:1").unwrap();
        assert_eq!(
            (reg.as_str(), repo.as_str(), t.as_str()),
            ("127.0.0.1:5000", "test/busybox", "1")
        );
        assert_eq!(n, "127.0.0.1:5000/test/busybox:1");
        assert!(split_reference("127.0.0.1:5000/x@sha256:../../x").is_err());
    }
}
