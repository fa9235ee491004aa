//! Pulls from Debian's `docker-registry` started on 127.0.0.1 with its own configuration:
//! anonymous over HTTP, basic auth (htpasswd), bearer tokens (a token server in this test signs
//! ES256 JWTs the registry verifies against its rootcertbundle), HTTPS with a custom CA, an image
//! index resolved to linux/amd64, Docker schema 2 media types, zstd layers, progress events.
//! The registry must be installed (deploy/install-deps.sh): a missing one fails these tests.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine;
use common::{chain, RawTar, Scratch};
use flotilla_image::manifest;
use flotilla_image::registry::{push_oci_layout, RegistryClient, RegistryOptions};
use flotilla_image::testimage::{
    build_busybox_oci_layout, write_oci_layout, LayerCompression, TestConfig, TestLayer,
};
use flotilla_image::testregistry::{TestRegistry, TestRegistryConfig, TokenAuthConfig};
use flotilla_image::{Digest, PullOptions, PullProgress, RegistryAuth};

fn pull_opts(reg: &TestRegistry, auth: RegistryAuth) -> PullOptions {
    PullOptions {
        registry: reg.options(auth),
        ..PullOptions::default()
    }
}

fn basic(u: &str, p: &str) -> RegistryAuth {
    RegistryAuth::Basic {
        username: u.into(),
        password: p.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_anonymous_over_http_with_progress() {
    let reg = TestRegistry::start_plain().unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    let info = build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let pushed = push_oci_layout(
        &layout,
        None,
        &reg.reference("test/busybox:1"),
        &reg.options(RegistryAuth::Anonymous),
    )
    .await
    .unwrap();
    assert_eq!(pushed, info.manifest);
    let store = s.store();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut opts = pull_opts(&reg, RegistryAuth::Anonymous);
    opts.progress = Some(Arc::new(move |p: &PullProgress| {
        ev.lock().unwrap().push(p.clone())
    }));
    let img = store
        .pull(&reg.reference("test/busybox:1"), &opts)
        .await
        .unwrap();
    assert_eq!(img.id, info.manifest);
    assert_eq!(img.names, vec![reg.reference("test/busybox:1")]);
    assert_eq!(img.config.cmd(), vec!["sh"]);
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    {
        let ev = events.lock().unwrap();
        assert!(
            matches!(&ev[0], PullProgress::Resolved { layers: 1, .. }),
            "{ev:?}"
        );
        assert!(ev
            .iter()
            .any(|e| matches!(e, PullProgress::Downloading { done, total, .. } if done == total)));
        assert!(ev
            .iter()
            .any(|e| matches!(e, PullProgress::Downloaded { cached: false, .. })));
        assert!(ev
            .iter()
            .any(|e| matches!(e, PullProgress::Unpacked { .. })));
    }
    // A second pull finds every blob stored.
    events.lock().unwrap().clear();
    let again = store
        .pull(&reg.reference("test/busybox:1"), &opts)
        .await
        .unwrap();
    assert_eq!(again.id, img.id);
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, PullProgress::Downloaded { cached: true, .. })));
    // By digest.
    let by_digest = store
        .pull(
            &reg.reference(&format!("test/busybox@{}", info.manifest)),
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(by_digest.id, img.id);
    // Unknown tag: a clear status error.
    let e = store
        .pull(&reg.reference("test/busybox:nope"), &opts)
        .await
        .unwrap_err();
    assert!(chain(&e).contains("status 404"), "{}", chain(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_index_resolves_linux_amd64_and_zstd_layers() {
    let reg = TestRegistry::start_plain().unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-multi");
    let amd = write_oci_layout(
        &layout,
        "amd64",
        &[
            TestLayer {
                tar: RawTar::new().file("arch", b"amd64").finish(),
                compression: LayerCompression::Zstd,
            },
            TestLayer {
                tar: RawTar::new().file("plain", b"p").finish(),
                compression: LayerCompression::None,
            },
        ],
        &TestConfig::busybox(),
    )
    .unwrap();
    let arm = write_oci_layout(
        &layout,
        "arm64",
        &[TestLayer::gzip(
            RawTar::new().file("arch", b"arm64").finish(),
        )],
        &TestConfig::busybox(),
    )
    .unwrap();
    let opts = reg.options(RegistryAuth::Anonymous);
    push_oci_layout(
        &layout,
        Some("amd64"),
        &reg.reference("test/multi:amd64"),
        &opts,
    )
    .await
    .unwrap();
    push_oci_layout(
        &layout,
        Some("arm64"),
        &reg.reference("test/multi:arm64"),
        &opts,
    )
    .await
    .unwrap();
    let size = |d: &Digest| {
        std::fs::metadata(layout.join("blobs/sha256").join(d.hex()))
            .unwrap()
            .len()
    };
    // arm64 first, so picking the first entry would be wrong.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": arm.manifest.to_string(), "size": size(&arm.manifest),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": amd.manifest.to_string(), "size": size(&amd.manifest),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let client = RegistryClient::new(&reg.addr, "test/multi", &opts).unwrap();
    client
        .push_manifest(
            "multi",
            manifest::OCI_INDEX,
            serde_json::to_vec(&index).unwrap(),
        )
        .await
        .unwrap();
    let store = s.store();
    let img = store
        .pull(
            &reg.reference("test/multi:multi"),
            &pull_opts(&reg, RegistryAuth::Anonymous),
        )
        .await
        .unwrap();
    assert_eq!(img.id, amd.manifest);
    let dirs = store.layer_dirs(&img);
    assert_eq!(std::fs::read(dirs[1].join("arch")).unwrap(), b"amd64");
    assert_eq!(std::fs::read(dirs[0].join("plain")).unwrap(), b"p");
    // No arm64 entry for another OS/arch: a clear error.
    let mut o = pull_opts(&reg, RegistryAuth::Anonymous);
    o.architecture = "riscv64".into();
    let e = store
        .pull(&reg.reference("test/multi:multi"), &o)
        .await
        .unwrap_err();
    assert!(
        chain(&e).contains("no manifest for linux/riscv64"),
        "{}",
        chain(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_docker_schema2_manifest() {
    let reg = TestRegistry::start_plain().unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    let info = build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let opts = reg.options(RegistryAuth::Anonymous);
    let client = RegistryClient::new(&reg.addr, "test/docker", &opts).unwrap();
    let blob = |d: &Digest| std::fs::read(layout.join("blobs/sha256").join(d.hex())).unwrap();
    let config = blob(&info.config);
    let layer = blob(&info.layers[0]);
    client
        .push_blob(&info.config, config.clone().into())
        .await
        .unwrap();
    client
        .push_blob(&info.layers[0], layer.clone().into())
        .await
        .unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_MANIFEST,
        "config": {"mediaType": manifest::DOCKER_CONFIG, "digest": info.config.to_string(), "size": config.len()},
        "layers": [{"mediaType": manifest::DOCKER_LAYER_GZIP, "digest": info.layers[0].to_string(), "size": layer.len()}],
    });
    let mb = serde_json::to_vec(&m).unwrap();
    client
        .push_manifest("v2s2", manifest::DOCKER_MANIFEST, mb.clone())
        .await
        .unwrap();
    let store = s.store();
    let img = store
        .pull(
            &reg.reference("test/docker:v2s2"),
            &pull_opts(&reg, RegistryAuth::Anonymous),
        )
        .await
        .unwrap();
    assert_eq!(img.id, Digest::of(&mb));
    assert!(store.layer_dirs(&img)[0]
        .join("bin/sh")
        .symlink_metadata()
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_basic_auth() {
    let cfg = TestRegistryConfig {
        basic_users: vec![("flotilla".into(), "s3cret".into())],
        ..Default::default()
    };
    let reg = TestRegistry::start(&cfg).unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let r = reg.reference("private/busybox:1");
    let e = push_oci_layout(&layout, None, &r, &reg.options(RegistryAuth::Anonymous))
        .await
        .unwrap_err();
    assert!(
        chain(&e).contains("authentication failed or unsupported challenge"),
        "{}",
        chain(&e)
    );
    push_oci_layout(&layout, None, &r, &reg.options(basic("flotilla", "s3cret")))
        .await
        .unwrap();
    let store = s.store();
    let e = store
        .pull(&r, &pull_opts(&reg, RegistryAuth::Anonymous))
        .await
        .unwrap_err();
    assert!(chain(&e).contains("Basic realm"), "{}", chain(&e));
    let e = store
        .pull(&r, &pull_opts(&reg, basic("flotilla", "wrong")))
        .await
        .unwrap_err();
    assert!(chain(&e).contains("status 401"), "{}", chain(&e));
    let img = store
        .pull(&r, &pull_opts(&reg, basic("flotilla", "s3cret")))
        .await
        .unwrap();
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    assert!(store.list().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_over_https_with_custom_ca() {
    let reg = TestRegistry::start(&TestRegistryConfig {
        tls: true,
        ..Default::default()
    })
    .unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let r = reg.reference("tls/busybox:1");
    push_oci_layout(&layout, None, &r, &reg.options(RegistryAuth::Anonymous))
        .await
        .unwrap();
    let store = s.store();
    let img = store
        .pull(&r, &pull_opts(&reg, RegistryAuth::Anonymous))
        .await
        .unwrap();
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    // Without the CA (system roots only) the certificate is refused.
    let mut o = pull_opts(&reg, RegistryAuth::Anonymous);
    o.registry.ca_pem = None;
    let e = store.pull(&r, &o).await.unwrap_err();
    let msg = format!("{:?}", e);
    assert!(
        msg.to_lowercase().contains("certificate") || chain(&e).contains("error sending request"),
        "{msg}"
    );
    // Plain HTTP against the TLS port fails too.
    let mut o = pull_opts(&reg, RegistryAuth::Anonymous);
    o.registry.plain_http = true;
    assert!(store.pull(&r, &o).await.is_err());
}

/// A token server: checks basic credentials and issues ES256 JWTs (x5c = the self-signed
/// certificate the registry trusts) granting the scope asked for.
struct TokenServer {
    realm: String,
    cert_pem: String,
    issued: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

async fn start_token_server(user: &'static str, pass: &'static str) -> TokenServer {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["token-signer".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "flotilla token signer");
    let cert = params.self_signed(&key).unwrap();
    let cert_der = cert.der().to_vec();
    let rng = ring::rand::SystemRandom::new();
    let signer = Arc::new(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap(),
    );
    let issued = Arc::new(Mutex::new(0u32));
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );

    #[derive(Clone)]
    struct St {
        signer: Arc<EcdsaKeyPair>,
        cert_der: Vec<u8>,
        expected_auth: String,
        issued: Arc<Mutex<u32>>,
    }
    let st = St {
        signer,
        cert_der,
        expected_auth,
        issued: issued.clone(),
    };
    async fn token(
        State(st): State<St>,
        headers: HeaderMap,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> Result<axum::Json<serde_json::Value>, StatusCode> {
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(st.expected_auth.as_str())
        {
            return Err(StatusCode::UNAUTHORIZED);
        }
        let mut access = Vec::new();
        if let Some(scope) = q.get("scope") {
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if parts.len() == 3 {
                access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": parts[2].split(',').collect::<Vec<_>>()}));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [base64::engine::general_purpose::STANDARD.encode(&st.cert_der)]});
        let claims = serde_json::json!({
            "iss": "flotilla-test-issuer", "sub": "flotilla", "aud": q.get("service").cloned().unwrap_or_default(),
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{:x}", rand_u64()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let sig = st
            .signer
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        let jwt = format!("{signing_input}.{}", b64(sig.as_ref()));
        *st.issued.lock().unwrap() += 1;
        Ok(axum::Json(
            serde_json::json!({"token": jwt, "expires_in": 300}),
        ))
    }
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TokenServer {
        realm: format!("http://{addr}/token"),
        cert_pem: cert.pem(),
        issued,
        task,
    }
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_bearer_token_auth() {
    let ts = start_token_server("flotilla", "tok3n").await;
    let cfg = TestRegistryConfig {
        token: Some(TokenAuthConfig {
            realm: ts.realm.clone(),
            service: "flotilla-registry".into(),
            issuer: "flotilla-test-issuer".into(),
            root_cert_pem: ts.cert_pem.clone(),
        }),
        ..Default::default()
    };
    let reg = tokio::task::spawn_blocking(move || TestRegistry::start(&cfg))
        .await
        .unwrap()
        .unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let r = reg.reference("bearer/busybox:1");
    push_oci_layout(&layout, None, &r, &reg.options(basic("flotilla", "tok3n")))
        .await
        .unwrap();
    let store = s.store();
    // Without credentials the token server refuses.
    let e = store
        .pull(&r, &pull_opts(&reg, RegistryAuth::Anonymous))
        .await
        .unwrap_err();
    assert!(
        chain(&e).contains("/token") && chain(&e).contains("status 401"),
        "{}",
        chain(&e)
    );
    let before = *ts.issued.lock().unwrap();
    let img = store
        .pull(&r, &pull_opts(&reg, basic("flotilla", "tok3n")))
        .await
        .unwrap();
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    assert!(
        *ts.issued.lock().unwrap() > before,
        "a token was fetched for the pull"
    );
    // A token obtained elsewhere is sent as is; a bogus one is refused by the registry.
    let store2 = flotilla_image::ImageStore::open_with(
        s.path().join("store2"),
        flotilla_image::StoreOptions {
            fsync: false,
            ..Default::default()
        },
    )
    .unwrap();
    let o = pull_opts(&reg, RegistryAuth::Token("not-a-jwt".into()));
    assert!(store2.pull(&r, &o).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_is_gone_after_drop() {
    let reg = TestRegistry::start_plain().unwrap();
    let pid = reg.pid().unwrap();
    let dir = reg.dir().to_path_buf();
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    let client = RegistryClient::new(&reg.addr, "x/y", &opts).unwrap();
    assert!(client.get_manifest("missing").await.is_err());
    drop(reg);
    assert!(!dir.exists(), "registry directory removed");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry process killed and reaped"
    );
}

/// A hostile layer arriving from a registry is refused while it streams (the unpacker runs
/// during the download): the error names the entry, no layer directory or temporary file
/// stays, nothing outside is touched, no image is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_refuses_hostile_layer_while_streaming() {
    let reg = TestRegistry::start_plain().unwrap();
    let s = Scratch::new();
    let mut filler = vec![0u8; 4 << 20];
    for (i, b) in filler.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    let tar = RawTar::new()
        .file("filler", &filler)
        .symlink("evil", &s.sentinel().display().to_string())
        .file("evil/pwned", b"x")
        .file("after", &filler)
        .finish();
    let layout = s.layout("hostile", vec![TestLayer::gzip(tar)]);
    let r = reg.reference("test/hostile:1");
    push_oci_layout(&layout, None, &r, &reg.options(RegistryAuth::Anonymous))
        .await
        .unwrap();
    let store = s.store();
    let e = store
        .pull(&r, &pull_opts(&reg, RegistryAuth::Anonymous))
        .await
        .unwrap_err();
    assert!(
        chain(&e).contains("\"evil/pwned\": parent \"evil\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    assert!(store.list().is_empty());
}

/// Two pulls of images sharing a base layer, at once into one store: each layer is unpacked
/// once (the second waits for the first), both images are complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_layers() {
    let reg = TestRegistry::start_plain().unwrap();
    let s = Scratch::new();
    let layout = s.path().join("layout-two");
    let base = flotilla_image::testimage::busybox_layer_tar(&common::busybox()).unwrap();
    write_oci_layout(
        &layout,
        "a",
        &[
            TestLayer::gzip(base.clone()),
            TestLayer::gzip(RawTar::new().file("a", b"a").finish()),
        ],
        &TestConfig::busybox(),
    )
    .unwrap();
    write_oci_layout(
        &layout,
        "b",
        &[
            TestLayer::gzip(base),
            TestLayer::gzip(RawTar::new().file("b", b"b").finish()),
        ],
        &TestConfig::busybox(),
    )
    .unwrap();
    let o = reg.options(RegistryAuth::Anonymous);
    push_oci_layout(&layout, Some("a"), &reg.reference("test/a:1"), &o)
        .await
        .unwrap();
    push_oci_layout(&layout, Some("b"), &reg.reference("test/b:1"), &o)
        .await
        .unwrap();
    let store = s.store();
    let opts = pull_opts(&reg, RegistryAuth::Anonymous);
    let (ra, rb) = (reg.reference("test/a:1"), reg.reference("test/b:1"));
    let (a, b) = tokio::join!(store.pull(&ra, &opts), store.pull(&rb, &opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (da, db) = (store.layer_dirs(&a), store.layer_dirs(&b));
    assert_eq!(da[1], db[1]);
    assert!(
        da[1].join("bin/busybox").is_file()
            && da[0].join("a").is_file()
            && db[0].join("b").is_file()
    );
    assert_eq!(
        std::fs::read_dir(s.store_root().join("layers"))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_dir(s.store_root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}
