//! The node network's persisted state: leases and published ports in one
//! JSON file, replaced atomically (temp file, fsync, rename, fsync of the
//! directory) under an exclusive `flock`, so two agents (or an agent and its
//! successor) never hand out the same address.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::ipam::Ipam;
use crate::ports::PortMapping;

/// Format version of `network.json`.
pub const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "network.json";
const LOCK_FILE: &str = "network.lock";

/// Everything the node network persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Address leases.
    pub ipam: Ipam,
    /// Published ports by container id.
    #[serde(default)]
    pub ports: BTreeMap<String, Vec<PortMapping>>,
}

impl NodeState {
    pub(crate) fn new(ipam: Ipam) -> Self {
        Self {
            version: STATE_VERSION,
            ipam,
            ports: BTreeMap::new(),
        }
    }
}

pub(crate) struct StateFile {
    dir: PathBuf,
}

struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        // SAFETY: flock on an fd we own; unlocking cannot break memory safety.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl StateFile {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> NetError + '_ {
        move |source| NetError::State {
            path: self.path(),
            op,
            source,
        }
    }

    fn lock(&self) -> Result<LockGuard, NetError> {
        fs::create_dir_all(&self.dir).map_err(self.io("creating the state directory"))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))
            .map_err(self.io("opening the lock file"))?;
        loop {
            // SAFETY: flock on an fd we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(LockGuard(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(self.io("locking")(e));
            }
        }
    }

    /// Reads the state without locking (a snapshot for queries).
    pub(crate) fn read(&self) -> Result<Option<NodeState>, NetError> {
        let path = self.path();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| NetError::CorruptState { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("reading")(e)),
        }
    }

    /// Loads (or creates with `init`), lets `f` change it and writes it back
    /// if it changed, all under the lock. `f`'s error leaves the file as it
    /// was.
    pub(crate) fn update<T>(
        &self,
        init: impl FnOnce() -> NodeState,
        check: impl FnOnce(&NodeState) -> Result<(), NetError>,
        f: impl FnOnce(&mut NodeState) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let _lock = self.lock()?;
        let before = self.read()?;
        let mut st = match &before {
            Some(s) => {
                check(s)?;
                s.clone()
            }
            None => init(),
        };
        let out = f(&mut st)?;
        if before.as_ref() != Some(&st) {
            self.write(&st)?;
        }
        Ok(out)
    }

    fn write(&self, st: &NodeState) -> Result<(), NetError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let data = serde_json::to_vec_pretty(st).map_err(|source| NetError::CorruptState {
            path: path.clone(),
            source,
        })?;
        let mut f = File::create(&tmp).map_err(self.io("creating the temporary file"))?;
        f.write_all(&data).map_err(self.io("writing"))?;
        f.sync_all().map_err(self.io("syncing"))?;
        fs::rename(&tmp, &path).map_err(self.io("renaming into place"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("syncing the directory"))?;
        Ok(())
    }

    /// Removes the state and lock files (teardown).
    pub(crate) fn remove(&self) -> Result<(), NetError> {
        for name in [STATE_FILE, LOCK_FILE] {
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("removing")(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::Ipv4Net;

    fn init() -> NodeState {
        let n: Ipv4Net = "198.19.5.0/24".parse().unwrap();
        NodeState::new(Ipam::new(n, n.first_host()).unwrap())
    }

    #[test]
    fn update_persists_and_errors_roll_back() {
        let d = tempfile::tempdir().unwrap();
        let sf = StateFile::new(d.path());
        assert!(sf.read().unwrap().is_none());
        let ip = sf
            .update(init, |_| Ok(()), |s| Ok(s.ipam.allocate("a")?.0))
            .unwrap();
        let st = sf.read().unwrap().unwrap();
        assert_eq!(st.ipam.get("a"), Some(ip));
        assert_eq!(st.version, STATE_VERSION);
        // An error inside f leaves the file untouched.
        let r: Result<(), _> = sf.update(
            init,
            |_| Ok(()),
            |s| {
                s.ipam.allocate("b")?;
                Err(NetError::NotAttached { id: "b".into() })
            },
        );
        assert!(r.is_err());
        assert!(sf.read().unwrap().unwrap().ipam.get("b").is_none());
        // no temp file left behind
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        sf.remove().unwrap();
        assert!(sf.read().unwrap().is_none());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let sf = StateFile::new(d.path());
        fs::write(sf.path(), b"{not json").unwrap();
        let e = sf.read().unwrap_err().to_string();
        assert!(e.contains("network.json") && e.contains("corrupt"), "{e}");
    }
}
