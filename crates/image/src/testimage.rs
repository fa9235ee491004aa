//! Test images built by Flotilla's own code: a busybox image from Debian's busybox-static binary
//! (installed by `deploy/install-deps.sh`), OCI layouts from arbitrary layer tars, oci-archive
//! and docker-archive tarballs of a layout, and a large random-content image for benchmarks.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

use crate::digest::Digest;
use crate::manifest;
use crate::store::io_err;
use crate::ImageError;

/// Where busybox is: `$FLOTILLA_BUSYBOX`, else `/opt/flotilla/busybox/busybox`.
pub fn busybox_path() -> PathBuf {
    std::env::var_os("FLOTILLA_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/flotilla/busybox/busybox"))
}

/// A fixed mtime so the same inputs give the same layer digests.
pub const EPOCH: u64 = 1_700_000_000;

/// How to compress a layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// Plain tar.
    None,
    /// gzip (fast level).
    Gzip,
    /// zstd (level 3).
    Zstd,
}

/// A layer to put in a layout: an uncompressed tar and how to compress it.
#[derive(Clone, Debug)]
pub struct TestLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// Compression of the blob.
    pub compression: LayerCompression,
}

impl TestLayer {
    /// A gzip layer.
    pub fn gzip(tar: Vec<u8>) -> Self {
        Self {
            tar,
            compression: LayerCompression::Gzip,
        }
    }
}

/// The `config` section of a test image.
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    pub cmd: Option<Vec<String>>,
    /// Env.
    pub env: Vec<String>,
    /// WorkingDir.
    pub working_dir: Option<String>,
    /// User.
    pub user: Option<String>,
    /// ExposedPorts.
    pub exposed_ports: Vec<String>,
    /// Labels.
    pub labels: Vec<(String, String)>,
}

impl TestConfig {
    /// Busybox defaults: `Cmd ["sh"]`, a `PATH`, `WorkingDir /`.
    pub fn busybox() -> Self {
        Self {
            cmd: Some(vec!["sh".into()]),
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: Some("/".into()),
            ..Self::default()
        }
    }
}

/// What was written to a layout.
#[derive(Clone, Debug)]
pub struct LayoutInfo {
    /// Manifest digest.
    pub manifest: Digest,
    /// Config digest.
    pub config: Digest,
    /// Layer blob digests, base first.
    pub layers: Vec<Digest>,
    /// diff_ids, base first.
    pub diff_ids: Vec<Digest>,
}

/// A tar builder with fixed ownership and times.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH);
        h.set_size(size);
        h
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.b
            .append_data(
                &mut h,
                format!("{}/", path.trim_end_matches('/')),
                io::empty(),
            )
            .expect("tar in memory");
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b
            .append_data(&mut h, path, data)
            .expect("tar in memory");
        self
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar in memory");
        self
    }

    /// Adds a hard link to an earlier entry.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar in memory");
        self
    }

    /// The finished archive.
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("tar in memory")
    }
}

fn compress(tar: &[u8], c: LayerCompression) -> io::Result<(Vec<u8>, &'static str)> {
    Ok(match c {
        LayerCompression::None => (tar.to_vec(), manifest::OCI_LAYER_TAR),
        LayerCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar)?;
            (e.finish()?, manifest::OCI_LAYER_GZIP)
        }
        LayerCompression::Zstd => (zstd::stream::encode_all(tar, 3)?, manifest::OCI_LAYER_ZSTD),
    })
}

fn write_blob(dest: &Path, bytes: &[u8]) -> Result<Digest, ImageError> {
    let d = Digest::of(bytes);
    let p = dest.join("blobs/sha256").join(d.hex());
    fs::write(&p, bytes).map_err(io_err("writing", &p))?;
    Ok(d)
}

