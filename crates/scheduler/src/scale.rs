//! Scaling: place the missing replicas, or choose which ones to remove.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::place::{fit_score, place};
use crate::types::{
    AntiAffinity, NodeView, Placement, PlanResult, ReplicaIndex, Resources, Strategy, WorkloadView,
};

/// What to do to reach `workload.replicas`: place new replicas, or remove some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// New replicas (scale up), as [`place`] decides them.
    pub place: PlanResult,
    /// Replicas to stop (scale down), in the order they were chosen.
    pub remove: Vec<Placement>,
}

/// Compares the number of `existing` replicas with `workload.replicas` and plans the
/// difference. See [`choose_removals`] for the scale-down order.
pub fn plan_scale(
    nodes: &[NodeView],
    workload: &WorkloadView,
    existing: &[Placement],
) -> ScalePlan {
    let target = workload.replicas as usize;
    let mut plan = ScalePlan::default();
    if existing.len() < target {
        plan.place = place(nodes, workload, existing, target - existing.len());
    } else if existing.len() > target {
        plan.remove = choose_removals(nodes, workload, existing, existing.len() - target);
    }
    plan
}

/// Chooses `count` of the `existing` replicas to remove, one at a time, each time the greatest
/// by, in this order:
///
/// 1. the node's health: absent or not ready first, then cordoned, then the others (an absent
///    node has no capacity, so it also counts as the most loaded);
/// 2. with a spread key: the most replicas of the workload in the node's label value;
/// 3. under `Spread` or any anti-affinity: the most replicas of the workload on the node;
/// 4. the most loaded node (the binpack fit of its current allocation);
/// 5. the highest replica index on that node;
/// 6. the smallest node id.
///
/// Counts and loads are updated after each choice. Costs `O(count · g)` for `g` nodes holding
/// replicas; removing every replica is `O(k log k)` (highest index first).
pub fn choose_removals(
    nodes: &[NodeView],
    workload: &WorkloadView,
    existing: &[Placement],
    count: usize,
) -> Vec<Placement> {
    if count >= existing.len() {
        let mut all = existing.to_vec();
        all.sort_by(|a, b| (Reverse(a.replica), &a.node_id).cmp(&(Reverse(b.replica), &b.node_id)));
        return all;
    }
    let mut index: HashMap<&str, &NodeView> = HashMap::with_capacity(nodes.len());
    for node in nodes {
        index.entry(node.id.as_str()).or_insert(node);
    }
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    for p in existing {
        let node = index.get(p.node_id.as_str()).copied();
        groups
            .entry(p.node_id.as_str())
            .or_insert_with(|| Group::new(node, workload.spread_key.as_deref()))
            .replicas
            .push(p.replica);
    }
    let mut domain_counts: HashMap<Option<&str>, usize> = HashMap::new();
    for group in groups.values_mut() {
        group.replicas.sort_unstable();
        if workload.spread_key.is_some() {
            *domain_counts.entry(group.domain).or_default() += group.replicas.len();
        }
    }
    let stacking =
        workload.strategy == Strategy::Spread || workload.anti_affinity != AntiAffinity::None;

    let mut removed = Vec::with_capacity(count);
    for _ in 0..count {
        let best = groups
            .iter()
            .filter(|(_, g)| !g.replicas.is_empty())
            .max_by_key(|(id, g)| {
                (
                    Reverse(g.health),
                    domain_counts.get(&g.domain).copied().unwrap_or(0),
                    if stacking { g.replicas.len() } else { 0 },
                    g.load(),
                    g.replicas.last().copied(),
                    Reverse(**id),
                )
            })
            .map(|(id, _)| *id);
        let Some(id) = best else { break };
        let Some(group) = groups.get_mut(id) else {
            break;
        };
        let Some(replica) = group.replicas.pop() else {
            break;
        };
        group.allocated = group.allocated.saturating_sub(workload.resources);
        if let Some(n) = domain_counts.get_mut(&group.domain) {
            *n = n.saturating_sub(1);
        }
        removed.push(Placement {
            replica,
            node_id: id.to_owned(),
        });
    }
    removed
}

struct Group<'n> {
    capacity: Resources,
    allocated: Resources,
    /// 0: absent or not ready, 1: cordoned, 2: fine.
    health: u8,
    domain: Option<&'n str>,
    /// Ascending; the last is removed first.
    replicas: Vec<ReplicaIndex>,
}

