//! Thin wrappers over the raw syscalls the runtime needs and that nix does not
//! cover (clone3, openat2, pidfd, close_range). Everything here is safe to call
//! in a freshly cloned single-threaded child: no locks, no threads.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Result of a raw syscall: the value, or the `errno` as an `io::Error`.
pub fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cvt_i(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in string"))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in path"))
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork-like clone3: the child continues on a copy of the parent's stack.
/// Returns 0 in the child and the child's pid in the parent. With `cgroup_fd`
/// the child is born inside that cgroup v2 directory, so no attach (and no RCU
/// grace period) is paid.
///
/// # Safety
/// Same contract as `fork()`: the caller must be single-threaded.
pub unsafe fn clone3(flags: u64, cgroup_fd: Option<RawFd>) -> io::Result<libc::pid_t> {
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: args is a valid clone_args struct of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    cvt(ret).map(|v| v as libc::pid_t)
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2 with RESOLVE_IN_ROOT: `path` is resolved as if `root` were `/`,
/// so symlinks in an untrusted rootfs can never lead outside it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: valid C string and open_how struct.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match cvt(ret) {
            // SAFETY: the kernel returned a new fd we now own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Create every missing directory of `path` inside `root` (resolved in root)
/// and return an O_PATH fd to the final directory.
pub fn mkdir_all_in_root(root: RawFd, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    // Usually the directory exists: one lookup instead of one per component.
    match open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    // Usually only the last component is missing (a mount point on a fresh
    // tmpfs): make the parent (one lookup if present), then this one in it.
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return mkdir_all_walk(root, path, mode);
    };
    let pfd = mkdir_all_in_root(root, parent, mode)?;
    let cname = cpath(Path::new(name))?;
    // SAFETY: pfd is a directory fd we own; cname is valid.
    if unsafe { libc::mkdirat(pfd.as_raw_fd(), cname.as_ptr(), mode) } < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
        // Made meanwhile, or a symlink: resolve it in root like any path.
        return open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY, 0);
    }
    // The directory we just made, in a parent resolved in root: nothing to
    // follow.
    // SAFETY: valid dirfd and C string; the kernel returns a new fd we own.
    let fd = unsafe {
        libc::openat(
            pfd.as_raw_fd(),
            cname.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdir_all_in_root` one component at a time from the root (paths that
/// end in `..` or are `/`).
fn mkdir_all_walk(root: RawFd, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let mut cur = std::path::PathBuf::from("/");
    let mut fd = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for comp in path.components() {
        use std::path::Component;
        let name = match comp {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir => {
                cur.pop();
                fd = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                continue;
            }
            Component::Prefix(_) => continue,
        };
        cur.push(name);
        match open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(f) => fd = f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let cname = cpath(Path::new(name))?;
                // SAFETY: fd is a directory fd we own; cname is valid.
                let r = unsafe { libc::mkdirat(fd.as_raw_fd(), cname.as_ptr(), mode) };
                if r < 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EEXIST) {
                        return Err(err);
                    }
                }
                fd = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(fd)
}

/// Create (if missing) a regular file at `path` inside root and return an
/// O_PATH fd to it; used as a mount target for file bind mounts.
pub fn touch_in_root(root: RawFd, path: &Path) -> io::Result<OwnedFd> {
    if let Some(parent) = path.parent() {
        mkdir_all_in_root(root, parent, 0o755)?;
    }
    match open_in_root(root, path, libc::O_PATH, 0) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            drop(open_in_root(
                root,
                path,
                libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o644,
            )?);
            open_in_root(root, path, libc::O_PATH, 0)
        }
        Err(e) => Err(e),
    }
}

/// "/proc/self/fd/N": the magic link through which we mount onto a target that
/// was resolved safely inside the rootfs.
pub fn fd_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no nul")
}

pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    // SAFETY: all pointers are valid C strings or null.
    cvt_i(unsafe {
        libc::mount(
            source.map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })
    .map(|_| ())
}

/// An overlay made with the new mount API and not attached anywhere:
/// `options` as for mount(2) (`lowerdir=…,upperdir=…,workdir=…`). The
/// filesystem is set up (the work-dir probes run) now; [`move_mount_to`]
/// attaches it. Dropping the fd unmounts it.
pub fn fsmount_overlay(options: &str) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let name = cstr("overlay")?;
    // SAFETY: valid C string; the kernel returns a new fd we own.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: a new fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(cvt(fs)? as RawFd) };
    for opt in options.split(',') {
        let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
        let (k, v) = (cstr(k)?, cstr(v)?);
        // SAFETY: valid fd and C strings.
        cvt(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: valid fd, no key or value.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: valid fd; the kernel returns a new fd we own.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(cvt(m)? as RawFd) })
}

/// Attach a detached mount (from [`fsmount_overlay`]) at `target`.
pub fn move_mount_to(mount_fd: RawFd, target: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let t = cpath(target)?;
    // SAFETY: valid fd and C strings.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount_fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt_i(unsafe { libc::umount2(target.as_ptr(), flags) }).map(|_| ())
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: new fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with a null siginfo.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(|_| ())
}

/// Wait until the pidfd becomes readable (the process exited) or the timeout
/// (None = forever) passes. Returns true when the process has exited.
pub fn pidfd_wait(pidfd: RawFd, timeout: Option<std::time::Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(true);
        }
        if ms == 0 || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// An inotify instance, for waiting on files that appear in a directory.
/// Reuse instances: closing one waits for an SRCU grace period in the kernel
/// (fsnotify group teardown), several ms on a busy machine.
pub fn inotify_new() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is ours.
    let fd = cvt_i(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
    // SAFETY: the kernel returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watch `dir` for files created in or renamed into it; returns the watch id.
pub fn inotify_watch(fd: RawFd, dir: &Path) -> io::Result<i32> {
    let c = cpath(dir)?;
    // SAFETY: valid fd and C string.
    cvt_i(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MOVED_TO | libc::IN_CREATE) })
}

/// Remove a watch (asynchronous in the kernel) and discard queued events.
pub fn inotify_unwatch(fd: RawFd, wd: i32) {
    // SAFETY: plain syscall; EINVAL when the directory is already gone.
    unsafe { libc::inotify_rm_watch(fd, wd) };
    inotify_drain(fd);
}

/// Discard the queued events (the caller re-checks the files).
pub fn inotify_drain(fd: RawFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reading into our buffer from a non-blocking fd.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// rename(2) that fails with EEXIST instead of replacing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

/// Swap two existing paths atomically (RENAME_EXCHANGE).
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cpath(from)?, cpath(to)?);
    // SAFETY: valid C strings.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
    .map(|_| ())
}

/// Wait until any of `fds` is readable or `timeout` passes (EINTR counts as
/// a wake-up: callers loop and re-check anyway).
pub fn poll_readable(fds: &[RawFd], timeout: std::time::Duration) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: a valid array of pollfd.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
}

/// Mark every fd from `first` upwards close-on-exec, so nothing of the host
/// leaks into the container (CVE-2024-21626) and CRIU sees no host fds.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) })
        .map(|_| ())
}

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat); together with the pid it identifies a process across pid
/// reuse.
pub fn proc_start_time(pid: libc::pid_t) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // comm may contain spaces and parens: fields start after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))
}

/// True when `pid` is alive and is still the process that started at `start`.
/// A zombie counts as dead.
pub fn process_matches(pid: libc::pid_t, start: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let Some((_, rest)) = s.rsplit_once(')') else {
                return false;
            };
            let mut it = rest.split_whitespace();
            let state = it.next().unwrap_or("");
            if state == "Z" || state == "X" {
                return false;
            }
            it.nth(18).and_then(|v| v.parse::<u64>().ok()) == Some(start)
        }
        Err(_) => false,
    }
}

/// Write all of `buf` to a raw fd (used from the container child where we
/// avoid std's buffered machinery).
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Read until EOF from a raw fd.
pub fn read_to_end_fd(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two ints.
    cvt_i(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: new fds owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Is `path` a mount point in our mount namespace (listed in mountinfo)?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// Mount points at or below `dir`, deepest first (for unmounting before a
/// recursive delete).
pub fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let base = dir.to_string_lossy().trim_end_matches('/').to_string();
    let mut v: Vec<std::path::PathBuf> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| *m == base || m.starts_with(&format!("{base}/")))
        .map(std::path::PathBuf::from)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

pub(crate) fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything at or below `dir` (lazily, deepest first). Returns the
/// paths that could not be unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<(std::path::PathBuf, io::Error)> {
    let mut failed = vec![];
    for m in mounts_under(dir) {
        if let Ok(c) = cpath(&m) {
            if let Err(e) = umount2(&c, libc::MNT_DETACH) {
                if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT)
                {
                    failed.push((m, e));
                }
            }
        }
    }
    failed
}

/// Remove a directory tree without crossing into other filesystems or
/// following symlinks; refuses to descend into mount points (a still-mounted
/// rootfs must never be wiped through a recursive delete).
pub fn remove_tree_one_fs(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    fn walk(p: &Path, dev: u64) -> io::Result<()> {
        for entry in std::fs::read_dir(p)? {
            let entry = entry?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path)?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(io::Error::other(format!(
                        "refusing to delete across a mount point at {}",
                        path.display()
                    )));
                }
                walk(&path, dev)?;
                std::fs::remove_dir(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    if meta.is_dir() {
        walk(dir, meta.dev())?;
        std::fs::remove_dir(dir)
    } else {
        std::fs::remove_file(dir)
    }
}

pub fn errno_name(e: &io::Error) -> String {
    e.to_string()
}

/// Send `fd` over the unix socket `sock` (SCM_RIGHTS) with a one-byte message.
pub fn send_fd(sock: RawFd, fd: RawFd) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    let iov = [std::io::IoSlice::new(b"t")];
    sendmsg::<()>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Receive one fd sent by [`send_fd`]; `Ok(None)` when the peer closed without sending.
pub fn recv_fd(sock: RawFd) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.map_err(std::io::Error::from)?,
        }
    };
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut it = fds.into_iter();
            let first = it.next();
            for extra in it {
                // SAFETY: fds we were just given and own.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            // SAFETY: as above.
            return Ok(first.map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }

    #[test]
    fn start_time_of_self_is_stable() {
        let pid = std::process::id() as i32;
        let t = proc_start_time(pid).unwrap();
        assert!(process_matches(pid, t));
        assert!(!process_matches(pid, t + 1));
    }

    #[test]
    fn open_in_root_confines_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("esc")).unwrap();
        std::os::unix::fs::symlink("/nowhere", d.path().join("dangling")).unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        // A dangling symlink is refused, never followed out of the root.
        assert!(mkdir_all_in_root(root.as_raw_fd(), Path::new("dangling/x"), 0o755).is_err());
        assert!(!Path::new("/nowhere").exists());
        // "esc/x" must resolve to <root>/etc/x, not the host's /etc/x.
        let fd = mkdir_all_in_root(root.as_raw_fd(), Path::new("esc/newdir"), 0o755).unwrap();
        drop(fd);
        assert!(d.path().join("etc/newdir").is_dir());
        assert!(!Path::new("/etc/newdir").exists());
    }
}