/// Writes (or adds to) an OCI image layout at `dest` holding one image tagged `tag`
/// (annotation `org.opencontainers.image.ref.name`).
pub fn write_oci_layout(
    dest: &Path,
    tag: &str,
    layers: &[TestLayer],
    config: &TestConfig,
) -> Result<LayoutInfo, ImageError> {
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
    let mut layer_descs = Vec::new();
    let mut info = LayoutInfo {
        manifest: Digest::of(b""),
        config: Digest::of(b""),
        layers: vec![],
        diff_ids: vec![],
    };
    for l in layers {
        let (blob, media_type) =
            compress(&l.tar, l.compression).map_err(io_err("compressing a layer for", dest))?;
        let d = write_blob(dest, &blob)?;
        info.diff_ids.push(Digest::of(&l.tar));
        layer_descs.push(serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": blob.len()}));
        info.layers.push(d);
    }
    let mut cfg = serde_json::Map::new();
    if let Some(e) = &config.entrypoint {
        cfg.insert("Entrypoint".into(), serde_json::json!(e));
    }
    if let Some(c) = &config.cmd {
        cfg.insert("Cmd".into(), serde_json::json!(c));
    }
    if !config.env.is_empty() {
        cfg.insert("Env".into(), serde_json::json!(config.env));
    }
    if let Some(w) = &config.working_dir {
        cfg.insert("WorkingDir".into(), serde_json::json!(w));
    }
    if let Some(u) = &config.user {
        cfg.insert("User".into(), serde_json::json!(u));
    }
    if !config.exposed_ports.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = config
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        cfg.insert("ExposedPorts".into(), serde_json::Value::Object(m));
    }
    if !config.labels.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        cfg.insert("Labels".into(), serde_json::Value::Object(m));
    }
    let config_json = serde_json::json!({
        "created": crate::commit::rfc3339(EPOCH),
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": info.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created": crate::commit::rfc3339(EPOCH), "created_by": "flotilla testimage"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config_json).expect("json");
    info.config = write_blob(dest, &config_bytes)?;
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": manifest::OCI_CONFIG, "digest": info.config.to_string(), "size": config_bytes.len()},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest_json).expect("json");
    info.manifest = write_blob(dest, &manifest_bytes)?;
    let index_path = dest.join("index.json");
    let mut index: serde_json::Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
            what: index_path.display().to_string(),
            source,
        })?,
        Err(_) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": []})
        }
    };
    let list = index["manifests"].as_array_mut().expect("manifests array");
    list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    list.push(serde_json::json!({
        "mediaType": manifest::OCI_MANIFEST,
        "digest": info.manifest.to_string(),
        "size": manifest_bytes.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    fs::write(&index_path, serde_json::to_vec(&index).expect("json"))
        .map_err(io_err("writing", &index_path))?;
    let lp = dest.join("oci-layout");
    fs::write(&lp, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("writing", &lp))?;
    Ok(info)
}

/// The busybox root filesystem as an uncompressed tar: `/bin/busybox`, one absolute symlink per
/// applet (from `busybox --list-full`), `/etc/passwd`, `/etc/group`, and the usual empty
/// directories.
pub fn busybox_layer_tar(busybox: &Path) -> Result<Vec<u8>, ImageError> {
    let bin = fs::read(busybox).map_err(io_err("reading busybox", busybox))?;
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io_err("running --list-full of", busybox))?;
    if !out.status.success() {
        return Err(ImageError::Invalid {
            what: busybox.display().to_string(),
            detail: "busybox --list-full failed".into(),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();
    let mut t = TarBuilder::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root", "var",
        "run",
    ] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.file("bin/busybox", 0o755, &bin);
    for a in &applets {
        t.symlink(a, "/bin/busybox");
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    t.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    Ok(t.finish())
}

/// Builds the busybox test image as an OCI layout at `dest`: one gzip layer, config with
/// `Cmd ["sh"]`, `Env PATH=…`, `WorkingDir /`, tagged `tag`.
pub fn build_busybox_oci_layout(
    busybox: &Path,
    dest: &Path,
    tag: &str,
) -> Result<LayoutInfo, ImageError> {
    let tar = busybox_layer_tar(busybox)?;
    write_oci_layout(dest, tag, &[TestLayer::gzip(tar)], &TestConfig::busybox())
}

/// A layer of `bytes` of incompressible pseudo-random data (seeded) in files of at most
/// 16 MiB under `/data`.
pub fn random_layer_tar(bytes: u64, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = TarBuilder::new();
    t.dir("data", 0o755);
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(16 << 20) as usize;
        let mut buf = vec![0u8; n];
        rng.fill_bytes(&mut buf);
        t.file(&format!("data/blob-{i:03}"), 0o644, &buf);
        left -= n as u64;
        i += 1;
    }
    t.finish()
}

/// The busybox image plus a second gzip layer of `extra_bytes` random bytes (the benchmark's
/// ~100 MB image).
pub fn build_big_oci_layout(
    busybox: &Path,
    dest: &Path,
    tag: &str,
    extra_bytes: u64,
) -> Result<LayoutInfo, ImageError> {
    let base = busybox_layer_tar(busybox)?;
    let big = random_layer_tar(extra_bytes, 42);
    write_oci_layout(
        dest,
        tag,
        &[TestLayer::gzip(base), TestLayer::gzip(big)],
        &TestConfig::busybox(),
    )
}

fn tar_file(b: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(EPOCH);
    b.append_data(&mut h, name, data)
}

/// Writes `layout` as an oci-archive tarball (the layout's files in a tar) at `out`.
pub fn oci_archive_from_layout(layout: &Path, out: &Path) -> Result<(), ImageError> {
    let f = fs::File::create(out).map_err(io_err("creating", out))?;
    let mut b = tar::Builder::new(io::BufWriter::new(f));
    let wr = |e| io_err("writing", out)(e);
    for name in ["oci-layout", "index.json"] {
        let p = layout.join(name);
        tar_file(&mut b, name, &fs::read(&p).map_err(io_err("reading", &p))?).map_err(wr)?;
    }
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<_> = fs::read_dir(&blobs)
        .map_err(io_err("listing", &blobs))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let p = blobs.join(&n);
        tar_file(
            &mut b,
            &format!("blobs/sha256/{}", n.to_string_lossy()),
            &fs::read(&p).map_err(io_err("reading", &p))?,
        )
        .map_err(wr)?;
    }
    b.into_inner().map_err(wr)?.flush().map_err(wr)?;
    Ok(())
}

/// Writes the image `ref_name` of `layout` as a docker-archive (`docker save` format:
/// `manifest.json`, `<config hex>.json`, `<diff_id hex>/layer.tar` uncompressed) with
/// `RepoTags` `[repo_tag]` at `out`.
pub fn docker_archive_from_layout(
    layout: &Path,
    ref_name: &str,
    repo_tag: &str,
    out: &Path,
) -> Result<(), ImageError> {
    let ip = layout.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &fs::read(&ip).map_err(io_err("reading", &ip))?,
    )
    .map_err(|source| ImageError::Json {
        what: ip.display().to_string(),
        source,
    })?;
    let md = index["manifests"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == ref_name)
        })
        .and_then(|m| m["digest"].as_str())
        .ok_or_else(|| ImageError::Invalid {
            what: ip.display().to_string(),
            detail: format!("no image {ref_name}"),
        })?;
    let blob = |d: &str| -> Result<Vec<u8>, ImageError> {
        let d = Digest::parse(d)?;
        let p = layout.join("blobs/sha256").join(d.hex());
        fs::read(&p).map_err(io_err("reading", &p))
    };
    let m: serde_json::Value =
        serde_json::from_slice(&blob(md)?).map_err(|source| ImageError::Json {
            what: md.into(),
            source,
        })?;
    let config_digest = Digest::parse(m["config"]["digest"].as_str().unwrap_or(""))?;
    let config = blob(&config_digest.to_string())?;
    let f = fs::File::create(out).map_err(io_err("creating", out))?;
    let mut b = tar::Builder::new(io::BufWriter::new(f));
    let wr = |e| io_err("writing", out)(e);
    let config_name = format!("{}.json", config_digest.hex());
    tar_file(&mut b, &config_name, &config).map_err(wr)?;
    let mut layer_names = Vec::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let compressed = blob(l["digest"].as_str().unwrap_or(""))?;
        let mut tar = Vec::new();
        let mut r: Box<dyn io::Read> = match crate::unpack::detect_compression(&compressed) {
            crate::unpack::Compression::Gzip => {
                Box::new(flate2::read::MultiGzDecoder::new(&compressed[..]))
            }
            crate::unpack::Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&compressed[..]).map_err(wr)?)
            }
            crate::unpack::Compression::None => Box::new(&compressed[..]),
        };
        io::copy(&mut r, &mut tar).map_err(wr)?;
        let name = format!("{}/layer.tar", Digest::of(&tar).hex());
        tar_file(&mut b, &name, &tar).map_err(wr)?;
        layer_names.push(name);
    }
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]);
    tar_file(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    )
    .map_err(wr)?;
    b.into_inner().map_err(wr)?.flush().map_err(wr)?;
    Ok(())
}
