//! The network lock around a checkpoint, done by the runtime instead of
//! CRIU (`--network-lock skip`): one nf_tables batch over netlink, sent from
//! a thread that joined the container's network namespace.
//!
//! The table is the one CRIU's `--network-lock nftables` creates (criu/net.c,
//! `nftables_lock_network_internal`): input and output filter chains at
//! priority 0 with policy drop, accepting packets with CRIU's repair mark
//! (SOCCR_MARK, used by soccr for the packets it sends while restoring TCP
//! connections), plus loopback: CRIU runs inside the namespace and probes
//! TCP repair over 127.0.0.1 at startup (kerndat_tcp_repair; it hangs on a
//! dropped loopback), and only the container's own tasks, which are frozen
//! or dead, could talk over it. So while a container is checkpointed its
//! listening ports drop packets from outside instead of answering RST and an
//! established connection's peer retransmits. CRIU builds it through libnftables, which costs 10-20 ms
//! per lock or unlock (parsing, cache fill); the batch here costs well under
//! a millisecond.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Name of the lock table (family inet) in the container's network namespace.
pub const TABLE: &str = "flotilla-cr-lock";
/// CRIU's repair mark (soccr/soccr.h SOCCR_MARK).
const SOCCR_MARK: u32 = 0xC114;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

// Attribute numbers from linux/netfilter/nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIF: u32 = 4;
const NFT_META_OIF: u32 = 5;
/// The loopback device's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;

/// Builds netlink attributes (type, length, payload padded to 4 bytes).
struct Attrs(Vec<u8>);

impl Attrs {
    fn new() -> Self {
        Attrs(Vec::with_capacity(256))
    }
    fn raw(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.raw(ty, &v)
    }
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.raw(ty, &v.to_be_bytes())
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.raw(ty | NLA_F_NESTED, &inner.0)
    }
}

fn expr(a: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    a.nest(NFTA_LIST_ELEM, |e| {
        e.str(NFTA_EXPR_NAME, name);
        e.nest(NFTA_EXPR_DATA, data);
    });
}

/// A batch of nf_tables messages, each asking for an acknowledgement.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acked: Vec<u32>,
}

impl Batch {
    fn new() -> Self {
        let mut b = Batch {
            buf: Vec::with_capacity(1024),
            seq: 1,
            acked: vec![],
        };
        b.msg(NFNL_MSG_BATCH_BEGIN, 0, 0, &[], false);
        b
    }
    fn msg(&mut self, ty: u16, flags: u16, family: u8, attrs: &[u8], ack: bool) {
        let len = 16 + 4 + attrs.len();
        let mut flags = flags | libc::NLM_F_REQUEST as u16;
        if ack {
            flags |= libc::NLM_F_ACK as u16;
            self.acked.push(self.seq);
        }
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, res_id (the subsystem, for batch messages).
        self.buf.push(family);
        self.buf.push(0);
        let res_id = if family == 0 { NFNL_SUBSYS_NFTABLES } else { 0 };
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs);
        self.seq += 1;
    }
    fn nft(&mut self, cmd: u16, flags: u16, attrs: &Attrs) {
        self.msg(
            (NFNL_SUBSYS_NFTABLES << 8) | cmd,
            flags,
            NFPROTO_INET,
            &attrs.0,
            true,
        );
    }
    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.msg(NFNL_MSG_BATCH_END, 0, 0, &[], false);
        (self.buf, self.acked)
    }
}

