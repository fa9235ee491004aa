//! A linearizability checker for register histories (Wing & Gong's search with Lowe's cache,
//! as in Porcupine), partitioned by key (P-compositionality: a history is linearizable iff
//! each key's sub-history is).
//!
//! A client records every operation with `History::invoke` before sending it and `complete`
//! after: `Ok` with the value a read returned, `Fail` when it certainly had no effect (the op is
//! dropped), `Info` when the outcome is unknown (a timeout: a write may take effect at any
//! point after its invocation, or never; an unknown read constrains nothing and is dropped).
//! Timestamps come from one monotonic clock.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A register operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Write(String),
    Read,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Completed; for a read, the value it saw (`None`: the key did not exist).
    Ok(Option<String>),
    /// Certainly not applied.
    Fail,
    /// Unknown: may or may not have been applied.
    Info,
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: u64,
    pub key: String,
    pub op: RegisterOp,
    /// Nanoseconds since the history started.
    pub invoke: u64,
    /// `None` while in flight or when the outcome is unknown.
    pub complete: Option<u64>,
    pub outcome: Option<Outcome>,
}

/// A concurrent history being recorded.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Record the invocation; returns the handle for `complete`.
    pub fn invoke(&self, client: u64, key: &str, op: RegisterOp) -> usize {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        ops.push(Operation {
            client,
            key: key.to_owned(),
            op,
            invoke: self.now(),
            complete: None,
            outcome: None,
        });
        ops.len() - 1
    }

    pub fn complete(&self, id: usize, outcome: Outcome) {
        let now = self.now();
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let op = &mut ops[id];
        op.complete = (outcome != Outcome::Info).then_some(now);
        op.outcome = Some(outcome);
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Counts of a history, to tell a meaningful run from an idle one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub ok_writes: usize,
    pub ok_reads: usize,
    pub failed: usize,
    pub unknown: usize,
    pub keys: usize,
}

/// Why a history is not linearizable.
#[derive(Debug, thiserror::Error)]
#[error("history of key {key:?} is not linearizable ({ops} operations)")]
pub struct Violation {
    pub key: String,
    pub ops: usize,
    pub history: Vec<Operation>,
}

/// An operation as the search sees it.
#[derive(Debug, Clone)]
struct Item {
    op: RegisterOp,
    /// Value a completed read returned.
    seen: Option<String>,
    invoke: u64,
    /// `u64::MAX` for an unknown outcome.
    complete: u64,
    unknown: bool,
}

pub fn summarize(ops: &[Operation]) -> Summary {
    let mut s = Summary::default();
    let mut keys = HashSet::new();
    for o in ops {
        keys.insert(o.key.as_str());
        match (&o.op, &o.outcome) {
            (RegisterOp::Write(_), Some(Outcome::Ok(_))) => s.ok_writes += 1,
            (RegisterOp::Read, Some(Outcome::Ok(_))) => s.ok_reads += 1,
            (_, Some(Outcome::Fail)) => s.failed += 1,
            _ => s.unknown += 1,
        }
    }
    s.keys = keys.len();
    s
}

/// Check a history of registers that all start absent.
pub fn check(ops: &[Operation]) -> Result<Summary, Violation> {
    let mut by_key: BTreeMap<&str, Vec<Item>> = BTreeMap::new();
    for o in ops {
        let item = match (&o.op, &o.outcome) {
            (_, Some(Outcome::Fail)) => continue,
            // An unknown or unfinished read observed nothing.
            (RegisterOp::Read, None | Some(Outcome::Info)) => continue,
            (RegisterOp::Read, Some(Outcome::Ok(seen))) => Item {
                op: RegisterOp::Read,
                seen: seen.clone(),
                invoke: o.invoke,
                complete: o.complete.unwrap_or(u64::MAX),
                unknown: false,
            },
            (RegisterOp::Write(v), outcome) => {
                let unknown = !matches!(outcome, Some(Outcome::Ok(_)));
                Item {
                    op: RegisterOp::Write(v.clone()),
                    seen: None,
                    invoke: o.invoke,
                    complete: if unknown {
                        u64::MAX
                    } else {
                        o.complete.unwrap_or(u64::MAX)
                    },
                    unknown,
                }
            }
        };
        by_key.entry(o.key.as_str()).or_default().push(item);
    }
    for (key, items) in &by_key {
        if !check_register(items) {
            return Err(Violation {
                key: (*key).to_owned(),
                ops: items.len(),
                history: ops.iter().filter(|o| o.key == *key).cloned().collect(),
            });
        }
    }
    Ok(summarize(ops))
}

