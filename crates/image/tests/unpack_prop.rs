//! Property test of the unpacker: archives made of random entries (hostile names, symlinks to
//! the outside, hard links, whiteouts, PAX and long-name headers, devices, odd sizes) never
//! panic it and never change anything outside the destination directory, whether they are
//! accepted or refused.

mod common;

use common::{RawTar, Scratch};
use flotilla_image::unpack::{unpack_layer, UnpackLimits};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum E {
    File(usize, Vec<u8>),
    Dir(usize),
    Symlink(usize, usize),
    Hardlink(usize, usize),
    Pax(usize, u8),
    LongName(usize),
    Typed(usize, u8),
    BadSize(usize, u64),
}

fn names(sentinel: &str) -> Vec<String> {
    let s = sentinel.to_owned();
    vec![
        "a".into(),
        "a/b".into(),
        "b".into(),
        "a/b/c".into(),
        "..".into(),
        "../x".into(),
        "./a".into(),
        "/abs".into(),
        s.clone(),
        format!("{s}/keep"),
        format!("{s}/new"),
        "a/.wh.b".into(),
        ".wh.a".into(),
        "a/.wh..wh..opq".into(),
        ".wh..".into(),
        "a/../..".into(),
        "".into(),
        "l".into(),
        "l/x".into(),
        "l/../../y".into(),
    ]
}

fn entry() -> impl Strategy<Value = E> {
    let n = 0usize..20;
    prop_oneof![
        (n.clone(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(a, d)| E::File(a, d)),
        n.clone().prop_map(E::Dir),
        (n.clone(), n.clone()).prop_map(|(a, b)| E::Symlink(a, b)),
        (n.clone(), n.clone()).prop_map(|(a, b)| E::Hardlink(a, b)),
        (n.clone(), 0u8..6).prop_map(|(a, k)| E::Pax(a, k)),
        n.clone().prop_map(E::LongName),
        (
            n.clone(),
            prop::sample::select(vec![
                b'3', b'4', b'6', b'7', b'S', b'V', b'g', b'x', b'L', b'K', b'1'
            ])
        )
            .prop_map(|(a, t)| E::Typed(a, t)),
        (n, 0u64..100_000).prop_map(|(a, s)| E::BadSize(a, s)),
    ]
}

fn build(entries: &[E], names: &[String]) -> Vec<u8> {
    let mut t = RawTar::new();
    for e in entries {
        match e {
            E::File(a, d) => {
                t.file(&names[*a], d);
            }
            E::Dir(a) => {
                t.dir(&format!("{}/", names[*a]));
            }
            E::Symlink(a, b) => {
                t.symlink(&names[*a], &names[*b]);
            }
            E::Hardlink(a, b) => {
                t.hardlink(&names[*a], &names[*b]);
            }
            E::Pax(a, k) => {
                let v = names[*a].as_bytes();
                let rec: (&str, &[u8]) = match k {
                    0 => ("path", v),
                    1 => ("linkpath", v),
                    2 => ("size", b"3"),
                    3 => ("uid", b"99999999999"),
                    4 => ("SCHILY.xattr.user.x", v),
                    _ => ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                };
                t.pax(&[rec]);
            }
            E::LongName(a) => {
                t.gnu_long_name(names[*a].as_bytes());
            }
            E::Typed(a, ty) => {
                t.header(
                    names[*a].as_bytes(),
                    *ty,
                    0,
                    names[(*a + 1) % names.len()].as_bytes(),
                    0o644,
                );
            }
            E::BadSize(a, s) => {
                t.header(names[*a].as_bytes(), b'0', *s, b"", 0o644)
                    .data(b"short");
            }
        }
    }
    t.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn random_archives_never_escape(entries in proptest::collection::vec(entry(), 1..24)) {
        let s = Scratch::new();
        let names = names(&s.sentinel().display().to_string());
        let tar = build(&entries, &names);
        let dest = s.path().join("store");
        std::fs::create_dir(&dest).unwrap();
        let _ = unpack_layer(&tar[..], &dest, &UnpackLimits::default());
        s.assert_sentinel_untouched();
    }
}

/// A stream delivered one byte per read (as a registry chunk boundary may fall anywhere, even
/// inside the compression magic) unpacks the same for every compression.
#[test]
fn one_byte_reads_for_each_compression() {
    struct OneByte<'a>(&'a [u8]);
    impl std::io::Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }
    let tar = RawTar::new()
        .dir("d/")
        .file("d/f", b"content")
        .symlink("l", "d/f")
        .finish();
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
    for blob in [tar.clone(), gz, zst] {
        let s = Scratch::new();
        let dest = s.path().join("store");
        std::fs::create_dir(&dest).unwrap();
        let out = unpack_layer(OneByte(&blob), &dest, &UnpackLimits::default()).unwrap();
        assert_eq!(out.diff_id, flotilla_image::Digest::of(&tar));
        assert_eq!(std::fs::read(dest.join("d/f")).unwrap(), b"content");
        assert_eq!(
            std::fs::read_link(dest.join("l")).unwrap(),
            std::path::Path::new("d/f")
        );
    }
}
