//! Placement: feasibility first, then scoring, over an index of candidate nodes.
//!
//! # Decision rule
//!
//! A node is *eligible* for a workload when it is ready, schedulable, not being drained, matches
//! every constraint and its capacity covers one replica; it is *feasible* when, in addition, its
//! free room (after what the same plan already put there) covers one replica and, under hard
//! anti-affinity, it runs no replica of the workload yet. Each replica goes to the feasible node
//! with the greatest key, compared in this order:
//!
//! 1. with a spread key: the fewest replicas of the workload in the node's label value;
//! 2. under `Spread` or soft anti-affinity: the fewest replicas of the workload on the node (soft
//!    anti-affinity is thus a penalty larger than any difference of fit);
//! 3. the fit after placement, in millionths: `Binpack` rewards used fractions
//!    `u_cpu + u_mem - |u_cpu - u_mem| / 2`, `Spread` rewards free fractions
//!    `f_cpu + f_mem - |u_cpu - u_mem| / 2` (both penalise an unbalanced node);
//! 4. the smallest node id (then the earliest position in the input).
//!
//! Scores use only `+ - * /` on `f64` (a fraction is `used × (1 / capacity)`), which IEEE 754
//! rounds the same way everywhere, then are truncated to integers: the same input gives the
//! same plan on every machine.
//!
//! # Complexity
//!
//! Placing `k` replicas on `n` nodes costs one `O(n·(c + log k))` pass (`c` constraints) that
//! keeps the best `k` feasible nodes (only those can be chosen: a node keeps its key until it
//! is chosen), then `O(log k)` per replica: only the chosen node's key changes after a
//! placement, so it is popped and pushed back. With a spread key, each label value keeps its
//! own best `k` in a heap, and a heap of values is keyed by (replicas in the value, best node
//! key); only the chosen value's entry changes, so a replica costs `O(log k + log v)`.
//! Finding the reason for unplaced replicas costs one more `O(n·c)` pass, once per plan
//! (nothing changes after the first failure).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::index::{NodeIndex, Test, ABSENT};
use crate::reason::Reason;
use crate::types::{
    AntiAffinity, NodeView, Placement, PlanResult, ReplicaIndex, Resources, Strategy, Unplaced,
    WorkloadView,
};

/// Places `count` new replicas of `workload`, numbered with the lowest indices that `existing`
/// does not use (see [`free_replica_indices`]).
///
/// `existing` are the workload's replicas already placed; they count for anti-affinity and
/// spreading, and their resources must already be in the nodes' `allocated`. Placements on
/// nodes absent from `nodes` are ignored. To plan several workloads against the same nodes,
/// use a [`NodeIndex`]: it does the per-node preparation once.
pub fn place(
    nodes: &[NodeView],
    workload: &WorkloadView,
    existing: &[Placement],
    count: usize,
) -> PlanResult {
    NodeIndex::new(nodes).place(workload, existing, count)
}

/// Places the given replicas of `workload` (in this order), as [`place`] does.
pub fn place_replicas(
    nodes: &[NodeView],
    workload: &WorkloadView,
    existing: &[Placement],
    replicas: &[ReplicaIndex],
) -> PlanResult {
    NodeIndex::new(nodes).place_replicas(workload, existing, replicas)
}

/// The `count` lowest replica indices not used in `existing`, ascending.
pub fn free_replica_indices(existing: &[Placement], count: usize) -> Vec<ReplicaIndex> {
    let mut used: Vec<ReplicaIndex> = existing.iter().map(|p| p.replica).collect();
    used.sort_unstable();
    used.dedup();
    let mut free = Vec::with_capacity(count);
    let mut used = used.into_iter().peekable();
    let mut candidate: ReplicaIndex = 0;
    while free.len() < count {
        match used.peek() {
            Some(&u) if u < candidate => {
                used.next();
            }
            Some(&u) if u == candidate => {
                used.next();
                match candidate.checked_add(1) {
                    Some(c) => candidate = c,
                    None => break,
                }
            }
            _ => {
                free.push(candidate);
                match candidate.checked_add(1) {
                    Some(c) => candidate = c,
                    None => break,
                }
            }
        }
    }
    free
}

