//! Live checkpoint/restore tests with the real CRIU (>= 4.2, installed by
//! deploy/install-deps.sh): counters keep counting, an established TCP
//! connection from outside survives, 256 MiB of memory comes back intact,
//! and a failed restore leaves the container as it was.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{live, Fixture};
use flotilla_runtime::runtime::{AfterCheckpoint, CheckpointOptions, RestoreOptions, Status};

fn criu_ready() -> bool {
    if !live() {
        return false;
    }
    let criu = flotilla_runtime::criu::default_criu_path();
    match flotilla_runtime::criu::info(&criu) {
        Ok(i) if i.version.as_str() >= "4.2" => true,
        other => {
            let msg = format!("CRIU >= 4.2 needed at {}: {other:?}", criu.display());
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            false
        }
    }
}

fn wait_for(f: &Fixture, id: &str, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let l = f.logs(id);
        if l.contains(needle) || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn numbers(logs: &str) -> Vec<u64> {
    logs.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn live_criu_reports_version_and_features() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let i = f.rt.criu_info().unwrap();
    assert!(i.version.as_str() >= "4.2", "{i:?}");
    assert!(i.uffd, "{i:?}");
    // This kernel has no soft-dirty tracking; pre-copy must be reported off.
    eprintln!("{i:?}");
}

#[test]
fn live_criu_counter_keeps_counting_after_restore_in_a_recreated_netns() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("count");
    let spec = f.spec(&[
        "sh",
        "-c",
        "echo changed > /marker; i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done",
    ]);
    let st = f.rt.run(f.opts(&id, spec)).unwrap();
    let netns = st.record.netns_path.clone().unwrap();
    wait_for(&f, &id, "\n10\n", 10);
    let images = f.root.path().join("ckpt1");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    let stopped = f.rt.state(&id).unwrap();
    assert_eq!(stopped.status, Status::Stopped);
    assert_eq!(stopped.record.checkpoint.as_deref(), Some(images.as_path()));
    let before = numbers(&f.logs(&id));
    let last = *before.last().unwrap();
    // The namespace is re-created by path: restore joins the new one.
    assert_eq!(f.rt.recreate_netns(&id).unwrap(), netns);
    std::thread::sleep(Duration::from_millis(300));
    let restored =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: images,
                tcp_established: false,
            },
        )
        .unwrap();
    assert_eq!(restored.status, Status::Running);
    assert_eq!(restored.record.netns_path.as_deref(), Some(netns.as_path()));
    let after_logs = wait_for(&f, &id, &format!("\n{}\n", last + 5), 10);
    let all = numbers(&after_logs);
    let after: Vec<u64> = all[before.len()..].to_vec();
    assert!(!after.is_empty(), "nothing printed after restore");
    assert_eq!(
        after[0],
        last + 1,
        "the counter restarted instead of continuing: {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1));
    // The rootfs change made before the checkpoint is still there.
    let out =
        f.rt.exec_command(
            &id,
            &flotilla_runtime::runtime::ExecOptions {
                args: vec!["cat".into(), "/marker".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "changed\n");
    // It can be stopped and deleted like any container.
    f.rt.stop(&id, Duration::from_millis(100)).unwrap();
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

struct NetGuard {
    name: String,
}

impl Drop for NetGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Run `f` on a thread that joined the network namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn live_criu_established_tcp_connection_survives() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("tcp");
    let spec = f.spec(&["sh", "-c", "echo listening; nc -l -p 7000 -e cat"]);
    let st = f.rt.run(f.opts(&id, spec)).unwrap();
    let ctr_ns = st.record.netns_path.clone().unwrap();
    // A client host joined to the container by a veth pair, all in 198.18.0.0/15.
    let client = NetGuard {
        name: format!("flt-tcp-{}", std::process::id()),
    };
    sh(&format!("ip netns add {}", client.name));
    sh(&format!(
        "nsenter --net={} ip link add eth0 type veth peer name cli0 netns {}",
        ctr_ns.display(),
        client.name
    ));
    sh(&format!(
        "nsenter --net={ns} ip addr add 198.18.200.2/24 dev eth0 && nsenter --net={ns} ip link set eth0 up",
        ns = ctr_ns.display()
    ));
    sh(&format!(
        "ip -n {c} addr add 198.18.200.1/24 dev cli0 && ip -n {c} link set cli0 up && ip -n {c} link set lo up",
        c = client.name
    ));
    wait_for(&f, &id, "listening", 10);
    let client_ns = PathBuf::from(format!("/run/netns/{}", client.name));
    let stream = in_netns(client_ns.clone(), || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect("198.18.200.2:7000") {
                Ok(s) => return s,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    w.write_all(b"before\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");

    let images = f.root.path().join("ckpt-tcp");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: true,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Stopped);
    // While checkpointed the namespace is locked: a new connection to the
    // listening port is dropped (the client times out), not refused by RST.
    assert!(
        flotilla_runtime::netlock::is_locked(&ctr_ns).unwrap(),
        "no network lock while checkpointed"
    );
    let probe = in_netns(client_ns.clone(), || {
        std::net::TcpStream::connect_timeout(
            &"198.18.200.2:7000".parse().unwrap(),
            Duration::from_millis(500),
        )
    });
    match probe {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("a locked port must drop, not answer: {other:?}"),
    }
    // Restoring a TCP checkpoint without asking for it is refused.
    let e =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: images.clone(),
                tcp_established: false,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp_established"), "{e}");
    f.rt.restore(
        &id,
        &RestoreOptions {
            images_dir: images,
            tcp_established: true,
        },
    )
    .unwrap();
    assert!(
        !flotilla_runtime::netlock::is_locked(&ctr_ns).unwrap(),
        "the network lock outlived the restore"
    );
    line.clear();
    w.write_all(b"after\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n", "the connection did not survive");
    drop(w);
    drop(r);
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

fn nft_tables(netns: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_memcheck(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/memcheck.c");
    let layer = dir.join("memcheck-layer");
    std::fs::create_dir_all(&layer).unwrap();
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(layer.join("memcheck"))
        .arg(&src)
        .status()
        .expect("gcc (deploy/install-deps.sh installs it)");
    assert!(st.success(), "compiling memcheck.c");
    layer
}

#[test]
fn live_criu_256mib_of_memory_is_intact_after_restore() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let layer = build_memcheck(f.root.path());
    let id = common::unique("mem");
    let mut o = f.opts(&id, f.spec(&["/memcheck", "256"]));
    o.lower_dirs.insert(0, layer);
    f.rt.run(o).unwrap();
    let logs = wait_for(&f, &id, "ready", 60);
    let ready = logs
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .unwrap_or_else(|| panic!("no checksum: {logs}"))
        .to_string();
    let rss = f.rt.stats(&id).unwrap().memory_bytes;
    assert!(rss >= 256 << 20, "only {rss} bytes resident");
    let images = f.root.path().join("ckpt-mem");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    f.rt.restore(
        &id,
        &RestoreOptions {
            images_dir: images,
            tcp_established: false,
        },
    )
    .unwrap();
    f.rt.kill(&id, libc::SIGUSR1).unwrap();
    let logs = wait_for(&f, &id, "check ", 60);
    let check = logs
        .lines()
        .find_map(|l| l.strip_prefix("check "))
        .unwrap_or("none");
    assert_eq!(check, ready, "memory changed across checkpoint/restore");
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

#[test]
fn live_criu_failed_restore_leaves_the_container_stopped_and_nothing_behind() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("bad");
    f.rt.run(f.opts(&id, f.spec(&["sh", "-c", "while :; do sleep 1; done"])))
        .unwrap();
    let images = f.root.path().join("ckpt-bad");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    // Corrupt the checkpoint: drop the memory pages.
    for e in std::fs::read_dir(&images).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("pages-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let e =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: images.clone(),
                tcp_established: false,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("criu restore failed") && e.contains("Error"),
        "{e}"
    );
    let st = f.rt.state(&id).unwrap();
    assert_eq!(st.status, Status::Stopped, "{e}");
    assert!(st.exit.is_some(), "the exit record was lost");
    // No CRIU network lock is left in the container's namespace.
    let ns = st.record.netns_path.clone().unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !tables.contains("CRIU") && !tables.contains(flotilla_runtime::netlock::TABLE),
        "lock left behind: {tables}"
    );
    // A missing image directory is a clear error too.
    let e =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: f.root.path().join("nope"),
                tcp_established: false,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("flotilla-checkpoint.json"), "{e}");
    f.rt.delete(&id, false).unwrap();
    f.assert_clean();
}

#[test]
fn live_criu_checkpoint_can_leave_the_container_stopped_then_resume_it() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("pause");
    f.rt.run(f.opts(
        &id,
        f.spec(&[
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done",
        ]),
    ))
    .unwrap();
    wait_for(&f, &id, "\n5\n", 10);
    let images = f.root.path().join("ckpt-stop");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Stop,
        },
    )
    .unwrap();
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Paused);
    let n0 = numbers(&f.logs(&id)).len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        numbers(&f.logs(&id)).len(),
        n0,
        "a paused container kept running"
    );
    assert!(
        std::fs::read_dir(&images).unwrap().count() > 3,
        "no images written"
    );
    f.rt.resume(&id).unwrap();
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Running);
    let last = numbers(&f.logs(&id)).last().copied().unwrap();
    let logs = wait_for(&f, &id, &format!("\n{}\n", last + 3), 10);
    assert!(numbers(&logs).len() > n0, "did not resume");
    // Leave-running keeps it going through the dump.
    let images2 = f.root.path().join("ckpt-run");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images2,
            tcp_established: false,
            after: AfterCheckpoint::Run,
        },
    )
    .unwrap();
    assert_eq!(f.rt.state(&id).unwrap().status, Status::Running);
    let n1 = numbers(&f.logs(&id)).len();
    wait_for(&f, &id, &format!("\n{}\n", n1 + 3), 10);
    assert!(numbers(&f.logs(&id)).len() > n1);
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

