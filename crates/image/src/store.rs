//! The store itself: verified blobs, shared layer directories, the image index, list/get/remove
//! and garbage collection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{self, Manifest};
use crate::unpack::{self, UnpackLimits};
use crate::{sys, ImageError};

const INDEX_FILE: &str = "images.json";
const INDEX_VERSION: u32 = 1;

/// Options of a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Caps applied to every layer unpacked.
    pub limits: UnpackLimits,
    /// fsync blobs and the index, and syncfs each unpacked layer before it becomes visible.
    pub fsync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            limits: UnpackLimits::default(),
            fsync: true,
        }
    }
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the (possibly compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's diff_id); names the layer directory.
    pub diff_id: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// Blob size in bytes.
    pub size: u64,
}

/// The parsed image configuration.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// The whole configuration as `oci-spec` types.
    pub spec: ImageConfiguration,
}

impl ImageConfig {
    fn cfg(&self) -> Option<&oci_spec::image::Config> {
        self.spec.config().as_ref()
    }
    /// `Entrypoint`, empty if unset.
    pub fn entrypoint(&self) -> Vec<String> {
        self.cfg()
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default()
    }
    /// `Cmd`, empty if unset.
    pub fn cmd(&self) -> Vec<String> {
        self.cfg().and_then(|c| c.cmd().clone()).unwrap_or_default()
    }
    /// `Env` as `KEY=value` strings.
    pub fn env(&self) -> Vec<String> {
        self.cfg().and_then(|c| c.env().clone()).unwrap_or_default()
    }
    /// `WorkingDir`, if set and non-empty.
    pub fn working_dir(&self) -> Option<String> {
        self.cfg()
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty())
    }
    /// `User`, if set and non-empty.
    pub fn user(&self) -> Option<String> {
        self.cfg()
            .and_then(|c| c.user().clone())
            .filter(|u| !u.is_empty())
    }
    /// `ExposedPorts` such as `80/tcp`, sorted.
    pub fn exposed_ports(&self) -> Vec<String> {
        let mut p = self
            .cfg()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        p.sort();
        p
    }
    /// `Labels`, sorted by key.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.cfg()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
    /// `StopSignal`, if set.
    pub fn stop_signal(&self) -> Option<String> {
        self.cfg().and_then(|c| c.stop_signal().clone())
    }
    /// The argv a container runs by default: entrypoint followed by cmd.
    pub fn default_args(&self) -> Vec<String> {
        let mut a = self.entrypoint();
        a.extend(self.cmd());
        a
    }
    /// The diff_ids, base layer first.
    pub fn diff_ids(&self) -> &[String] {
        self.spec.rootfs().diff_ids()
    }
}

/// An image in the store.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest.
    pub id: Digest,
    /// Normalised references naming it (`registry/repository:tag`).
    pub names: Vec<String>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// Layers, base first.
    pub layers: Vec<LayerInfo>,
    /// The parsed configuration.
    pub config: ImageConfig,
    /// When the image was added to this store (seconds since the epoch).
    pub added_at: u64,
}

impl Image {
    /// Sum of the layer blob sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What [`ImageStore::remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// Names removed.
    pub untagged: Vec<String>,
    /// The image id, if the image itself was removed (it had no names left).
    pub deleted: Option<Digest>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: Vec<Digest>,
    /// Layer directories deleted (by diff_id).
    pub layers_removed: Vec<Digest>,
    /// Bytes of blobs freed.
    pub blob_bytes_freed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: Digest,
    names: Vec<String>,
    config: Digest,
    layers: Vec<LayerInfo>,
    added_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<Record>,
}

struct State {
    records: Vec<Record>,
    configs: HashMap<Digest, ImageConfig>,
}

pub(crate) struct Inner {
    root: PathBuf,
    pub(crate) opts: StoreOptions,
    state: Mutex<State>,
    leases: Mutex<HashMap<Digest, usize>>,
    unpacking: Mutex<HashSet<Digest>>,
    unpacked: Condvar,
    _lock: File,
}

