//! Importing images from an OCI image layout directory, an oci-archive tarball and a
//! docker-archive tarball (`docker save`). Archives are read in one pass without extracting
//! anything to the filesystem: members named `blobs/sha256/<hex>` stream straight into the
//! verified blob store; the few small JSON members are kept in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, Document, Index, Manifest};
use crate::store::{io_err, parse_config, Lease};
use crate::{Image, ImageError, ImageStore};

/// Annotation with a full image name (containerd, `docker save` ≥ 25).
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation with the reference (often only a tag).
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Small archive members kept in memory (JSON documents).
const MAX_SMALL_MEMBER: u64 = 4 << 20;

fn invalid(what: impl Into<String>, detail: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        detail: detail.into(),
    }
}

/// Where an import reads blobs from.
trait BlobSource {
    /// Ensures the blob is in the store (verified against its digest).
    fn fetch(&self, store: &ImageStore, d: &Digest) -> Result<(), ImageError>;
}

struct LayoutSource<'a>(&'a Path);

impl BlobSource for LayoutSource<'_> {
    fn fetch(&self, store: &ImageStore, d: &Digest) -> Result<(), ImageError> {
        if store.has_blob(d) {
            return Ok(());
        }
        let p = self.0.join("blobs/sha256").join(d.hex());
        let f = File::open(&p).map_err(io_err("opening layout blob", &p))?;
        store.put_blob(f, Some(d)).map(drop)
    }
}

/// Blobs already streamed into the store from an archive.
struct StoredSource;

impl BlobSource for StoredSource {
    fn fetch(&self, store: &ImageStore, d: &Digest) -> Result<(), ImageError> {
        if store.has_blob(d) {
            Ok(())
        } else {
            Err(invalid(
                d.to_string(),
                "blob referenced but missing from the archive",
            ))
        }
    }
}

fn normalize_member(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    let s = s.trim_start_matches("./");
    s.trim_end_matches('/').to_owned()
}

impl ImageStore {
    /// Imports every image of the OCI image layout at `dir` (or only the one whose
    /// `org.opencontainers.image.ref.name` is `ref_name`). `name` names the image (only when
    /// exactly one is imported); otherwise names come from the layout's annotations.
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        ref_name: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Image>, ImageError> {
        let layout = dir.join("oci-layout");
        let bytes = std::fs::read(&layout).map_err(io_err("reading", &layout))?;
        check_oci_layout(&bytes, &layout.display().to_string())?;
        let ip = dir.join("index.json");
        let idx_bytes = std::fs::read(&ip).map_err(io_err("reading", &ip))?;
        let mut lease = self.lease();
        self.import_index(
            &LayoutSource(dir),
            &idx_bytes,
            ref_name,
            name,
            &ip.display().to_string(),
            &mut lease,
        )
    }

    /// Imports from an oci-archive tarball (an OCI layout in a tar, as `skopeo copy
    /// oci-archive:` writes).
    pub fn import_oci_archive(
        &self,
        tarball: &Path,
        ref_name: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Image>, ImageError> {
        let mut lease = self.lease();
        let members = self.scan_archive(tarball, &mut lease)?;
        self.import_scanned_oci(&members, tarball, ref_name, name, &mut lease)
    }

    /// Imports from `path` whatever it holds: an OCI image layout directory, an oci-archive or
    /// a docker-archive tarball (told by its members: `oci-layout` + `index.json`, else
    /// `manifest.json`; a `docker save` of Docker ≥ 25 has both and is read as OCI).
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let meta = std::fs::metadata(path).map_err(io_err("inspecting", path))?;
        if meta.is_dir() {
            return self.import_oci_layout(path, None, name);
        }
        let mut lease = self.lease();
        let members = self.scan_archive(path, &mut lease)?;
        if members.small.contains_key("oci-layout") && members.small.contains_key("index.json") {
            self.import_scanned_oci(&members, path, None, name, &mut lease)
        } else if members.small.contains_key("manifest.json") {
            self.import_scanned_docker(&members, path, name, &mut lease)
        } else {
            Err(invalid(
                path.display().to_string(),
                "neither an oci-archive nor a docker-archive",
            ))
        }
    }

    fn import_scanned_oci(
        &self,
        members: &Members,
        tarball: &Path,
        ref_name: Option<&str>,
        name: Option<&str>,
        lease: &mut Lease,
    ) -> Result<Vec<Image>, ImageError> {
        let what = tarball.display().to_string();
        let layout = members
            .small
            .get("oci-layout")
            .ok_or_else(|| invalid(&what, "no oci-layout member"))?;
        check_oci_layout(layout, &what)?;
        let idx = members
            .small
            .get("index.json")
            .ok_or_else(|| invalid(&what, "no index.json member"))?;
        self.import_index(
            &StoredSource,
            idx,
            ref_name,
            name,
            &format!("{what}:index.json"),
            lease,
        )
    }

