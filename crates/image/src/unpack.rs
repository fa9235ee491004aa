//! Unpacking one layer blob into its own directory in overlayfs format, refusing hostile input.
//!
//! Each layer directory is later an overlay `lowerdir`, so a layer is unpacked on its own, never
//! on top of its parents: whiteouts `.wh.<name>` become 0/0 character devices and `.wh..wh..opq`
//! becomes the xattr `trusted.overlay.opaque=y` on its directory; the kernel applies them when the
//! layers are stacked.
//!
//! Safety rules (reliability.md §4.1):
//! * the tar stream is read with the `tar` crate in *raw* mode; GNU long names and PAX records
//!   are parsed here, with size caps, and a PAX `size` that differs from the ustar size is
//!   refused, so no parser differential can smuggle an entry;
//! * entry paths are normalised component by component; absolute paths, `..`, NUL bytes,
//!   over-long paths and names, deep trees are refused;
//! * every parent directory is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`
//!   relative to the layer directory: writing, creating directories or hard-linking *through*
//!   a symlink is refused (a layer never needs to, its producer walked real directories);
//! * final components are created with `O_EXCL`/`O_NOFOLLOW`, ownership and times set with
//!   `AT_SYMLINK_NOFOLLOW`, modes with `fchmod` on the new fd;
//! * hard links must point at a regular file earlier in the same layer;
//! * device nodes and FIFOs are refused; a path may appear only once;
//! * caps on compressed and uncompressed bytes, the ratio between them, file size, entries,
//!   path length, name length, depth, PAX and xattr sizes.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::digest::{Digest, HashingReader};
use crate::sys;

/// Caps that bound the work and the disk space one layer may take.
#[derive(Clone, Debug)]
pub struct UnpackLimits {
    /// Compressed bytes read from the blob.
    pub max_compressed_bytes: u64,
    /// Uncompressed bytes of the tar stream.
    pub max_uncompressed_bytes: u64,
    /// Uncompressed / compressed, checked once `ratio_floor` uncompressed bytes were read.
    pub max_ratio: u64,
    /// Below this many uncompressed bytes the ratio is not checked.
    pub ratio_floor: u64,
    /// One regular file's size.
    pub max_file_bytes: u64,
    /// Entries (files, directories, links, whiteouts).
    pub max_entries: u64,
    /// An entry path or link target in bytes.
    pub max_path_len: usize,
    /// One path component in bytes.
    pub max_name_len: usize,
    /// Components in one path.
    pub max_depth: usize,
    /// One PAX extended header or GNU long-name record.
    pub max_header_bytes: u64,
    /// All xattrs of one entry.
    pub max_xattr_bytes: usize,
    /// Keep setuid/setgid bits (the runtime may still mount `nosuid`).
    pub keep_setid: bool,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_compressed_bytes: 8 << 30,
            max_uncompressed_bytes: 32 << 30,
            max_ratio: 100,
            ratio_floor: 256 << 20,
            max_file_bytes: 16 << 30,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_name_len: 255,
            max_depth: 128,
            max_header_bytes: 1 << 20,
            max_xattr_bytes: 64 << 10,
            keep_setid: true,
        }
    }
}