/// A handle on an image store; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { op, path, source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Normalises an image reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let r: oci_spec::distribution::Reference =
        name.parse().map_err(|source| ImageError::Reference {
            reference: name.to_owned(),
            source,
        })?;
    Ok(r.whole())
}

fn fsync_dir(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing directory", path))
}

/// Holds digests that an operation in progress relies on, so `gc` leaves them alone.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    held: Vec<Digest>,
}

impl Lease {
    pub(crate) fn hold(&mut self, d: &Digest) {
        *lock(&self.inner.leases).entry(d.clone()).or_insert(0) += 1;
        self.held.push(d.clone());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut l = lock(&self.inner.leases);
        for d in self.held.drain(..) {
            if let Some(c) = l.get_mut(&d) {
                *c -= 1;
                if *c == 0 {
                    l.remove(&d);
                }
            }
        }
    }
}

/// A blob being written: hashed as it streams, renamed into place only if the digest matches.
pub struct BlobWriter {
    store: ImageStore,
    tmp: PathBuf,
    file: Option<HashingWriter<BufWriter<File>>>,
    expected: Option<Digest>,
    max: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self.file.as_mut().expect("not committed");
        let n = f.write(buf)?;
        if f.count() > self.max {
            return Err(io::Error::other(format!(
                "blob larger than the {}-byte cap",
                self.max
            )));
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl BlobWriter {
    /// Verifies the digest and moves the blob into place. Returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64), ImageError> {
        let r = self.commit_inner();
        if r.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        r
    }

    fn commit_inner(&mut self) -> Result<(Digest, u64), ImageError> {
        let f = self.file.take().expect("not committed");
        let (digest, size, buf) = f.finish();
        let file = buf.into_inner().map_err(|e| ImageError::Io {
            op: "writing blob",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        if let Some(exp) = &self.expected {
            exp.verify(&digest)?;
        }
        if self.store.inner.opts.fsync {
            file.sync_all().map_err(io_err("syncing blob", &self.tmp))?;
        }
        drop(file);
        let dest = self.store.blob_path(&digest);
        fs::rename(&self.tmp, &dest).map_err(io_err("moving blob into place", &dest))?;
        tracing::debug!(%digest, size, "blob stored");
        Ok((digest, size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` with default options.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, ImageError> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens the store with explicit options. Takes an exclusive lock on `root/lock` for the
    /// life of the handle, removes leftovers of interrupted writes and loads the index.
    pub fn open_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Self, ImageError> {
        let root = root.as_ref().to_path_buf();
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating store directory", &p))?;
        }
        let lock_path = root.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening lock file", &lock_path))?;
        // SAFETY: valid fd.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock_file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(ImageError::Locked(root));
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let p = e.map_err(io_err("listing", &tmp))?.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(io_err("removing leftover", &p))?;
        }
        let store = Self {
            inner: Arc::new(Inner {
                root: root.clone(),
                opts,
                state: Mutex::new(State {
                    records: Vec::new(),
                    configs: HashMap::new(),
                }),
                leases: Mutex::new(HashMap::new()),
                unpacking: Mutex::new(HashSet::new()),
                unpacked: Condvar::new(),
                _lock: lock_file,
            }),
        };
        let index_path = root.join(INDEX_FILE);
        if index_path.exists() {
            let bytes = fs::read(&index_path).map_err(io_err("reading", &index_path))?;
            let idx: IndexFile =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    what: index_path.display().to_string(),
                    source,
                })?;
            if idx.version != INDEX_VERSION {
                return Err(ImageError::Invalid {
                    what: index_path.display().to_string(),
                    detail: format!("index version {} is not {INDEX_VERSION}", idx.version),
                });
            }
            let mut st = lock(&store.inner.state);
            for r in idx.images {
                match store.load_config(&r.config) {
                    Ok(c) => {
                        st.configs.insert(r.config.clone(), c);
                        st.records.push(r);
                    }
                    Err(e) => {
                        tracing::warn!(image = %r.id, error = %crate::error_chain(&e), "dropping image whose config is unreadable")
                    }
                }
            }
        }
        tracing::info!(root = %root.display(), images = lock(&store.inner.state).records.len(), "image store opened");
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where the layer with `diff_id` is (or would be) unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers").join(diff_id.hex())
    }

    pub(crate) fn lease(&self) -> Lease {
        Lease {
            inner: self.inner.clone(),
            held: Vec::new(),
        }
    }

    pub(crate) fn tmp_path(&self, prefix: &str) -> PathBuf {
        self.inner
            .root
            .join("tmp")
            .join(format!("{prefix}-{:016x}", rand::random::<u64>()))
    }

    /// Starts writing a blob. With `expected`, [`BlobWriter::commit`] fails unless the content
    /// hashes to it; `max` caps its size.
    pub fn blob_writer(
        &self,
        expected: Option<&Digest>,
        max: u64,
    ) -> Result<BlobWriter, ImageError> {
        let tmp = self.tmp_path("blob");
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(HashingWriter::new(BufWriter::with_capacity(256 << 10, f))),
            expected: expected.cloned(),
            max,
        })
    }

    /// Stores a blob from a reader, verifying it against `expected` if given.
    pub fn put_blob<R: Read>(
        &self,
        mut r: R,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                // Still read it so the caller's stream is consumed the same way.
                io::copy(&mut r, &mut io::sink())
                    .map_err(io_err("reading blob", self.blob_path(d)))?;
                let size = fs::metadata(self.blob_path(d))
                    .map(|m| m.len())
                    .unwrap_or(0);
                return Ok((d.clone(), size));
            }
        }
        let mut w = self.blob_writer(expected, u64::MAX)?;
        let tmp = w.tmp.clone();
        io::copy(&mut r, &mut w).map_err(io_err("writing blob", tmp))?;
        w.commit()
    }

    /// Stores a blob from memory.
    pub fn put_blob_bytes(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, ImageError> {
        let d = Digest::of(bytes);
        if let Some(e) = expected {
            e.verify(&d)?;
        }
        if !self.has_blob(&d) {
            let mut w = self.blob_writer(Some(&d), u64::MAX)?;
            let tmp = w.tmp.clone();
            w.write_all(bytes).map_err(io_err("writing blob", tmp))?;
            w.commit()?;
        }
        Ok(d)
    }

    /// Reads a whole blob, refusing one larger than `max` bytes.
    pub fn read_blob(&self, digest: &Digest, max: usize) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest);
        let f = File::open(&p).map_err(io_err("opening blob", &p))?;
        let mut v = Vec::new();
        f.take(max as u64 + 1)
            .read_to_end(&mut v)
            .map_err(io_err("reading blob", &p))?;
        if v.len() > max {
            return Err(ImageError::Invalid {
                what: digest.to_string(),
                detail: format!("blob exceeds {max} bytes"),
            });
        }
        Ok(v)
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ImageError> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(io_err("opening blob", &p))
    }

    fn load_config(&self, digest: &Digest) -> Result<ImageConfig, ImageError> {
        let bytes = self.read_blob(digest, manifest::MAX_CONFIG_BYTES)?;
        parse_config(&bytes, &digest.to_string())
    }

    /// Unpacks the layer (if not yet unpacked) and returns its directory. Concurrent calls for
    /// the same diff_id wait for one another; a failed unpack leaves nothing behind.
    pub fn ensure_layer(&self, layer: &LayerInfo) -> Result<PathBuf, ImageError> {
        match self.reserve_layer(&layer.diff_id)? {
            None => Ok(self.layer_dir(&layer.diff_id)),
            Some(slot) => {
                let blob = self.open_blob(&layer.digest)?;
                slot.unpack(layer, blob)?;
                slot.install()
            }
        }
    }

    /// Reserves the right to unpack the layer `diff_id`: `None` if it is already unpacked
    /// (waiting first for another thread unpacking it), otherwise a slot with an empty
    /// temporary directory. Dropping the slot without [`LayerSlot::install`] removes it.
    pub(crate) fn reserve_layer(&self, diff_id: &Digest) -> Result<Option<LayerSlot>, ImageError> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(None);
        }
        {
            let mut busy = lock(&self.inner.unpacking);
            while busy.contains(diff_id) {
                busy = self
                    .inner
                    .unpacked
                    .wait(busy)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if dest.is_dir() {
                return Ok(None);
            }
            busy.insert(diff_id.clone());
        }
        let slot = LayerSlot {
            store: self.clone(),
            diff_id: diff_id.clone(),
            tmp: self.tmp_path("layer"),
            dest,
            installed: false,
        };
        fs::create_dir(&slot.tmp).map_err(io_err("creating", &slot.tmp))?;
        fs::set_permissions(&slot.tmp, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &slot.tmp))?;
        Ok(Some(slot))
    }

    /// Records an image whose manifest, config and layer blobs are stored and whose layers are
    /// unpacked. `name`, if given, moves to this image from any other.
    pub(crate) fn add_image(
        &self,
        manifest_digest: &Digest,
        manifest: &Manifest,
        config: ImageConfig,
        name: Option<&str>,
    ) -> Result<Image, ImageError> {
        let layers = layer_infos(manifest, &config, &manifest_digest.to_string())?;
        let name = name.map(normalize_name).transpose()?;
        let mut st = lock(&self.inner.state);
        if let Some(n) = &name {
            for r in st.records.iter_mut() {
                r.names.retain(|x| x != n);
            }
        }
        match st.records.iter_mut().find(|r| r.id == *manifest_digest) {
            Some(r) => {
                if let Some(n) = name {
                    r.names.push(n);
                    r.names.sort();
                }
            }
            None => {
                st.records.push(Record {
                    id: manifest_digest.clone(),
                    names: name.into_iter().collect(),
                    config: manifest.config.digest.clone(),
                    layers,
                    added_at: now(),
                });
            }
        }
        st.configs.insert(manifest.config.digest.clone(), config);
        self.save(&st)?;
        let r = st
            .records
            .iter()
            .find(|r| r.id == *manifest_digest)
            .expect("just added")
            .clone();
        let img = to_image(&st, &r);
        tracing::info!(id = %img.id, names = ?img.names, layers = img.layers.len(), "image recorded");
        Ok(img)
    }

    fn save(&self, st: &State) -> Result<(), ImageError> {
        let idx = IndexFile {
            version: INDEX_VERSION,
            images: st.records.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&idx).expect("index serializes");
        let path = self.inner.root.join(INDEX_FILE);
        let tmp = self.inner.root.join(format!("{INDEX_FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        if self.inner.opts.fsync {
            f.sync_all().map_err(io_err("syncing", &tmp))?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("replacing", &path))?;
        if self.inner.opts.fsync {
            fsync_dir(&self.inner.root)?;
        }
        Ok(())
    }

    /// Every image, in the order they were added.
    pub fn list(&self) -> Vec<Image> {
        let st = lock(&self.inner.state);
        st.records.iter().map(|r| to_image(&st, r)).collect()
    }

    /// The image named `name_or_id` (a reference, normalised) or whose id starts with it
    /// (with or without `sha256:`).
    pub fn get(&self, name_or_id: &str) -> Result<Image, ImageError> {
        let st = lock(&self.inner.state);
        let i = find(&st, name_or_id)?.0;
        Ok(to_image(&st, &st.records[i]))
    }

    /// Removes a name, or a whole image by id. An image that loses its last name is removed
    /// from the index; an image in `in_use` (ids) is never removed, and its last name not
    /// taken away. Blobs and layer directories stay until [`ImageStore::gc`].
    pub fn remove(
        &self,
        name_or_id: &str,
        in_use: &HashSet<Digest>,
    ) -> Result<RemoveOutcome, ImageError> {
        let mut st = lock(&self.inner.state);
        let (i, by_name) = find(&st, name_or_id)?;
        let id = st.records[i].id.clone();
        let mut out = RemoveOutcome {
            untagged: Vec::new(),
            deleted: None,
        };
        match by_name {
            Some(name) if st.records[i].names.len() > 1 => {
                st.records[i].names.retain(|n| *n != name);
                out.untagged.push(name);
            }
            _ => {
                if in_use.contains(&id) {
                    return Err(ImageError::InUse { id });
                }
                let r = st.records.remove(i);
                out.untagged = r.names;
                out.deleted = Some(id);
            }
        }
        self.save(&st)?;
        tracing::info!(untagged = ?out.untagged, deleted = ?out.deleted, "image removed");
        Ok(out)
    }

    /// Layer directories of `image` in overlayfs `lowerdir` order: top-most first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect()
    }

    /// Removes every blob and layer directory no image references, except layer directories in
    /// `in_use_layer_dirs` (mounted by containers) and content an operation in progress holds.
    pub fn gc(&self, in_use_layer_dirs: &HashSet<PathBuf>) -> Result<GcReport, ImageError> {
        let st = lock(&self.inner.state);
        let leases = lock(&self.inner.leases);
        let mut keep_blobs: HashSet<Digest> = HashSet::new();
        let mut keep_layers: HashSet<Digest> = HashSet::new();
        for r in &st.records {
            keep_blobs.insert(r.id.clone());
            keep_blobs.insert(r.config.clone());
            for l in &r.layers {
                keep_blobs.insert(l.digest.clone());
                keep_layers.insert(l.diff_id.clone());
            }
        }
        let mut report = GcReport::default();
        let blobs = self.inner.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_err("listing", &blobs))? {
            let e = e.map_err(io_err("listing", &blobs))?;
            let name = e.file_name();
            let Ok(d) = Digest::from_hex(&name.to_string_lossy()) else {
                tracing::warn!(file = ?name, "ignoring a foreign file among blobs");
                continue;
            };
            if keep_blobs.contains(&d) || leases.contains_key(&d) {
                continue;
            }
            let p = e.path();
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&p).map_err(io_err("removing blob", &p))?;
            report.blob_bytes_freed += size;
            report.blobs_removed.push(d);
        }
        let layers = self.inner.root.join("layers");
        for e in fs::read_dir(&layers).map_err(io_err("listing", &layers))? {
            let e = e.map_err(io_err("listing", &layers))?;
            let name = e.file_name();
            let Ok(d) = Digest::from_hex(&name.to_string_lossy()) else {
                tracing::warn!(dir = ?name, "ignoring a foreign entry among layers");
                continue;
            };
            let p = e.path();
            if keep_layers.contains(&d) || leases.contains_key(&d) || in_use_layer_dirs.contains(&p)
            {
                continue;
            }
            fs::remove_dir_all(&p).map_err(io_err("removing layer", &p))?;
            report.layers_removed.push(d);
        }
        tracing::info!(
            blobs = report.blobs_removed.len(),
            layers = report.layers_removed.len(),
            bytes = report.blob_bytes_freed,
            "image gc done"
        );
        Ok(report)
    }
}

/// Parses an image configuration blob.
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig, ImageError> {
    let spec: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: format!("image config {what}"),
            source,
        })?;
    Ok(ImageConfig { spec })
}

/// Pairs the manifest's layers with the config's diff_ids.
pub(crate) fn layer_infos(
    m: &Manifest,
    config: &ImageConfig,
    what: &str,
) -> Result<Vec<LayerInfo>, ImageError> {
    let diff_ids = config.diff_ids();
    if diff_ids.len() != m.layers.len() {
        return Err(ImageError::Invalid {
            what: what.to_owned(),
            detail: format!(
                "{} layers but {} diff_ids in the config",
                m.layers.len(),
                diff_ids.len()
            ),
        });
    }
    m.layers
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| {
            Ok(LayerInfo {
                digest: l.digest.clone(),
                diff_id: Digest::parse(d)?,
                media_type: l.media_type.clone(),
                size: l.size,
            })
        })
        .collect()
}

fn to_image(st: &State, r: &Record) -> Image {
    Image {
        id: r.id.clone(),
        names: r.names.clone(),
        config_digest: r.config.clone(),
        layers: r.layers.clone(),
        config: st
            .configs
            .get(&r.config)
            .cloned()
            .expect("config loaded with its record"),
        added_at: r.added_at,
    }
}

/// Finds a record by name (returned as `Some(name)`) or id prefix.
fn find(st: &State, name_or_id: &str) -> Result<(usize, Option<String>), ImageError> {
    if let Ok(n) = normalize_name(name_or_id) {
        if let Some(i) = st.records.iter().position(|r| r.names.contains(&n)) {
            return Ok((i, Some(n)));
        }
    }
    let prefix = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
    if !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = prefix.to_ascii_lowercase();
        let hits: Vec<usize> = st
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.id.hex().starts_with(&prefix))
            .map(|(i, _)| i)
            .collect();
        match hits.len() {
            0 => {}
            1 => return Ok((hits[0], None)),
            _ => return Err(ImageError::Ambiguous(name_or_id.to_owned())),
        }
    }
    Err(ImageError::NotFound(name_or_id.to_owned()))
}

/// The right to unpack one layer: an empty temporary directory, renamed into place by
/// [`LayerSlot::install`]; dropped without it, the directory is removed. While a slot lives,
/// other threads wanting the same diff_id wait.
pub(crate) struct LayerSlot {
    store: ImageStore,
    diff_id: Digest,
    tmp: PathBuf,
    dest: PathBuf,
    installed: bool,
}

impl LayerSlot {
    /// Unpacks the layer blob read from `blob` into the slot and checks its diff_id (and, with
    /// fsync on, flushes it). `layer` names the blob in errors.
    pub(crate) fn unpack<R: Read>(
        &self,
        layer: &LayerInfo,
        blob: R,
    ) -> Result<unpack::UnpackedLayer, ImageError> {
        let started = std::time::Instant::now();
        let result = (|| {
            let out = unpack::unpack_layer(blob, &self.tmp, &self.store.inner.opts.limits)
                .map_err(|source| ImageError::Unpack {
                    layer: layer.digest.clone(),
                    source,
                })?;
            if out.diff_id != self.diff_id {
                return Err(ImageError::DiffIdMismatch {
                    layer: layer.digest.clone(),
                    expected: self.diff_id.clone(),
                    actual: out.diff_id,
                });
            }
            if self.store.inner.opts.fsync {
                let fd = sys::open_dir_path(&self.tmp).map_err(io_err("opening", &self.tmp))?;
                sys::syncfs(fd.as_fd()).map_err(io_err("syncfs", &self.tmp))?;
            }
            Ok(out)
        })();
        match &result {
            Ok(out) => {
                tracing::info!(layer = %layer.digest, diff_id = %self.diff_id, entries = out.entries,
                bytes = out.uncompressed_bytes, ms = started.elapsed().as_millis() as u64, "layer unpacked")
            }
            Err(e) => {
                tracing::warn!(layer = %layer.digest, error = %crate::error_chain(e), "layer refused")
            }
        }
        result
    }

    /// Moves the unpacked layer into place and returns its directory.
    pub(crate) fn install(mut self) -> Result<PathBuf, ImageError> {
        if let Err(e) = fs::rename(&self.tmp, &self.dest) {
            // Only a stale directory of the same content can be in the way (one store handle
            // per root: the lock file); fail only if the destination is missing.
            if !self.dest.is_dir() {
                return Err(io_err("moving layer into place", &self.dest)(e));
            }
        } else {
            self.installed = true;
        }
        if self.store.inner.opts.fsync {
            fsync_dir(self.dest.parent().expect("layers/"))?;
        }
        Ok(self.dest.clone())
    }
}

impl Drop for LayerSlot {
    fn drop(&mut self) {
        if !self.installed {
            if let Err(e) = fs::remove_dir_all(&self.tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.tmp.display(), error = %e, "removing a partial layer failed");
                }
            }
        }
        lock(&self.store.inner.unpacking).remove(&self.diff_id);
        self.store.inner.unpacked.notify_all();
    }
}
