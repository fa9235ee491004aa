//! Every class of reliability.md §4.1 (rows 1–16) that applies to image layers: each hostile
//! layer is refused with an error naming the entry, nothing appears outside the layer's
//! directory (a sentinel directory next to the store is checked), and no partial layer stays.

mod common;

use common::{chain, RawTar, Scratch};
use flotilla_image::testimage::{LayerCompression, TestLayer};
use flotilla_image::UnpackLimits;
use std::io::Write;

/// Imports a one-layer image made of `tar` and expects a refusal whose chain contains every
/// string of `expect`.
fn refused_with(tar: Vec<u8>, limits: UnpackLimits, expect: &[&str]) -> Scratch {
    let s = Scratch::new();
    let store = s.store_with(limits);
    let layout = s.layout(
        "hostile",
        vec![TestLayer {
            tar,
            compression: LayerCompression::Gzip,
        }],
    );
    let err = store
        .import_oci_layout(&layout, None, Some("test/hostile:1"))
        .expect_err("hostile layer accepted");
    let msg = chain(&err);
    for e in expect {
        assert!(msg.contains(e), "error {msg:?} does not mention {e:?}");
    }
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    assert!(store.list().is_empty(), "an image was recorded");
    s
}

fn refused(tar: Vec<u8>, expect: &[&str]) -> Scratch {
    refused_with(tar, UnpackLimits::default(), expect)
}

fn sentinel_of(s: &Scratch) -> String {
    s.sentinel().display().to_string()
}

// Row 1: absolute paths and `..` components.
#[test]
fn row01_absolute_path() {
    refused(
        RawTar::new().file("/etc/flotilla-pwned", b"x").finish(),
        &["\"/etc/flotilla-pwned\"", "absolute path"],
    );
}

#[test]
fn row01_dotdot_paths() {
    refused(
        RawTar::new().file("../../../../tmp/pwned", b"x").finish(),
        &["../../../../tmp/pwned", "`..` component"],
    );
    refused(
        RawTar::new().dir("a/").file("a/../../pwned", b"x").finish(),
        &["a/../../pwned", "`..` component"],
    );
}

