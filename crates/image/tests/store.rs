//! Store behaviour without a registry: imports of each format, shared layers stored once, the
//! image configuration, list/get/remove/gc, persistence, compression variants, commit, and the
//! overlay view of whiteouts and opaque directories (live, root).

mod common;

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{chain, require_root, RawTar, Scratch};
use flotilla_image::testimage::{
    build_busybox_oci_layout, docker_archive_from_layout, oci_archive_from_layout,
    write_oci_layout, LayerCompression, TestConfig, TestLayer,
};
use flotilla_image::{Digest, ImageError};

fn count_dir(p: &Path) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

#[test]
fn import_oci_layout_of_busybox() {
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    let info = build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let store = s.store();
    let imgs = store
        .import_oci_layout(&layout, None, Some("flotilla/busybox:1"))
        .unwrap();
    assert_eq!(imgs.len(), 1);
    let img = &imgs[0];
    assert_eq!(img.id, info.manifest);
    assert_eq!(img.names, vec!["docker.io/flotilla/busybox:1".to_owned()]);
    assert_eq!(img.config.cmd(), vec!["sh"]);
    assert_eq!(img.config.env(), vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    assert_eq!(img.config.working_dir().as_deref(), Some("/"));
    let dirs = store.layer_dirs(img);
    assert_eq!(dirs, vec![store.layer_dir(&info.diff_ids[0])]);
    let root = &dirs[0];
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0"));
    assert_eq!(
        std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // Unpacked exactly as the blob says: the diff_id was checked.
    assert_eq!(img.layers[0].diff_id, info.diff_ids[0]);
    // Every blob is in the store under its digest.
    for d in [&info.manifest, &info.config, &info.layers[0]] {
        assert!(store.has_blob(d));
        let bytes = std::fs::read(store.blob_path(d)).unwrap();
        assert_eq!(&Digest::of(&bytes), d);
    }
    // get by name (normalised), by id prefix, by full id.
    assert_eq!(store.get("flotilla/busybox:1").unwrap().id, img.id);
    assert_eq!(store.get(&img.id.hex()[..12]).unwrap().id, img.id);
    assert_eq!(store.get(&img.id.to_string()).unwrap().id, img.id);
    assert!(matches!(store.get("nope:1"), Err(ImageError::NotFound(_))));
}

#[test]
fn image_config_is_exposed() {
    let s = Scratch::new();
    let layout = s.path().join("layout-cfg");
    let cfg = TestConfig {
        entrypoint: Some(vec!["/bin/busybox".into(), "httpd".into()]),
        cmd: Some(vec!["-f".into(), "-p".into(), "8080".into()]),
        env: vec!["PATH=/bin".into(), "A=b=c".into()],
        working_dir: Some("/srv".into()),
        user: Some("65534:65534".into()),
        exposed_ports: vec!["8080/tcp".into(), "53/udp".into()],
        labels: vec![("org.example.role".into(), "web".into())],
    };
    write_oci_layout(
        &layout,
        "cfg",
        &[TestLayer::gzip(RawTar::new().dir("srv/").finish())],
        &cfg,
    )
    .unwrap();
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/cfg:1"))
        .unwrap()
        .remove(0);
    let c = &img.config;
    assert_eq!(c.entrypoint(), vec!["/bin/busybox", "httpd"]);
    assert_eq!(c.cmd(), vec!["-f", "-p", "8080"]);
    assert_eq!(
        c.default_args(),
        vec!["/bin/busybox", "httpd", "-f", "-p", "8080"]
    );
    assert_eq!(c.env(), vec!["PATH=/bin", "A=b=c"]);
    assert_eq!(c.working_dir().as_deref(), Some("/srv"));
    assert_eq!(c.user().as_deref(), Some("65534:65534"));
    assert_eq!(c.exposed_ports(), vec!["53/udp", "8080/tcp"]);
    assert_eq!(
        c.labels().get("org.example.role").map(String::as_str),
        Some("web")
    );
    assert_eq!(c.spec.architecture().to_string(), "amd64");
}

#[test]
fn import_oci_archive_and_docker_archive() {
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    let info = build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let oci_tar = s.path().join("bb-oci.tar");
    oci_archive_from_layout(&layout, &oci_tar).unwrap();
    let docker_tar = s.path().join("bb-docker.tar");
    docker_archive_from_layout(&layout, "1", "flotilla/bb-docker:2", &docker_tar).unwrap();
    let store = s.store();

    let a = store
        .import_oci_archive(&oci_tar, None, Some("flotilla/bb-oci:1"))
        .unwrap()
        .remove(0);
    assert_eq!(a.id, info.manifest);
    assert_eq!(a.config.cmd(), vec!["sh"]);

    let b = store
        .import_docker_archive(&docker_tar, None)
        .unwrap()
        .remove(0);
    assert_eq!(b.names, vec!["docker.io/flotilla/bb-docker:2".to_owned()]);
    assert_eq!(b.config_digest, info.config);
    // The docker archive carries the layer uncompressed: another blob, the same diff_id, so the
    // same unpacked layer directory.
    assert_ne!(b.layers[0].digest, a.layers[0].digest);
    assert_eq!(b.layers[0].diff_id, a.layers[0].diff_id);
    assert_eq!(store.layer_dirs(&a), store.layer_dirs(&b));
    assert_eq!(count_dir(&s.store_root().join("layers")), 1);
    assert_eq!(store.list().len(), 2);
    assert!(store.layer_dirs(&b)[0].join("bin/busybox").is_file());
    // Importing the same archive again changes nothing but is fine.
    let b2 = store
        .import_docker_archive(&docker_tar, Some("flotilla/again:1"))
        .unwrap()
        .remove(0);
    assert_eq!(b2.id, b.id);
    assert_eq!(store.get("flotilla/again:1").unwrap().id, b.id);
    assert_eq!(store.list().len(), 2);
}

#[test]
fn shared_layer_is_stored_and_unpacked_once() {
    let s = Scratch::new();
    let base = RawTar::new().dir("etc/").file("etc/base", b"base").finish();
    let top1 = RawTar::new().file("one", b"1").finish();
    let top2 = RawTar::new().file("two", b"2").finish();
    let layout = s.path().join("layout-shared");
    let i1 = write_oci_layout(
        &layout,
        "one",
        &[TestLayer::gzip(base.clone()), TestLayer::gzip(top1)],
        &TestConfig::busybox(),
    )
    .unwrap();
    let i2 = write_oci_layout(
        &layout,
        "two",
        &[TestLayer::gzip(base), TestLayer::gzip(top2)],
        &TestConfig::busybox(),
    )
    .unwrap();
    assert_eq!(i1.layers[0], i2.layers[0]);
    let store = s.store();
    let imgs = store.import_oci_layout(&layout, None, None).unwrap();
    assert_eq!(imgs.len(), 2);
    let (a, b) = (&imgs[0], &imgs[1]);
    assert_eq!(a.names, vec!["docker.io/library/one:latest".to_owned()]);
    let (da, db) = (store.layer_dirs(a), store.layer_dirs(b));
    assert_eq!(da[1], db[1], "base layer directory shared");
    assert_ne!(da[0], db[0]);
    assert_eq!(count_dir(&s.store_root().join("layers")), 3);
    // One blob for the shared layer: 2 manifests + 2 configs + 3 layers.
    assert_eq!(count_dir(&s.store_root().join("blobs/sha256")), 7);
    // Same inode: unpacked once.
    let ino = |d: &Path| std::fs::metadata(d.join("etc/base")).unwrap().ino();
    assert_eq!(ino(&da[1]), ino(&db[1]));
}

#[test]
fn zstd_and_uncompressed_layers() {
    let s = Scratch::new();
    let layout = s.path().join("layout-comp");
    write_oci_layout(
        &layout,
        "c",
        &[
            TestLayer {
                tar: RawTar::new().file("z", b"zstd").finish(),
                compression: LayerCompression::Zstd,
            },
            TestLayer {
                tar: RawTar::new().file("u", b"plain").finish(),
                compression: LayerCompression::None,
            },
            TestLayer::gzip(RawTar::new().file("g", b"gzip").finish()),
        ],
        &TestConfig::busybox(),
    )
    .unwrap();
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/comp:1"))
        .unwrap()
        .remove(0);
    let dirs = store.layer_dirs(&img);
    assert_eq!(std::fs::read(dirs[2].join("z")).unwrap(), b"zstd");
    assert_eq!(std::fs::read(dirs[1].join("u")).unwrap(), b"plain");
    assert_eq!(std::fs::read(dirs[0].join("g")).unwrap(), b"gzip");
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

#[test]
fn hardlinks_and_pax_xattrs_within_a_layer() {
    let s = Scratch::new();
    let mut t = RawTar::new();
    t.file("a", b"data").hardlink("b", "a");
    t.pax(&[
        ("SCHILY.xattr.user.flotilla", b"v\n1"),
        ("path", b"long/name/via/pax"),
    ])
    .file("ignored", b"p");
    let layout = s.layout("hl", vec![TestLayer::gzip(t.finish())]);
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/hl:1"))
        .unwrap()
        .remove(0);
    let d = &store.layer_dirs(&img)[0];
    assert_eq!(
        std::fs::metadata(d.join("a")).unwrap().ino(),
        std::fs::metadata(d.join("b")).unwrap().ino()
    );
    assert_eq!(std::fs::read(d.join("long/name/via/pax")).unwrap(), b"p");
    assert!(!d.join("ignored").exists());
}

#[test]
fn remove_untag_in_use_and_gc() {
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/bb:1"))
        .unwrap()
        .remove(0);
    store.tag("t/bb:1", "t/bb:2").unwrap();
    let other_layout = s.layout(
        "other",
        vec![TestLayer::gzip(RawTar::new().file("x", b"x").finish())],
    );
    let other = store
        .import_oci_layout(&other_layout, None, Some("t/other:1"))
        .unwrap()
        .remove(0);
    let nothing: HashSet<std::path::PathBuf> = HashSet::new();
    let none: HashSet<Digest> = HashSet::new();
    // Nothing unreferenced yet.
    let r = store.gc(&nothing).unwrap();
    assert!(
        r.blobs_removed.is_empty() && r.layers_removed.is_empty(),
        "{r:?}"
    );
    // Untag one of two names: the image stays.
    let out = store.remove("t/bb:2", &none).unwrap();
    assert_eq!(out.untagged, vec!["docker.io/t/bb:2".to_owned()]);
    assert_eq!(out.deleted, None);
    // The last name of an image in use: refused.
    let in_use: HashSet<Digest> = [img.id.clone()].into();
    assert!(matches!(
        store.remove("t/bb:1", &in_use),
        Err(ImageError::InUse { .. })
    ));
    assert!(matches!(
        store.remove(&img.id.hex()[..10], &in_use),
        Err(ImageError::InUse { .. })
    ));
    // Removing `other` by id, then gc keeps its layer while a container still mounts it.
    let other_dirs = store.layer_dirs(&other);
    let out = store.remove(&other.id.to_string(), &none).unwrap();
    assert_eq!(out.deleted, Some(other.id.clone()));
    let mounted: HashSet<_> = other_dirs.iter().cloned().collect();
    let r = store.gc(&mounted).unwrap();
    assert_eq!(
        r.blobs_removed.len(),
        3,
        "manifest, config and layer blob of `other`: {r:?}"
    );
    assert!(r.layers_removed.is_empty());
    assert!(other_dirs[0].is_dir());
    let r = store.gc(&nothing).unwrap();
    assert_eq!(r.layers_removed, vec![other.layers[0].diff_id.clone()]);
    assert!(!other_dirs[0].exists());
    // busybox untouched.
    assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
    // Now remove busybox too: everything goes.
    store.remove("t/bb:1", &none).unwrap();
    store.gc(&nothing).unwrap();
    assert_eq!(count_dir(&s.store_root().join("blobs/sha256")), 0);
    assert_eq!(count_dir(&s.store_root().join("layers")), 0);
    assert!(store.list().is_empty());
}

#[test]
fn index_persists_and_store_is_locked() {
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let id = {
        let store = s.store();
        let img = store
            .import_oci_layout(&layout, None, Some("t/bb:1"))
            .unwrap()
            .remove(0);
        let e = flotilla_image::ImageStore::open(s.store_root())
            .err()
            .expect("second open refused");
        assert!(matches!(e, ImageError::Locked(_)), "{}", chain(&e));
        img.id
    };
    let store = s.store();
    let img = store.get("t/bb:1").unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.config.cmd(), vec!["sh"]);
    // Leftovers of an interrupted write are cleared at open.
    std::fs::write(s.store_root().join("tmp/blob-leftover"), b"x").unwrap();
    drop(store);
    let _store = s.store();
    assert_eq!(count_dir(&s.store_root().join("tmp")), 0);
}

#[test]
fn ambiguous_name_in_archive_import() {
    let s = Scratch::new();
    let layout = s.path().join("layout-two");
    write_oci_layout(
        &layout,
        "a",
        &[TestLayer::gzip(RawTar::new().file("a", b"a").finish())],
        &TestConfig::busybox(),
    )
    .unwrap();
    write_oci_layout(
        &layout,
        "b",
        &[TestLayer::gzip(RawTar::new().file("b", b"b").finish())],
        &TestConfig::busybox(),
    )
    .unwrap();
    let store = s.store();
    let e = store
        .import_oci_layout(&layout, None, Some("t/x:1"))
        .unwrap_err();
    assert!(
        chain(&e).contains("a name applies to one image"),
        "{}",
        chain(&e)
    );
    let img = store
        .import_oci_layout(&layout, Some("b"), Some("t/x:1"))
        .unwrap()
        .remove(0);
    assert!(store.layer_dirs(&img)[0].join("b").is_file());
}

/// Whiteouts and opaque directories become overlay metadata; mounted as lowers, the merged view
/// hides what they remove. Needs root (mknod of 0/0 devices, trusted.* xattrs, mount).
#[test]
fn live_overlay_whiteouts_and_opaque_dirs() {
    if !require_root("live_overlay_whiteouts_and_opaque_dirs") {
        return;
    }
    let s = Scratch::new();
    let l1 = RawTar::new()
        .dir("etc/")
        .file("etc/keep", b"k")
        .file("etc/gone", b"g")
        .dir("opq/")
        .file("opq/old", b"o")
        .dir("data/")
        .file("data/lower", b"l")
        .finish();
    let l2 = RawTar::new()
        .dir("etc/")
        .file("etc/.wh.gone", b"")
        .dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"n")
        .file("data/upper", b"u")
        .finish();
    let layout = s.layout("wh", vec![TestLayer::gzip(l1), TestLayer::gzip(l2)]);
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/wh:1"))
        .unwrap()
        .remove(0);
    let dirs = store.layer_dirs(&img);
    let top = &dirs[0];
    let wh = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    let opq = xattr_of(&top.join("opq"), "trusted.overlay.opaque");
    assert_eq!(opq.as_deref(), Some(&b"y"[..]));
    // `data/` had no directory entry in layer 2: created implicitly, not opaque.
    assert_eq!(xattr_of(&top.join("data"), "trusted.overlay.opaque"), None);

    let merged = Mount::overlay(s.path(), &dirs);
    let m = merged.path();
    assert!(m.join("etc/keep").is_file());
    assert!(
        !m.join("etc/gone").exists(),
        "whiteout hides the lower file"
    );
    assert!(m.join("opq/new").is_file());
    assert!(
        !m.join("opq/old").exists(),
        "opaque directory hides the lower contents"
    );
    assert!(
        m.join("data/lower").is_file() && m.join("data/upper").is_file(),
        "plain directories merge"
    );
}

/// The busybox image, mounted as an overlay of its layer directories, runs `sh -c`.
#[test]
fn live_busybox_image_runs_from_overlay() {
    if !require_root("live_busybox_image_runs_from_overlay") {
        return;
    }
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let store = s.store();
    let img = store
        .import_oci_layout(&layout, None, Some("t/bb:1"))
        .unwrap()
        .remove(0);
    let merged = Mount::overlay(s.path(), &store.layer_dirs(&img));
    let out = std::process::Command::new("/usr/sbin/chroot")
        .arg(merged.path())
        .args([
            "/bin/sh",
            "-c",
            "echo hello from $(cat /etc/passwd | head -1 | cut -d: -f1)",
        ])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from root"
    );
}