/// The mounts on and below `/dev` and the binds of `/dev/null` (mountinfo
/// lines without ids and device numbers), and every entry of `/dev` and
/// `/dev/shm` (name, type and mode, owner, device number, link target).
fn dev_shape(pid: i32) -> (Vec<String>, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut mounts = vec![];
    for line in mi.lines() {
        let (pre, post) = line.split_once(" - ").unwrap();
        let f: Vec<&str> = pre.split(' ').collect();
        let (root, mp, opts) = (f[3], f[4], f[5]);
        if mp.starts_with("/dev") || root == "/null" {
            let post: Vec<&str> = post.split(' ').collect();
            // fstype and super options; the source ("tmpfs", "devpts") stays out.
            mounts.push(format!("{root} {mp} {opts} {} {}", post[0], post[2]));
        }
    }
    mounts.sort();
    let mut entries = vec![];
    for d in ["dev", "dev/shm"] {
        for e in std::fs::read_dir(format!("/proc/{pid}/root/{d}")).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let link = std::fs::read_link(e.path()).ok();
            entries.push(format!(
                "{d}/{} {:o} {}:{} {} {:?}",
                e.file_name().to_string_lossy(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.rdev(),
                link
            ));
        }
    }
    entries.sort();
    (mounts, entries)
}