// Row 2: symlink to an absolute or escaping path, then a file written through it.
#[test]
fn row02_write_through_absolute_symlink() {
    let s0 = Scratch::new();
    let target = sentinel_of(&s0);
    drop(s0);
    // A symlink to an absolute path is fine by itself (it resolves inside the container's root
    // at run time); writing through it is not.
    refused(
        RawTar::new()
            .symlink("localetc", "/etc")
            .file("localetc/flotilla-pwned", b"x")
            .finish(),
        &[
            "localetc/flotilla-pwned",
            "parent \"localetc\" is a symlink",
        ],
    );
    // The same against a real directory outside: checked by the sentinel of a fresh scratch.
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("evil", &sentinel_of(&s))
        .file("evil/pwned", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(chain(&e).contains("evil/pwned"), "{}", chain(&e));
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    let _ = target;
}

#[test]
fn row02_write_through_relative_escaping_symlink() {
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("up", "../../../../../../../../../../")
        .file("up/pwned", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("parent \"up\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
}

#[test]
fn row02_symlink_chain_then_write() {
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("a", "b")
        .symlink("b", "c")
        .symlink("c", &sentinel_of(&s))
        .file("a/pwned", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("\"a/pwned\": parent \"a\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
}

// Row 3: escaping symlink, then directory creation through it.
#[test]
fn row03_mkdir_through_symlink() {
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("evil", &sentinel_of(&s))
        .dir("evil/newdir/")
        .file("evil/newdir/f", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("\"evil/newdir/\": parent \"evil\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    // Implicit parents (no directory entry) through a symlink: same.
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("evil", &sentinel_of(&s))
        .file("evil/deep/er/f", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("parent \"evil\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
}

// Row 4: hard links to targets outside the root (absolute, relative, via symlinked parent).
#[test]
fn row04_hardlink_outside() {
    refused(
        RawTar::new().hardlink("h", "/etc/passwd").finish(),
        &[
            "\"h\"",
            "hard link target \"/etc/passwd\" is outside the layer",
        ],
    );
    refused(
        RawTar::new().hardlink("h", "../../../etc/passwd").finish(),
        &["\"h\"", "is outside the layer"],
    );
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("evil", &sentinel_of(&s))
        .hardlink("h", "evil/keep")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e)
            .contains("hard link target \"evil/keep\" is not a regular file earlier in this layer"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    // A hard link to a file no earlier entry created.
    refused(
        RawTar::new().hardlink("h", "nonexistent").finish(),
        &["\"h\"", "not a regular file earlier in this layer"],
    );
}

// Row 5: hard link to an escaping symlink, then chmod through it.
#[test]
fn row05_hardlink_to_symlink_then_chmod() {
    let s = Scratch::new();
    let store = s.store();
    let keep = s.sentinel().join("keep").display().to_string();
    let mut t = RawTar::new();
    t.symlink("evil", &keep).hardlink("h", "evil");
    t.header(b"h", b'0', 0, b"", 0o4777);
    let layout = s.layout("x", vec![TestLayer::gzip(t.finish())]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("\"h\": hard link target \"evil\" is not a regular file"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.sentinel().join("keep"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
    s.assert_no_layers();
}

// Row 6: symlinks named `..`, empty, `a/sub/..`, slash-terminated.
#[test]
fn row06_odd_symlink_names() {
    refused(
        RawTar::new().symlink("..", "/").finish(),
        &["\"..\"", "`..` component"],
    );
    refused(
        RawTar::new().symlink("a/sub/..", "/").finish(),
        &["a/sub/..", "`..` component"],
    );
    refused(
        RawTar::new().header(b"", b'2', 0, b"/", 0o777).finish(),
        &["empty path"],
    );
    // Slash-terminated symlink name, then a write through it.
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("link/", &sentinel_of(&s))
        .file("link/pwned", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("parent \"link\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    // An empty symlink target.
    refused(
        RawTar::new().symlink("e", "").finish(),
        &["\"e\"", "invalid symlink target"],
    );
}

// Row 7: a later layer replaces a directory with a symlink (or the reverse) and writes through it.
#[test]
fn row07_dir_replaced_by_symlink_across_layers() {
    let s = Scratch::new();
    let store = s.store();
    let l1 = RawTar::new().dir("d/").file("d/f", b"ok").finish();
    let l2 = RawTar::new()
        .symlink("d", &sentinel_of(&s))
        .file("d/pwned", b"x")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(l1), TestLayer::gzip(l2)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("\"d/pwned\": parent \"d\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    // The first (good) layer may stay unpacked; the refused one must not.
    let layers: Vec<_> = std::fs::read_dir(s.store_root().join("layers"))
        .unwrap()
        .collect();
    assert!(layers.len() <= 1);
    assert_eq!(
        std::fs::read_dir(s.store_root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // Within one layer: a directory, then a symlink at the same path.
    refused(
        RawTar::new().dir("d/").symlink("d", "/etc").finish(),
        &["\"d\"", "type conflicts"],
    );
    // The reverse: a symlink, then a directory at the same path.
    refused(
        RawTar::new().symlink("d", "/etc").dir("d/").finish(),
        &["\"d/\"", "type conflicts"],
    );
}

// Row 8: whiteouts `.wh..`, `.wh...`, `etc/.wh..` and `.wh.` are invalid.
#[test]
fn row08_invalid_whiteouts() {
    refused(
        RawTar::new().file(".wh..", b"").finish(),
        &["\".wh..\"", "invalid whiteout name"],
    );
    refused(
        RawTar::new().file(".wh...", b"").finish(),
        &["\".wh...\"", "invalid whiteout name"],
    );
    refused(
        RawTar::new().dir("etc/").file("etc/.wh..", b"").finish(),
        &["\"etc/.wh..\"", "invalid whiteout name"],
    );
    refused(
        RawTar::new().file(".wh.", b"").finish(),
        &["\".wh.\"", "invalid whiteout name"],
    );
}

// Row 9: whiteout through a symlinked parent, of a symlink, or relative.
#[test]
fn row09_whiteout_through_symlink_or_relative() {
    let s = Scratch::new();
    let store = s.store();
    let tar = RawTar::new()
        .symlink("evil", &sentinel_of(&s))
        .file("evil/.wh.keep", b"")
        .finish();
    let layout = s.layout("x", vec![TestLayer::gzip(tar)]);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("\"evil/.wh.keep\": parent \"evil\" is a symlink"),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
    refused(
        RawTar::new().file("dne/../.wh.etc", b"").finish(),
        &["dne/../.wh.etc", "`..` component"],
    );
    // A whiteout of a symlink created in the same layer: the same path twice.
    refused(
        RawTar::new()
            .symlink("l", "/etc")
            .file(".wh.l", b"")
            .finish(),
        &["\".wh.l\"", "duplicate entry"],
    );
}

// Row 10: PAX size ≠ ustar size; malformed PAX or GNU long-name records.
#[test]
fn row10_pax_size_mismatch() {
    // The ustar header says 5 bytes, PAX says 517: a parser trusting one or the other sees a
    // different next entry (TARmageddon).
    let mut t = RawTar::new();
    t.pax(&[("size", b"517")]);
    t.header(b"innocent", b'0', 5, b"", 0o644).data(b"hello");
    t.file("smuggled", b"x");
    refused(
        t.finish(),
        &[
            "\"innocent\"",
            "pax size 517 differs from the header size 5",
        ],
    );
}

#[test]
fn row10_malformed_pax_and_long_names() {
    let mut t = RawTar::new();
    t.pax_raw(b"99 path=x\n");
    t.file("f", b"x");
    refused(t.finish(), &["malformed pax record"]);
    let mut t = RawTar::new();
    t.pax_raw(b"12 path=abcdefghijklmnop\n");
    t.file("f", b"x");
    refused(t.finish(), &["malformed pax record"]);
    // Two GNU long names for one entry.
    let mut t = RawTar::new();
    t.gnu_long_name(b"first")
        .gnu_long_name(b"second")
        .file("f", b"x");
    refused(t.finish(), &["dangling or repeated extension header"]);
    // A PAX header with no entry after it.
    let mut t = RawTar::new();
    t.file("ok", b"x").pax(&[("path", b"later")]);
    refused(t.finish(), &["dangling or repeated extension header"]);
    // PAX path and GNU long names are checked like any path.
    let mut t = RawTar::new();
    t.pax(&[("path", b"../../escape")]).file("innocent", b"x");
    refused(t.finish(), &["\"../../escape\"", "`..` component"]);
    let mut t = RawTar::new();
    t.gnu_long_name(b"/abs/long/name").file("innocent", b"x");
    refused(t.finish(), &["\"/abs/long/name\"", "absolute path"]);
    // Global headers that would change later entries for other parsers.
    let mut t = RawTar::new();
    let body = common::pax_record("path", b"x");
    t.header(b"GlobalHead", b'g', body.len() as u64, b"", 0o644)
        .data(&body);
    t.file("f", b"x");
    refused(t.finish(), &["pax global header with key \"path\""]);
    // GNU sparse files.
    let mut t = RawTar::new();
    t.pax(&[("GNU.sparse.size", b"100")]).file("sparse", b"x");
    refused(t.finish(), &["\"sparse\"", "sparse file"]);
}

// Row 11: decompression bombs, huge or sparse declared sizes.
#[test]
fn row11_decompression_bomb_ratio() {
    let zeros = vec![0u8; 4 << 20];
    let tar = RawTar::new().file("bomb", &zeros).finish();
    let limits = UnpackLimits {
        max_ratio: 20,
        ratio_floor: 256 << 10,
        ..UnpackLimits::default()
    };
    refused_with(tar, limits, &["cap on compression ratio (20)"]);
}

#[test]
fn row11_uncompressed_and_file_caps() {
    let data = vec![7u8; 300 << 10];
    let tar = RawTar::new().file("a", &data).file("b", &data).finish();
    refused_with(
        tar.clone(),
        UnpackLimits {
            max_uncompressed_bytes: 400 << 10,
            ..UnpackLimits::default()
        },
        &["cap on uncompressed bytes"],
    );
    refused_with(
        tar.clone(),
        UnpackLimits {
            max_compressed_bytes: 100,
            ..UnpackLimits::default()
        },
        &["cap on compressed bytes"],
    );
    refused_with(
        tar,
        UnpackLimits {
            max_file_bytes: 100 << 10,
            ..UnpackLimits::default()
        },
        &["\"a\"", "exceeds the 102400-byte cap"],
    );
    // A huge declared size with little data behind it: refused by the cap before any read.
    let mut t = RawTar::new();
    t.header(b"huge", b'0', 1 << 40, b"", 0o644).data(b"tiny");
    refused(t.finish(), &["\"huge\"", "exceeds the"]);
    // Declared size larger than the data present (truncated stream).
    let mut t = RawTar::new();
    t.header(b"short", b'0', 10_000, b"", 0o644).data(b"tiny");
    let mut v = t.0.clone();
    v.truncate(1024);
    refused(v, &["reading the layer stream"]);
}

// Row 12: millions of entries, deep trees, long names.
#[test]
fn row12_entry_depth_and_name_caps() {
    let mut t = RawTar::new();
    for i in 0..20 {
        t.file(&format!("f{i}"), b"");
    }
    refused_with(
        t.finish(),
        UnpackLimits {
            max_entries: 10,
            ..UnpackLimits::default()
        },
        &["cap on entries (10)"],
    );
    let deep = (0..40).map(|_| "d").collect::<Vec<_>>().join("/") + "/f";
    let mut t = RawTar::new();
    t.gnu_long_name(deep.as_bytes()).file("x", b"");
    refused_with(
        t.finish(),
        UnpackLimits {
            max_depth: 32,
            ..UnpackLimits::default()
        },
        &["deeper than 32 components"],
    );
    let long = "n".repeat(300);
    let mut t = RawTar::new();
    t.gnu_long_name(long.as_bytes()).file("x", b"");
    refused(t.finish(), &["name longer than 255 bytes"]);
    let path = (0..20)
        .map(|_| "p".repeat(250))
        .collect::<Vec<_>>()
        .join("/");
    let mut t = RawTar::new();
    t.gnu_long_name(path.as_bytes()).file("x", b"");
    refused(t.finish(), &["path longer than 4096 bytes"]);
    let mut t = RawTar::new();
    t.pax(&[("path", path.as_bytes())]).file("x", b"");
    refused(t.finish(), &["path longer than 4096 bytes"]);
}

// Row 13: device nodes, FIFOs.
#[test]
fn row13_devices_and_fifos() {
    let mut t = RawTar::new();
    t.header(b"dev/sda", b'4', 0, b"", 0o600);
    refused(t.finish(), &["\"dev/sda\"", "device node"]);
    let mut t = RawTar::new();
    t.header(b"dev/mem", b'3', 0, b"", 0o600);
    refused(t.finish(), &["\"dev/mem\"", "device node"]);
    let mut t = RawTar::new();
    t.header(b"fifo", b'6', 0, b"", 0o600);
    refused(t.finish(), &["\"fifo\"", "fifo"]);
    // A raw 0/0 character device is a device too: whiteouts travel as `.wh.` files.
    let mut t = RawTar::new();
    t.header(b"fake-whiteout", b'3', 0, b"", 0o000);
    refused(
        t.finish(),
        &["\"fake-whiteout\"", "device node (major 0, minor 0)"],
    );
}

// Row 14: trusted.* xattrs (would forge overlayfs metadata); setuid bits by policy.
#[test]
fn row14_trusted_xattrs_and_setid_policy() {
    let mut t = RawTar::new();
    t.pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .dir("d/");
    refused(
        t.finish(),
        &[
            "\"d/\"",
            "xattr \"trusted.overlay.redirect\" is not allowed",
        ],
    );
    // keep_setid = false strips setuid/setgid.
    let s = Scratch::new();
    let store = s.store_with(UnpackLimits {
        keep_setid: false,
        ..UnpackLimits::default()
    });
    let mut t = RawTar::new();
    t.header(b"suid", b'0', 1, b"", 0o6755).data(b"x");
    let layout = s.layout("x", vec![TestLayer::gzip(t.finish())]);
    let img = store
        .import_oci_layout(&layout, None, Some("t/suid:1"))
        .unwrap()
        .remove(0);
    use std::os::unix::fs::PermissionsExt;
    let p = store.layer_dirs(&img)[0].join("suid");
    assert_eq!(
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777,
        0o755
    );
}

// Row 15: uid/gid overflow.
#[test]
fn row15_id_overflow() {
    let mut t = RawTar::new();
    t.pax(&[("uid", b"4294967296")]).file("f", b"x");
    refused(t.finish(), &["\"f\"", "uid or gid 4294967296 out of range"]);
    let mut t = RawTar::new();
    t.pax(&[("gid", b"-1")]).file("f", b"x");
    refused(t.finish(), &["\"f\"", "malformed pax record"]);
}

// Row 16: blob not matching its digest; malformed digest used as a path.
#[test]
fn row16_blob_digest_mismatch() {
    let s = Scratch::new();
    let store = s.store();
    let layout = s.layout(
        "x",
        vec![TestLayer::gzip(RawTar::new().file("f", b"x").finish())],
    );
    // Corrupt the layer blob in place (its file name still claims the old digest).
    let blobs = layout.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&mdig)).unwrap()).unwrap();
    let ldig = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(blobs.join(&ldig))
        .unwrap();
    f.write_all(b"tampered").unwrap();
    drop(f);
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains(&format!("digest mismatch: expected sha256:{ldig}")),
        "{}",
        chain(&e)
    );
    assert!(!store.has_blob(&flotilla_image::Digest::from_hex(&ldig).unwrap()));
    s.assert_no_layers();
    s.assert_sentinel_untouched();
}

#[test]
fn row16_malformed_digest_as_path() {
    let s = Scratch::new();
    let store = s.store();
    let layout = s.layout(
        "x",
        vec![TestLayer::gzip(RawTar::new().file("f", b"x").finish())],
    );
    let ip = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ip).unwrap()).unwrap();
    index["manifests"][0]["digest"] = serde_json::json!("sha256:../../../sentinel/keep");
    std::fs::write(&ip, serde_json::to_vec(&index).unwrap()).unwrap();
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("malformed digest \"sha256:../../../sentinel/keep\""),
        "{}",
        chain(&e)
    );
    s.assert_sentinel_untouched();
    s.assert_no_layers();
}

#[test]
fn row16_diff_id_mismatch() {
    let s = Scratch::new();
    let store = s.store();
    let layout = s.layout(
        "x",
        vec![TestLayer::gzip(RawTar::new().file("f", b"x").finish())],
    );
    // Rewrite the config with a wrong diff_id and re-point the manifest and index at it.
    let blobs = layout.join("blobs/sha256");
    let ip = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ip).unwrap()).unwrap();
    let mdig = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&mdig)).unwrap()).unwrap();
    let cdig = m["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&cdig)).unwrap()).unwrap();
    c["rootfs"]["diff_ids"][0] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
    let cb = serde_json::to_vec(&c).unwrap();
    let cd = flotilla_image::Digest::of(&cb);
    std::fs::write(blobs.join(cd.hex()), &cb).unwrap();
    m["config"]["digest"] = serde_json::json!(cd.to_string());
    m["config"]["size"] = serde_json::json!(cb.len());
    let mb = serde_json::to_vec(&m).unwrap();
    let md = flotilla_image::Digest::of(&mb);
    std::fs::write(blobs.join(md.hex()), &mb).unwrap();
    index["manifests"][0]["digest"] = serde_json::json!(md.to_string());
    index["manifests"][0]["size"] = serde_json::json!(mb.len());
    std::fs::write(&ip, serde_json::to_vec(&index).unwrap()).unwrap();
    let e = store.import_oci_layout(&layout, None, None).unwrap_err();
    assert!(
        chain(&e).contains("the config's diff_id is sha256:0000"),
        "{}",
        chain(&e)
    );
    s.assert_no_layers();
}

// Duplicate entries (row 10's smuggling relies on them too).
#[test]
fn duplicate_entries() {
    refused(
        RawTar::new().file("f", b"1").file("f", b"2").finish(),
        &["\"f\"", "duplicate entry"],
    );
    refused(
        RawTar::new().file("./f", b"1").file("f", b"2").finish(),
        &["\"f\"", "duplicate entry"],
    );
    refused(
        RawTar::new().dir("d/").dir("d").finish(),
        &["\"d\"", "duplicate entry"],
    );
    refused(
        RawTar::new().file("f", b"1").file(".wh.f", b"").finish(),
        &["\".wh.f\"", "duplicate entry"],
    );
    refused(
        RawTar::new()
            .dir("d/")
            .file("d/.wh..wh..opq", b"")
            .file("d/.wh..wh..opq", b"")
            .finish(),
        &["duplicate entry"],
    );
    // A file whose name a directory already took implicitly.
    refused(
        RawTar::new().file("a/b", b"1").file("a", b"2").finish(),
        &["\"a\"", "type conflicts"],
    );
    // Writing below a regular file.
    refused(
        RawTar::new().file("a", b"1").file("a/b", b"2").finish(),
        &["\"a/b\"", "parent \"a\" is not a directory"],
    );
}

/// Unknown entry types are refused, not skipped.
#[test]
fn unsupported_entry_types() {
    let mut t = RawTar::new();
    t.header(b"vol", b'V', 0, b"", 0o644);
    refused(t.finish(), &["\"vol\"", "unsupported entry type 'V'"]);
}
