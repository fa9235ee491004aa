//! The container's first process, from clone3 to execve. Runs in a child of
//! the single-threaded shim, so it may allocate, but it never spawns threads.
//!
//! Order matters: mounts are resolved inside the rootfs with openat2
//! (RESOLVE_IN_ROOT) and mounted through /proc/self/fd, devices are created
//! on the container's own /dev tmpfs, masked paths are covered with that
//! verified /dev/null, then pivot_root, identity, capabilities, no_new_privs
//! and finally seccomp right before execve.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::config::{ContainerConfig, NsKind, ProcessSpec};
use crate::security::{self, SeccompProgram};
use crate::sys::{self, cpath, cstr, fd_path};

/// How /sys/fs/cgroup looks inside the container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum CgroupFs {
    /// v1 hierarchies: (directory name under /sys/fs/cgroup, mount options).
    V1(Vec<(String, String)>),
    V2,
}

pub struct InitArgs<'a> {
    pub cfg: &'a ContainerConfig,
    pub rootfs: &'a Path,
    /// Write end: 'R' when created, 'E' + message on failure.
    pub sync_fd: RawFd,
    /// Read end: EOF once the parent wrote our uid/gid maps (user ns only).
    pub maps_fd: Option<RawFd>,
    /// O_PATH fd of the exec fifo; opening it for write blocks until start.
    pub fifo_fd: RawFd,
    pub stdout_fd: RawFd,
    pub stderr_fd: RawFd,
    /// Namespaces to join (fd, kind), opened by the parent before clone.
    pub join: Vec<(RawFd, NsKind)>,
    pub seccomp: Option<&'a SeccompProgram>,
    pub last_cap: u32,
    pub cgroup_fs: &'a CgroupFs,
    /// The parent's ends of our pipes: closed first, or a read for EOF
    /// (the uid map handshake) would wait on ourselves.
    pub close: Vec<RawFd>,
}

type R<T> = Result<T, String>;

fn ctx<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Never returns: either execs the container process or exits.
pub fn run(a: InitArgs) -> ! {
    match setup(&a) {
        Ok(()) => {}
        Err(msg) => {
            let mut b = Vec::with_capacity(msg.len() + 1);
            b.push(b'E');
            b.extend_from_slice(msg.as_bytes());
            let _ = sys::write_all_fd(a.sync_fd, &b);
            // SAFETY: terminating the child without running parent-owned destructors.
            unsafe { libc::_exit(1) };
        }
    }
    // Created: tell the shim, then wait for start.
    let _ = sys::write_all_fd(a.sync_fd, b"R");
    // SAFETY: closing our copy of the sync pipe so the shim sees EOF.
    unsafe { libc::close(a.sync_fd) };
    let err = start_and_exec(&a);
    let msg = format!("flotilla-init: {err}\n");
    let _ = sys::write_all_fd(2, msg.as_bytes());
    // SAFETY: see above.
    unsafe { libc::_exit(127) };
}