/// Why a layer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// `/etc/passwd`.
    #[error("absolute path")]
    Absolute,
    /// `a/../../b`.
    #[error("`..` component")]
    DotDot,
    /// An empty name.
    #[error("empty path")]
    Empty,
    /// NUL inside a name.
    #[error("nul byte in path")]
    Nul,
    /// The same path twice (or a whiteout and the path it removes).
    #[error("duplicate entry")]
    Duplicate,
    /// `a` is a regular file (or whiteout) and `a/b` follows.
    #[error("parent {0:?} is not a directory")]
    ParentNotDirectory(String),
    /// `a` is a symlink and `a/b` follows: writing through a symlink.
    #[error("parent {0:?} is a symlink: refusing to write through it")]
    ThroughSymlink(String),
    /// A directory entry at a path a non-directory already took (or the reverse).
    #[error("type conflicts with an earlier entry at the same path")]
    TypeConflict,
    /// Character or block device.
    #[error("device node (major {major}, minor {minor})")]
    DeviceNode {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// Named pipe.
    #[error("fifo")]
    Fifo,
    /// GNU sparse file (type `S` or `GNU.sparse.*` PAX records).
    #[error("sparse file")]
    Sparse,
    /// Another entry type.
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    /// A hard link to an absolute path or one with `..`.
    #[error("hard link target {0:?} is outside the layer")]
    HardlinkOutside(String),
    /// A hard link to something that is not a regular file earlier in this layer.
    #[error("hard link target {0:?} is not a regular file earlier in this layer")]
    HardlinkTarget(String),
    /// Symlink with an empty target, a NUL or an over-long one.
    #[error("invalid symlink target")]
    SymlinkTarget,
    /// `.wh.`, `.wh..`, `.wh...`.
    #[error("invalid whiteout name")]
    InvalidWhiteout,
    /// The root itself (`./`) as something other than a directory.
    #[error("the layer root must be a directory")]
    RootNotDirectory,
    /// PAX `size` disagreeing with the ustar header.
    #[error("pax size {pax} differs from the header size {header}")]
    PaxSizeMismatch {
        /// Size from the PAX record.
        pax: u64,
        /// Size from the ustar header.
        header: u64,
    },
    /// A PAX record that does not parse, a bad number, a duplicate key.
    #[error("malformed pax record: {0}")]
    PaxMalformed(String),
    /// PAX global header with keys that change later entries.
    #[error("pax global header with key {0:?}")]
    PaxGlobal(String),
    /// Two long-name or PAX headers for one entry, or one with no entry after it.
    #[error("dangling or repeated extension header")]
    ExtensionHeader,
    /// A PAX or GNU long-name header larger than the cap.
    #[error("extension header of {0} bytes exceeds the cap")]
    HeaderTooLarge(u64),
    /// Path longer than the cap.
    #[error("path longer than {0} bytes")]
    PathTooLong(usize),
    /// Component longer than the cap.
    #[error("name longer than {0} bytes")]
    NameTooLong(usize),
    /// Too many components.
    #[error("deeper than {0} components")]
    TooDeep(usize),
    /// File larger than the cap.
    #[error("file of {size} bytes exceeds the {cap}-byte cap")]
    FileTooLarge {
        /// Declared size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// uid or gid ≥ 2³¹.
    #[error("uid or gid {0} out of range")]
    IdOutOfRange(u64),
    /// A `trusted.*` xattr (would forge overlayfs metadata).
    #[error("xattr {0:?} is not allowed in a layer")]
    ForbiddenXattr(String),
    /// Xattrs over the cap.
    #[error("xattrs exceed {0} bytes")]
    XattrTooLarge(usize),
}

/// Why unpacking a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A hostile or unsupported entry, named.
    #[error("layer entry {entry:?}: {problem}")]
    Entry {
        /// The entry's path as it appears in the archive.
        entry: String,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// A cap on the whole layer was exceeded (decompression bomb, too many entries).
    #[error("layer exceeds the cap on {what} ({limit})")]
    Limit {
        /// Which cap.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The tar or compressed stream is malformed or truncated.
    #[error("reading the layer stream")]
    Stream(#[source] io::Error),
    /// A filesystem call failed for one entry.
    #[error("{op} for layer entry {entry:?}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The entry.
        entry: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What unpacking one layer produced.
#[derive(Debug, Clone)]
pub struct UnpackedLayer {
    /// sha256 of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: Digest,
    /// Entries written.
    pub entries: u64,
    /// Uncompressed bytes.
    pub uncompressed_bytes: u64,
}

/// Compression of a layer blob, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Detects the compression from the first bytes of a stream.
pub fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ImplicitDir,
    Dir,
    File,
    Symlink,
    Whiteout,
    Opaque,
}

/// Shared state of the counting readers: the first cap that tripped.
#[derive(Default)]
struct Meter {
    compressed: AtomicU64,
    tripped: Mutex<Option<(&'static str, u64)>>,
}

impl Meter {
    fn trip(&self, what: &'static str, limit: u64) -> io::Error {
        let mut t = self.tripped.lock().unwrap_or_else(|p| p.into_inner());
        t.get_or_insert((what, limit));
        io::Error::other(format!("cap on {what} exceeded"))
    }
    fn tripped(&self) -> Option<UnpackError> {
        let t = self.tripped.lock().unwrap_or_else(|p| p.into_inner());
        t.map(|(what, limit)| UnpackError::Limit { what, limit })
    }
}

struct CompressedCounter<R> {
    inner: R,
    meter: Arc<Meter>,
    cap: u64,
}

impl<R: Read> Read for CompressedCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.meter.compressed.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.cap {
            return Err(self.meter.trip("compressed bytes", self.cap));
        }
        Ok(n)
    }
}

struct UncompressedCounter<R> {
    inner: HashingReader<R>,
    meter: Arc<Meter>,
    limits: UnpackLimits,
}

impl<R: Read> Read for UncompressedCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.inner.count();
        if total > self.limits.max_uncompressed_bytes {
            return Err(self
                .meter
                .trip("uncompressed bytes", self.limits.max_uncompressed_bytes));
        }
        if total > self.limits.ratio_floor {
            let c = self.meter.compressed.load(Ordering::Relaxed).max(1);
            if total / c > self.limits.max_ratio {
                return Err(self.meter.trip("compression ratio", self.limits.max_ratio));
            }
        }
        Ok(n)
    }
}