/// Event in the time-ordered list the search walks.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Wing–Gong–Lowe search over one register's history.
fn check_register(items: &[Item]) -> bool {
    let n = items.len();
    if n == 0 {
        return true;
    }
    // Events sorted by time; at equal times calls come first (the ops then overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, it) in items.iter().enumerate() {
        order.push((it.invoke, true, i));
        order.push((it.complete, false, i));
    }
    order.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    // Doubly linked list with a sentinel head at index 0.
    let mut ev = vec![Event {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: 1,
    }];
    let mut call_of = vec![0; n];
    let mut ret_of = vec![0; n];
    for (k, (_, is_call, i)) in order.iter().enumerate() {
        let idx = k + 1;
        ev.push(Event {
            op: *i,
            is_call: *is_call,
            prev: idx - 1,
            next: idx + 1,
        });
        if *is_call {
            call_of[*i] = idx;
        } else {
            ret_of[*i] = idx;
        }
    }
    let end = ev.len();
    let unlink = |ev: &mut Vec<Event>, idx: usize| {
        let (p, nx) = (ev[idx].prev, ev[idx].next);
        ev[p].next = nx;
        if nx < end {
            ev[nx].prev = p;
        }
    };
    let relink = |ev: &mut Vec<Event>, idx: usize| {
        let (p, nx) = (ev[idx].prev, ev[idx].next);
        ev[p].next = idx;
        if nx < end {
            ev[nx].prev = idx;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // (op, state before it)
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut cur = ev[0].next;
    while ev[0].next != end {
        if cur == end {
            // Only reachable past every return: cannot happen with a return per op.
            return false;
        }
        let e = ev[cur];
        if e.is_call {
            let it = &items[e.op];
            let next_state = match &it.op {
                RegisterOp::Write(v) => Some(Some(v.clone())),
                RegisterOp::Read => (it.seen == state).then(|| state.clone()),
            };
            if let Some(next_state) = next_state {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    stack.push((e.op, state));
                    state = next_state;
                    linearized = lin;
                    unlink(&mut ev, call_of[e.op]);
                    unlink(&mut ev, ret_of[e.op]);
                    cur = ev[0].next;
                    continue;
                }
            }
            cur = e.next;
        } else {
            // A return before its op was linearized. Unknown ops return at the end of time:
            // reaching one means every known op is linearized, and the unknown ones may
            // simply never have taken effect.
            if items[e.op].unknown {
                return true;
            }
            let Some((op, prev_state)) = stack.pop() else {
                return false;
            };
            state = prev_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut ev, ret_of[op]);
            relink(&mut ev, call_of[op]);
            cur = ev[call_of[op]].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build an operation by hand: times in arbitrary units.
    fn op(
        key: &str,
        o: RegisterOp,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> Operation {
        Operation {
            client: 0,
            key: key.into(),
            op: o,
            invoke,
            complete,
            outcome: Some(outcome),
        }
    }

    fn w(v: &str, a: u64, b: u64) -> Operation {
        op(
            "k",
            RegisterOp::Write(v.into()),
            a,
            Some(b),
            Outcome::Ok(None),
        )
    }

    fn r(v: Option<&str>, a: u64, b: u64) -> Operation {
        op(
            "k",
            RegisterOp::Read,
            a,
            Some(b),
            Outcome::Ok(v.map(str::to_owned)),
        )
    }

    #[test]
    fn sequential_history_passes() {
        let h = vec![
            r(None, 0, 1),
            w("1", 2, 3),
            r(Some("1"), 4, 5),
            w("2", 6, 7),
            r(Some("2"), 8, 9),
        ];
        let s = check(&h).expect("linearizable");
        assert_eq!((s.ok_writes, s.ok_reads), (2, 3));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [Some("1"), Some("2")] {
            let h = vec![w("1", 0, 1), w("2", 2, 10), r(seen, 3, 4)];
            check(&h).expect("linearizable");
        }
        // Two reads during one write: new then old is impossible.
        let h = vec![
            w("1", 0, 1),
            w("2", 2, 10),
            r(Some("2"), 3, 4),
            r(Some("1"), 5, 6),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_planted_stale_read_is_caught() {
        let h = vec![w("1", 0, 1), w("2", 2, 3), r(Some("1"), 4, 5)];
        let v = check(&h).expect_err("stale read must be caught");
        assert_eq!(v.key, "k");
    }

    #[test]
    fn reading_a_value_never_written_is_caught() {
        assert!(check(&[w("1", 0, 1), r(Some("9"), 2, 3)]).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_but_failed_ones_never_do() {
        let unknown = op("k", RegisterOp::Write("2".into()), 2, None, Outcome::Info);
        check(&[w("1", 0, 1), unknown.clone(), r(Some("1"), 5, 6)]).expect("never applied");
        check(&[w("1", 0, 1), unknown.clone(), r(Some("2"), 5, 6)]).expect("applied");
        // ...but not before it was invoked.
        let late = op("k", RegisterOp::Write("2".into()), 3, None, Outcome::Info);
        assert!(check(&[w("1", 0, 1), r(Some("2"), 1, 2), late]).is_err());
        let failed = op(
            "k",
            RegisterOp::Write("2".into()),
            2,
            Some(3),
            Outcome::Fail,
        );
        assert!(check(&[w("1", 0, 1), failed, r(Some("2"), 5, 6)]).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![w("1", 0, 1), r(Some("1"), 2, 3)];
        h.push(op(
            "other",
            RegisterOp::Write("x".into()),
            0,
            Some(1),
            Outcome::Ok(None),
        ));
        h.push(op(
            "other",
            RegisterOp::Read,
            2,
            Some(3),
            Outcome::Ok(Some("1".into())),
        ));
        let v = check(&h).expect_err("the value of k leaked into other");
        assert_eq!(v.key, "other");
    }

    #[test]
    fn recorder_orders_by_one_clock() {
        let h = History::new();
        let a = h.invoke(1, "k", RegisterOp::Write("1".into()));
        h.complete(a, Outcome::Ok(None));
        let b = h.invoke(2, "k", RegisterOp::Read);
        h.complete(b, Outcome::Ok(Some("1".into())));
        let ops = h.operations();
        assert!(ops[0].complete.unwrap() <= ops[1].invoke);
        check(&ops).expect("linearizable");
    }
}