/// The planning loop over a prepared workload.
pub(crate) fn place_in(mut work: Working<'_, '_>, replicas: &[ReplicaIndex]) -> PlanResult {
    let n = work.index.len();
    // Only the best `k` candidates of each group can ever be chosen for `k` replicas: a node
    // not chosen yet keeps its key, so each first choice of a node takes the best one left.
    // Keep them in a min-heap of size `k` while scanning, then rank them in a max-heap.
    let k = replicas.len();
    let mut pools: Vec<BinaryHeap<Reverse<NodeKey>>> = vec![BinaryHeap::new(); work.domains()];
    for i in 0..n {
        if !(work.eligible(i) && work.feasible(i)) {
            continue;
        }
        let key = work.key(i);
        let pool = &mut pools[work.domain(i)];
        if pool.len() < k {
            pool.push(Reverse(key));
        } else if let Some(mut worst) = pool.peek_mut() {
            if key > worst.0 {
                *worst = Reverse(key);
            }
        }
    }
    let mut heaps: Vec<BinaryHeap<NodeKey>> = pools
        .into_iter()
        .map(|pool| pool.into_iter().map(|Reverse(key)| key).collect())
        .collect();
    let mut top: BinaryHeap<DomainKey> = heaps
        .iter()
        .enumerate()
        .filter_map(|(d, heap)| heap.peek().map(|best| work.domain_key(d, *best)))
        .collect();

    let mut result = PlanResult {
        placements: Vec::with_capacity(replicas.len()),
        unplaced: Vec::new(),
    };
    let mut reason: Option<Reason> = None;
    for &replica in replicas {
        // Every domain in `top` has a candidate; the loop only guards that invariant.
        let chosen = loop {
            match top.pop() {
                None => break None,
                Some(entry) => {
                    let d = entry.domain.0;
                    if let Some(key) = heaps[d].pop() {
                        break Some((d, key.idx.0));
                    }
                }
            }
        };
        let Some((d, i)) = chosen else {
            let reason = reason.get_or_insert_with(|| work.reason()).clone();
            result.unplaced.push(Unplaced { replica, reason });
            continue;
        };
        work.commit(i);
        result.placements.push(Placement {
            replica,
            node_id: work.index.nodes[i].id.clone(),
        });
        if work.feasible(i) {
            heaps[d].push(work.key(i));
        }
        if let Some(best) = heaps[d].peek() {
            top.push(work.domain_key(d, *best));
        }
    }
    result
}

/// A candidate node's rank; the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeKey<'n> {
    /// Replicas of the workload already on the node, when stacking is penalised.
    stack: Reverse<u32>,
    fit: u64,
    /// Orders as the id does unless equal, without reading the string.
    id_head: Reverse<u128>,
    id: Reverse<&'n str>,
    pub(crate) idx: Reverse<usize>,
}

/// A label value's rank (spread key); the greatest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DomainKey<'n> {
    count: Reverse<u64>,
    best: NodeKey<'n>,
    domain: Reverse<usize>,
}

/// One workload's plan in progress: the index (whose allocations it updates), the static
/// eligibility of each node, and the workload's replicas per node and per spread-key value.
pub(crate) struct Working<'i, 'n> {
    pub(crate) index: &'i mut NodeIndex<'n>,
    workload: &'i WorkloadView,
    /// The workload's constraints against their columns, in order.
    tests: Vec<Test>,
    /// Usable, matching every constraint, and large enough.
    eligible: Vec<bool>,
    /// Replicas of the workload per node (existing and planned).
    counts: Vec<u32>,
    /// The spread-key group of each node; empty without a spread key (one group).
    domain_of: Vec<u32>,
    /// Replicas of the workload per group.
    domain_counts: Vec<u64>,
    /// Fewer replicas on a node rank first (spread, soft anti-affinity).
    stacking: bool,
    hard: bool,
}

