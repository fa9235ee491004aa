//! [`NodeIndex`]: the nodes in compact columns (capacity, allocation, usability, id prefix,
//! interned label values), built once and reused by every plan of a batch.

use std::collections::HashMap;

use crate::place::{place_in, Reciprocal, Working};
use crate::types::{
    LabelSelector, NodeView, Placement, PlanResult, ReplicaIndex, Resources, SelectorOp,
    WorkloadView,
};

/// A node without the label.
pub(crate) const ABSENT: u32 = u32::MAX;

/// The nodes given to the scheduler, indexed for planning, and their allocations as the plans
/// made through it leave them.
///
/// Build one per batch of decisions (for example every pending workload after a leader
/// change): plans made through the same index see each other's placements, and the per-node
/// work that does not depend on the workload (compacting, interning label values) is done
/// once. The index assumes its plans are carried out; after a plan is refused (Raft conflict),
/// build a new one from the committed state. Node positions are those of the slice.
#[derive(Debug, Clone)]
pub struct NodeIndex<'n> {
    pub(crate) nodes: &'n [NodeView],
    pub(crate) capacity: Vec<Resources>,
    pub(crate) reciprocal: Vec<Reciprocal>,
    pub(crate) allocated: Vec<Resources>,
    /// Ready, schedulable and not being drained.
    pub(crate) usable: Vec<bool>,
    pub(crate) draining: Vec<bool>,
    /// The first 16 bytes of each id, zero-padded, big-endian: orders as the ids do unless
    /// equal, without reading the strings.
    pub(crate) id_head: Vec<u128>,
    positions: Option<HashMap<&'n str, usize>>,
    columns: HashMap<String, Column<'n>>,
}

/// One label key: each node's value as a small integer ([`ABSENT`] without the label).
#[derive(Debug, Clone)]
pub(crate) struct Column<'n> {
    pub(crate) ids: Vec<u32>,
    values: HashMap<&'n str, u32>,
}

impl Column<'_> {
    pub(crate) fn value_count(&self) -> usize {
        self.values.len()
    }
}

/// A label selector with its values interned for one column.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Equals(Option<u32>),
    In(Vec<u32>),
    NotIn(Vec<u32>),
    Exists,
    DoesNotExist,
}

impl Test {
    #[inline]
    pub(crate) fn matches(&self, id: u32) -> bool {
        match self {
            Test::Equals(v) => id != ABSENT && Some(id) == *v,
            Test::In(vs) => id != ABSENT && vs.contains(&id),
            Test::NotIn(vs) => id == ABSENT || !vs.contains(&id),
            Test::Exists => id != ABSENT,
            Test::DoesNotExist => id == ABSENT,
        }
    }
}

impl<'n> NodeIndex<'n> {
    pub fn new(nodes: &'n [NodeView]) -> Self {
        Self {
            nodes,
            capacity: nodes.iter().map(|n| n.capacity).collect(),
            reciprocal: nodes.iter().map(|n| Reciprocal::of(n.capacity)).collect(),
            allocated: nodes.iter().map(|n| n.allocated).collect(),
            usable: nodes.iter().map(|n| n.ready && n.schedulable).collect(),
            draining: vec![false; nodes.len()],
            id_head: nodes.iter().map(|n| id_head(&n.id)).collect(),
            positions: None,
            columns: HashMap::new(),
        }
    }