fn setup(a: &InitArgs) -> R<()> {
    let cfg = a.cfg;
    for fd in &a.close {
        // SAFETY: closing our inherited copies of the parent's pipe ends.
        unsafe { libc::close(*fd) };
    }
    // SAFETY: dup2 on fds we were handed.
    unsafe {
        libc::dup2(a.stdout_fd, 1);
        libc::dup2(a.stderr_fd, 2);
    }
    if let Some(fd) = a.maps_fd {
        // Block until the parent wrote uid_map/gid_map, then become root in the ns.
        let _ = sys::read_to_end_fd(fd);
        // SAFETY: plain syscalls.
        unsafe {
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(format!(
                    "becoming root in the user namespace: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    for (fd, kind) in &a.join {
        // SAFETY: fd is a namespace fd opened by the parent.
        if unsafe { libc::setns(*fd, 0) } != 0 {
            return Err(format!(
                "joining {} namespace: {}",
                kind.proc_name(),
                std::io::Error::last_os_error()
            ));
        }
    }
    if cfg.ns(NsKind::Cgroup).is_some_and(|n| n.path.is_none()) {
        // After clone so the namespace root is the container's own cgroup
        // (clone3 CLONE_INTO_CGROUP would otherwise root it at the shim's).
        // SAFETY: plain syscall.
        if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
            return Err(format!(
                "creating cgroup namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let userns = cfg.ns(NsKind::User).is_some();
    let new_net = cfg.ns(NsKind::Net).is_some_and(|n| n.path.is_none());
    setup_rootfs(a, userns, new_net)?;
    if let Some(h) = &cfg.hostname {
        ctx(
            nix::unistd::sethostname(h).map_err(std::io::Error::from),
            || "linux hostname".into(),
        )?;
    }
    if new_net {
        ctx(loopback_up(), || "bringing up lo".into())?;
    }
    // SAFETY: plain syscall; makes init a session leader (CRIU needs it).
    if unsafe { libc::setsid() } < 0 {
        return Err(format!("setsid: {}", std::io::Error::last_os_error()));
    }
    let devnull = ctx(
        std::fs::OpenOptions::new().read(true).open("/dev/null"),
        || "opening /dev/null".into(),
    )?;
    // SAFETY: dup2 onto stdin.
    unsafe { libc::dup2(devnull.as_raw_fd(), 0) };
    drop(devnull);
    if let Some(adj) = cfg.process.oom_score_adj {
        ctx(
            std::fs::write("/proc/self/oom_score_adj", adj.to_string()),
            || "process.oomScoreAdj".into(),
        )?;
    }
    security::apply_rlimits(&cfg.process.rlimits).map_err(|e| format!("process.rlimits: {e}"))?;
    if let Some(m) = cfg.process.umask {
        // SAFETY: plain syscall.
        unsafe { libc::umask(m as libc::mode_t) };
    }
    let cwd = &cfg.process.cwd;
    if let Err(e) = std::env::set_current_dir(cwd) {
        return Err(format!("process.cwd: cannot enter {}: {e}", cwd.display()));
    }
    // Resolve the command now so a missing binary fails create, not start.
    resolve_command(&cfg.process.args[0], &cfg.process.env, cwd)?;
    set_identity(a)?;
    Ok(())
}

fn set_identity(a: &InitArgs) -> R<()> {
    take_identity(&a.cfg.process, a.last_cap, a.cfg.ns(NsKind::User).is_some())
}

/// Groups, gid, bounding set, uid (keeping capabilities across it), then the
/// capability sets: the container's identity, for init and for exec.
pub(crate) fn take_identity(p: &ProcessSpec, last_cap: u32, userns: bool) -> R<()> {
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        let groups: Vec<libc::gid_t> = p.additional_gids.clone();
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            let e = std::io::Error::last_os_error();
            // setgroups is refused in a user ns with setgroups=deny.
            if !(userns && groups.is_empty()) {
                return Err(format!("process.user.additionalGids: {e}"));
            }
        }
        if libc::setresgid(p.gid, p.gid, p.gid) != 0 {
            return Err(format!(
                "process.user.gid {}: {}",
                p.gid,
                std::io::Error::last_os_error()
            ));
        }
        // Drop the bounding set while we still hold CAP_SETPCAP.
        for cap in 0..=last_cap {
            if p.caps.bounding & (1u64 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        if p.uid != 0 {
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
        if libc::setresuid(p.uid, p.uid, p.uid) != 0 {
            return Err(format!(
                "process.user.uid {}: {}",
                p.uid,
                std::io::Error::last_os_error()
            ));
        }
        if p.uid != 0 {
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        }
    }
    security::apply_caps(&p.caps, last_cap).map_err(|e| format!("process.capabilities: {e}"))?;
    Ok(())
}

fn start_and_exec(a: &InitArgs) -> String {
    let p = &a.cfg.process;
    // Block until `start` opens the fifo for reading.
    let path = fd_path(a.fifo_fd);
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return format!("opening exec fifo: {}", std::io::Error::last_os_error());
    }
    let _ = sys::write_all_fd(fd, b"0");
    // SAFETY: closing fds we own.
    unsafe {
        libc::close(fd);
        libc::close(a.fifo_fd);
    }
    exec_process(p, a.seccomp)
}

/// no_new_privs, close inherited fds, seccomp last, execve. Returns only on
/// failure, with the reason.
pub(crate) fn exec_process(p: &ProcessSpec, seccomp: Option<&SeccompProgram>) -> String {
    if p.no_new_privs {
        if let Err(e) = security::set_no_new_privs() {
            return format!("no_new_privs: {e}");
        }
    }
    let exe = match resolve_command(&p.args[0], &p.env, &p.cwd) {
        Ok(e) => e,
        Err(e) => return e,
    };
    let argv: Vec<CString> = match p.args.iter().map(|s| cstr(s)).collect() {
        Ok(v) => v,
        Err(e) => return format!("process.args: {e}"),
    };
    let envp: Vec<CString> = match p.env.iter().map(|s| cstr(s)).collect() {
        Ok(v) => v,
        Err(e) => return format!("process.env: {e}"),
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    if let Err(e) = sys::cloexec_from(3) {
        return format!("closing inherited fds: {e}");
    }
    // Seccomp last: nothing after it but execve.
    if let Some(prog) = seccomp {
        if let Err(e) = security::apply_seccomp(prog) {
            return format!("linux.seccomp: {e}");
        }
    }
    // SAFETY: NUL-terminated arrays of valid C strings.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    format!("exec {:?}: {}", p.args[0], std::io::Error::last_os_error())
}

/// Find the executable like execvp would, with the container's PATH.
pub fn resolve_command(cmd: &str, env: &[String], cwd: &Path) -> R<CString> {
    let is_exec = |p: &Path| -> bool {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(p) {
            Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
            Err(_) => false,
        }
    };
    if cmd.contains('/') {
        let p = if Path::new(cmd).is_absolute() {
            PathBuf::from(cmd)
        } else {
            cwd.join(cmd)
        };
        if !p.exists() {
            return Err(format!(
                "process.args[0]: {cmd:?} does not exist in the container"
            ));
        }
        if !is_exec(&p) {
            return Err(format!(
                "process.args[0]: {cmd:?} is not an executable file"
            ));
        }
        return cpath(&p).map_err(|e| format!("process.args[0]: {e}"));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if is_exec(&p) {
            return cpath(&p).map_err(|e| format!("process.args[0]: {e}"));
        }
    }
    Err(format!(
        "process.args[0]: executable {cmd:?} not found in the container's PATH ({path_var})"
    ))
}

pub(crate) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket + ioctl with a properly sized ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(s);
            return Err(e);
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        let e = std::io::Error::last_os_error();
        libc::close(s);
        if r < 0 {
            return Err(e);
        }
    }
    Ok(())
}

fn setup_rootfs(a: &InitArgs, userns: bool, new_net: bool) -> R<()> {
    let cfg = a.cfg;
    let root_c = ctx(cpath(a.rootfs), || "rootfs".into())?;
    let slash = cstr("/").expect("static");
    // Nothing we mount may propagate back to the host.
    ctx(
        sys::mount(None, &slash, None, libc::MS_REC | libc::MS_PRIVATE, None),
        || "making / private".into(),
    )?;
    // pivot_root needs the new root to be a mount point.
    ctx(
        sys::mount(
            Some(&root_c),
            &root_c,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        ),
        || format!("binding rootfs {}", a.rootfs.display()),
    )?;
    let root = ctx(std::fs::File::open(a.rootfs), || {
        format!("opening rootfs {}", a.rootfs.display())
    })?;
    let rfd = root.as_raw_fd();
    let mut dev_is_tmpfs = false;
    for (i, m) in cfg.mounts.iter().enumerate() {
        let field = || format!("mounts[{i}] ({})", m.destination.display());
        if m.fstype.as_deref() == Some("cgroup") || m.fstype.as_deref() == Some("cgroup2") {
            mount_cgroupfs(rfd, &m.destination, a.cgroup_fs)
                .map_err(|e| format!("{}: {e}", field()))?;
            continue;
        }
        if m.bind {
            let src = m.source.as_ref().expect("validated");
            let target = if src.is_dir() {
                sys::mkdir_all_in_root(rfd, &m.destination, 0o755)
            } else {
                sys::touch_in_root(rfd, &m.destination)
            };
            let target = ctx(target, field)?;
            let src_c = ctx(cpath(src), field)?;
            let tp = fd_path(target.as_raw_fd());
            ctx(
                sys::mount(
                    Some(&src_c),
                    &tp,
                    None,
                    libc::MS_BIND | (m.flags & libc::MS_REC),
                    None,
                ),
                field,
            )?;
            let extra =
                m.flags & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
            if extra != 0 {
                let t2 = ctx(
                    sys::open_in_root(rfd, &m.destination, libc::O_PATH, 0),
                    field,
                )?;
                ctx(
                    sys::mount(
                        None,
                        &fd_path(t2.as_raw_fd()),
                        None,
                        libc::MS_BIND | libc::MS_REMOUNT | extra,
                        None,
                    ),
                    field,
                )?;
            }
        } else {
            let fstype = m.fstype.as_deref().unwrap_or("");
            let target = ctx(sys::mkdir_all_in_root(rfd, &m.destination, 0o755), field)?;
            let tp = fd_path(target.as_raw_fd());
            let src_s = m
                .source
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| fstype.to_string());
            let src_c = ctx(cstr(&src_s), field)?;
            let ty_c = ctx(cstr(fstype), field)?;
            let data_c = ctx(cstr(&m.data), field)?;
            let flags = m.flags & !libc::MS_REMOUNT;
            let r = sys::mount(
                Some(&src_c),
                &tp,
                Some(&ty_c),
                flags,
                if m.data.is_empty() {
                    None
                } else {
                    Some(&data_c)
                },
            );
            match r {
                Err(e)
                    if fstype == "sysfs" && !new_net && e.raw_os_error() == Some(libc::EPERM) =>
                {
                    // sysfs cannot be mounted without owning the netns: bind the host's read-only.
                    let sys_c = cstr("/sys").expect("static");
                    ctx(
                        sys::mount(Some(&sys_c), &tp, None, libc::MS_BIND | libc::MS_REC, None),
                        field,
                    )?;
                    let t2 = ctx(
                        sys::open_in_root(rfd, &m.destination, libc::O_PATH, 0),
                        field,
                    )?;
                    ctx(
                        sys::mount(
                            None,
                            &fd_path(t2.as_raw_fd()),
                            None,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            None,
                        ),
                        field,
                    )?;
                }
                Err(e) if fstype == "mqueue" && e.raw_os_error() == Some(libc::EPERM) => {
                    // Without a new IPC namespace mqueue cannot be mounted; skip it.
                }
                other => ctx(other, field)?,
            }
            if m.destination == Path::new("/dev") && fstype == "tmpfs" {
                dev_is_tmpfs = true;
            }
        }
        if m.propagation != 0 {
            let t = ctx(
                sys::open_in_root(rfd, &m.destination, libc::O_PATH, 0),
                field,
            )?;
            ctx(
                sys::mount(None, &fd_path(t.as_raw_fd()), None, m.propagation, None),
                field,
            )?;
        }
    }
    if dev_is_tmpfs {
        create_devices(rfd, cfg, userns)?;
    }
    for (k, v) in &cfg.sysctls {
        let rel = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        let fd = ctx(sys::open_in_root(rfd, &rel, libc::O_WRONLY, 0), || {
            format!("linux.sysctl.{k}")
        })?;
        ctx(sys::write_all_fd(fd.as_raw_fd(), v.as_bytes()), || {
            format!("linux.sysctl.{k}")
        })?;
    }
    mask_paths(rfd, &cfg.masked_paths)?;
    for p in &cfg.readonly_paths {
        readonly_path(rfd, p).map_err(|e| format!("linux.readonlyPaths {}: {e}", p.display()))?;
    }
    drop(root);
    // pivot_root(".", ".") stacks the old root under the new one; detach it.
    ctx(std::env::set_current_dir(a.rootfs), || {
        "entering rootfs".into()
    })?;
    let dot = cstr(".").expect("static");
    // SAFETY: valid C strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(format!("pivot_root: {}", std::io::Error::last_os_error()));
    }
    ctx(sys::umount2(&dot, libc::MNT_DETACH), || {
        "detaching old root".into()
    })?;
    ctx(std::env::set_current_dir("/"), || "chdir /".into())?;
    if cfg.readonly_root {
        ctx(
            sys::mount(
                None,
                &slash,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            ),
            || "root.readonly".into(),
        )?;
    }
    Ok(())
}

fn mount_cgroupfs(rfd: RawFd, dest: &Path, fs: &CgroupFs) -> std::io::Result<()> {
    let ro = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;
    let target = sys::mkdir_all_in_root(rfd, dest, 0o755)?;
    match fs {
        CgroupFs::V2 => {
            let c = cstr("cgroup2")?;
            sys::mount(
                Some(&c),
                &fd_path(target.as_raw_fd()),
                Some(&c),
                ro | libc::MS_RDONLY,
                None,
            )
        }
        CgroupFs::V1(list) => {
            let tmpfs = cstr("tmpfs")?;
            let data = cstr("mode=755")?;
            sys::mount(
                Some(&tmpfs),
                &fd_path(target.as_raw_fd()),
                Some(&tmpfs),
                ro,
                Some(&data),
            )?;
            let cg = cstr("cgroup")?;
            for (name, opts) in list {
                let sub = sys::mkdir_all_in_root(rfd, &dest.join(name), 0o755)?;
                let o = cstr(opts)?;
                // Inside our cgroup namespace this shows the container's own
                // cgroup as the root of each hierarchy.
                sys::mount(
                    Some(&cg),
                    &fd_path(sub.as_raw_fd()),
                    Some(&cg),
                    ro | libc::MS_RDONLY,
                    Some(&o),
                )?;
            }
            let t2 = sys::open_in_root(rfd, dest, libc::O_PATH, 0)?;
            sys::mount(
                None,
                &fd_path(t2.as_raw_fd()),
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | ro,
                None,
            )
        }
    }
}

fn create_devices(rfd: RawFd, cfg: &ContainerConfig, userns: bool) -> R<()> {
    // Devices mostly share one parent (/dev): open it once.
    let mut parent_dir: Option<(&Path, OwnedFd)> = None;
    for d in &cfg.devices {
        let field = || format!("linux.devices {}", d.path.display());
        let parent = d.path.parent().unwrap_or(Path::new("/dev"));
        if parent_dir.as_ref().is_none_or(|(p, _)| *p != parent) {
            let pfd = ctx(sys::mkdir_all_in_root(rfd, parent, 0o755), field)?;
            // mknodat needs a real directory fd, not O_PATH.
            let dirfd = ctx(
                sys::open_in_root(rfd, parent, libc::O_DIRECTORY | libc::O_RDONLY, 0),
                field,
            )?;
            drop(pfd);
            parent_dir = Some((parent, dirfd));
        }
        let dirfd = &parent_dir.as_ref().expect("set above").1;
        let name = ctx(
            cpath(Path::new(d.path.file_name().unwrap_or_default())),
            field,
        )?;
        if userns {
            // mknod is refused in a user namespace: bind the host's node.
            let t = ctx(sys::touch_in_root(rfd, &d.path), field)?;
            let src = ctx(cpath(&d.path), field)?;
            ctx(
                sys::mount(
                    Some(&src),
                    &fd_path(t.as_raw_fd()),
                    None,
                    libc::MS_BIND,
                    None,
                ),
                field,
            )?;
            continue;
        }
        let kind = if d.char_dev {
            libc::S_IFCHR
        } else {
            libc::S_IFBLK
        };
        // SAFETY: valid dirfd and name.
        let r = unsafe {
            libc::mknodat(
                dirfd.as_raw_fd(),
                name.as_ptr(),
                kind | (d.mode & 0o777),
                libc::makedev(d.major as u32, d.minor as u32),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("{}: {e}", field()));
            }
        }
        // SAFETY: valid dirfd and name; the node we just created.
        unsafe {
            libc::fchmodat(dirfd.as_raw_fd(), name.as_ptr(), d.mode & 0o777, 0);
            libc::fchownat(
                dirfd.as_raw_fd(),
                name.as_ptr(),
                d.uid,
                d.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
    }
    let dev = match parent_dir {
        Some((p, fd)) if p == Path::new("/dev") => fd,
        _ => ctx(
            sys::open_in_root(
                rfd,
                Path::new("/dev"),
                libc::O_DIRECTORY | libc::O_RDONLY,
                0,
            ),
            || "/dev".into(),
        )?,
    };
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        let l = cstr(link).expect("static");
        let t = cstr(target).expect("static");
        // SAFETY: valid fd and C strings.
        unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), l.as_ptr()) };
    }
    Ok(())
}

