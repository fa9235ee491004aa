//! Committing a container's overlay upper directory as a new image layer (a snapshot).
//!
//! The upper directory is walked with directory fds and `AT_SYMLINK_NOFOLLOW` (a container
//! could plant symlinks anywhere in it), entries in name order so the same tree gives the same
//! layer. Overlay metadata becomes OCI whiteouts: a 0/0 character device `x` becomes an empty
//! `.wh.x`, a directory with `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry. The tar is
//! gzip-compressed and hashed twice while it streams (diff_id over the tar, digest over the
//! gzip) straight into the blob store, then unpacked through the same checked path as any other
//! layer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use flate2::write::GzEncoder;
use oci_spec::image::HistoryBuilder;

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{self, Descriptor, Manifest};
use crate::store::{io_err, ImageConfig};
use crate::{sys, Image, ImageError, ImageStore};

/// Seconds since the epoch as RFC 3339 UTC.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What went wrong walking the upper directory.
fn walk_err<'a>(op: &'static str, path: &'a [u8]) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: sys::path_of(path).to_path_buf(),
        source,
    }
}

struct Walker<W: Write> {
    tar: tar::Builder<W>,
    /// (dev, ino) of multiply-linked files already written → their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

fn header_for(st: &libc::stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(0);
    h
}

impl<W: Write> Walker<W> {
    fn xattrs(&mut self, fd: BorrowedFd<'_>, rel: &[u8]) -> Result<(), ImageError> {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in sys::flistxattrs(fd).map_err(walk_err("listing xattrs of", rel))? {
            let k = String::from_utf8_lossy(&k).into_owned();
            if k.starts_with("user.") || k == "security.capability" {
                recs.push((format!("SCHILY.xattr.{k}"), v));
            }
        }
        if !recs.is_empty() {
            self.tar
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(walk_err("writing pax header for", rel))?;
        }
        Ok(())
    }

    fn walk(&mut self, dir: BorrowedFd<'_>, prefix: &[u8]) -> Result<(), ImageError> {
        for name in sys::read_dir_fd(dir).map_err(walk_err("listing", prefix))? {
            let mut rel = prefix.to_vec();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            let st = sys::lstat_at(dir, &name).map_err(walk_err("stat", &rel))?;
            let fmt = st.st_mode & libc::S_IFMT;
            self.entries += 1;
            match fmt {
                libc::S_IFCHR if st.st_rdev == 0 => {
                    let mut wh = prefix.to_vec();
                    if !wh.is_empty() {
                        wh.push(b'/');
                    }
                    wh.extend_from_slice(b".wh.");
                    wh.extend_from_slice(&name);
                    let mut h = header_for(&st, tar::EntryType::Regular);
                    h.set_mode(0o644);
                    self.tar
                        .append_data(&mut h, sys::path_of(&wh), io::empty())
                        .map_err(walk_err("writing", &rel))?;
                }
                libc::S_IFDIR => {
                    let fd: OwnedFd =
                        sys::open_dir_at(dir, &name).map_err(walk_err("opening", &rel))?;
                    for bad in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
                        if sys::fgetxattr(fd.as_fd(), bad.as_bytes())
                            .map_err(walk_err("reading xattr of", &rel))?
                            .is_some()
                        {
                            return Err(ImageError::Invalid {
                                what: String::from_utf8_lossy(&rel).into_owned(),
                                detail: format!("{bad} is set (renamed directory or metacopy); cannot commit it as a layer"),
                            });
                        }
                    }
                    self.xattrs(fd.as_fd(), &rel)?;
                    let mut h = header_for(&st, tar::EntryType::Directory);
                    let mut p = rel.clone();
                    p.push(b'/');
                    self.tar
                        .append_data(&mut h, sys::path_of(&p), io::empty())
                        .map_err(walk_err("writing", &rel))?;
                    let opaque = sys::fgetxattr(fd.as_fd(), b"trusted.overlay.opaque")
                        .map_err(walk_err("reading xattr of", &rel))?;
                    if opaque.as_deref() == Some(b"y") {
                        let mut o = rel.clone();
                        o.extend_from_slice(b"/.wh..wh..opq");
                        let mut h = header_for(&st, tar::EntryType::Regular);
                        h.set_mode(0o644);
                        self.tar
                            .append_data(&mut h, sys::path_of(&o), io::empty())
                            .map_err(walk_err("writing", &rel))?;
                    }
                    self.walk(fd.as_fd(), &rel)?;
                }
                libc::S_IFREG => {
                    if st.st_nlink > 1 {
                        let key = (st.st_dev, st.st_ino);
                        if let Some(first) = self.links.get(&key) {
                            let mut h = header_for(&st, tar::EntryType::Link);
                            self.tar
                                .append_link(&mut h, sys::path_of(&rel), sys::path_of(first))
                                .map_err(walk_err("writing", &rel))?;
                            continue;
                        }
                        self.links.insert(key, rel.clone());
                    }
                    let f = sys::open_file_at(dir, &name).map_err(walk_err("opening", &rel))?;
                    if sys::fgetxattr(f.as_fd(), b"trusted.overlay.metacopy")
                        .map_err(walk_err("reading xattr of", &rel))?
                        .is_some()
                    {
                        return Err(ImageError::Invalid {
                            what: String::from_utf8_lossy(&rel).into_owned(),
                            detail: "metacopy file (data lives in a lower layer); cannot commit it"
                                .into(),
                        });
                    }
                    self.xattrs(f.as_fd(), &rel)?;
                    let mut h = header_for(&st, tar::EntryType::Regular);
                    h.set_size(st.st_size as u64);
                    self.tar
                        .append_data(&mut h, sys::path_of(&rel), f)
                        .map_err(walk_err("writing", &rel))?;
                }
                libc::S_IFLNK => {
                    let target =
                        sys::readlink_at(dir, &name).map_err(walk_err("reading link", &rel))?;
                    let mut h = header_for(&st, tar::EntryType::Symlink);
                    self.tar
                        .append_link(&mut h, sys::path_of(&rel), sys::path_of(&target))
                        .map_err(walk_err("writing", &rel))?;
                }
                _ => {
                    tracing::warn!(path = %String::from_utf8_lossy(&rel), mode = format!("{:o}", st.st_mode), "skipping socket, fifo or device in a commit");
                    self.entries -= 1;
                }
            }
        }
        Ok(())
    }
}

