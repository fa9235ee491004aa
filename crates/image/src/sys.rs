//! Thin wrappers over the *at syscalls used to unpack and read layers without ever following a
//! symlink: every path is resolved relative to a directory fd with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, every final component is
//! created with `O_EXCL`/`O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in path"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens `path` (relative, may be empty for the root itself) below `root` as an `O_PATH`
/// directory fd. Fails with `ELOOP` if any component is a symlink and `ENOTDIR` if one is not a
/// directory; `..` can never leave `root`.
pub fn open_dir_beneath(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let p = if path.is_empty() {
        cstr(b".")?
    } else {
        cstr(path)?
    };
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: `how` is a valid open_how of the size passed; `p` is NUL-terminated.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens a directory fd usable for *at calls (not O_PATH, so fsetxattr/fchown work).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let n = cstr(name)?;
    // SAFETY: valid NUL-terminated name and dirfd.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by absolute or relative path (O_DIRECTORY, following nothing at the end).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let p = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: valid path.
    let fd = check(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a new regular file `name` in `dir` (must not exist; a symlink is never followed).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let n = cstr(name)?;
    // SAFETY: valid NUL-terminated name and dirfd.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens an existing regular file `name` in `dir` for reading, never following a symlink.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let n = cstr(name)?;
    // SAFETY: valid NUL-terminated name and dirfd.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid name and dirfd.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    // SAFETY: valid strings and dirfd.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) }).map(drop)
}

/// `linkat(odir, oname, ndir, nname, 0)`: a symlink at `oname` is linked itself, not followed.
pub fn link_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
) -> io::Result<()> {
    let o = cstr(oname)?;
    let n = cstr(nname)?;
    // SAFETY: valid strings and dirfds.
    check(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            o.as_ptr(),
            ndir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Creates an overlayfs whiteout: a character device 0/0 named `name` in `dir`.
pub fn mknod_whiteout_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid name and dirfd.
    check(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::S_IFCHR,
            libc::makedev(0, 0),
        )
    })
    .map(drop)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; an empty name means `dir` itself.
pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let (n, flags) = name_or_empty(name)?;
    // SAFETY: valid name and dirfd.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            n.as_ptr(),
            uid,
            gid,
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

fn name_or_empty(name: &[u8]) -> io::Result<(CString, libc::c_int)> {
    if name.is_empty() {
        Ok((CString::default(), libc::AT_EMPTY_PATH))
    } else {
        Ok((cstr(name)?, 0))
    }
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// `fsetxattr(fd, name, value)`.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid fd, name and buffer.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
    .map(drop)
}

/// Sets atime and mtime of `name` in `dir` (empty = `dir`) without following a symlink.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &[u8], mtime: i64) -> io::Result<()> {
    let (n, flags) = name_or_empty(name)?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: valid name, dirfd and two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            n.as_ptr(),
            times.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `syncfs(fd)`: flushes the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name means `dir` itself.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<libc::stat> {
    let (n, flags) = name_or_empty(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid name, dirfd and stat buffer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Reads the target of the symlink `name` in `dir`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let n = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid name, dirfd and buffer of the given size.
    let len = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// Lists the xattrs of the file behind `fd` (an fd from `open`, not `O_PATH`) as (name, value).
pub fn flistxattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    // SAFETY: querying the size with a null buffer.
    let size = unsafe { libc::flistxattr(fd.as_raw_fd(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: buffer of the stated size.
    let size = unsafe { libc::flistxattr(fd.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(size as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = cstr(name)?;
        out.push((name.to_vec(), fgetxattr_c(fd, &n)?));
    }
    Ok(out)
}

/// Reads one xattr, `None` if absent.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let n = cstr(name)?;
    match fgetxattr_c(fd, &n) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fgetxattr_c(fd: BorrowedFd<'_>, n: &CStr) -> io::Result<Vec<u8>> {
    // SAFETY: size query with a null buffer.
    let size = unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut v = vec![0u8; size as usize];
    // SAFETY: buffer of the stated size.
    let size =
        unsafe { libc::fgetxattr(fd.as_raw_fd(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(size as usize);
    Ok(v)
}

/// Lists directory entries of `dir` (an open directory fd) except `.` and `..`, sorted.
pub fn read_dir_fd(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    // Re-open through /proc so the caller's fd offset is untouched.
    let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path)?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect::<io::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// `true` when the process may create device nodes and set trusted.* xattrs (root with
/// CAP_MKNOD and CAP_SYS_ADMIN in the initial user namespace, as far as can cheaply be told).
pub fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// A path from bytes.
pub fn path_of(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}
