//! Rolling updates as a step function: the current instances in, the next batch of actions out.
//! The controller applies the actions, waits for instances to change state, and calls again.
//!
//! A *slot* is a replica index in `0..replicas`; it is *available* when a live instance (old or
//! new) in it is ready. Each step keeps:
//!
//! * `available ≥ replicas - max_unavailable` (or, when already below, does not lower it):
//!   an old ready instance is stopped only when its slot has a new ready one, or within the
//!   unavailability budget;
//! * `instances ≤ replicas + max_surge` (or, when already above, adds none): every instance,
//!   stopping ones included, holds resources until it is gone.
//!
//! Order of work: slots with no live instance, then slots whose old instance is not ready, then
//! by index. Old instances that are not ready, surplus new ones and instances beyond `replicas`
//! are stopped at once (they serve nothing).

use crate::place::place_replicas;
use crate::types::{NodeView, Placement, PlanResult, ReplicaIndex, WorkloadView};

/// What the controller knows of one instance of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutInstance {
    pub id: String,
    pub replica: ReplicaIndex,
    pub node_id: String,
    /// Runs the workload's current generation.
    pub up_to_date: bool,
    pub state: InstanceState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Passing its readiness check.
    Ready,
    /// Starting, failing its readiness check, or not reporting.
    NotReady,
    /// Told to stop; gone once the controller drops it.
    Stopping,
}

/// The workload's update strategy. Both zero would block every update: `max_unavailable` is
/// then taken as 1 (the API layer should refuse such a spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutPolicy {
    pub max_unavailable: u32,
    pub max_surge: u32,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            max_surge: 1,
        }
    }
}

/// The next batch of actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutStep {
    /// Instance ids to stop, in order.
    pub stop: Vec<String>,
    /// New (up-to-date) instances to start, and the slots that found no node.
    pub start: PlanResult,
    /// Every slot runs exactly one ready up-to-date instance and nothing else is left.
    pub done: bool,
}

/// Plans the next step of rolling `instances` to the current generation of `workload`.
pub fn plan_rollout(
    nodes: &[NodeView],
    workload: &WorkloadView,
    instances: &[RolloutInstance],
    policy: RolloutPolicy,
) -> RolloutStep {
    let replicas = workload.replicas as usize;
    let max_unavailable = if policy.max_unavailable == 0 && policy.max_surge == 0 {
        1
    } else {
        policy.max_unavailable as usize
    };
    let max_surge = policy.max_surge as usize;

    let mut sorted: Vec<&RolloutInstance> = instances.iter().collect();
    sorted.sort_by(|a, b| (a.replica, &a.id).cmp(&(b.replica, &b.id)));

    let mut stop: Vec<String> = Vec::new();
    let mut slots: Vec<Slot> = (0..replicas).map(|_| Slot::default()).collect();
    for inst in sorted {
        if inst.state == InstanceState::Stopping {
            continue;
        }
        match slots.get_mut(inst.replica as usize) {
            None => stop.push(inst.id.clone()),
            Some(slot) if inst.up_to_date => slot.new.push(inst),
            Some(slot) => slot.old.push(inst),
        }
    }
    // One new instance per slot: a ready one if any, else the first by id.
    for slot in &mut slots {
        if slot.new.len() > 1 {
            slot.new
                .sort_by_key(|i| (i.state != InstanceState::Ready, &i.id));
            stop.extend(slot.new.drain(1..).map(|i| i.id.clone()));
        }
    }
    let unavailable = slots.iter().filter(|s| !s.available()).count();

    // Slots with a new instance: old ones go once it is ready; not-ready old ones go now.
    for slot in &mut slots {
        match slot.new.first() {
            Some(new) if new.state == InstanceState::Ready => {
                stop.extend(slot.old.drain(..).map(|i| i.id.clone()));
            }
            Some(_) => slot.stop_not_ready_old(&mut stop),
            None => {}
        }
    }

    // Slots still to update, most urgent first.
    let mut needing: Vec<usize> = (0..replicas).filter(|&s| slots[s].new.is_empty()).collect();
    needing.sort_by_key(|&s| (slots[s].urgency(), s));

    // Surge: start new instances while the total stays within replicas + max_surge.
    let surge_budget = (replicas + max_surge).saturating_sub(instances.len());
    let to_start: Vec<ReplicaIndex> = needing
        .iter()
        .take(surge_budget)
        .map(|&s| s as ReplicaIndex)
        .collect();
    let existing: Vec<Placement> = instances
        .iter()
        .filter(|i| i.state != InstanceState::Stopping)
        .map(|i| Placement::new(i.replica, i.node_id.clone()))
        .collect();
    let start = place_replicas(nodes, workload, &existing, &to_start);
    let mut started = vec![false; replicas];
    for p in &start.placements {
        started[p.replica as usize] = true;
    }

    // Unavailability: stop old ready instances of slots not started, within the budget.
    let mut budget = max_unavailable.saturating_sub(unavailable);
    for &s in &needing {
        let slot = &mut slots[s];
        slot.stop_not_ready_old(&mut stop);
        if started[s] || slot.old.is_empty() || budget == 0 {
            continue;
        }
        budget -= 1;
        stop.extend(slot.old.drain(..).map(|i| i.id.clone()));
    }

    let done = stop.is_empty()
        && start.placements.is_empty()
        && start.unplaced.is_empty()
        && instances.len() == replicas
        && instances
            .iter()
            .all(|i| i.up_to_date && i.state == InstanceState::Ready);
    RolloutStep { stop, start, done }
}