fn open_verified_devnull(rfd: RawFd) -> R<OwnedFd> {
    let fd = ctx(
        sys::open_in_root(rfd, Path::new("/dev/null"), libc::O_PATH, 0),
        || "masking needs the container's /dev/null".into(),
    )?;
    // SAFETY: fstat into a zeroed struct.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(format!(
                "stat /dev/null: {}",
                std::io::Error::last_os_error()
            ));
        }
        st
    };
    // A masked path must be covered by the real null device (runc CVE-2025-31133).
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
        return Err("container /dev/null is not the null device (char 1:3)".into());
    }
    Ok(fd)
}

fn mask_paths(rfd: RawFd, paths: &[PathBuf]) -> R<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut null: Option<OwnedFd> = None;
    // Directories share one empty read-only tmpfs: the first gets it, the
    // rest are binds of it. CRIU then archives one tmpfs instead of one per
    // masked directory on every checkpoint (and unpacks one on restore).
    let mut empty: Option<OwnedFd> = None;
    for p in paths {
        let fd = match sys::open_in_root(rfd, p, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(format!("linux.maskedPaths {}: {e}", p.display())),
        };
        // SAFETY: fstat into a zeroed struct.
        let is_dir = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
        };
        let target = fd_path(fd.as_raw_fd());
        let r = if is_dir {
            match &empty {
                // A bind keeps the source mount's read-only flag.
                Some(e) => sys::mount(
                    Some(&fd_path(e.as_raw_fd())),
                    &target,
                    None,
                    libc::MS_BIND,
                    None,
                ),
                None => {
                    let t = cstr("tmpfs").expect("static");
                    let data = cstr("size=0,mode=000").expect("static");
                    let r = sys::mount(Some(&t), &target, Some(&t), libc::MS_RDONLY, Some(&data));
                    if r.is_ok() {
                        empty = sys::open_in_root(rfd, p, libc::O_PATH | libc::O_NOFOLLOW, 0).ok();
                    }
                    r
                }
            }
        } else {
            if null.is_none() {
                null = Some(open_verified_devnull(rfd)?);
            }
            let src = fd_path(null.as_ref().expect("set").as_raw_fd());
            sys::mount(Some(&src), &target, None, libc::MS_BIND, None)
        };
        r.map_err(|e| format!("linux.maskedPaths {}: {e}", p.display()))?;
    }
    Ok(())
}

fn readonly_path(rfd: RawFd, p: &Path) -> std::io::Result<()> {
    let fd = match sys::open_in_root(rfd, p, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let t = fd_path(fd.as_raw_fd());
    sys::mount(Some(&t), &t, None, libc::MS_BIND | libc::MS_REC, None)?;
    let fd2 = sys::open_in_root(rfd, p, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let t2 = fd_path(fd2.as_raw_fd());
    sys::mount(
        None,
        &t2,
        None,
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
}
