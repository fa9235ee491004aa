//! Shared fixture for the live runtime tests: a runtime on a temporary root
//! with a unique cgroup parent, a busybox rootfs, and a guard that removes
//! every container, cgroup, mount and namespace file, then checks that
//! nothing is left, even when the test failed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use flotilla_runtime::cgroups::{Cgroup, CgroupLayout};
use flotilla_runtime::config::default_spec;
use flotilla_runtime::runtime::{CreateOptions, Runtime, RuntimeConfig};
use oci_spec::runtime::Spec;

/// Live tests need root and busybox. Outside CI they are skipped when those
/// are missing; under CI=true they fail.
pub fn live() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let bb = flotilla_runtime::rootfs::busybox_path();
    let why = if !root {
        Some("not root".to_string())
    } else if !bb.is_file() {
        Some(format!("no busybox at {}", bb.display()))
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but this live test cannot run: {w}")
        }
        Some(w) => {
            eprintln!("skipping live test: {w}");
            false
        }
    }
}

/// The busybox rootfs shared by every test process (a read-only lower dir for every
/// container), built once per busybox binary into a temporary directory and renamed into
/// place, so concurrent test processes never see a half-built one and no run leaves a copy of
/// its own behind.
pub fn rootfs() -> PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let busybox = flotilla_runtime::rootfs::busybox_path();
        let m = std::fs::metadata(&busybox).expect("busybox (deploy/install-deps.sh)");
        let d = std::env::temp_dir().join(format!(
            "flotilla-test-rootfs-{:x}-{:x}",
            m.len(),
            m.mtime()
        ));
        if d.join("bin/busybox").exists() {
            return d;
        }
        let tmp = tempfile::Builder::new()
            .prefix("flotilla-test-rootfs-build-")
            .tempdir()
            .expect("temporary directory");
        let built = tmp.path().join("rootfs");
        flotilla_runtime::rootfs::build_busybox_rootfs(&busybox, &built)
            .expect("building busybox rootfs");
        // Loses harmlessly to a concurrent process that renamed its copy first.
        let _ = std::fs::rename(&built, &d);
        assert!(d.join("bin/busybox").exists(), "{} not built", d.display());
        d
    })
    .clone()
}

pub struct Fixture {
    pub rt: Runtime,
    pub root: tempfile::TempDir,
    pub parent: String,
    pub layout: CgroupLayout,
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_layout(CgroupLayout::detect().expect("cgroup layout"))
    }

    pub fn with_layout(layout: CgroupLayout) -> Self {
        let root = tempfile::Builder::new()
            .prefix("flotilla-rt-")
            .tempdir()
            .expect("tempdir");
        let parent = unique("flotilla-test");
        let mut cfg = RuntimeConfig::new(
            root.path().join("state"),
            env!("CARGO_BIN_EXE_flotilla-shim"),
        );
        cfg.cgroup_parent = parent.clone();
        cfg.pool_size = 1;
        let rt = Runtime::with_layout(cfg, layout.clone()).expect("runtime");
        Fixture {
            rt,
            root,
            parent,
            layout,
        }
    }

    pub fn spec(&self, args: &[&str]) -> Spec {
        default_spec(args.iter().map(|s| s.to_string()).collect())
    }

    pub fn opts(&self, id: &str, spec: Spec) -> CreateOptions {
        CreateOptions {
            id: id.into(),
            lower_dirs: vec![rootfs()],
            spec,
            labels: Default::default(),
        }
    }

    /// Run a shell script to completion and return (exit status, logs).
    pub fn run_script(&self, id: &str, script: &str) -> (flotilla_runtime::shim::ExitInfo, String) {
        self.rt
            .run(self.opts(id, self.spec(&["sh", "-c", script])))
            .expect("run");
        let e = self
            .rt
            .wait(id, Some(Duration::from_secs(30)))
            .expect("wait");
        let logs = self.logs(id);
        (e, logs)
    }

    pub fn logs(&self, id: &str) -> String {
        let p = self.rt.log_path(id).expect("log path");
        match flotilla_runtime::logs::read_all(&p, None) {
            Ok(v) => String::from_utf8_lossy(&flotilla_runtime::logs::raw_content(&v)).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Cgroup directories under our parent in every hierarchy, except the
    /// shim cgroup and the pool's spare zygote cgroups.
    pub fn container_cgroups(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        for base in self.hierarchies() {
            let p = base.join(&self.parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() && n != "shims" && !n.starts_with("pool-") {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }

    fn hierarchies(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"]
            .iter()
            .filter_map(|c| self.layout.v1_mountpoint(c).map(Path::to_path_buf))
            .collect();
        if v.is_empty() {
            if let Some(p) = self.layout.v2_mountpoint() {
                v.push(p.to_path_buf());
            }
        }
        v.sort();
        v.dedup();
        v
    }

    /// What a failed or finished operation must not leave behind.
    pub fn assert_clean(&self) {
        let state = self.rt.config().root.join("containers");
        let left: Vec<_> = std::fs::read_dir(&state)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "container state left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_s = self.root.path().to_string_lossy().to_string();
        let m: Vec<&str> = mounts.lines().filter(|l| l.contains(&root_s)).collect();
        assert!(m.is_empty(), "mounts left: {m:?}");
        let ns: Vec<_> = std::fs::read_dir(&self.rt.config().netns_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(ns.is_empty(), "netns files left: {ns:?}");
        let cgs = self.container_cgroups();
        assert!(cgs.is_empty(), "cgroups left: {cgs:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                let _ = self.rt.delete(&c.record.id, true);
            }
        }
        self.rt.shutdown();
        // Remove what is left under our parent, bottom-up, then the parent.
        std::thread::sleep(Duration::from_millis(20));
        for base in self.hierarchies() {
            let p = base.join(&self.parent);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let rel = format!("{}/{}", self.parent, e.file_name().to_string_lossy());
                        let cg = Cgroup::new(self.layout.clone(), rel);
                        let _ = cg.kill_all(libc::SIGKILL);
                        let _ = cg.remove();
                    }
                }
            }
        }
        let _ = Cgroup::remove_parent_if_empty(&self.layout, Path::new(&self.parent));
    }
}