impl<'n> Group<'n> {
    fn new(node: Option<&'n NodeView>, spread_key: Option<&str>) -> Self {
        match node {
            None => Group {
                capacity: Resources::ZERO,
                allocated: Resources::ZERO,
                health: 0,
                domain: None,
                replicas: Vec::new(),
            },
            Some(node) => Group {
                capacity: node.capacity,
                allocated: node.allocated,
                health: match (node.ready, node.schedulable) {
                    (false, _) => 0,
                    (true, false) => 1,
                    (true, true) => 2,
                },
                domain: spread_key
                    .and_then(|k| node.labels.get(k))
                    .map(String::as_str),
                replicas: Vec::new(),
            },
        }
    }

    fn load(&self) -> u64 {
        fit_score(Strategy::Binpack, self.capacity, self.allocated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, allocated_cpu: u64) -> NodeView {
        NodeView::new(id, Resources::new(4000, 8 * GIB))
            .with_allocated(Resources::new(allocated_cpu, allocated_cpu << 20))
    }

    fn ids(removed: &[Placement]) -> Vec<(ReplicaIndex, &str)> {
        removed
            .iter()
            .map(|p| (p.replica, p.node_id.as_str()))
            .collect()
    }

    #[test]
    fn scale_up_places_the_missing_replicas() {
        let nodes = [node("a", 0)];
        let w = WorkloadView::new("w", Resources::new(100, GIB), 3);
        let plan = plan_scale(&nodes, &w, &[Placement::new(1, "a")]);
        assert!(plan.remove.is_empty());
        let placed: Vec<_> = plan.place.placements.iter().map(|p| p.replica).collect();
        assert_eq!(placed, [0, 2]);
    }

    #[test]
    fn scale_down_prefers_unhealthy_then_loaded_nodes_then_high_indices() {
        let nodes = [
            node("a", 1000),
            node("b", 3000),
            NodeView {
                schedulable: false,
                ..node("c", 0)
            },
            NodeView {
                ready: false,
                ..node("d", 0)
            },
        ];
        let existing = [
            Placement::new(0, "a"),
            Placement::new(1, "b"),
            Placement::new(2, "c"),
            Placement::new(3, "d"),
            Placement::new(4, "a"),
            Placement::new(5, "gone"),
            Placement::new(6, "b"),
        ];
        let w = WorkloadView::new("w", Resources::new(1000, 0), 1);
        let plan = plan_scale(&nodes, &w, &existing);
        assert_eq!(
            ids(&plan.remove),
            [
                (5, "gone"),
                (3, "d"),
                (2, "c"),
                (6, "b"),
                (1, "b"),
                (4, "a")
            ]
        );
        assert!(plan.place.placements.is_empty());
    }

    #[test]
    fn scale_down_under_spread_evens_out_nodes_and_zones() {
        let nodes = [
            node("a", 0).with_label("zone", "x"),
            node("b", 0).with_label("zone", "x"),
            node("c", 0).with_label("zone", "y"),
        ];
        let existing = [
            Placement::new(0, "a"),
            Placement::new(1, "b"),
            Placement::new(2, "c"),
            Placement::new(3, "c"),
        ];
        let w = WorkloadView {
            strategy: Strategy::Spread,
            spread_key: Some("zone".into()),
            ..WorkloadView::new("w", Resources::new(0, 0), 2)
        };
        // Zones hold 2 and 2: c (two replicas) loses one first, then zone x (now 2 vs 1).
        assert_eq!(
            ids(&plan_scale(&nodes, &w, &existing).remove),
            [(3, "c"), (1, "b")]
        );
    }

    #[test]
    fn scale_to_zero_removes_everything_highest_index_first() {
        let existing = [
            Placement::new(0, "a"),
            Placement::new(2, "b"),
            Placement::new(1, "a"),
        ];
        let w = WorkloadView::new("w", Resources::ZERO, 0);
        assert_eq!(
            ids(&plan_scale(&[], &w, &existing).remove),
            [(2, "b"), (1, "a"), (0, "a")]
        );
        let w = WorkloadView::new("w", Resources::ZERO, 3);
        assert_eq!(plan_scale(&[], &w, &existing), ScalePlan::default());
    }
}
