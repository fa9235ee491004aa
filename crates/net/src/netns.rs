//! Network namespace files: create one bound at a path, run code inside one,
//! remove one. Every function here changes the namespace of a dedicated,
//! short-lived thread only, never of the caller's thread (and so never of a
//! tokio worker).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::NetError;

fn ns_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::Netns {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Opens a network namespace file (`/proc/PID/ns/net`, a bind mount, ...).
pub fn open_netns(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(ns_err(path, "opening"))
}

/// Moves the calling thread into the namespace behind `f`.
pub(crate) fn enter(f: &File, path: &Path) -> Result<(), NetError> {
    setns(f, CloneFlags::CLONE_NEWNET)
        .map_err(nix_io)
        .map_err(ns_err(path, "entering"))
}

/// Runs `f` on a fresh thread inside the network namespace at `path` and
/// returns its result. Sockets created by `f` stay in that namespace. A
/// panic in `f` is propagated.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    let ns = open_netns(path)?;
    std::thread::scope(|sc| {
        let h = sc.spawn(|| -> Result<T, NetError> {
            enter(&ns, path)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Creates a new, empty network namespace and bind-mounts it at `path`
/// (the file is created; it must not exist). Its loopback is down, as the
/// kernel creates it.
pub fn create_netns(path: &Path) -> Result<(), NetError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ns_err(path, "creating the mount point"))?;
    let r = std::thread::scope(|sc| {
        sc.spawn(|| -> Result<(), NetError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(nix_io)
                .map_err(ns_err(path, "unsharing"))?;
            // thread-self, not self: only this thread changed namespace.
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_io)
            .map_err(ns_err(path, "bind-mounting"))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Unmounts and removes a namespace file made by [`create_netns`] (or any
/// bind-mounted namespace). Missing files are fine. The namespace itself is
/// freed by the kernel when nothing else refers to it.
pub fn remove_netns(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(ns_err(path, "unmounting")(nix_io(e))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err(path, "removing")(e)),
    }
}
