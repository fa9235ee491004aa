//! Live runtime tests: real namespaces, cgroups, overlayfs and processes on
//! this host, as root. Each test builds its own runtime on a temporary root
//! with a unique cgroup parent and checks that nothing is left afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{live, Fixture};
use flotilla_runtime::cgroups::CgroupLayout;
use flotilla_runtime::runtime::{ExecOptions, RuntimeError, Status};
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};

fn with_resources(
    mut spec: oci_spec::runtime::Spec,
    mem: Option<i64>,
    cpu_quota: Option<i64>,
    pids: Option<i64>,
) -> oci_spec::runtime::Spec {
    let mut r = LinuxResourcesBuilder::default();
    if let Some(m) = mem {
        r = r.memory(LinuxMemoryBuilder::default().limit(m).build().unwrap());
    }
    if let Some(q) = cpu_quota {
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(q)
                .period(100_000u64)
                .build()
                .unwrap(),
        );
    }
    if let Some(p) = pids {
        r = r.pids(LinuxPidsBuilder::default().limit(p).build().unwrap());
    }
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(r.build().unwrap()));
    spec
}

#[test]
fn live_isolation_inside_the_container() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec(&[
        "sh",
        "-c",
        "echo host=$(hostname); echo pid=$$; echo ifaces=$(ls /sys/class/net | tr '\\n' ' '); \
         grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs|Seccomp):' /proc/self/status; \
         echo timer_list=$(wc -c < /proc/timer_list); echo keys=$(wc -c < /proc/keys); \
         (echo 1 > /proc/sys/kernel/ostype) 2>/dev/null && echo procsys=writable || echo procsys=readonly; \
         mount -t tmpfs t /mnt 2>/dev/null && echo mount=ok || echo mount=denied; \
         unshare -m true 2>/dev/null && echo unshare=ok || echo unshare=denied; \
         mknod /tmp/sda b 8 0 2>/dev/null && (head -c1 /tmp/sda >/dev/null 2>&1 && echo blockdev=readable || echo blockdev=denied) || echo blockdev=denied; \
         echo cgroup=$(cat /proc/self/cgroup | grep memory)",
    ]);
    spec.set_hostname(Some("inside-test".into()));
    let id = common::unique("iso");
    f.rt.run(f.opts(&id, spec)).expect("run");
    let e = f.rt.wait(&id, Some(Duration::from_secs(20))).unwrap();
    let out = f.logs(&id);
    assert_eq!(e.exit_code, Some(0), "{out}");
    let has = |s: &str| assert!(out.contains(s), "missing {s:?} in:\n{out}");
    has("host=inside-test");
    has("pid=1\n");
    has("ifaces=lo\n");
    // Docker's 14 default capabilities and nothing else.
    has("CapEff:\t00000000a80425fb");
    has("CapBnd:\t00000000a80425fb");
    has("CapInh:\t0000000000000000");
    has("NoNewPrivs:\t1");
    has("Seccomp:\t2");
    has("timer_list=0");
    has("keys=0");
    has("procsys=readonly");
    has("mount=denied");
    has("unshare=denied");
    has("blockdev=denied");
    // Own cgroup namespace: the container sees itself at the root.
    has("cgroup=4:memory:/\n");
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_memory_hog_is_oom_killed_and_recorded() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    // dd allocates and fills a 256 MiB buffer: far past the 32 MiB limit.
    let spec = with_resources(
        f.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]),
        Some(32 << 20),
        None,
        None,
    );
    let id = common::unique("oom");
    f.rt.run(f.opts(&id, spec)).unwrap();
    let e = f.rt.wait(&id, Some(Duration::from_secs(30))).unwrap();
    assert!(e.oom_killed, "not recorded as OOM: {e:?}");
    assert_eq!(e.signal, Some(libc::SIGKILL), "{e:?}");
    let st = f.rt.state(&id).unwrap();
    assert_eq!(st.status, Status::Stopped);
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_fork_bomb_stops_at_the_pids_limit() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    // The inner shell forks until fork fails and dies of it; the outer one
    // then replaces itself with sleep, so the surviving children stay counted.
    let spec = with_resources(
        f.spec(&[
            "sh",
            "-c",
            "sh -c 'while :; do sleep 60 & done'; echo bomb-stopped; exec sleep 60",
        ]),
        None,
        None,
        Some(20),
    );
    let id = common::unique("bomb");
    f.rt.run(f.opts(&id, spec)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f.logs(&id).contains("bomb-stopped") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let logs = f.logs(&id);
    assert!(logs.contains("can't fork"), "fork never failed:\n{logs}");
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Running, "{logs}");
    let pids = f.rt.stats(&id).unwrap().pids;
    assert!(pids <= 20, "pids went to {pids}");
    assert!(
        pids >= 15,
        "only {pids} pids: the limit was not what stopped the bomb"
    );
    f.rt.stop(&id, Duration::from_millis(100)).unwrap();
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_cpu_quota_of_half_a_core_holds_a_busy_loop() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let spec = with_resources(
        f.spec(&["sh", "-c", "while :; do :; done"]),
        None,
        Some(50_000),
        None,
    );
    let id = common::unique("cpu");
    f.rt.run(f.opts(&id, spec)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let u0 = f.rt.stats(&id).unwrap().cpu_usage_ns;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let u1 = f.rt.stats(&id).unwrap().cpu_usage_ns;
    let frac = (u1 - u0) as f64 / t0.elapsed().as_nanos() as f64;
    eprintln!("busy loop used {:.1}% of a core", frac * 100.0);
    // Above 50 % would mean the quota does not hold; well below means the
    // loop did not run (the machine has 2 cores, so it can always get half).
    assert!(frac <= 0.56, "quota exceeded: {frac:.3}");
    assert!(frac >= 0.35, "busy loop starved: {frac:.3}");
    f.rt.stop(&id, Duration::from_millis(100)).unwrap();
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_exec_logs_stop_and_kill() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("ex");
    let spec = f.spec(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 3' TERM; echo started; echo oops >&2; while :; do sleep 0.1; done",
    ]);
    f.rt.run(f.opts(&id, spec)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.logs(&id).contains("oops") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let entries = flotilla_runtime::logs::read_all(&f.rt.log_path(&id).unwrap(), None).unwrap();
    assert!(entries
        .iter()
        .any(|e| e.content == "started" && e.stream == flotilla_runtime::logs::Stream::Stdout));
    assert!(entries
        .iter()
        .any(|e| e.content == "oops" && e.stream == flotilla_runtime::logs::Stream::Stderr));

    // exec joins the namespaces: same hostname, sees pid 1, own pid is not 1.
    let out =
        f.rt.exec_command(
            &id,
            &ExecOptions {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    "hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '; exit 7".into(),
                ],
                env: vec!["X=1".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{so} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains(&id[..id.len().min(64)]) || so.lines().next().is_some());
    assert!(so.contains("sh -c trap"), "{so}");
    assert!(!so.lines().nth(1).unwrap_or("1").trim().eq("1"), "{so}");
    // Inside the container's cgroup (v1 memory hierarchy seen as root).
    let out =
        f.rt.exec_command(
            &id,
            &ExecOptions {
                args: vec!["nonexistent-cmd".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // stop: SIGTERM is handled, exit 3 within the grace period.
    let e = f.rt.stop(&id, Duration::from_secs(10)).unwrap();
    assert_eq!(e.exit_code, Some(3), "{e:?}");
    assert!(f.logs(&id).contains("got-term"));
    f.rt.delete(&id, false).unwrap();

    // A PID-1 shell without a TERM handler ignores SIGTERM: SIGKILL after the grace.
    let id2 = common::unique("ex2");
    f.rt.run(f.opts(&id2, f.spec(&["sh", "-c", "while :; do sleep 0.1; done"])))
        .unwrap();
    let t = Instant::now();
    let e = f.rt.stop(&id2, Duration::from_millis(500)).unwrap();
    assert_eq!(e.signal, Some(libc::SIGKILL), "{e:?}");
    assert!(t.elapsed() >= Duration::from_millis(500));
    // Killing a stopped container is refused with its state named.
    let err = f.rt.kill(&id2, libc::SIGTERM).unwrap_err().to_string();
    assert!(err.contains("stopped"), "{err}");
    f.rt.delete(&id2, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_bad_input_is_refused_and_leaves_nothing() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    // Missing rootfs.
    let mut o = f.opts("bad1", f.spec(&["true"]));
    o.lower_dirs = vec!["/nonexistent/rootfs".into()];
    let e = f.rt.create(o).unwrap_err();
    assert!(matches!(e, RuntimeError::Rootfs(_)), "{e}");
    assert!(e.to_string().contains("/nonexistent/rootfs"), "{e}");
    f.assert_clean();
    // A command that does not exist in the container.
    let e =
        f.rt.create(f.opts("bad2", f.spec(&["/bin/no-such-binary"])))
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("process.args[0]") && e.contains("no-such-binary"),
        "{e}"
    );
    f.assert_clean();
    let e =
        f.rt.create(f.opts("bad3", f.spec(&["no-such-cmd"])))
            .unwrap_err()
            .to_string();
    assert!(e.contains("not found in the container's PATH"), "{e}");
    f.assert_clean();
    // Limits out of range.
    let e =
        f.rt.create(f.opts(
            "bad4",
            with_resources(f.spec(&["true"]), Some(100), None, None),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory"), "{e}");
    let e =
        f.rt.create(f.opts(
            "bad5",
            with_resources(f.spec(&["true"]), None, None, Some(0)),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pids"), "{e}");
    f.assert_clean();
    // A working directory that is missing.
    let mut spec = f.spec(&["true"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_cwd("/no/such/dir".into());
    let e = f.rt.create(f.opts("bad6", spec)).unwrap_err().to_string();
    assert!(e.contains("process.cwd"), "{e}");
    f.assert_clean();
    // Invalid and duplicate names.
    let e =
        f.rt.create(f.opts("../evil", f.spec(&["true"])))
            .unwrap_err()
            .to_string();
    assert!(e.starts_with("id:"), "{e}");
    let id = common::unique("dup");
    f.rt.run(f.opts(&id, f.spec(&["sleep", "30"]))).unwrap();
    let e = f.rt.create(f.opts(&id, f.spec(&["true"]))).unwrap_err();
    assert!(matches!(e, RuntimeError::AlreadyExists(_)), "{e}");
    // The first container is untouched by the refused duplicate.
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Running);
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

#[test]
fn live_a_new_runtime_readopts_running_containers() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("adopt");
    let st =
        f.rt.run(f.opts(
            &id,
            f.spec(&["sh", "-c", "while :; do echo tick; sleep 0.1; done"]),
        ))
        .unwrap();
    // A second runtime on the same root (what a restarted agent builds).
    let mut cfg = f.rt.config().clone();
    cfg.pool_size = 0;
    let rt2 = flotilla_runtime::runtime::Runtime::new(cfg).unwrap();
    let list = rt2.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, Status::Running);
    assert_eq!(
        list[0].record.init_pid, st.record.init_pid,
        "a duplicate was started"
    );
    let e = rt2.stop(&id, Duration::from_millis(200)).unwrap();
    assert_eq!(e.signal, Some(libc::SIGKILL));
    rt2.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_create_then_start_and_readonly_root() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("cs");
    let mut spec = f.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo rw || echo ro; touch /tmp/y && echo tmp-ok",
    ]);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(true));
    // /tmp stays writable through a tmpfs mount.
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string(), "nodev".to_string()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let st = f.rt.create(f.opts(&id, spec)).unwrap();
    assert_eq!(st.status, Status::Created);
    std::thread::sleep(Duration::from_millis(100));
    // Nothing ran before start.
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Created);
    assert!(f.logs(&id).is_empty());
    f.rt.start(&id).unwrap();
    let e = f.rt.wait(&id, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(e.exit_code, Some(0));
    let logs = f.logs(&id);
    assert!(logs.contains("ro\n") && logs.contains("tmp-ok"), "{logs}");
    // Starting twice is refused.
    assert!(f.rt.start(&id).is_err());
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

/// The cgroup v2 path for real: this host's unified hierarchy has no
/// controllers, but creating a container with clone3(CLONE_INTO_CGROUP), its
/// cgroup namespace and the cgroup2 mount inside all run as on a v2 host.
#[test]
fn live_cgroup_v2_clone_into_cgroup() {
    if !live() {
        return;
    }
    let unified = std::path::Path::new("/sys/fs/cgroup/unified");
    let layout = match CgroupLayout::detect().unwrap().mode() {
        flotilla_runtime::cgroups::CgroupMode::V2 => CgroupLayout::detect().unwrap(),
        _ if unified.join("cgroup.procs").exists() => CgroupLayout::v2_at(unified.to_path_buf()),
        _ => panic!("no cgroup2 hierarchy on this host"),
    };
    let f = Fixture::with_layout(layout);
    assert_eq!(
        f.rt.cgroup_mode(),
        flotilla_runtime::cgroups::CgroupMode::V2
    );
    let id = common::unique("v2");
    let spec = f.spec(&[
        "sh",
        "-c",
        "cat /proc/self/cgroup | grep '^0::'; ls /sys/fs/cgroup/cgroup.procs; sleep 30",
    ]);
    let st = f.rt.run(f.opts(&id, spec)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.logs(&id).contains("cgroup.procs") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = f.logs(&id);
    assert!(logs.contains("0::/\n"), "not at its namespace root: {logs}");
    // No device cgroup on v2: CAP_MKNOD (bit 27) is dropped.
    let status = std::fs::read_to_string(format!("/proc/{}/status", st.record.init_pid)).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let mask = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 27), 0, "{eff}");
    // From the host: the init is in the container's own cgroup.
    let host_view =
        std::fs::read_to_string(format!("/proc/{}/cgroup", st.record.init_pid)).unwrap();
    assert!(
        host_view.contains(&format!("0::/{}/{}", f.parent, id)),
        "{host_view}"
    );
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

#[test]
fn live_user_namespace_maps_root_to_an_unprivileged_host_id() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; ls /sys/class/net; sleep 30",
    ]);
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(200_000u32)
        .size(65_536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![map]));
    linux.set_gid_mappings(Some(vec![map]));
    let id = common::unique("userns");
    let st =
        f.rt.run(f.opts(&id, spec))
            .expect("run in a user namespace");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.logs(&id).contains("lo\n") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = f.logs(&id);
    // Root inside, 200000 outside; host-root files show as the overflow id.
    assert!(logs.starts_with("0\n"), "{logs}");
    assert!(logs.contains("200000"), "{logs}");
    assert!(logs.contains("65534\n"), "{logs}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", st.record.init_pid)).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("200000"), "{uid_line}");
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

#[test]
fn live_non_root_user_runs_without_capabilities() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let mut spec = f.spec(&["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status; touch /root/x 2>/dev/null && echo wrote || echo denied"]);
    spec.process_mut().as_mut().unwrap().set_user(
        oci_spec::runtime::UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .build()
            .unwrap(),
    );
    let id = common::unique("user");
    f.rt.run(f.opts(&id, spec)).unwrap();
    let e = f.rt.wait(&id, Some(Duration::from_secs(10))).unwrap();
    let logs = f.logs(&id);
    assert_eq!(e.exit_code, Some(0), "{logs}");
    assert_eq!(logs, "1000\n1000\nCapEff:\t0000000000000000\ndenied\n");
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

/// Read from a terminal master until `want` shows up (or the slave side closes).
fn read_until(master: &std::os::fd::OwnedFd, want: &str, deadline: Instant) -> String {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    while Instant::now() < deadline && !String::from_utf8_lossy(&out).contains(want) {
        let mut fds = [libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one valid fd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break; // EIO: every slave fd is closed
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Start an exec with a terminal and take the terminal's master side.
fn spawn_tty(
    f: &Fixture,
    id: &str,
    opts: &ExecOptions,
    size: Option<(u16, u16)>,
) -> (std::process::Child, std::os::fd::OwnedFd) {
    let (mut cmd, console) = f.rt.exec_tty_command(id, opts, size).unwrap();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let master = console.receive(Duration::from_secs(10)).unwrap();
    (child, master)
}

#[test]
fn live_exec_with_a_terminal() {
    use std::os::fd::AsRawFd;
    if !live() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("tty");
    f.rt.run(f.opts(&id, f.spec(&["sh", "-c", "while :; do sleep 0.1; done"])))
        .unwrap();
    let opts = ExecOptions {
        args: vec!["sh".into()],
        env: vec!["PS1=$ ".into()],
        ..Default::default()
    };
    let (mut child, master) = spawn_tty(&f, &id, &opts, Some((33, 111)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let write = |s: &str| {
        // SAFETY: write from a local buffer.
        let n = unsafe { libc::write(master.as_raw_fd(), s.as_ptr().cast(), s.len()) };
        assert_eq!(n, s.len() as isize);
    };
    // A terminal of the container's own devpts, of the size asked for, owned by the command's
    // session: `tty` names it, `stty size` reads it, and the shell is a session leader.
    write("tty; stty size; echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$; echo $((6*7))x\n");
    let out = read_until(&master, "42x", deadline);
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 111"), "{out}");
    let sid_pid = out
        .lines()
        .find(|l| l.starts_with("sid="))
        .unwrap_or_else(|| panic!("{out}"));
    let (sid, pid) = sid_pid.trim().split_once(' ').unwrap();
    assert_eq!(&sid[4..], &pid[4..], "{out}");
    // A resize reaches the command.
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ioctl on our master fd.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    write("stty size; exit 5\n");
    let out = read_until(&master, "\u{0}", deadline);
    assert!(out.contains("50 160"), "{out}");
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(5));

    // Closing the terminal hangs the session up: an interactive shell ends.
    let (mut child, master) = spawn_tty(&f, &id, &opts, None);
    // SAFETY: write from a static buffer.
    unsafe { libc::write(master.as_raw_fd(), b"echo ready\n".as_ptr().cast(), 11) };
    let out = read_until(&master, "ready\r\n", deadline);
    assert!(out.contains("ready"), "{out}");
    drop(master);
    let st = child.wait().unwrap();
    assert!(st.code().is_some_and(|c| c != 0), "{st:?}");

    // A failing helper (no such command) says why, and receive() does not hang.
    let (mut child, master) = spawn_tty(
        &f,
        &id,
        &ExecOptions {
            args: vec!["no-such-cmd".into()],
            ..Default::default()
        },
        None,
    );
    let out = read_until(&master, "\u{0}", deadline);
    assert!(out.contains("no-such-cmd"), "{out}");
    assert_eq!(child.wait().unwrap().code(), Some(127));

    // A helper killed outright takes its command along: nothing stays in the container.
    let (mut child, master) = spawn_tty(
        &f,
        &id,
        &ExecOptions {
            args: vec![
                "sh".into(),
                "-c".into(),
                "trap '' TERM HUP; echo up; exec sleep 612".into(),
            ],
            ..Default::default()
        },
        None,
    );
    let out = read_until(&master, "up", deadline);
    assert!(out.contains("up"), "{out}");
    let ps = |f: &Fixture| {
        let o =
            f.rt.exec_command(
                &id,
                &ExecOptions {
                    args: vec!["ps".into(), "-o".into(), "args".into()],
                    ..Default::default()
                },
            )
            .unwrap()
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !ps(&f).contains("sleep 612") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ps(&f).contains("sleep 612"), "{}", ps(&f));
    child.kill().unwrap();
    child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while ps(&f).contains("sleep 612") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!ps(&f).contains("sleep 612"), "left behind: {}", ps(&f));
    drop(master);

    f.rt.stop(&id, Duration::from_secs(5)).unwrap();
    // A stopped container: refused before anything is spawned.
    let e =
        f.rt.exec_tty_command(&id, &opts, None)
            .unwrap_err()
            .to_string();
    assert!(e.contains("stopped"), "{e}");
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

/// The mountinfo line of `rootfs`, if it is a mount point.
fn rootfs_mount_line(rootfs: &std::path::Path) -> Option<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = rootfs.display().to_string();
    mi.lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(str::to_string)
}

/// A create whose lower dirs match the previous one's gets the pool's detached overlay
/// (made in a spare directory, attached by move_mount): it still has its own, empty upper
/// dir; another set of lower dirs gets a plain spare and its own mount. Nothing of the
/// pool is in the mount table before it is handed out, or after shutdown.
#[test]
fn live_premounted_spare_overlay_is_fresh_and_private() {
    if !live() {
        return;
    }
    let f = Fixture::new();
    let a = common::unique("pm");
    let (e, logs) = f.run_script(&a, "echo one > /marker; cat /marker");
    assert_eq!(e.exit_code, Some(0), "{logs}");
    // The refill after that start prepares a spare on these lower dirs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spare_root = f.rt.config().root.join("spare");
    let premounted = || {
        std::fs::read_dir(&spare_root)
            .map(|rd| rd.count())
            .unwrap_or(0)
            >= 2
    };
    while !premounted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let root_s = f.root.path().display().to_string();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.lines()
            .any(|l| l.contains(&root_s) && l.contains("/spare/")),
        "a spare's overlay is attached before use: {mi}"
    );
    let b = common::unique("pm");
    let st =
        f.rt.create(f.opts(
            &b,
            f.spec(&[
                "sh",
                "-c",
                "test -e /marker && echo leaked || echo fresh; echo two > /marker",
            ]),
        ))
        .unwrap();
    let line = rootfs_mount_line(&st.record.rootfs).expect("rootfs mounted");
    // Made in the spare directory (the options keep the path it had then).
    assert!(
        line.contains(" - overlay ") && line.contains("/spare/"),
        "{line}"
    );
    f.rt.start(&b).unwrap();
    let e = f.rt.wait(&b, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(e.exit_code, Some(0));
    assert!(f.logs(&b).contains("fresh"), "{}", f.logs(&b));
    let read =
        |id: &str| std::fs::read_to_string(f.rt.upper_dir(id).unwrap().join("marker")).unwrap();
    assert_eq!(read(&a), "one\n");
    assert_eq!(read(&b), "two\n");
    // Other lower dirs: a plain spare, mounted at create.
    let layer = f.root.path().join("layer");
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("etc/extra"), "x").unwrap();
    let c = common::unique("pm");
    let mut opts = f.opts(&c, f.spec(&["cat", "/etc/extra"]));
    opts.lower_dirs.insert(0, layer.clone());
    let st = f.rt.create(opts).unwrap();
    let line = rootfs_mount_line(&st.record.rootfs).expect("rootfs mounted");
    assert!(
        line.contains(&format!(
            "upperdir={}",
            f.rt.upper_dir(&c).unwrap().display()
        )),
        "{line}"
    );
    f.rt.start(&c).unwrap();
    assert_eq!(
        f.rt.wait(&c, Some(Duration::from_secs(10)))
            .unwrap()
            .exit_code,
        Some(0)
    );
    assert_eq!(f.logs(&c), "x");
    for id in [&a, &b, &c] {
        f.rt.delete(id, false).unwrap();
    }
    f.assert_clean();
    f.rt.shutdown();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&root_s), "mounts left after shutdown: {mi}");
    assert!(!spare_root.exists(), "spares left after shutdown");
}