/// Unpacks the layer blob read from `blob` (gzip, zstd or plain tar, detected from its first
/// bytes) into `dest`, an existing empty directory. On error `dest` holds a partial layer: the
/// caller removes it.
pub fn unpack_layer<R: Read>(
    blob: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackedLayer, UnpackError> {
    let meter = Arc::new(Meter::default());
    let counted = CompressedCounter {
        inner: blob,
        meter: meter.clone(),
        cap: limits.max_compressed_bytes,
    };
    // Read the magic bytes first (a streamed blob may arrive in chunks shorter than the
    // magic), then put them back in front of the rest.
    let mut counted = counted;
    let mut head = Vec::with_capacity(4);
    while head.len() < 4 {
        let mut b = [0u8; 4];
        let n = counted
            .read(&mut b[..4 - head.len()])
            .map_err(|e| stream_err(&meter, e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    let compression = detect_compression(&head);
    let buffered = BufReader::with_capacity(256 << 10, io::Cursor::new(head).chain(counted));
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Stream)?,
        ),
    };
    let reader = UncompressedCounter {
        inner: HashingReader::new(decoded),
        meter: meter.clone(),
        limits: limits.clone(),
    };
    let root = sys::open_dir_path(dest).map_err(|source| UnpackError::Io {
        op: "opening the layer directory",
        entry: dest.display().to_string(),
        source,
    })?;
    let mut u = Unpacker {
        root,
        limits,
        seen: HashMap::new(),
        parent_cache: None,
        dir_times: Vec::new(),
        entries: 0,
        buf: vec![0u8; 256 << 10],
        root_owner: sys::is_root(),
    };
    let mut archive = tar::Archive::new(reader);
    let result = u.run(&mut archive, &meter);
    let mut reader = archive.into_inner();
    result?;
    // Hash the rest of the stream (end-of-archive blocks, padding) so the diff_id covers it.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| stream_err(&meter, e))?;
    u.finish_dir_times()?;
    let (diff_id, uncompressed_bytes, _) = reader.inner.finish();
    tracing::debug!(dest = %dest.display(), %diff_id, entries = u.entries, uncompressed_bytes, ?compression, "layer unpacked");
    Ok(UnpackedLayer {
        diff_id,
        entries: u.entries,
        uncompressed_bytes,
    })
}

fn stream_err(meter: &Meter, e: io::Error) -> UnpackError {
    meter.tripped().unwrap_or(UnpackError::Stream(e))
}

/// Extension headers that apply to the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<(String, Vec<u8>)>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

struct Unpacker<'a> {
    root: OwnedFd,
    limits: &'a UnpackLimits,
    seen: HashMap<Vec<u8>, Kind>,
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    dir_times: Vec<(Vec<u8>, i64)>,
    entries: u64,
    buf: Vec<u8>,
    root_owner: bool,
}