/// (mountpoint, fstype, read-only) of the masked directories, `/sys/fs/cgroup`
/// and the mounts below it, as the container's init sees them.
fn mount_shape(pid: i32, masked: &[PathBuf]) -> Vec<(String, String, bool)> {
    let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut out = vec![];
    for line in mi.lines() {
        let (pre, post) = line.split_once(" - ").unwrap();
        let f: Vec<&str> = pre.split(' ').collect();
        let (root, mp, opts) = (f[3], f[4], f[5]);
        let fstype = post.split(' ').next().unwrap();
        // Masked directories (whole tmpfs), not the /dev/null binds over masked files.
        let masked_dir = root == "/" && masked.iter().any(|m| Path::new(mp) == m);
        if masked_dir || mp.starts_with("/sys/fs/cgroup") {
            let ro = opts.split(',').any(|o| o == "ro");
            out.push((mp.to_string(), fstype.to_string(), ro));
        }
    }
    out.sort();
    out
}

#[test]
fn live_criu_restore_recreates_masked_dirs_and_cgroup_tmpfs_without_archiving_them() {
    if !criu_ready() {
        return;
    }
    let f = Fixture::new();
    let id = common::unique("shape");
    // A file with data in /dev/shm goes to the runtime's tar archive; /dev
    // itself (nodes, links, mountpoints) to the checkpoint's manifest.
    let spec = f.spec(&[
        "sh",
        "-c",
        "echo kept > /dev/shm/data; ln -s data /dev/shm/link; while :; do sleep 1; done",
    ]);
    let st = f.rt.run(f.opts(&id, spec)).unwrap();
    let masked = st.record.config.masked_paths.clone();
    let shm = format!("/proc/{}/root/dev/shm/data", st.record.init_pid);
    let link = format!("/proc/{}/root/dev/shm/link", st.record.init_pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The link is made after the data: both are there once it is.
    while std::fs::symlink_metadata(&link).is_err()
        || std::fs::read_to_string(&shm).ok().as_deref() != Some("kept\n")
    {
        assert!(
            Instant::now() < deadline,
            "the container did not write {shm}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = mount_shape(st.record.init_pid, &masked);
    let dev_before = dev_shape(st.record.init_pid);
    assert!(
        dev_before.0.iter().any(|l| l.contains(" /dev ")),
        "{dev_before:?}"
    );
    // Every masked directory that exists is an empty read-only tmpfs.
    let masked_dirs: Vec<_> = before
        .iter()
        .filter(|(mp, _, _)| !mp.starts_with("/sys/fs/cgroup"))
        .collect();
    assert!(!masked_dirs.is_empty(), "no masked directory: {before:?}");
    assert!(
        masked_dirs.iter().all(|(_, t, ro)| t == "tmpfs" && *ro),
        "{before:?}"
    );
    let images = f.root.path().join("ckpt-shape");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    // CRIU archives no tmpfs (the shared masked tmpfs and the v1 cgroup
    // tmpfs are recreated by the runtime; /dev and /dev/shm are recorded by
    // it): /dev/shm, which holds data, is the runtime's tar archive.
    let mut archives: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmpfs-dev-") || n.ends_with(".tar"))
        .collect();
    archives.sort();
    assert_eq!(archives, vec!["flotilla-shm.tar".to_string()]);
    let st =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: images,
                tcp_established: false,
            },
        )
        .unwrap();
    let after = mount_shape(st.record.init_pid, &masked);
    assert_eq!(before, after, "mounts changed across checkpoint/restore");
    assert_eq!(
        dev_before,
        dev_shape(st.record.init_pid),
        "/dev changed across checkpoint/restore"
    );
    let shm = format!("/proc/{}/root/dev/shm/data", st.record.init_pid);
    assert_eq!(std::fs::read_to_string(&shm).unwrap(), "kept\n");
    // The restored masked directories are still empty.
    for (mp, _, _) in masked_dirs {
        let p = format!("/proc/{}/root{mp}", st.record.init_pid);
        assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0, "{p} not empty");
    }
    // A second cycle: the restored /dev and /dev/shm are now the runtime's
    // own mounts under criu-ext/, which the next restore replaces.
    std::fs::write(&shm, "again\n").unwrap();
    let images2 = f.root.path().join("ckpt-shape-2");
    f.rt.checkpoint(
        &id,
        &CheckpointOptions {
            images_dir: images2.clone(),
            tcp_established: false,
            after: AfterCheckpoint::Kill,
        },
    )
    .unwrap();
    let st =
        f.rt.restore(
            &id,
            &RestoreOptions {
                images_dir: images2,
                tcp_established: false,
            },
        )
        .unwrap();
    let shm = format!("/proc/{}/root/dev/shm/data", st.record.init_pid);
    assert_eq!(std::fs::read_to_string(&shm).unwrap(), "again\n");
    assert_eq!(before, mount_shape(st.record.init_pid, &masked));
    let (mounts, _) = dev_shape(st.record.init_pid);
    assert_eq!(
        dev_before.0, mounts,
        "/dev mounts changed in the second cycle"
    );
    f.rt.delete(&id, true).unwrap();
    f.assert_clean();
}

