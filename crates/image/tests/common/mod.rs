//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use flotilla_image::testimage::{write_oci_layout, TestConfig, TestLayer};
use flotilla_image::{ImageStore, StoreOptions, UnpackLimits};

/// `true` if the test may run privileged steps. Without root: under CI=true this panics (a
/// privileged test must fail, not skip, in CI); elsewhere it prints a note and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (mknod and trusted.* xattrs) and CI=true: failing instead of skipping");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// Fails (never skips) when busybox is missing: deploy/install-deps.sh installs it.
pub fn busybox() -> PathBuf {
    let p = flotilla_image::testimage::busybox_path();
    assert!(
        p.is_file(),
        "busybox not found at {} (run deploy/install-deps.sh or set FLOTILLA_BUSYBOX)",
        p.display()
    );
    p
}

/// A temporary directory with `store/`, `layout/` and a `sentinel/` outside the store holding
/// one file, to check that nothing is written outside a layer's directory.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-image-test")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("sentinel")).unwrap();
        std::fs::write(dir.path().join("sentinel/keep"), b"untouched").unwrap();
        Self { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn sentinel(&self) -> PathBuf {
        self.path().join("sentinel")
    }
    pub fn store_root(&self) -> PathBuf {
        self.path().join("store")
    }
    pub fn store(&self) -> ImageStore {
        self.store_with(UnpackLimits::default())
    }
    pub fn store_with(&self, limits: UnpackLimits) -> ImageStore {
        ImageStore::open_with(
            self.store_root(),
            StoreOptions {
                limits,
                fsync: false,
            },
        )
        .unwrap()
    }
    /// Writes a layout with `layers` under `layout-<tag>/` and returns its path.
    pub fn layout(&self, tag: &str, layers: Vec<TestLayer>) -> PathBuf {
        let p = self.path().join(format!("layout-{tag}"));
        write_oci_layout(&p, tag, &layers, &TestConfig::busybox()).unwrap();
        p
    }
    /// The sentinel holds exactly its one file, unchanged, and nothing else appeared next to it.
    pub fn assert_sentinel_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.sentinel())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("keep")],
            "something was written into the sentinel"
        );
        assert_eq!(
            std::fs::read(self.sentinel().join("keep")).unwrap(),
            b"untouched"
        );
        let meta = std::fs::symlink_metadata(self.sentinel().join("keep")).unwrap();
        assert!(meta.file_type().is_file());
        let mut top: Vec<_> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("layout-") && !n.ends_with(".tar"))
            .collect();
        top.sort();
        assert!(
            top.iter().all(|n| n == "sentinel" || n == "store"),
            "unexpected entries next to the store: {top:?}"
        );
    }
    /// No layer directory and no temporary leftovers in the store.
    pub fn assert_no_layers(&self) {
        for d in ["layers", "tmp"] {
            let n = std::fs::read_dir(self.store_root().join(d))
                .unwrap()
                .count();
            assert_eq!(n, 0, "store/{d} is not empty");
        }
    }
}

/// A tar written header by header, for archives the `tar` crate's builder refuses to make.
#[derive(Default)]
pub struct RawTar(pub Vec<u8>);

pub fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3; // ' ', '=' and '\n' besides the length digits
    let mut len = body + 1;
    loop {
        let l = len.to_string().len() + body;
        if l == len {
            break;
        }
        len = l;
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(512) {
            self.0.push(0);
        }
    }

    /// Writes a ustar header with raw name and link bytes (no validation at all).
    pub fn header(
        &mut self,
        name: &[u8],
        kind: u8,
        size: u64,
        link: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self
    }

    pub fn data(&mut self, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(d);
        self.pad();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.header(name.as_bytes(), b'0', data.len() as u64, b"", 0o644)
            .data(data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.header(name.as_bytes(), b'5', 0, b"", 0o755)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), b'2', 0, target.as_bytes(), 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), b'1', 0, target.as_bytes(), 0o644)
    }

    /// A PAX extended header ('x') for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        self.header(b"PaxHeaders/x", b'x', body.len() as u64, b"", 0o644)
            .data(&body)
    }

    /// Raw PAX body (possibly malformed).
    pub fn pax_raw(&mut self, body: &[u8]) -> &mut Self {
        self.header(b"PaxHeaders/x", b'x', body.len() as u64, b"", 0o644)
            .data(body)
    }

    /// A GNU long-name header ('L') for the next entry.
    pub fn gnu_long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut d = name.to_vec();
        d.push(0);
        self.header(b"././@LongLink", b'L', d.len() as u64, b"", 0o644)
            .data(&d)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

/// The store error with its whole source chain.
pub fn chain(e: &flotilla_image::ImageError) -> String {
    flotilla_image::error_chain(e)
}
