//! The container's `/dev` and `/dev/shm` tmpfs mounts, checkpointed by the
//! runtime instead of CRIU. CRIU archives every tmpfs it dumps with `tar
//! --gzip` and unpacks it on restore (two processes each, ~8-10 ms per mount
//! per dump or restore). Here they are dumped as CRIU external mounts; the
//! runtime holds a directory fd on each across the dump, so the mount
//! outlives the container's mount namespace after a killing dump, and once
//! CRIU has returned (the tasks dead or stopped: nothing can write any more)
//! it records the contents in the checkpoint itself:
//!
//! - a manifest in `flotilla-checkpoint.json` when the tree holds only
//!   directories, symlinks, device nodes, fifos and empty files (the usual
//!   `/dev`, an empty `/dev/shm`): a readdir and an lstat per entry;
//! - otherwise a tar archive next to CRIU's images (as CRIU would write).
//!
//! The restore mounts a fresh tmpfs with the dumped flags and options under
//! `containers/<id>/criu-ext/`, recreates the contents there and hands it to
//! CRIU as the external mount's source. The checkpoint directory stays
//! self-contained: nothing is read from the source host on restore.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::sys;

/// (mountpoint in the container, external key, host directory name).
pub const MOUNTS: [(&str, &str, &str); 2] = [
    ("/dev", "flotilla-dev", "dev"),
    ("/dev/shm", "flotilla-shm", "shm"),
];

/// Above this many entries the tar archive is used instead of a manifest.
const MANIFEST_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    Symlink(String),
    Char(u64),
    Block(u64),
    Fifo,
    /// An empty regular file (e.g. a bind-mount target).
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the mount's root.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// The root directory's (mode, uid, gid) and every entry, parents first.
    Manifest {
        root: (u32, u32, u32),
        entries: Vec<Entry>,
    },
    /// A tar archive in the image directory (file name).
    Archive(String),
}

/// One tmpfs the runtime checkpointed (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtTmpfs {
    pub mountpoint: String,
    pub key: String,
    /// MS_* flags of the mount (per-mount options in mountinfo).
    pub flags: libc::c_ulong,
    /// tmpfs options (size, mode, ...).
    pub data: String,
    pub content: Option<Content>,
}

/// A mount picked for the dump, with the directory fd that keeps it alive.
pub struct Held {
    pub ext: ExtTmpfs,
    dir: std::fs::File,
}

fn mount_flags(opts: &str) -> libc::c_ulong {
    let mut f: libc::c_ulong = 0;
    let mut atime = false;
    for o in opts.split(',') {
        f |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => {
                atime = true;
                libc::MS_NOATIME
            }
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => {
                atime = true;
                libc::MS_RELATIME
            }
            _ => 0,
        };
    }
    if !atime {
        f |= libc::MS_STRICTATIME;
    }
    f
}

/// Pick `/dev` and `/dev/shm` when each is a whole tmpfs in the container's
/// mount table, and open them through the init's root. `dev` is the
/// device number each must have (checked against the opened directory, so
/// the fd is the mount CRIU sees).
pub fn hold(mountinfo: &str, init_pid: i32) -> Vec<Held> {
    let mut out = vec![];
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let p: Vec<&str> = post.split(' ').collect();
        let (Some(devno), Some(root), Some(mp), Some(opts)) =
            (f.get(2), f.get(3), f.get(4), f.get(5))
        else {
            continue;
        };
        if p.first() != Some(&"tmpfs") || *root != "/" {
            continue;
        }
        let mp = sys::unescape_mountinfo(mp);
        let Some((_, key, _)) = MOUNTS.iter().find(|(m, _, _)| *m == mp) else {
            continue;
        };
        let Ok(dir) = std::fs::File::open(format!("/proc/{init_pid}/root{mp}")) else {
            continue;
        };
        let Ok(md) = dir.metadata() else { continue };
        let (maj, min) = (libc::major(md.dev()), libc::minor(md.dev()));
        if *devno != format!("{maj}:{min}") || !md.is_dir() {
            continue;
        }
        let data = p
            .get(2)
            .map(|s| {
                s.split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        out.push(Held {
            ext: ExtTmpfs {
                mountpoint: mp.clone(),
                key: key.to_string(),
                flags: mount_flags(opts),
                data,
                content: None,
            },
            dir,
        });
    }
    out
}

fn fd_path(f: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
}

/// The contents as a manifest, or None when they need the archive.
fn manifest(root: &Path) -> std::io::Result<Option<Content>> {
    let rmd = std::fs::metadata(root)?;
    let mut entries = vec![];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let md = std::fs::symlink_metadata(&p)?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                // A mount on top (a paused container's /dev/pts): the
                // mountpoint only, its contents are another mount's.
                if md.dev() == rmd.dev() {
                    stack.push(r.clone());
                }
                Kind::Dir
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p)?;
                match t.to_str() {
                    Some(s) => Kind::Symlink(s.to_string()),
                    None => return Ok(None),
                }
            } else if ft.is_char_device() {
                Kind::Char(md.rdev())
            } else if ft.is_block_device() {
                Kind::Block(md.rdev())
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_file() && md.len() == 0 && md.dev() == rmd.dev() {
                Kind::File
            } else {
                return Ok(None);
            };
            let Some(path) = r.to_str() else {
                return Ok(None);
            };
            entries.push(Entry {
                path: path.to_string(),
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            });
            if entries.len() > MANIFEST_MAX {
                return Ok(None);
            }
        }
    }
    // Parents before children (the stack walk is depth-first already, but
    // sorting by depth makes the order independent of it).
    entries.sort_by_key(|e| e.path.matches('/').count());
    Ok(Some(Content::Manifest {
        root: (rmd.mode() & 0o7777, rmd.uid(), rmd.gid()),
        entries,
    }))
}