#[test]
fn live_criu_netlock_locks_and_unlocks_a_namespace() {
    if !live() {
        return;
    }
    let ns = NetGuard {
        name: format!("flt-lock-{}", std::process::id()),
    };
    sh(&format!("ip netns add {}", ns.name));
    let path = PathBuf::from(format!("/run/netns/{}", ns.name));
    let t = Instant::now();
    assert!(
        flotilla_runtime::netlock::lock(&path).unwrap(),
        "a fresh namespace"
    );
    let lock_ms = t.elapsed().as_secs_f64() * 1e3;
    // The table nft sees is CRIU's lock plus loopback.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args([
            "nft",
            "list",
            "table",
            "inet",
            flotilla_runtime::netlock::TABLE,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "hook input priority filter; policy drop;",
        "hook output priority filter; policy drop;",
        "meta mark 0x0000c114 accept",
        "iif \"lo\" accept",
        "oif \"lo\" accept",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    use flotilla_runtime::netlock;
    assert!(netlock::is_locked(&path).unwrap());
    assert!(!netlock::lock(&path).unwrap(), "already locked");
    let t = Instant::now();
    assert!(netlock::unlock(&path).unwrap());
    let unlock_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(!netlock::is_locked(&path).unwrap());
    assert!(!netlock::unlock(&path).unwrap(), "already gone");
    assert!(!nft_tables(&path).contains(netlock::TABLE));
    eprintln!("netlock: lock {lock_ms:.2} ms, unlock {unlock_ms:.2} ms");
    // A namespace path that is not one is a clear error.
    assert!(flotilla_runtime::netlock::lock(Path::new("/nonexistent/ns")).is_err());
}