/// Commit round trip: changes made through an overlay (new file, modified file, deleted file,
/// replaced directory) become a layer; the committed image shows exactly those changes.
#[test]
fn live_commit_round_trip() {
    if !require_root("live_commit_round_trip") {
        return;
    }
    let s = Scratch::new();
    let base_tar = RawTar::new()
        .dir("etc/")
        .file("etc/hostname", b"base\n")
        .file("etc/remove-me", b"x")
        .dir("var/")
        .dir("var/cache/")
        .file("var/cache/a", b"a")
        .file("var/cache/b", b"b")
        .finish();
    let layout = s.layout("base", vec![TestLayer::gzip(base_tar)]);
    let store = s.store();
    let base = store
        .import_oci_layout(&layout, None, Some("t/base:1"))
        .unwrap()
        .remove(0);
    let upper = s.path().join("upper");
    {
        let merged = Mount::overlay_rw(s.path(), &store.layer_dirs(&base), &upper);
        let m = merged.path();
        std::fs::write(m.join("etc/hostname"), b"changed\n").unwrap();
        std::fs::write(m.join("new-file"), b"new").unwrap();
        std::fs::remove_file(m.join("etc/remove-me")).unwrap();
        std::fs::remove_dir_all(m.join("var/cache")).unwrap();
        std::fs::create_dir(m.join("var/cache")).unwrap();
        std::fs::write(m.join("var/cache/fresh"), b"f").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", m.join("link")).unwrap();
        std::fs::hard_link(m.join("new-file"), m.join("new-hardlink")).unwrap();
        xattr_set(&m.join("new-file"), "user.flotilla", b"1");
    }
    let committed = store.commit(&upper, &base, "t/committed:1").unwrap();
    std::fs::remove_dir_all(&upper).unwrap();
    assert_eq!(committed.layers.len(), 2);
    assert_eq!(committed.config.diff_ids().len(), 2);
    assert_eq!(committed.config.cmd(), base.config.cmd());
    assert_eq!(committed.layers[..1], base.layers[..]);
    assert_eq!(store.get("t/committed:1").unwrap().id, committed.id);
    let merged = Mount::overlay(s.path(), &store.layer_dirs(&committed));
    let m = merged.path();
    assert_eq!(std::fs::read(m.join("etc/hostname")).unwrap(), b"changed\n");
    assert_eq!(std::fs::read(m.join("new-file")).unwrap(), b"new");
    assert!(!m.join("etc/remove-me").exists());
    assert!(!m.join("var/cache/a").exists() && !m.join("var/cache/b").exists());
    assert_eq!(std::fs::read(m.join("var/cache/fresh")).unwrap(), b"f");
    assert_eq!(
        std::fs::read_link(m.join("link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_eq!(
        std::fs::metadata(m.join("new-file")).unwrap().ino(),
        std::fs::metadata(m.join("new-hardlink")).unwrap().ino()
    );
    assert_eq!(
        xattr_of(&m.join("new-file"), "user.flotilla").as_deref(),
        Some(&b"1"[..])
    );
    // The committed layer round-trips through an archive too.
    let top = &store.layer_dirs(&committed)[0];
    assert!(std::fs::symlink_metadata(top.join("etc/remove-me"))
        .unwrap()
        .file_type()
        .is_char_device());
}

fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid strings and buffer.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let r = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

/// An overlay mount, unmounted on drop.
struct Mount {
    target: std::path::PathBuf,
}

impl Mount {
    fn overlay(scratch: &Path, lowers: &[std::path::PathBuf]) -> Self {
        let target = scratch.join(format!("merged-{}", rand_suffix()));
        std::fs::create_dir(&target).unwrap();
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        // A single lower directory is not a valid read-only overlay: add an empty one.
        let lower = if lowers.len() == 1 {
            let empty = scratch.join(format!("empty-{}", rand_suffix()));
            std::fs::create_dir(&empty).unwrap();
            format!("{lower}:{}", empty.display())
        } else {
            lower
        };
        mount_overlay(&target, &format!("lowerdir={lower}"));
        Self { target }
    }

    fn overlay_rw(scratch: &Path, lowers: &[std::path::PathBuf], upper: &Path) -> Self {
        let target = scratch.join(format!("merged-{}", rand_suffix()));
        let work = scratch.join(format!("work-{}", rand_suffix()));
        for d in [&target, &work, &upper.to_path_buf()] {
            std::fs::create_dir_all(d).unwrap();
        }
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        mount_overlay(
            &target,
            &format!(
                "lowerdir={lower},upperdir={},workdir={}",
                upper.display(),
                work.display()
            ),
        );
        Self { target }
    }

    fn path(&self) -> &Path {
        &self.target
    }
}

fn rand_suffix() -> String {
    format!(
        "{:08x}",
        std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos())
    )
}

fn mount_overlay(target: &Path, opts: &str) {
    let t = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let o = std::ffi::CString::new(opts).unwrap();
    // SAFETY: valid strings.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            t.as_ptr(),
            c"overlay".as_ptr(),
            0,
            o.as_ptr().cast(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount overlay {opts}: {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for Mount {
    fn drop(&mut self) {
        let t = std::ffi::CString::new(self.target.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid string.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.target);
    }
}

#[test]
fn import_detects_the_format() {
    let s = Scratch::new();
    let layout = s.path().join("layout-bb");
    let info = build_busybox_oci_layout(&common::busybox(), &layout, "1").unwrap();
    let oci_tar = s.path().join("bb-oci.tar");
    oci_archive_from_layout(&layout, &oci_tar).unwrap();
    let docker_tar = s.path().join("bb-docker.tar");
    docker_archive_from_layout(&layout, "1", "flotilla/bb:docker", &docker_tar).unwrap();
    let junk = s.path().join("junk.tar");
    std::fs::write(&junk, RawTar::new().file("hello", b"x").finish()).unwrap();
    let store = s.store();
    assert_eq!(
        store.import(&layout, Some("t/a:1")).unwrap()[0].id,
        info.manifest
    );
    assert_eq!(
        store.import(&oci_tar, Some("t/b:1")).unwrap()[0].id,
        info.manifest
    );
    let d = store.import(&docker_tar, None).unwrap().remove(0);
    assert_eq!(d.names, vec!["docker.io/flotilla/bb:docker".to_owned()]);
    let e = store.import(&junk, None).unwrap_err();
    assert!(
        chain(&e).contains("neither an oci-archive nor a docker-archive"),
        "{}",
        chain(&e)
    );
}

/// `security.capability` (file capabilities) survives unpacking; other `security.*` xattrs are
/// dropped.
#[test]
fn live_file_capabilities_are_kept() {
    if !require_root("live_file_capabilities_are_kept") {
        return;
    }
    // VFS_CAP_REVISION_2, cap_net_bind_service (bit 10) permitted + effective.
    let cap: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut t = RawTar::new();
    t.pax(&[
        ("SCHILY.xattr.security.capability", &cap[..]),
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:bin_t:s0",
        ),
    ])
    .header(b"ping", b'0', 1, b"", 0o755)
    .data(b"x");
    let layout = s_layout_for(&t.finish());
    let store = layout.0.store();
    let img = store
        .import_oci_layout(&layout.1, None, Some("t/cap:1"))
        .unwrap()
        .remove(0);
    let p = store.layer_dirs(&img)[0].join("ping");
    assert_eq!(
        xattr_of(&p, "security.capability").as_deref(),
        Some(&cap[..])
    );
    assert_eq!(xattr_of(&p, "security.selinux"), None);
}

fn s_layout_for(tar: &[u8]) -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new();
    let l = s.layout("x", vec![TestLayer::gzip(tar.to_vec())]);
    (s, l)
}