    pub fn nodes(&self) -> &'n [NodeView] {
        self.nodes
    }

    /// The current allocation of each node (by position), plans made through the index
    /// included.
    pub fn allocated(&self) -> &[Resources] {
        &self.allocated
    }

    /// Places `count` new replicas, as [`crate::place`] does, and keeps their allocations.
    pub fn place(
        &mut self,
        workload: &WorkloadView,
        existing: &[Placement],
        count: usize,
    ) -> PlanResult {
        let replicas = crate::place::free_replica_indices(existing, count);
        self.place_replicas(workload, existing, &replicas)
    }

    /// Places the given replicas, as [`crate::place_replicas`] does, and keeps their
    /// allocations.
    pub fn place_replicas(
        &mut self,
        workload: &WorkloadView,
        existing: &[Placement],
        replicas: &[ReplicaIndex],
    ) -> PlanResult {
        if replicas.is_empty() {
            return PlanResult::default();
        }
        place_in(Working::new(self, workload, existing), replicas)
    }

    /// Gives back `resources` on the node (a replica removed or stopped). False if no node has
    /// this id.
    pub fn release(&mut self, node_id: &str, resources: Resources) -> bool {
        match self.position(node_id) {
            Some(i) => {
                self.allocated[i] = self.allocated[i].saturating_sub(resources);
                true
            }
            None => false,
        }
    }

    /// Stops placing anything on the node (drain), whatever its `schedulable` flag.
    pub fn set_draining(&mut self, node_id: &str) {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id == node_id {
                self.draining[i] = true;
                self.usable[i] = false;
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The first position of a node id.
    pub(crate) fn position(&mut self, node_id: &str) -> Option<usize> {
        self.positions().get(node_id).copied()
    }

    pub(crate) fn positions(&mut self) -> &HashMap<&'n str, usize> {
        let nodes = self.nodes;
        self.positions.get_or_insert_with(|| {
            let mut map = HashMap::with_capacity(nodes.len());
            for (i, node) in nodes.iter().enumerate() {
                map.entry(node.id.as_str()).or_insert(i);
            }
            map
        })
    }

    /// The column of a label key, built on first use.
    pub(crate) fn column(&mut self, key: &str) -> &Column<'n> {
        let nodes = self.nodes;
        if !self.columns.contains_key(key) {
            self.columns
                .insert(key.to_owned(), build_column(nodes, key));
        }
        &self.columns[key]
    }

    /// The column of a label key, if built.
    pub(crate) fn built_column(&self, key: &str) -> Option<&Column<'n>> {
        self.columns.get(key)
    }

    /// The selector's test against its column (built if needed).
    pub(crate) fn compile(&mut self, selector: &LabelSelector) -> Test {
        let column = self.column(&selector.key);
        let intern = |vs: &[String]| -> Vec<u32> {
            let mut ids: Vec<u32> = vs
                .iter()
                .filter_map(|v| column.values.get(v.as_str()).copied())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        match &selector.op {
            SelectorOp::Equals(v) => Test::Equals(column.values.get(v.as_str()).copied()),
            SelectorOp::In(vs) => Test::In(intern(vs)),
            SelectorOp::NotIn(vs) => Test::NotIn(intern(vs)),
            SelectorOp::Exists => Test::Exists,
            SelectorOp::DoesNotExist => Test::DoesNotExist,
        }
    }
}

fn build_column<'n>(nodes: &'n [NodeView], key: &str) -> Column<'n> {
    let mut values: HashMap<&'n str, u32> = HashMap::new();
    let ids = nodes
        .iter()
        .map(|node| match node.labels.get(key) {
            None => ABSENT,
            Some(v) => {
                let next = values.len() as u32;
                *values.entry(v.as_str()).or_insert(next)
            }
        })
        .collect();
    Column { ids, values }
}

fn id_head(id: &str) -> u128 {
    let mut head = [0u8; 16];
    let n = id.len().min(16);
    head[..n].copy_from_slice(&id.as_bytes()[..n]);
    u128::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn an_index_tracks_its_plans_releases_and_drains() {
        let nodes = [
            NodeView::new("a", Resources::new(1000, GIB)),
            NodeView::new("b", Resources::new(1000, GIB)),
        ];
        let w = WorkloadView::new("w", Resources::new(500, GIB / 2), 3);
        let mut index = NodeIndex::new(&nodes);
        let on = |r: &PlanResult| -> Vec<String> {
            r.placements.iter().map(|p| p.node_id.clone()).collect()
        };
        assert_eq!(on(&index.place(&w, &[], 2)), ["a", "a"]);
        assert_eq!(index.allocated()[0], Resources::new(1000, GIB));
        assert_eq!(on(&index.place(&w, &[], 1)), ["b"]);

        assert!(index.release("a", Resources::new(500, GIB / 2)));
        assert!(!index.release("gone", Resources::new(500, GIB / 2)));
        index.set_draining("b");
        let result = index.place(&w, &[], 2);
        assert_eq!(on(&result), ["a"]);
        assert_eq!(
            result.unplaced[0].reason.to_string(),
            "no node with 500m CPU and 512 MiB of memory free (1 node short of CPU and memory, 1 draining)"
        );
    }

    #[test]
    fn selectors_on_interned_values() {
        let nodes = [
            NodeView::new("a", Resources::ZERO).with_label("zone", "x"),
            NodeView::new("b", Resources::ZERO).with_label("zone", "y"),
            NodeView::new("c", Resources::ZERO),
        ];
        let mut index = NodeIndex::new(&nodes);
        let cases = [
            (LabelSelector::equals("zone", "x"), [true, false, false]),
            (
                LabelSelector::equals("zone", "nowhere"),
                [false, false, false],
            ),
            (
                LabelSelector::is_in("zone", ["y", "nowhere"]),
                [false, true, false],
            ),
            (LabelSelector::not_in("zone", ["x"]), [false, true, true]),
            (LabelSelector::exists("zone"), [true, true, false]),
            (LabelSelector::does_not_exist("zone"), [false, false, true]),
            (LabelSelector::exists("rack"), [false, false, false]),
            (LabelSelector::does_not_exist("rack"), [true, true, true]),
        ];
        for (selector, expect) in cases {
            let test = index.compile(&selector);
            let ids = index.column(&selector.key).ids.clone();
            let got: Vec<bool> = ids.iter().map(|&id| test.matches(id)).collect();
            assert_eq!(got, expect, "{selector}");
            let direct: Vec<bool> = nodes.iter().map(|n| selector.matches(&n.labels)).collect();
            assert_eq!(direct, expect, "{selector} on the labels");
        }
    }
}