impl<'i, 'n> Working<'i, 'n> {
    pub(crate) fn new(
        index: &'i mut NodeIndex<'n>,
        workload: &'i WorkloadView,
        existing: &[Placement],
    ) -> Self {
        let n = index.len();
        let req = workload.resources;
        let tests: Vec<Test> = workload
            .constraints
            .iter()
            .map(|c| index.compile(c))
            .collect();
        let mut eligible: Vec<bool> = index
            .usable
            .iter()
            .zip(&index.capacity)
            .map(|(&usable, &capacity)| usable && req.fits_in(capacity))
            .collect();
        for (selector, test) in workload.constraints.iter().zip(&tests) {
            let column = index.column(&selector.key);
            for (e, &id) in eligible.iter_mut().zip(&column.ids) {
                *e = *e && test.matches(id);
            }
        }

        let mut counts = vec![0u32; n];
        if !existing.is_empty() {
            let positions = index.positions();
            for p in existing {
                if let Some(&i) = positions.get(p.node_id.as_str()) {
                    counts[i] += 1;
                }
            }
        }

        let (domain_of, domain_counts) = match &workload.spread_key {
            None => (Vec::new(), vec![counts.iter().map(|&c| u64::from(c)).sum()]),
            Some(key) => {
                let column = index.column(key);
                // Nodes without the label form the last group.
                let absent = column.value_count() as u32;
                let domain_of: Vec<u32> = column
                    .ids
                    .iter()
                    .map(|&id| if id == ABSENT { absent } else { id })
                    .collect();
                let mut domain_counts = vec![0u64; absent as usize + 1];
                for (&d, &c) in domain_of.iter().zip(&counts) {
                    domain_counts[d as usize] += u64::from(c);
                }
                (domain_of, domain_counts)
            }
        };
        Self {
            index,
            workload,
            tests,
            eligible,
            counts,
            domain_of,
            domain_counts,
            stacking: workload.strategy == Strategy::Spread
                || workload.anti_affinity == AntiAffinity::Soft,
            hard: workload.anti_affinity == AntiAffinity::Hard,
        }
    }

    pub(crate) fn domains(&self) -> usize {
        self.domain_counts.len()
    }

    #[inline]
    pub(crate) fn domain(&self, i: usize) -> usize {
        self.domain_of.get(i).map_or(0, |&d| d as usize)
    }

    /// The static checks: the same for every replica of the plan.
    #[inline]
    pub(crate) fn eligible(&self, i: usize) -> bool {
        self.eligible[i]
    }

    /// The checks that change as the plan places replicas (true is never regained). An
    /// over-committed node (allocated above capacity) takes nothing, not even a request of zero
    /// in that dimension.
    #[inline]
    pub(crate) fn feasible(&self, i: usize) -> bool {
        let capacity = self.index.capacity[i];
        let allocated = self.index.allocated[i];
        allocated.fits_in(capacity)
            && self
                .workload
                .resources
                .fits_in(capacity.saturating_sub(allocated))
            && !(self.hard && self.counts[i] > 0)
    }