/// An entry name for messages: lossy UTF-8, cut to 200 bytes.
fn lossy(b: &[u8]) -> String {
    if b.len() > 200 {
        format!("{}…", String::from_utf8_lossy(&b[..200]))
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

fn entry_err(raw: &[u8], problem: EntryProblem) -> UnpackError {
    UnpackError::Entry {
        entry: lossy(raw),
        problem,
    }
}

/// Parses PAX records (`<len> <key>=<value>\n`) by their length fields, so values may hold any
/// byte, including newlines (binary xattrs).
fn parse_pax(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, EntryProblem> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break; // NUL padding after the last record
        }
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| EntryProblem::PaxMalformed("record without a length".into()))?;
        let len_str = std::str::from_utf8(&rest[..sp])
            .map_err(|_| EntryProblem::PaxMalformed("non-decimal length".into()))?;
        if len_str.is_empty() || !len_str.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EntryProblem::PaxMalformed(format!(
                "bad length {len_str:?}"
            )));
        }
        let len: usize = len_str
            .parse()
            .map_err(|_| EntryProblem::PaxMalformed(format!("bad length {len_str:?}")))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(EntryProblem::PaxMalformed(format!(
                "length {len} does not frame the record"
            )));
        }
        let kv = &rest[sp + 1..len - 1];
        let eq = kv
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| EntryProblem::PaxMalformed("record without '='".into()))?;
        let key = std::str::from_utf8(&kv[..eq])
            .map_err(|_| EntryProblem::PaxMalformed("non-utf-8 key".into()))?
            .to_owned();
        if key.is_empty() {
            return Err(EntryProblem::PaxMalformed("empty key".into()));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(EntryProblem::PaxMalformed(format!("duplicate key {key:?}")));
        }
        out.push((key, kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

fn pax_number(key: &str, v: &[u8]) -> Result<u64, EntryProblem> {
    let s = std::str::from_utf8(v)
        .map_err(|_| EntryProblem::PaxMalformed(format!("{key} is not a number")))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryProblem::PaxMalformed(format!(
            "{key}={s:?} is not a decimal number"
        )));
    }
    s.parse()
        .map_err(|_| EntryProblem::PaxMalformed(format!("{key}={s:?} out of range")))
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Splits and checks an entry path. Returns the normalised components; empty for the root.
fn normalize<'p>(raw: &'p [u8], limits: &UnpackLimits) -> Result<Vec<&'p [u8]>, EntryProblem> {
    if raw.is_empty() {
        return Err(EntryProblem::Empty);
    }
    if raw.contains(&0) {
        return Err(EntryProblem::Nul);
    }
    if raw.len() > limits.max_path_len {
        return Err(EntryProblem::PathTooLong(limits.max_path_len));
    }
    if raw[0] == b'/' {
        return Err(EntryProblem::Absolute);
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(EntryProblem::DotDot),
            c if c.len() > limits.max_name_len => {
                return Err(EntryProblem::NameTooLong(limits.max_name_len))
            }
            c => comps.push(c),
        }
    }
    if comps.len() > limits.max_depth {
        return Err(EntryProblem::TooDeep(limits.max_depth));
    }
    Ok(comps)
}

enum Whiteout<'p> {
    None,
    Opaque,
    Remove(&'p [u8]),
    AufsMeta,
}