/// Record the contents of the held mounts (call only once CRIU's dump has
/// returned: no task can write any more). Returns the descriptions for the
/// checkpoint's metadata.
pub fn record(held: Vec<Held>, images: &Path) -> std::io::Result<Vec<ExtTmpfs>> {
    let mut out = vec![];
    for h in held {
        let root = fd_path(&h.dir);
        let content = match manifest(&root)? {
            Some(c) => c,
            None => {
                let name = format!("{}.tar", h.ext.key);
                let st = Command::new("tar")
                    .args([
                        "--create",
                        "--numeric-owner",
                        "--no-unquote",
                        "--no-wildcards",
                        "--one-file-system",
                        "--xattrs",
                        "--file",
                    ])
                    .arg(images.join(&name))
                    .arg("--directory")
                    .arg(&root)
                    .arg(".")
                    .status()?;
                if !st.success() {
                    return Err(std::io::Error::other(format!(
                        "tar of {} failed ({st})",
                        h.ext.mountpoint
                    )));
                }
                Content::Archive(name)
            }
        };
        out.push(ExtTmpfs {
            content: Some(content),
            ..h.ext
        });
    }
    Ok(out)
}

fn checked_rel(p: &str) -> std::io::Result<&Path> {
    let path = Path::new(p);
    if p.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(std::io::Error::other(format!(
            "bad path {p:?} in the checkpoint"
        )));
    }
    Ok(path)
}

fn c(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn lchown(p: &CString, uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: valid C string.
    if unsafe { libc::lchown(p.as_ptr(), uid, gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn chmod(p: &CString, mode: u32) -> std::io::Result<()> {
    // SAFETY: valid C string.
    if unsafe { libc::chmod(p.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mount a fresh tmpfs at `dir` (anything mounted there before is detached:
/// a restored container wrote into it) and recreate the recorded contents.
pub fn prepare(ext: &ExtTmpfs, dir: &Path, images: &Path) -> std::io::Result<()> {
    let target = c(dir)?;
    while sys::is_mount_point(dir) {
        sys::umount2(&target, libc::MNT_DETACH)?;
    }
    std::fs::create_dir_all(dir)?;
    let tmpfs = sys::cstr("tmpfs")?;
    let data = sys::cstr(&ext.data)?;
    let ro = ext.flags & libc::MS_RDONLY != 0;
    sys::mount(
        Some(&tmpfs),
        &target,
        Some(&tmpfs),
        ext.flags & !libc::MS_RDONLY,
        Some(&data),
    )?;
    match &ext.content {
        Some(Content::Manifest { root, entries }) => {
            for e in entries {
                let p = dir.join(checked_rel(&e.path)?);
                let cp = c(&p)?;
                match &e.kind {
                    Kind::Dir => std::fs::create_dir(&p)?,
                    Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p)?,
                    Kind::File => {
                        std::fs::File::create(&p)?;
                    }
                    Kind::Char(rdev) | Kind::Block(rdev) => {
                        let k = if matches!(e.kind, Kind::Char(_)) {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        // SAFETY: valid C string.
                        if unsafe { libc::mknod(cp.as_ptr(), k | (e.mode & 0o7777), *rdev) } != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Kind::Fifo => {
                        // SAFETY: valid C string.
                        if unsafe { libc::mkfifo(cp.as_ptr(), e.mode & 0o7777) } != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                lchown(&cp, e.uid, e.gid)?;
                if !matches!(e.kind, Kind::Symlink(_)) {
                    chmod(&cp, e.mode)?;
                }
            }
            lchown(&target, root.1, root.2)?;
            chmod(&target, root.0)?;
        }
        Some(Content::Archive(name)) => {
            checked_rel(name)?;
            let st = Command::new("tar")
                .args([
                    "--extract",
                    "--numeric-owner",
                    "--no-unquote",
                    "--no-wildcards",
                    "--xattrs",
                    "--same-permissions",
                    "--file",
                ])
                .arg(images.join(name))
                .arg("--directory")
                .arg(dir)
                .status()?;
            if !st.success() {
                return Err(std::io::Error::other(format!(
                    "untar of {} failed ({st})",
                    ext.mountpoint
                )));
            }
        }
        None => return Err(std::io::Error::other("no contents recorded")),
    }
    if ro {
        sys::mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | ext.flags,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flags_follow_mountinfo() {
        let f = mount_flags("rw,nosuid");
        assert_eq!(
            f,
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            "no atime option shown means strictatime"
        );
        let f = mount_flags("ro,nosuid,nodev,noexec,relatime");
        assert_eq!(
            f,
            (libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME)
        );
    }

    #[test]
    fn hostile_paths_in_a_manifest_are_refused() {
        for p in ["", "/etc", "../x", "a/../../b", "."] {
            assert!(checked_rel(p).is_err(), "{p:?}");
        }
        assert!(checked_rel("pts").is_ok());
        assert!(checked_rel("a/b").is_ok());
    }

    #[test]
    fn manifest_records_nodes_links_and_empty_files_and_refuses_data() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("pts")).unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", d.path().join("fd")).unwrap();
        std::fs::File::create(d.path().join("console")).unwrap();
        let Some(Content::Manifest { entries, .. }) = manifest(d.path()).unwrap() else {
            panic!("expected a manifest");
        };
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, vec!["console", "fd", "pts"]);
        assert_eq!(entries[1].kind, Kind::Symlink("/proc/self/fd".into()));
        std::fs::write(d.path().join("pts/data"), b"x").unwrap();
        assert_eq!(
            manifest(d.path()).unwrap(),
            None,
            "file data needs the archive"
        );
    }
}