    #[inline(always)]
    pub(crate) fn key(&self, i: usize) -> NodeKey<'n> {
        let nodes: &'n [NodeView] = self.index.nodes;
        let after = self.index.allocated[i].saturating_add(self.workload.resources);
        NodeKey {
            stack: Reverse(if self.stacking { self.counts[i] } else { 0 }),
            fit: fit_score_scaled(
                self.workload.strategy,
                self.index.capacity[i],
                self.index.reciprocal[i],
                after,
            ),
            id_head: Reverse(self.index.id_head[i]),
            id: Reverse(nodes[i].id.as_str()),
            idx: Reverse(i),
        }
    }

    pub(crate) fn domain_key(&self, d: usize, best: NodeKey<'n>) -> DomainKey<'n> {
        DomainKey {
            count: Reverse(if self.domain_of.is_empty() {
                0
            } else {
                self.domain_counts[d]
            }),
            best,
            domain: Reverse(d),
        }
    }

    /// Records one replica placed on node `i`.
    pub(crate) fn commit(&mut self, i: usize) {
        self.index.allocated[i] = self.index.allocated[i].saturating_add(self.workload.resources);
        self.counts[i] += 1;
        let d = self.domain(i);
        self.domain_counts[d] += 1;
    }

    /// Why no node is feasible now: each node under the first check it fails.
    pub(crate) fn reason(&self) -> Reason {
        let req = self.workload.resources;
        let index = &*self.index;
        let mut reason = Reason {
            request: req,
            nodes: index.len(),
            ..Reason::default()
        };
        let columns: Vec<Option<&[u32]>> = self
            .workload
            .constraints
            .iter()
            .map(|c| index.built_column(&c.key).map(|col| col.ids.as_slice()))
            .collect();
        let mut by_constraint = vec![0usize; self.tests.len()];
        for (i, node) in index.nodes.iter().enumerate() {
            let (cap, used) = (index.capacity[i], index.allocated[i]);
            if index.draining[i] {
                reason.draining += 1;
            } else if !node.ready {
                reason.not_ready += 1;
            } else if !node.schedulable {
                reason.cordoned += 1;
            } else if let Some(c) = self
                .tests
                .iter()
                .zip(&columns)
                .position(|(t, col)| !t.matches(col.map_or(ABSENT, |ids| ids[i])))
            {
                by_constraint[c] += 1;
            } else if !req.fits_in(cap) {
                reason.too_small.add(
                    req.cpu_millis > cap.cpu_millis,
                    req.memory_bytes > cap.memory_bytes,
                );
            } else if self.hard && self.counts[i] > 0 {
                reason.anti_affinity += 1;
            } else {
                let room = cap.saturating_sub(used);
                reason.short.add(
                    req.cpu_millis > room.cpu_millis || used.cpu_millis > cap.cpu_millis,
                    req.memory_bytes > room.memory_bytes || used.memory_bytes > cap.memory_bytes,
                );
            }
        }
        reason.excluded_by = self
            .workload
            .constraints
            .iter()
            .zip(by_constraint)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        reason
    }
}

/// How well a node fits once `used` is allocated on it, in millionths (0..=2,000,000).
pub(crate) fn fit_score(strategy: Strategy, capacity: Resources, used: Resources) -> u64 {
    fit_score_scaled(strategy, capacity, Reciprocal::of(capacity), used)
}

/// The reciprocals of a capacity: a multiplication replaces a division in the hot loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reciprocal {
    cpu: f64,
    memory: f64,
}

impl Reciprocal {
    pub(crate) fn of(capacity: Resources) -> Self {
        let inv = |c: u64| if c == 0 { 0.0 } else { 1.0 / c as f64 };
        Reciprocal {
            cpu: inv(capacity.cpu_millis),
            memory: inv(capacity.memory_bytes),
        }
    }
}

/// [`fit_score`] with the capacity's reciprocals at hand.
#[inline(always)]
pub(crate) fn fit_score_scaled(
    strategy: Strategy,
    capacity: Resources,
    inv: Reciprocal,
    used: Resources,
) -> u64 {
    let cpu = utilization(used.cpu_millis, capacity.cpu_millis, inv.cpu);
    let memory = utilization(used.memory_bytes, capacity.memory_bytes, inv.memory);
    let imbalance = (cpu - memory).abs() / 2.0;
    let score = match strategy {
        Strategy::Binpack => cpu + memory - imbalance,
        Strategy::Spread => (1.0 - cpu) + (1.0 - memory) - imbalance,
    };
    // `as` saturates (and maps NaN to 0): deterministic for any input.
    (score * 1_000_000.0) as u64
}