fn classify_whiteout(name: &[u8]) -> Result<Whiteout<'_>, EntryProblem> {
    let Some(rest) = name.strip_prefix(b".wh.") else {
        return Ok(Whiteout::None);
    };
    if rest == b".wh..opq" {
        return Ok(Whiteout::Opaque);
    }
    if rest.starts_with(b".wh.") {
        return Ok(Whiteout::AufsMeta);
    }
    match rest {
        b"" | b"." | b".." => Err(EntryProblem::InvalidWhiteout),
        r => Ok(Whiteout::Remove(r)),
    }
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl<'a> Unpacker<'a> {
    fn run<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        meter: &Meter,
    ) -> Result<(), UnpackError> {
        let entries = archive
            .entries()
            .map_err(|e| stream_err(meter, e))?
            .raw(true);
        let mut pending = Pending::default();
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_err(meter, e))?;
            let et = entry.header().entry_type();
            let raw_name = entry.path_bytes().into_owned();
            let size = entry
                .header()
                .entry_size()
                .map_err(|e| stream_err(meter, e))?;
            match et {
                tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader => {
                    if size > self.limits.max_header_bytes {
                        return Err(entry_err(&raw_name, EntryProblem::HeaderTooLarge(size)));
                    }
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| stream_err(meter, e))?;
                    let slot_taken = match et {
                        tar::EntryType::GNULongName => {
                            pending.long_name.replace(trim_nul(data)).is_some()
                        }
                        tar::EntryType::GNULongLink => {
                            pending.long_link.replace(trim_nul(data)).is_some()
                        }
                        _ => {
                            let recs = parse_pax(&data).map_err(|p| entry_err(&raw_name, p))?;
                            pending.pax.replace(recs).is_some()
                        }
                    };
                    if slot_taken {
                        return Err(entry_err(&raw_name, EntryProblem::ExtensionHeader));
                    }
                    continue;
                }
                tar::EntryType::XGlobalHeader => {
                    if size > self.limits.max_header_bytes {
                        return Err(entry_err(&raw_name, EntryProblem::HeaderTooLarge(size)));
                    }
                    if !pending.is_empty() {
                        return Err(entry_err(&raw_name, EntryProblem::ExtensionHeader));
                    }
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| stream_err(meter, e))?;
                    // Global records would change how later entries read for other parsers
                    // (GNU tar applies them, this crate does not): allow only comments.
                    for (k, _) in parse_pax(&data).map_err(|p| entry_err(&raw_name, p))? {
                        if k != "comment" {
                            return Err(entry_err(&raw_name, EntryProblem::PaxGlobal(k)));
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let p = std::mem::take(&mut pending);
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::Limit {
                    what: "entries",
                    limit: self.limits.max_entries,
                });
            }
            self.entry(&mut entry, raw_name, size, p, meter)?;
        }
        if !pending.is_empty() {
            return Err(entry_err(b"", EntryProblem::ExtensionHeader));
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        header_name: Vec<u8>,
        size: u64,
        p: Pending,
        meter: &Meter,
    ) -> Result<(), UnpackError> {
        let header = entry.header().clone();
        let mut path = p.long_name.unwrap_or(header_name);
        let mut link = p
            .long_link
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let mut uid = header.uid().map_err(|e| stream_err(meter, e))?;
        let mut gid = header.gid().map_err(|e| stream_err(meter, e))?;
        let mut mtime = header.mtime().unwrap_or(0) as i64;
        let mut xattrs = Vec::new();
        let mut pax_size = None;
        for (k, v) in p.pax.unwrap_or_default() {
            match k.as_str() {
                "path" => path = v,
                "linkpath" => link = Some(v),
                "size" => pax_size = Some(pax_number("size", &v).map_err(|e| entry_err(&path, e))?),
                "uid" => uid = pax_number("uid", &v).map_err(|e| entry_err(&path, e))?,
                "gid" => gid = pax_number("gid", &v).map_err(|e| entry_err(&path, e))?,
                "mtime" => {
                    let s = String::from_utf8_lossy(&v);
                    let secs = s.split('.').next().unwrap_or("");
                    mtime = secs.parse().map_err(|_| {
                        entry_err(&path, EntryProblem::PaxMalformed(format!("mtime={s:?}")))
                    })?;
                }
                k if k.starts_with("GNU.sparse.") => {
                    return Err(entry_err(&path, EntryProblem::Sparse))
                }
                k if k.starts_with("SCHILY.xattr.") => {
                    xattrs.push((k["SCHILY.xattr.".len()..].to_owned(), v));
                }
                _ => {} // atime, ctime, uname, gname, comment, charset...: no effect here
            }
        }
        if let Some(ps) = pax_size {
            if ps != size {
                return Err(entry_err(
                    &path,
                    EntryProblem::PaxSizeMismatch {
                        pax: ps,
                        header: size,
                    },
                ));
            }
        }
        for id in [uid, gid] {
            if id > i32::MAX as u64 {
                return Err(entry_err(&path, EntryProblem::IdOutOfRange(id)));
            }
        }
        let mut xattr_bytes = 0;
        xattrs.retain(|(k, v)| {
            xattr_bytes += k.len() + v.len();
            k.starts_with("user.") || k == "security.capability" || k.starts_with("trusted.")
        });
        if xattr_bytes > self.limits.max_xattr_bytes {
            return Err(entry_err(
                &path,
                EntryProblem::XattrTooLarge(self.limits.max_xattr_bytes),
            ));
        }
        if let Some((k, _)) = xattrs.iter().find(|(k, _)| k.starts_with("trusted.")) {
            return Err(entry_err(&path, EntryProblem::ForbiddenXattr(k.clone())));
        }
        let mut mode = header.mode().map_err(|e| stream_err(meter, e))? & 0o7777;
        if !self.limits.keep_setid {
            mode &= !0o6000;
        }
        let meta = EntryMeta {
            mode,
            uid: uid as u32,
            gid: gid as u32,
            mtime,
            xattrs,
        };

        let comps = normalize(&path, self.limits).map_err(|e| entry_err(&path, e))?;
        let et = header.entry_type();
        use tar::EntryType as E;
        match et {
            E::Regular | E::Continuous | E::Directory | E::Symlink | E::Link => {}
            E::Char | E::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                return Err(entry_err(&path, EntryProblem::DeviceNode { major, minor }));
            }
            E::Fifo => return Err(entry_err(&path, EntryProblem::Fifo)),
            E::GNUSparse => return Err(entry_err(&path, EntryProblem::Sparse)),
            other => {
                return Err(entry_err(
                    &path,
                    EntryProblem::UnsupportedType(other.as_byte() as char),
                ))
            }
        }
        let Some((&name, parents)) = comps.split_last() else {
            // The layer root itself (`./`).
            if et != E::Directory {
                return Err(entry_err(&path, EntryProblem::RootNotDirectory));
            }
            return Ok(());
        };

        match classify_whiteout(name).map_err(|e| entry_err(&path, e))? {
            Whiteout::AufsMeta => {
                tracing::debug!(entry = %lossy(&path), "skipping aufs metadata entry");
                return Ok(());
            }
            Whiteout::Opaque => {
                let key = join(&comps);
                self.claim(&path, key, Kind::Opaque)?;
                let dir = self.parent(&path, parents)?;
                let dirfd = sys::open_dir_at(dir.as_fd(), b".")
                    .map_err(|e| io_err("opening directory", &path, e))?;
                sys::fsetxattr(dirfd.as_fd(), b"trusted.overlay.opaque", b"y")
                    .map_err(|e| io_err("setting trusted.overlay.opaque", &path, e))?;
                self.parent_cache = Some((join(parents), dir));
                return Ok(());
            }
            Whiteout::Remove(target) => {
                let mut key_comps = parents.to_vec();
                key_comps.push(target);
                self.claim(&path, join(&key_comps), Kind::Whiteout)?;
                let dir = self.parent(&path, parents)?;
                sys::mknod_whiteout_at(dir.as_fd(), target)
                    .map_err(|e| io_err("creating whiteout device", &path, e))?;
                self.parent_cache = Some((join(parents), dir));
                return Ok(());
            }
            Whiteout::None => {}
        }

        let key = join(&comps);
        if et == E::Directory {
            let existing = self.seen.get(&key).copied();
            match existing {
                None => self.claim(&path, key.clone(), Kind::Dir)?,
                Some(Kind::ImplicitDir) => {
                    self.seen.insert(key.clone(), Kind::Dir);
                }
                Some(Kind::Dir | Kind::Opaque) => {
                    return Err(entry_err(&path, EntryProblem::Duplicate))
                }
                Some(_) => return Err(entry_err(&path, EntryProblem::TypeConflict)),
            }
            let dir = self.parent(&path, parents)?;
            if existing.is_none() {
                sys::mkdir_at(dir.as_fd(), name, 0o700)
                    .map_err(|e| io_err("creating directory", &path, e))?;
            }
            let fd = sys::open_dir_at(dir.as_fd(), name)
                .map_err(|e| io_err("opening directory", &path, e))?;
            self.set_meta(fd.as_fd(), &path, &meta)?;
            self.dir_times.push((key, meta.mtime));
            self.parent_cache = Some((join(parents), dir));
            return Ok(());
        }

        if size > self.limits.max_file_bytes && matches!(et, E::Regular | E::Continuous) {
            return Err(entry_err(
                &path,
                EntryProblem::FileTooLarge {
                    size,
                    cap: self.limits.max_file_bytes,
                },
            ));
        }
        let kind = match et {
            E::Symlink => Kind::Symlink,
            _ => Kind::File,
        };
        match self.seen.get(&key) {
            None => {}
            Some(Kind::ImplicitDir | Kind::Dir) => {
                return Err(entry_err(&path, EntryProblem::TypeConflict))
            }
            Some(_) => return Err(entry_err(&path, EntryProblem::Duplicate)),
        }
        // Resolve a hard link's target before claiming our own name.
        let link_target = if et == E::Link {
            let target = link.clone().unwrap_or_default();
            let tcomps = match normalize(&target, self.limits) {
                Ok(c) if !c.is_empty() => c,
                Ok(_) | Err(EntryProblem::Absolute | EntryProblem::DotDot) => {
                    return Err(entry_err(
                        &path,
                        EntryProblem::HardlinkOutside(lossy(&target)),
                    ));
                }
                Err(e) => return Err(entry_err(&path, e)),
            };
            if self.seen.get(&join(&tcomps)) != Some(&Kind::File) {
                return Err(entry_err(
                    &path,
                    EntryProblem::HardlinkTarget(lossy(&target)),
                ));
            }
            let (tname, tparents) = tcomps.split_last().expect("non-empty");
            Some((
                tname.to_vec(),
                tparents.iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
            ))
        } else {
            None
        };
        self.claim(&path, key, kind)?;
        let dir = self.parent(&path, parents)?;
        match et {
            E::Symlink => {
                let target = link.unwrap_or_default();
                if target.is_empty()
                    || target.contains(&0)
                    || target.len() > self.limits.max_path_len
                {
                    return Err(entry_err(&path, EntryProblem::SymlinkTarget));
                }
                sys::symlink_at(&target, dir.as_fd(), name)
                    .map_err(|e| io_err("creating symlink", &path, e))?;
                if self.root_owner {
                    sys::chown_at(dir.as_fd(), name, meta.uid, meta.gid)
                        .map_err(|e| io_err("chown", &path, e))?;
                }
                sys::set_mtime_at(dir.as_fd(), name, meta.mtime)
                    .map_err(|e| io_err("setting mtime", &path, e))?;
            }
            E::Link => {
                let (tname, tparents) = link_target.expect("set for links");
                let tparents: Vec<&[u8]> = tparents.iter().map(|c| c.as_slice()).collect();
                let tdir = sys::open_dir_beneath(self.root.as_fd(), &join(&tparents))
                    .map_err(|e| self.resolve_err(&path, &tparents, e))?;
                sys::link_at(tdir.as_fd(), &tname, dir.as_fd(), name)
                    .map_err(|e| io_err("creating hard link", &path, e))?;
            }
            _ => {
                let mut file = sys::create_file_at(dir.as_fd(), name)
                    .map_err(|e| io_err("creating file", &path, e))?;
                let mut remaining = size;
                while remaining > 0 {
                    let want = remaining.min(self.buf.len() as u64) as usize;
                    let n = entry
                        .read(&mut self.buf[..want])
                        .map_err(|e| stream_err(meter, e))?;
                    if n == 0 {
                        return Err(UnpackError::Stream(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("entry {:?} truncated", lossy(&path)),
                        )));
                    }
                    file.write_all(&self.buf[..n])
                        .map_err(|e| io_err("writing file", &path, e))?;
                    remaining -= n as u64;
                }
                self.set_meta(file.as_fd(), &path, &meta)?;
            }
        }
        self.parent_cache = Some((join(parents), dir));
        Ok(())
    }

    fn claim(&mut self, raw: &[u8], key: Vec<u8>, kind: Kind) -> Result<(), UnpackError> {
        if self.seen.contains_key(&key) {
            return Err(entry_err(raw, EntryProblem::Duplicate));
        }
        self.seen.insert(key, kind);
        Ok(())
    }

    fn resolve_err(&self, raw: &[u8], parents: &[&[u8]], e: io::Error) -> UnpackError {
        // Name the first component that is not a real directory.
        for i in 1..=parents.len() {
            let prefix = join(&parents[..i]);
            match self.seen.get(&prefix) {
                Some(Kind::Symlink) => {
                    return entry_err(raw, EntryProblem::ThroughSymlink(lossy(&prefix)))
                }
                Some(Kind::File | Kind::Whiteout) => {
                    return entry_err(raw, EntryProblem::ParentNotDirectory(lossy(&prefix)))
                }
                _ => {}
            }
        }
        match e.raw_os_error() {
            Some(libc::ELOOP) => {
                entry_err(raw, EntryProblem::ThroughSymlink(lossy(&join(parents))))
            }
            Some(libc::ENOTDIR) => {
                entry_err(raw, EntryProblem::ParentNotDirectory(lossy(&join(parents))))
            }
            _ => io_err("resolving parent directory", raw, e),
        }
    }

    /// Opens (creating as needed, 0755 root-owned) the parent directory, never through a symlink.
    fn parent(&mut self, raw: &[u8], parents: &[&[u8]]) -> Result<OwnedFd, UnpackError> {
        let key = join(parents);
        if let Some((k, fd)) = self.parent_cache.take() {
            if k == key {
                return Ok(fd);
            }
        }
        // Make sure every prefix is (or becomes) a directory of this layer.
        let mut missing_from = None;
        for i in 1..=parents.len() {
            let prefix = join(&parents[..i]);
            match self.seen.get(&prefix) {
                Some(Kind::Dir | Kind::ImplicitDir | Kind::Opaque) => {}
                Some(Kind::Symlink) => {
                    return Err(entry_err(raw, EntryProblem::ThroughSymlink(lossy(&prefix))))
                }
                Some(Kind::File | Kind::Whiteout) => {
                    return Err(entry_err(
                        raw,
                        EntryProblem::ParentNotDirectory(lossy(&prefix)),
                    ))
                }
                None => {
                    missing_from.get_or_insert(i);
                }
            }
        }
        if let Some(start) = missing_from {
            let mut dir = sys::open_dir_beneath(self.root.as_fd(), &join(&parents[..start - 1]))
                .map_err(|e| self.resolve_err(raw, &parents[..start - 1], e))?;
            for i in start..=parents.len() {
                let comp = parents[i - 1];
                let prefix = join(&parents[..i]);
                if !self.seen.contains_key(&prefix) {
                    sys::mkdir_at(dir.as_fd(), comp, 0o755)
                        .map_err(|e| io_err("creating parent directory", raw, e))?;
                    self.seen.insert(prefix.clone(), Kind::ImplicitDir);
                }
                dir = sys::open_dir_beneath(dir.as_fd(), comp)
                    .map_err(|e| self.resolve_err(raw, &parents[..i], e))?;
            }
            return Ok(dir);
        }
        sys::open_dir_beneath(self.root.as_fd(), &key)
            .map_err(|e| self.resolve_err(raw, parents, e))
    }

    fn set_meta(
        &self,
        fd: BorrowedFd<'_>,
        raw: &[u8],
        meta: &EntryMeta,
    ) -> Result<(), UnpackError> {
        if self.root_owner {
            sys::fchown(fd, meta.uid, meta.gid).map_err(|e| io_err("chown", raw, e))?;
        }
        // After chown, which clears setuid/setgid bits.
        sys::fchmod(fd, meta.mode).map_err(|e| io_err("chmod", raw, e))?;
        for (k, v) in &meta.xattrs {
            if let Err(e) = sys::fsetxattr(fd, k.as_bytes(), v) {
                if e.raw_os_error() == Some(libc::ENOTSUP) {
                    tracing::warn!(entry = %lossy(raw), xattr = %k, "filesystem does not support xattr; dropped");
                } else {
                    return Err(io_err("setting xattr", raw, e));
                }
            }
        }
        sys::set_mtime_at(fd, b"", meta.mtime).map_err(|e| io_err("setting mtime", raw, e))
    }

    /// Directory mtimes last, deepest first, since creating children changed them.
    fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        self.parent_cache = None;
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        for (key, mtime) in times {
            let fd = sys::open_dir_beneath(self.root.as_fd(), &key)
                .map_err(|e| io_err("opening directory", &key, e))?;
            sys::set_mtime_at(fd.as_fd(), b"", mtime)
                .map_err(|e| io_err("setting mtime", &key, e))?;
        }
        Ok(())
    }
}