fn lock_batch() -> Batch {
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut b = Batch::new();
    b.nft(
        NFT_MSG_NEWTABLE,
        create,
        Attrs::new().str(NFTA_TABLE_NAME, TABLE),
    );
    for (chain, hook) in [("input", NF_INET_LOCAL_IN), ("output", NF_INET_LOCAL_OUT)] {
        let mut c = Attrs::new();
        c.str(NFTA_CHAIN_TABLE, TABLE)
            .str(NFTA_CHAIN_NAME, chain)
            .nest(NFTA_CHAIN_HOOK, |h| {
                h.be32(NFTA_HOOK_HOOKNUM, hook).be32(NFTA_HOOK_PRIORITY, 0);
            })
            .be32(NFTA_CHAIN_POLICY, NF_DROP)
            .str(NFTA_CHAIN_TYPE, "filter");
        b.nft(NFT_MSG_NEWCHAIN, create, &c);
        // meta mark == SOCCR_MARK accept; meta iif/oif == lo accept
        let dev_key = if hook == NF_INET_LOCAL_IN {
            NFT_META_IIF
        } else {
            NFT_META_OIF
        };
        for (key, value) in [(NFT_META_MARK, SOCCR_MARK), (dev_key, LOOPBACK_IFINDEX)] {
            b.nft(
                NFT_MSG_NEWRULE,
                (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16,
                &accept_if_meta(chain, key, value),
            );
        }
    }
    b
}

/// A rule `meta <key> == value accept` (both values are host-order u32s).
fn accept_if_meta(chain: &str, key: u32, value: u32) -> Attrs {
    let mut r = Attrs::new();
    r.str(NFTA_RULE_TABLE, TABLE)
        .str(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS, |l| {
            expr(l, "meta", |d| {
                d.be32(NFTA_META_DREG, NFT_REG_1).be32(NFTA_META_KEY, key);
            });
            expr(l, "cmp", |d| {
                d.be32(NFTA_CMP_SREG, NFT_REG_1)
                    .be32(NFTA_CMP_OP, NFT_CMP_EQ)
                    .nest(NFTA_CMP_DATA, |v| {
                        v.raw(NFTA_DATA_VALUE, &value.to_ne_bytes());
                    });
            });
            expr(l, "immediate", |d| {
                d.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                    .nest(NFTA_IMMEDIATE_DATA, |v| {
                        v.nest(NFTA_DATA_VERDICT, |vd| {
                            vd.be32(NFTA_VERDICT_CODE, NF_ACCEPT);
                        });
                    });
            });
        });
    r
}

fn delete_batch() -> Batch {
    let mut b = Batch::new();
    b.nft(
        NFT_MSG_DELTABLE,
        0,
        Attrs::new().str(NFTA_TABLE_NAME, TABLE),
    );
    b
}

/// A netlink netfilter socket in the network namespace at `netns` (a socket
/// keeps the namespace it was created in; the thread that joined it ends).
fn socket_in(netns: &Path) -> io::Result<OwnedFd> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: setns on this short-lived thread only; the fd is valid.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the result is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    NETLINK_NETFILTER,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just created and is owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// Send a batch and collect the kernel's answers: the first error, if any.
/// The kernel handles a batch synchronously inside sendmsg, so every answer
/// is queued when send returns.
fn run(netns: &Path, b: Batch) -> io::Result<()> {
    run_keeping(netns, b).map(drop)
}

/// `run`, handing back the netlink socket instead of closing it.
fn run_keeping(netns: &Path, b: Batch) -> io::Result<OwnedFd> {
    let sock = socket_in(netns)?;
    let (buf, acked) = b.finish();
    // SAFETY: sockaddr_nl zeroed = the kernel (pid 0).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: buf and addr are valid for the given lengths.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pending = acked;
    let mut rbuf = vec![0u8; 16384];
    while !pending.is_empty() {
        // SAFETY: rbuf is valid for its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                rbuf.as_mut_ptr().cast(),
                rbuf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::other(format!(
                    "nf_tables: no answer for {} of the batch's messages",
                    pending.len()
                )));
            }
            return Err(e);
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(rbuf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(rbuf[off + 4..off + 6].try_into().expect("2"));
            let seq = u32::from_ne_bytes(rbuf[off + 8..off + 12].try_into().expect("4"));
            if len < 16 || off + len > n {
                break;
            }
            if ty == libc::NLMSG_ERROR as u16 && len >= 20 {
                let err = i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().expect("4"));
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(-err));
                }
                pending.retain(|s| *s != seq);
            }
            off += (len + 3) & !3;
        }
    }
    Ok(sock)
}

/// Lock the network namespace at `netns`. Returns false when it was
/// already locked (the table exists: a checkpoint left it).
pub fn lock(netns: &Path) -> io::Result<bool> {
    match run(netns, lock_batch()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lift the lock (delete the table) without waiting for the kernel's
/// clean-up; returns false when there was none. The deletion itself is done
/// when the kernel acknowledges the batch (~0.2 ms); what takes 8-18 ms is
/// closing the netlink socket right after it, which waits for nf_tables'
/// deferred destruction of the table (an RCU grace period; `strace -T` of
/// `nft delete table` shows the time in `close`). So the socket is kept
/// open for the rest of this process's life: the restoring shim, which
/// closes it when it exits, long after that work is done.
pub fn unlock_keeping_socket(netns: &Path) -> io::Result<bool> {
    static KEPT: std::sync::Mutex<Vec<OwnedFd>> = std::sync::Mutex::new(Vec::new());
    let Some(sock) = delete_table(netns)? else {
        return Ok(false);
    };
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(sock);
    Ok(true)
}

/// Lift the lock (delete the table); returns false when there was none.
/// Closing the socket waits for the table's destruction (see
/// `unlock_keeping_socket`), so this returns when it is all gone.
pub fn unlock(netns: &Path) -> io::Result<bool> {
    Ok(delete_table(netns)?.is_some())
}

/// Delete the lock's table; the socket that did it, or `None` when there was no table.
fn delete_table(netns: &Path) -> io::Result<Option<OwnedFd>> {
    match run_keeping(netns, delete_batch()) {
        Ok(sock) => Ok(Some(sock)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the namespace is locked: the table exists with a dropping
/// input policy. For tests and diagnostics (runs `nft`).
pub fn is_locked(netns: &Path) -> io::Result<bool> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "list", "chain", "inet", TABLE, "input"])
        .output()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("policy drop"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_framed_and_acks_every_nft_message() {
        let (buf, acked) = lock_batch().finish();
        // begin, table, 2 x (chain, mark rule, loopback rule), end
        let mut off = 0;
        let mut types = vec![];
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay 4-byte aligned");
            types.push(u16::from_ne_bytes(
                buf[off + 4..off + 6].try_into().unwrap(),
            ));
            off += len;
        }
        assert_eq!(off, buf.len());
        let t = |c: u16| (NFNL_SUBSYS_NFTABLES << 8) | c;
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                t(NFT_MSG_NEWRULE),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                t(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(acked, vec![2, 3, 4, 5, 6, 7, 8]);
    }
}