/// Used fraction in `0..=1`; a dimension without capacity counts as full.
#[inline(always)]
fn utilization(used: u64, capacity: u64, inv: f64) -> f64 {
    if capacity == 0 {
        1.0
    } else {
        (used as f64 * inv).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LabelSelector;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, cpu: u64, mem_gib: u64) -> NodeView {
        NodeView::new(id, Resources::new(cpu, mem_gib * GIB))
    }

    fn on(result: &PlanResult) -> Vec<&str> {
        result
            .placements
            .iter()
            .map(|p| p.node_id.as_str())
            .collect()
    }

    #[test]
    fn free_indices_fill_gaps_first() {
        let existing = [
            Placement::new(0, "a"),
            Placement::new(2, "a"),
            Placement::new(2, "b"),
        ];
        assert_eq!(free_replica_indices(&existing, 3), vec![1, 3, 4]);
        assert_eq!(free_replica_indices(&[], 2), vec![0, 1]);
        assert!(free_replica_indices(&existing, 0).is_empty());
    }

    #[test]
    fn binpack_prefers_the_fullest_node_that_fits() {
        let nodes = [
            node("a", 4000, 8).with_allocated(Resources::new(1000, 2 * GIB)),
            node("b", 4000, 8).with_allocated(Resources::new(3000, 6 * GIB)),
            node("c", 4000, 8).with_allocated(Resources::new(3500, 7 * GIB)),
        ];
        let w = WorkloadView::new("web", Resources::new(1000, 2 * GIB), 2);
        // c cannot take 1 CPU more; b can take exactly one replica, then a.
        let result = place(&nodes, &w, &[], 2);
        assert_eq!(on(&result), ["b", "a"]);
        assert!(result.unplaced.is_empty());
    }

    #[test]
    fn binpack_prefers_balanced_nodes() {
        // Same total used fraction after placement, but b stays balanced.
        let nodes = [
            node("a", 1000, 1).with_allocated(Resources::new(500, 0)),
            node("b", 1000, 1).with_allocated(Resources::new(250, GIB / 4)),
        ];
        let w = WorkloadView::new("w", Resources::new(0, 0), 1);
        assert_eq!(on(&place(&nodes, &w, &[], 1)), ["b"]);
    }

    #[test]
    fn spread_prefers_fewest_replicas_then_least_allocated() {
        let nodes = [
            node("a", 4000, 8),
            node("b", 4000, 8).with_allocated(Resources::new(2000, 4 * GIB)),
            node("c", 4000, 8).with_allocated(Resources::new(500, GIB)),
        ];
        let w = WorkloadView {
            strategy: Strategy::Spread,
            ..WorkloadView::new("web", Resources::new(500, GIB), 4)
        };
        let existing = [Placement::new(0, "c")];
        let result = place(&nodes, &w, &existing, 3);
        // a (no replica, empty), then b (no replica), then a again: every node holds one, and
        // a ties c on allocation, won by id.
        assert_eq!(on(&result), ["a", "b", "a"]);
        assert_eq!(
            result
                .placements
                .iter()
                .map(|p| p.replica)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn ties_go_to_the_smallest_node_id_whatever_the_order() {
        let nodes = [
            node("n2", 1000, 1),
            node("n1", 1000, 1),
            node("n3", 1000, 1),
        ];
        let w = WorkloadView::new("w", Resources::new(100, GIB / 8), 1);
        assert_eq!(on(&place(&nodes, &w, &[], 1)), ["n1"]);
    }

    #[test]
    fn hard_anti_affinity_never_stacks() {
        let nodes = [node("a", 8000, 16), node("b", 8000, 16)];
        let w = WorkloadView {
            anti_affinity: AntiAffinity::Hard,
            ..WorkloadView::new("db", Resources::new(100, GIB), 3)
        };
        let result = place(&nodes, &w, &[Placement::new(0, "a")], 2);
        assert_eq!(on(&result), ["b"]);
        assert_eq!(result.unplaced.len(), 1);
        assert_eq!(result.unplaced[0].replica, 2);
        assert_eq!(
            result.unplaced[0].reason.to_string(),
            "no node without a replica of this workload (hard anti-affinity) (2 nodes already running a replica)"
        );
    }

    #[test]
    fn soft_anti_affinity_stacks_only_when_it_must() {
        let nodes = [
            node("a", 8000, 16).with_allocated(Resources::new(6000, 12 * GIB)),
            node("b", 8000, 16),
        ];
        let w = WorkloadView {
            anti_affinity: AntiAffinity::Soft,
            ..WorkloadView::new("db", Resources::new(100, GIB), 3)
        };
        // Binpack alone would put all three on a; the penalty sends the second to b; the third
        // goes to the fuller of two nodes holding one replica each.
        let result = place(&nodes, &w, &[], 3);
        assert_eq!(on(&result), ["a", "b", "a"]);
    }

    #[test]
    fn spread_key_balances_label_values_first() {
        let nodes = [
            node("a1", 8000, 16).with_label("zone", "a"),
            node("a2", 8000, 16).with_label("zone", "a"),
            node("b1", 8000, 16).with_label("zone", "b"),
            node("x", 8000, 16),
        ];
        let w = WorkloadView {
            spread_key: Some("zone".into()),
            ..WorkloadView::new("web", Resources::new(100, GIB), 6)
        };
        let result = place(&nodes, &w, &[Placement::new(0, "a1")], 5);
        let zone_of = |id: &str| id.chars().next().unwrap_or('?');
        let mut per_zone = std::collections::BTreeMap::new();
        for id in on(&result).into_iter().chain(["a1"]) {
            *per_zone.entry(zone_of(id)).or_insert(0) += 1;
        }
        assert_eq!(per_zone.into_values().collect::<Vec<_>>(), [2, 2, 2]);
        // Binpack inside zone a: the replica joins a1.
        assert!(!on(&result).contains(&"a2"));
    }

    #[test]
    fn the_reason_counts_every_node_once() {
        let nodes = [
            node("a", 8000, 2).with_label("zone", "a"),
            node("b", 8000, 16).with_label("zone", "b"),
            node("c", 8000, 8)
                .with_label("zone", "a")
                .with_allocated(Resources::new(0, 6 * GIB)),
            NodeView {
                schedulable: false,
                ..node("d", 8000, 16).with_label("zone", "a")
            },
            NodeView {
                ready: false,
                ..node("e", 8000, 16).with_label("zone", "a")
            },
        ];
        let w = WorkloadView {
            constraints: vec![LabelSelector::equals("zone", "a")],
            ..WorkloadView::new("big", Resources::new(1000, 4 * GIB), 1)
        };
        let result = place(&nodes, &w, &[], 2);
        assert!(result.placements.is_empty());
        assert_eq!(result.unplaced.len(), 2);
        let reason = &result.unplaced[0].reason;
        assert_eq!(reason.accounted(), nodes.len());
        assert_eq!(
            reason.to_string(),
            "no node with 4 GiB of free memory (1 node short of memory, 1 with too little memory in total, \
             1 excluded by constraint zone=a, 1 cordoned, 1 not ready)"
        );
    }

    #[test]
    fn the_plan_counts_its_own_placements() {
        let nodes = [node("a", 2000, 4), node("b", 1000, 2)];
        let w = WorkloadView::new("w", Resources::new(1000, 2 * GIB), 5);
        let result = place(&nodes, &w, &[], 5);
        // b is filled by one replica: it ranks first, then a takes two.
        assert_eq!(on(&result), ["b", "a", "a"]);
        assert_eq!(
            result
                .unplaced
                .iter()
                .map(|u| u.replica)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(
            result.unplaced[0].reason.to_string(),
            "no node with 1 CPU and 2 GiB of memory free (2 nodes short of CPU and memory)"
        );
    }

    #[test]
    fn over_committed_nodes_take_nothing() {
        let nodes = [node("a", 1000, 1).with_allocated(Resources::new(2000, 0))];
        let w = WorkloadView::new("w", Resources::new(0, 1), 1);
        let result = place(&nodes, &w, &[], 1);
        assert_eq!(result.unplaced.len(), 1);
        assert_eq!(
            result.unplaced[0].reason.to_string(),
            "no node with 0m CPU free (1 node short of CPU)"
        );
    }

    #[test]
    fn zero_requests_fit_anywhere_and_no_nodes_is_explained() {
        let w = WorkloadView::new("w", Resources::ZERO, 2);
        let nodes = [node("a", 0, 0)];
        assert_eq!(on(&place(&nodes, &w, &[], 2)), ["a", "a"]);
        let result = place(&[], &w, &[], 1);
        assert_eq!(
            result.unplaced[0].reason.to_string(),
            "no nodes in the cluster"
        );
    }
}