impl ImageStore {
    /// Snapshots a container: tars the overlay upper directory `upper_dir` as a new layer on top
    /// of `base` and records the result as `new_name`. The container should be paused or
    /// stopped so the directory does not change while it is read.
    pub fn commit(
        &self,
        upper_dir: &Path,
        base: &Image,
        new_name: &str,
    ) -> Result<Image, ImageError> {
        let started = std::time::Instant::now();
        let mut lease = self.lease();
        let root =
            sys::open_dir_path(upper_dir).map_err(io_err("opening upper directory", upper_dir))?;
        let writer = self.blob_writer(None, u64::MAX)?;
        let gz = GzEncoder::new(writer, flate2::Compression::fast());
        let mut w = Walker {
            tar: tar::Builder::new(HashingWriter::new(gz)),
            links: HashMap::new(),
            entries: 0,
        };
        w.tar.mode(tar::HeaderMode::Complete);
        w.walk(root.as_fd(), b"")?;
        let entries = w.entries;
        let hashing = w
            .tar
            .into_inner()
            .map_err(io_err("finishing the layer tar of", upper_dir))?;
        let (diff_id, tar_bytes, gz) = hashing.finish();
        let blob = gz
            .finish()
            .map_err(io_err("compressing the layer of", upper_dir))?;
        let (digest, size) = blob.commit()?;
        lease.hold(&digest);
        lease.hold(&diff_id);

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut spec = base.config.spec.clone();
        spec.rootfs_mut().diff_ids_mut().push(diff_id.to_string());
        let created = rfc3339(now);
        spec.set_created(Some(created.clone()));
        let entry = HistoryBuilder::default()
            .created(created)
            .created_by("flotilla commit")
            .comment(format!("snapshot of {}", upper_dir.display()))
            .build()
            .expect("history builds");
        let mut history = spec.history().clone().unwrap_or_default();
        history.push(entry);
        spec.set_history(Some(history));
        let config_bytes = serde_json::to_vec(&spec).expect("config serializes");
        let config_digest = self.put_blob_bytes(&config_bytes, None)?;
        lease.hold(&config_digest);

        let mut layers: Vec<Descriptor> = base
            .layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                platform: None,
                annotations: Default::default(),
            })
            .collect();
        layers.push(Descriptor {
            media_type: manifest::OCI_LAYER_GZIP.into(),
            digest: digest.clone(),
            size,
            platform: None,
            annotations: Default::default(),
        });
        let m = Manifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            layers,
            annotations: Default::default(),
        };
        let mbytes = serde_json::to_vec(&m).expect("manifest serializes");
        let md: Digest = self.put_blob_bytes(&mbytes, None)?;
        lease.hold(&md);
        let img = self.finish_image(&md, &m, ImageConfig { spec }, Some(new_name), &mut lease)?;
        tracing::info!(upper = %upper_dir.display(), base = %base.id, id = %img.id, %diff_id, entries, tar_bytes,
            blob_bytes = size, ms = started.elapsed().as_millis() as u64, "container committed");
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