#[derive(Default)]
struct Slot<'i> {
    new: Vec<&'i RolloutInstance>,
    old: Vec<&'i RolloutInstance>,
}

impl Slot<'_> {
    fn available(&self) -> bool {
        self.new
            .iter()
            .chain(&self.old)
            .any(|i| i.state == InstanceState::Ready)
    }

    /// 0: nothing runs in the slot, 1: nothing ready, 2: an old instance serves.
    fn urgency(&self) -> u8 {
        match (self.old.is_empty(), self.available()) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        }
    }

    fn stop_not_ready_old(&mut self, stop: &mut Vec<String>) {
        self.old.retain(|i| {
            let keep = i.state == InstanceState::Ready;
            if !keep {
                stop.push(i.id.clone());
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AntiAffinity, Resources};

    const GIB: u64 = 1 << 30;

    fn inst(
        id: &str,
        replica: ReplicaIndex,
        node: &str,
        up_to_date: bool,
        state: InstanceState,
    ) -> RolloutInstance {
        RolloutInstance {
            id: id.into(),
            replica,
            node_id: node.into(),
            up_to_date,
            state,
        }
    }

    fn nodes() -> Vec<NodeView> {
        ["a", "b", "c", "d"]
            .iter()
            .map(|id| NodeView::new(*id, Resources::new(8000, 16 * GIB)))
            .collect()
    }

    fn started(step: &RolloutStep) -> Vec<ReplicaIndex> {
        step.start.placements.iter().map(|p| p.replica).collect()
    }

    #[test]
    fn surge_one_unavailable_zero_replaces_one_at_a_time() {
        use InstanceState::*;
        let w = WorkloadView::new("web", Resources::new(100, GIB), 3);
        let policy = RolloutPolicy {
            max_unavailable: 0,
            max_surge: 1,
        };
        let mut state = vec![
            inst("o0", 0, "a", false, Ready),
            inst("o1", 1, "b", false, Ready),
            inst("o2", 2, "c", false, Ready),
        ];
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(started(&step), [0]);
        assert!(step.stop.is_empty());
        assert!(!step.done);

        state.push(inst(
            "n0",
            0,
            &step.start.placements[0].node_id,
            true,
            NotReady,
        ));
        // Nothing more while the surge instance is not ready.
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(step, RolloutStep::default());

        state[3].state = Ready;
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(step.stop, ["o0"]);
        assert!(
            started(&step).is_empty(),
            "the old one still counts until gone"
        );

        state.remove(0);
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(started(&step), [1]);
    }

    #[test]
    fn unavailable_one_surge_zero_stops_then_starts() {
        use InstanceState::*;
        let w = WorkloadView::new("web", Resources::new(100, GIB), 2);
        let policy = RolloutPolicy {
            max_unavailable: 1,
            max_surge: 0,
        };
        let mut state = vec![
            inst("o0", 0, "a", false, Ready),
            inst("o1", 1, "b", false, Ready),
        ];
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(step.stop, ["o0"]);
        assert!(started(&step).is_empty());

        state[0].state = Stopping;
        assert_eq!(
            plan_rollout(&nodes(), &w, &state, policy),
            RolloutStep::default()
        );

        state.remove(0);
        let step = plan_rollout(&nodes(), &w, &state, policy);
        assert_eq!(started(&step), [0]);
        assert!(
            step.stop.is_empty(),
            "slot 0 is already unavailable: no budget left"
        );
    }

    #[test]
    fn broken_old_instances_go_first_and_leftovers_are_cleaned() {
        use InstanceState::*;
        let w = WorkloadView::new("web", Resources::new(100, GIB), 3);
        let state = vec![
            inst("o0", 0, "a", false, Ready),
            inst("o1", 1, "b", false, NotReady),
            inst("o2", 2, "c", false, Ready),
            inst("o3", 3, "d", false, Ready),
        ];
        let step = plan_rollout(&nodes(), &w, &state, RolloutPolicy::default());
        // Instance 3 is beyond the replicas; 4 instances for 3 + 1 surge: no start yet. Slot 1
        // does not serve: its old instance is stopped, and as it already uses the whole
        // unavailability budget, slot 0 keeps its old instance.
        assert!(started(&step).is_empty());
        assert_eq!(step.stop, ["o3", "o1"]);
    }

    #[test]
    fn hard_anti_affinity_falls_back_to_the_unavailability_budget() {
        use InstanceState::*;
        let w = WorkloadView {
            anti_affinity: AntiAffinity::Hard,
            ..WorkloadView::new("db", Resources::new(100, GIB), 2)
        };
        let two = &nodes()[..2];
        let state = vec![
            inst("o0", 0, "a", false, Ready),
            inst("o1", 1, "b", false, Ready),
        ];
        let step = plan_rollout(two, &w, &state, RolloutPolicy::default());
        assert_eq!(step.start.unplaced.len(), 1);
        assert_eq!(step.stop, ["o0"]);
    }

    #[test]
    fn done_when_every_slot_runs_one_ready_new_instance() {
        use InstanceState::*;
        let w = WorkloadView::new("web", Resources::new(100, GIB), 2);
        let mut state = vec![
            inst("n0", 0, "a", true, Ready),
            inst("n1", 1, "b", true, Ready),
        ];
        assert!(plan_rollout(&nodes(), &w, &state, RolloutPolicy::default()).done);
        state.push(inst("n1b", 1, "c", true, NotReady));
        let step = plan_rollout(&nodes(), &w, &state, RolloutPolicy::default());
        assert_eq!(step.stop, ["n1b"]);
        assert!(!step.done);
    }
}