    /// Imports from a docker-archive tarball (`docker save`: `manifest.json`, config JSON files
    /// and `layer.tar` files, possibly symlinked to one another).
    pub fn import_docker_archive(
        &self,
        tarball: &Path,
        name: Option<&str>,
    ) -> Result<Vec<Image>, ImageError> {
        let mut lease = self.lease();
        let members = self.scan_archive(tarball, &mut lease)?;
        self.import_scanned_docker(&members, tarball, name, &mut lease)
    }

    fn import_scanned_docker(
        &self,
        members: &Members,
        tarball: &Path,
        name: Option<&str>,
        lease: &mut Lease,
    ) -> Result<Vec<Image>, ImageError> {
        let what = tarball.display().to_string();
        let mj = members
            .small
            .get("manifest.json")
            .ok_or_else(|| invalid(&what, "no manifest.json member"))?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> =
            serde_json::from_slice(mj).map_err(|source| ImageError::Json {
                what: format!("{what}:manifest.json"),
                source,
            })?;
        if name.is_some() && entries.len() != 1 {
            return Err(invalid(
                &what,
                format!(
                    "a name applies to one image; the archive holds {}",
                    entries.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for e in entries {
            let member = |m: &str| -> Result<Digest, ImageError> {
                let resolved = members
                    .resolve(m)
                    .ok_or_else(|| invalid(&what, format!("member {m:?} missing")))?;
                if let Some(bytes) = members.small.get(&resolved) {
                    let d = self.put_blob_bytes(bytes, None)?;
                    Ok(d)
                } else {
                    members
                        .big
                        .get(&resolved)
                        .cloned()
                        .ok_or_else(|| invalid(&what, format!("member {m:?} missing")))
                }
            };
            let config_digest = member(&e.config)?;
            lease.hold(&config_digest);
            let config_bytes = self.read_blob(&config_digest, manifest::MAX_CONFIG_BYTES)?;
            let config = parse_config(&config_bytes, &format!("{what}:{}", e.config))?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let d = member(l)?;
                lease.hold(&d);
                let mut head = [0u8; 4];
                let n = self
                    .open_blob(&d)?
                    .read(&mut head)
                    .map_err(io_err("reading", self.blob_path(&d)))?;
                let media_type = match crate::unpack::detect_compression(&head[..n]) {
                    crate::unpack::Compression::None => manifest::OCI_LAYER_TAR,
                    crate::unpack::Compression::Gzip => manifest::OCI_LAYER_GZIP,
                    crate::unpack::Compression::Zstd => manifest::OCI_LAYER_ZSTD,
                };
                let size = std::fs::metadata(self.blob_path(&d))
                    .map(|m| m.len())
                    .unwrap_or(0);
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: Default::default(),
                });
            }
            let m = Manifest {
                schema_version: 2,
                media_type: Some(manifest::OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: manifest::OCI_CONFIG.into(),
                    digest: config_digest.clone(),
                    size: config_bytes.len() as u64,
                    platform: None,
                    annotations: Default::default(),
                },
                layers,
                annotations: Default::default(),
            };
            let bytes = serde_json::to_vec(&m).expect("manifest serializes");
            let md = self.put_blob_bytes(&bytes, None)?;
            lease.hold(&md);
            let mut names: Vec<String> = match name {
                Some(n) => vec![n.to_owned()],
                None => e.repo_tags.unwrap_or_default(),
            };
            let first = if names.is_empty() {
                None
            } else {
                Some(names.remove(0))
            };
            let mut img = self.finish_image(&md, &m, config, first.as_deref(), lease)?;
            for n in names {
                img = self.tag(&img.id.to_string(), &n)?;
            }
            out.push(img);
        }
        Ok(out)
    }

    fn import_index(
        &self,
        src: &dyn BlobSource,
        idx_bytes: &[u8],
        ref_name: Option<&str>,
        name: Option<&str>,
        what: &str,
        lease: &mut Lease,
    ) -> Result<Vec<Image>, ImageError> {
        let index: Index =
            match manifest::parse_document(idx_bytes, Some(manifest::OCI_INDEX), what)? {
                Document::Index(i) => i,
                Document::Manifest(_) => return Err(invalid(what, "index.json is a manifest")),
            };
        let chosen: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| {
                ref_name.is_none_or(|r| {
                    d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(r)
                })
            })
            .collect();
        if chosen.is_empty() {
            return Err(invalid(
                what,
                format!("no manifest with ref name {ref_name:?}"),
            ));
        }
        if name.is_some() && chosen.len() != 1 {
            return Err(invalid(
                what,
                format!(
                    "a name applies to one image; the layout holds {}",
                    chosen.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for d in chosen {
            let img_name = name.map(str::to_owned).or_else(|| {
                d.annotations
                    .get(ANNOTATION_IMAGE_NAME)
                    .or_else(|| d.annotations.get(ANNOTATION_REF_NAME))
                    .cloned()
            });
            out.push(self.import_manifest(src, d, img_name.as_deref(), lease)?);
        }
        Ok(out)
    }

    fn import_manifest(
        &self,
        src: &dyn BlobSource,
        d: &Descriptor,
        name: Option<&str>,
        lease: &mut Lease,
    ) -> Result<Image, ImageError> {
        lease.hold(&d.digest);
        src.fetch(self, &d.digest)?;
        let bytes = self.read_blob(&d.digest, manifest::MAX_MANIFEST_BYTES)?;
        let (md, m) =
            match manifest::parse_document(&bytes, Some(&d.media_type), &d.digest.to_string())? {
                Document::Manifest(m) => (d.digest.clone(), m),
                Document::Index(i) => {
                    let pd =
                        manifest::select_platform(&i, "linux", "amd64", &d.digest.to_string())?
                            .clone();
                    lease.hold(&pd.digest);
                    src.fetch(self, &pd.digest)?;
                    let b = self.read_blob(&pd.digest, manifest::MAX_MANIFEST_BYTES)?;
                    match manifest::parse_document(
                        &b,
                        Some(&pd.media_type),
                        &pd.digest.to_string(),
                    )? {
                        Document::Manifest(m) => (pd.digest.clone(), m),
                        Document::Index(_) => {
                            return Err(invalid(pd.digest.to_string(), "nested index"))
                        }
                    }
                }
            };
        lease.hold(&m.config.digest);
        src.fetch(self, &m.config.digest)?;
        let cb = self.read_blob(&m.config.digest, manifest::MAX_CONFIG_BYTES)?;
        let config = parse_config(&cb, &m.config.digest.to_string())?;
        for l in &m.layers {
            lease.hold(&l.digest);
            src.fetch(self, &l.digest)?;
        }
        self.finish_image(&md, &m, config, name, lease)
    }

    /// Unpacks the layers of a manifest whose blobs are stored, then records the image.
    pub(crate) fn finish_image(
        &self,
        md: &Digest,
        m: &Manifest,
        config: crate::ImageConfig,
        name: Option<&str>,
        lease: &mut Lease,
    ) -> Result<Image, ImageError> {
        let layers = crate::store::layer_infos(m, &config, &md.to_string())?;
        for l in &layers {
            lease.hold(&l.diff_id);
            self.ensure_layer(l)?;
        }
        self.add_image(md, m, config, name)
    }

    fn scan_archive(&self, tarball: &Path, lease: &mut Lease) -> Result<Members, ImageError> {
        let what = tarball.display().to_string();
        let f = File::open(tarball).map_err(io_err("opening", tarball))?;
        let mut ar = tar::Archive::new(BufReader::with_capacity(256 << 10, f));
        let mut members = Members::default();
        let rd = |e| io_err("reading archive", tarball)(e);
        for entry in ar.entries().map_err(rd)? {
            let mut entry = entry.map_err(rd)?;
            let name = normalize_member(&entry.path_bytes());
            let et = entry.header().entry_type();
            match et {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let base = if et == tar::EntryType::Symlink {
                        name.rsplit_once('/')
                            .map(|(d, _)| d.to_owned())
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    members.links.insert(name, join_member(&base, &target));
                    continue;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                _ => continue,
            }
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let d = Digest::from_hex(hex)?;
                lease.hold(&d);
                self.put_blob(&mut entry, Some(&d))?;
                members.big.insert(name, d);
            } else if entry.size() <= MAX_SMALL_MEMBER {
                let mut v = Vec::new();
                entry.read_to_end(&mut v).map_err(rd)?;
                members.small.insert(name, v);
            } else {
                let (d, _) = self.put_blob(&mut entry, None)?;
                lease.hold(&d);
                members.big.insert(name, d);
            }
        }
        tracing::debug!(archive = %what, blobs = members.big.len(), small = members.small.len(), "archive scanned");
        Ok(members)
    }

    /// Adds `new_name` to the image named or identified by `name_or_id`.
    pub fn tag(&self, name_or_id: &str, new_name: &str) -> Result<Image, ImageError> {
        let img = self.get(name_or_id)?;
        let bytes = self.read_blob(&img.id, manifest::MAX_MANIFEST_BYTES)?;
        let m = match manifest::parse_document(&bytes, None, &img.id.to_string())? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(invalid(img.id.to_string(), "stored manifest is an index"))
            }
        };
        self.add_image(&img.id, &m, img.config, Some(new_name))
    }
}

fn check_oci_layout(bytes: &[u8], what: &str) -> Result<(), ImageError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct L {
        image_layout_version: String,
    }
    let l: L = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })?;
    if l.image_layout_version != "1.0.0" {
        return Err(invalid(
            what,
            format!("imageLayoutVersion {} is not 1.0.0", l.image_layout_version),
        ));
    }
    Ok(())
}

/// Joins an archive-internal link target onto a member directory, resolving `.` and `..`
/// within the archive's own namespace (nothing touches the filesystem).
fn join_member(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[derive(Default)]
struct Members {
    small: HashMap<String, Vec<u8>>,
    big: HashMap<String, Digest>,
    links: HashMap<String, String>,
}

impl Members {
    fn resolve(&self, name: &str) -> Option<String> {
        let mut cur = normalize_member(name.as_bytes());
        for _ in 0..16 {
            if self.small.contains_key(&cur) || self.big.contains_key(&cur) {
                return Some(cur);
            }
            cur = self.links.get(&cur)?.clone();
        }
        None
    }
}
