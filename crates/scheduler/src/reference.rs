//! A naive planner with the same decision rule as [`crate::place`]: every replica rescans every
//! node (`O(n·k)`). The oracle for the indexed planner in tests and its baseline in the
//! benchmark; not for the product.

use crate::index::NodeIndex;
use crate::place::{free_replica_indices, Working};
use crate::types::{NodeView, Placement, PlanResult, Unplaced, WorkloadView};

/// [`crate::place`], by rescanning.
pub fn place_naive(
    nodes: &[NodeView],
    workload: &WorkloadView,
    existing: &[Placement],
    count: usize,
) -> PlanResult {
    place_naive_in(&mut NodeIndex::new(nodes), workload, existing, count)
}

/// [`NodeIndex::place`], by rescanning.
pub fn place_naive_in(
    index: &mut NodeIndex<'_>,
    workload: &WorkloadView,
    existing: &[Placement],
    count: usize,
) -> PlanResult {
    let replicas = free_replica_indices(existing, count);
    let n = index.nodes().len();
    let mut work = Working::new(index, workload, existing);
    let mut result = PlanResult::default();
    for replica in replicas {
        let best = (0..n)
            .filter(|&i| work.eligible(i) && work.feasible(i))
            .max_by_key(|&i| work.domain_key(work.domain(i), work.key(i)));
        match best {
            Some(i) => {
                work.commit(i);
                result.placements.push(Placement {
                    replica,
                    node_id: work.index.nodes()[i].id.clone(),
                });
            }
            None => result.unplaced.push(Unplaced {
                replica,
                reason: work.reason(),
            }),
        }
    }
    result
}