fn io_err(op: &'static str, raw: &[u8], source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        entry: lossy(raw),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_parser_frames_by_length() {
        let rec = |k: &str, v: &[u8]| {
            let body_len = k.len() + v.len() + 2;
            let mut len = body_len + 1;
            loop {
                let l = len.to_string().len() + 1 + body_len;
                if l == len {
                    break;
                }
                len = l;
            }
            let mut r = format!("{len} {k}=").into_bytes();
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        let mut data = rec("path", b"a/b");
        data.extend(rec("SCHILY.xattr.security.capability", b"\x01\n\x02"));
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs[0], ("path".into(), b"a/b".to_vec()));
        assert_eq!(recs[1].1, b"\x01\n\x02".to_vec());
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"5 a=b\n").is_err());
        let mut dup = rec("size", b"1");
        dup.extend(rec("size", b"2"));
        assert!(parse_pax(&dup).is_err());
    }

    #[test]
    fn normalize_rules() {
        let l = UnpackLimits::default();
        assert_eq!(normalize(b"./a//b/", &l).unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(normalize(b"./", &l).unwrap(), Vec::<&[u8]>::new());
        assert_eq!(normalize(b"/etc/x", &l), Err(EntryProblem::Absolute));
        assert_eq!(normalize(b"a/../../x", &l), Err(EntryProblem::DotDot));
        assert!(matches!(
            classify_whiteout(b".wh.."),
            Err(EntryProblem::InvalidWhiteout)
        ));
        assert!(matches!(
            classify_whiteout(b".wh..."),
            Err(EntryProblem::InvalidWhiteout)
        ));
        assert!(matches!(
            classify_whiteout(b".wh."),
            Err(EntryProblem::InvalidWhiteout)
        ));
        assert!(matches!(
            classify_whiteout(b".wh..wh..opq"),
            Ok(Whiteout::Opaque)
        ));
        assert!(matches!(
            classify_whiteout(b".wh.x"),
            Ok(Whiteout::Remove(b"x"))
        ));
    }
}
