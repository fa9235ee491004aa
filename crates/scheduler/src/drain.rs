//! Draining: re-place every replica of a node elsewhere (cold moves; live migration decides
//! how, not where).

use std::cmp::Reverse;

use crate::index::NodeIndex;
use crate::reason::Reason;
use crate::types::{NodeView, Placement, ReplicaIndex, WorkloadView};

/// A workload and where its replicas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub workload: WorkloadView,
    pub placements: Vec<Placement>,
}

/// One replica to move off the drained node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub workload: String,
    pub replica: ReplicaIndex,
    pub from: String,
    pub to: String,
}

/// A replica of the drained node that fits nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub workload: String,
    pub replica: ReplicaIndex,
    pub reason: Reason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainPlan {
    pub moves: Vec<Move>,
    pub stuck: Vec<Stuck>,
}

/// Re-places the replicas on node `node_id` on the other nodes.
///
/// The drained node takes nothing, whatever its `schedulable` flag; its allocation stays (the
/// replicas run there until stopped). Workloads are handled largest request first (memory,
/// then CPU, then name: first-fit decreasing packs tighter), each placed through one
/// [`NodeIndex`], so later moves see earlier ones. A moving replica no
/// longer counts on the drained node for anti-affinity and spreading.
pub fn plan_drain(node_id: &str, nodes: &[NodeView], deployed: &[Deployed]) -> DrainPlan {
    let mut index = NodeIndex::new(nodes);
    index.set_draining(node_id);
    let mut affected: Vec<&Deployed> = deployed
        .iter()
        .filter(|d| d.placements.iter().any(|p| p.node_id == node_id))
        .collect();
    affected.sort_by(|a, b| drain_order(&a.workload).cmp(&drain_order(&b.workload)));

    let mut plan = DrainPlan::default();
    for d in affected {
        let (moving, staying): (Vec<&Placement>, Vec<&Placement>) =
            d.placements.iter().partition(|p| p.node_id == node_id);
        let staying: Vec<Placement> = staying.into_iter().cloned().collect();
        let mut replicas: Vec<ReplicaIndex> = moving.iter().map(|p| p.replica).collect();
        replicas.sort_unstable();
        let result = index.place_replicas(&d.workload, &staying, &replicas);
        plan.moves
            .extend(result.placements.into_iter().map(|p| Move {
                workload: d.workload.name.clone(),
                replica: p.replica,
                from: node_id.to_owned(),
                to: p.node_id,
            }));
        plan.stuck
            .extend(result.unplaced.into_iter().map(|u| Stuck {
                workload: d.workload.name.clone(),
                replica: u.replica,
                reason: u.reason,
            }));
    }
    plan
}

fn drain_order(w: &WorkloadView) -> (Reverse<u64>, Reverse<u64>, &str) {
    (
        Reverse(w.resources.memory_bytes),
        Reverse(w.resources.cpu_millis),
        w.name.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AntiAffinity, Resources};

    const GIB: u64 = 1 << 30;

    #[test]
    fn drain_moves_big_workloads_first_and_explains_the_rest() {
        let nodes = [
            NodeView::new("a", Resources::new(8000, 8 * GIB))
                .with_allocated(Resources::new(3000, 7 * GIB)),
            NodeView::new("b", Resources::new(8000, 4 * GIB)),
            NodeView::new("c", Resources::new(8000, 4 * GIB))
                .with_allocated(Resources::new(1000, 3 * GIB)),
        ];
        let big = WorkloadView {
            anti_affinity: AntiAffinity::Hard,
            ..WorkloadView::new("big", Resources::new(1000, 3 * GIB), 2)
        };
        let small = WorkloadView::new("small", Resources::new(1000, GIB), 2);
        let deployed = [
            Deployed {
                workload: small.clone(),
                placements: vec![Placement::new(0, "a"), Placement::new(1, "a")],
            },
            Deployed {
                workload: big.clone(),
                placements: vec![Placement::new(0, "a"), Placement::new(1, "c")],
            },
        ];
        let plan = plan_drain("a", &nodes, &deployed);
        let moves: Vec<_> = plan
            .moves
            .iter()
            .map(|m| (m.workload.as_str(), m.replica, m.to.as_str()))
            .collect();
        // big/0 cannot join its sibling on c: b. Then b and c have 1 GiB left each.
        assert_eq!(
            moves,
            [("big", 0, "b"), ("small", 0, "b"), ("small", 1, "c")]
        );
        assert!(plan.stuck.is_empty());
        assert!(plan.moves.iter().all(|m| m.from == "a"));

        let tight = [nodes[0].clone(), nodes[1].clone()];
        let plan = plan_drain("a", &tight, &deployed);
        assert_eq!(plan.moves.len(), 2);
        assert_eq!(plan.stuck.len(), 1);
        assert_eq!(plan.stuck[0].workload, "small");
        assert_eq!(
            plan.stuck[0].reason.to_string(),
            "no node with 1 GiB of free memory (1 node short of memory, 1 draining)"
        );
    }
}
