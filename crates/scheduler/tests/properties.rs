//! Property tests of the scheduler's guarantees, checked from the outside (public API only):
//! no over-commitment, hard constraints and hard anti-affinity hold, only ready and schedulable
//! nodes are used, every replica is placed or explained, spread evens out, binpack fills
//! nodes first, and the same input (in any node order) gives the same plan, equal to the naive
//! planner's. Scale, drain and rolling update have their own properties.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_scheduler::reference::place_naive;
use flotilla_scheduler::{
    choose_removals, free_replica_indices, place, plan_drain, plan_rollout, plan_scale,
    AntiAffinity, Deployed, InstanceState, LabelSelector, NodeIndex, NodeView, Placement,
    PlanResult, Resources, RolloutInstance, RolloutPolicy, Strategy as Scoring, WorkloadView,
};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn selectors() -> Vec<LabelSelector> {
    vec![
        LabelSelector::equals("zone", "a"),
        LabelSelector::is_in("zone", ["a", "b"]),
        LabelSelector::not_in("zone", ["c"]),
        LabelSelector::exists("disk"),
        LabelSelector::does_not_exist("gpu"),
        LabelSelector::equals("disk", "ssd"),
    ]
}

prop_compose! {
    fn arb_node(i: usize)(
        cpu in prop_oneof![1 => Just(0u64), 6 => (1..=8u64).prop_map(|c| c * 500)],
        mem in prop_oneof![1 => Just(0u64), 6 => (1..=8u64).prop_map(|m| m * 512 * MIB)],
        // Allocation in quarters of the capacity; 5 quarters is over-committed.
        cpu_q in prop_oneof![8 => 0..=4u64, 1 => Just(5u64)],
        mem_q in prop_oneof![8 => 0..=4u64, 1 => Just(5u64)],
        zone in 0..4usize,
        disk in 0..3usize,
        gpu in any::<bool>(),
        ready in prop::bool::weighted(0.9),
        schedulable in prop::bool::weighted(0.9),
    ) -> NodeView {
        let mut node = NodeView::new(format!("n{i:02}"), Resources::new(cpu, mem))
            .with_allocated(Resources::new(cpu * cpu_q / 4, mem * mem_q / 4));
        if zone < 3 {
            node = node.with_label("zone", ["a", "b", "c"][zone]);
        }
        if disk < 2 {
            node = node.with_label("disk", ["ssd", "hdd"][disk]);
        }
        if gpu {
            node = node.with_label("gpu", "1");
        }
        node.ready = ready;
        node.schedulable = schedulable;
        node
    }
}

fn arb_nodes(max: usize) -> impl Strategy<Value = Vec<NodeView>> {
    (0..=max).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

prop_compose! {
    fn arb_workload()(
        cpu in 0..=4u64,
        mem in 0..=4u64,
        spread in any::<bool>(),
        anti in 0..3usize,
        spread_key in prop::bool::weighted(0.3),
        constraints in prop::collection::btree_set(0..6usize, 0..=2),
    ) -> WorkloadView {
        let all = selectors();
        WorkloadView {
            strategy: if spread { Scoring::Spread } else { Scoring::Binpack },
            anti_affinity: [AntiAffinity::None, AntiAffinity::Soft, AntiAffinity::Hard][anti],
            spread_key: spread_key.then(|| "zone".to_string()),
            constraints: constraints.into_iter().map(|c| all[c].clone()).collect(),
            ..WorkloadView::new("w", Resources::new(cpu * 250, mem * 256 * MIB), 0)
        }
    }
}

/// Existing replicas: distinct indices, on known nodes or on one that is gone.
fn arb_existing(nodes: usize) -> impl Strategy<Value = Vec<Placement>> {
    prop::collection::btree_map(0..24u32, 0..=nodes, 0..8).prop_map(move |m| {
        m.into_iter()
            .map(|(replica, n)| {
                let id = if n == nodes {
                    "gone".to_string()
                } else {
                    format!("n{n:02}")
                };
                Placement::new(replica, id)
            })
            .collect()
    })
}

fn arb_case() -> impl Strategy<Value = (Vec<NodeView>, WorkloadView, Vec<Placement>, usize)> {
    arb_nodes(10).prop_flat_map(|nodes| {
        let n = nodes.len();
        (Just(nodes), arb_workload(), arb_existing(n), 0..16usize)
    })
}

fn feasible_now(
    node: &NodeView,
    w: &WorkloadView,
    allocated: Resources,
    replicas_here: usize,
) -> bool {
    node.ready
        && node.schedulable
        && w.constraints.iter().all(|c| c.matches(&node.labels))
        && allocated.fits_in(node.capacity)
        && w.resources.fits_in(node.capacity.saturating_sub(allocated))
        && !(w.anti_affinity == AntiAffinity::Hard && replicas_here > 0)
}

fn per_node(placements: &[Placement]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for p in placements {
        *m.entry(p.node_id.as_str()).or_insert(0) += 1;
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn place_keeps_every_guarantee((nodes, w, existing, count) in arb_case()) {
        let result = place(&nodes, &w, &existing, count);

        // Every requested replica is placed or explained, with the free indices, in order.
        prop_assert_eq!(result.placements.len() + result.unplaced.len(), count);
        let mut indices: Vec<u32> = result.placements.iter().map(|p| p.replica)
            .chain(result.unplaced.iter().map(|u| u.replica)).collect();
        indices.sort_unstable();
        prop_assert_eq!(indices, free_replica_indices(&existing, count));

        let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let before = per_node(&existing);
        let added = per_node(&result.placements);
        for (id, k) in &added {
            let node = by_id[id];
            // Only ready, schedulable nodes matching every constraint.
            prop_assert!(node.ready && node.schedulable, "{} not usable", id);
            for c in &w.constraints {
                prop_assert!(c.matches(&node.labels), "{} violates {}", id, c);
            }
            // Never over-committed.
            let mut total = node.allocated;
            for _ in 0..*k {
                total = total.saturating_add(w.resources);
            }
            prop_assert!(total.fits_in(node.capacity), "{} over-committed: {:?} > {:?}", id, total, node.capacity);
            // Hard anti-affinity: one replica per node, existing ones included.
            if w.anti_affinity == AntiAffinity::Hard {
                prop_assert_eq!(*k, 1);
                prop_assert!(!before.contains_key(id));
            }
        }

        // Unplaced replicas are explained, and indeed nothing is feasible any more.
        for u in &result.unplaced {
            prop_assert_eq!(u.reason.accounted(), nodes.len());
            prop_assert!(!u.reason.to_string().is_empty());
        }
        if !result.unplaced.is_empty() {
            for node in &nodes {
                let k = added.get(node.id.as_str()).copied().unwrap_or(0);
                let mut allocated = node.allocated;
                for _ in 0..k {
                    allocated = allocated.saturating_add(w.resources);
                }
                let here = before.get(node.id.as_str()).copied().unwrap_or(0) + k;
                prop_assert!(!feasible_now(node, &w, allocated, here), "{} was still feasible", node.id);
            }
        }

        // Deterministic, independent of the node order, equal to the naive planner and to
        // the batch index.
        prop_assert_eq!(&place(&nodes, &w, &existing, count), &result);
        let mut reversed = nodes.clone();
        reversed.reverse();
        prop_assert_eq!(&place(&reversed, &w, &existing, count), &result);
        prop_assert_eq!(&place_naive(&nodes, &w, &existing, count), &result);
        prop_assert_eq!(&NodeIndex::new(&nodes).place(&w, &existing, count), &result);
    }

    #[test]
    fn an_index_sees_its_earlier_plans(
        nodes in arb_nodes(8),
        ws in prop::collection::vec(arb_workload(), 1..5),
        count in 1..8usize,
    ) {
        // Placing workloads one after the other through one index equals placing each on
        // nodes updated with the previous plans.
        let mut index = NodeIndex::new(&nodes);
        let mut current = nodes.clone();
        for w in &ws {
            let batch = index.place(w, &[], count);
            let single = place(&current, w, &[], count);
            prop_assert_eq!(&batch, &single);
            for p in &single.placements {
                if let Some(node) = current.iter_mut().find(|n| n.id == p.node_id) {
                    node.allocated = node.allocated.saturating_add(w.resources);
                }
            }
        }
        let allocated: Vec<Resources> = current.iter().map(|n| n.allocated).collect();
        prop_assert_eq!(index.allocated(), allocated.as_slice());
    }

    #[test]
    fn spread_evens_out_equal_nodes(
        m in 1..8usize,
        initial in prop::collection::vec(0..4usize, 8),
        count in 0..24usize,
        zones in 1..4usize,
        by_zone in any::<bool>(),
    ) {
        let nodes: Vec<NodeView> = (0..m)
            .map(|i| NodeView::new(format!("n{i}"), Resources::new(64_000, 256 * GIB))
                .with_label("zone", format!("z{}", i % zones)))
            .collect();
        let w = WorkloadView {
            strategy: Scoring::Spread,
            spread_key: by_zone.then(|| "zone".to_string()),
            ..WorkloadView::new("w", Resources::new(100, 128 * MIB), 0)
        };
        let mut existing = Vec::new();
        let mut replica = 0;
        for (i, &k) in initial.iter().take(m).enumerate() {
            for _ in 0..k {
                existing.push(Placement::new(replica, format!("n{i}")));
                replica += 1;
            }
        }
        let result = place(&nodes, &w, &existing, count);
        prop_assert_eq!(result.placements.len(), count);

        // Replay: each replica goes to a node with the fewest replicas (in the fewest-replica
        // zone first with a spread key).
        let zone_of = |id: &str| -> usize { id[1..].parse::<usize>().unwrap_or(0) % zones };
        let mut counts: Vec<usize> = (0..m).map(|i| initial[i]).collect();
        for p in &result.placements {
            let i: usize = p.node_id[1..].parse().unwrap_or(usize::MAX);
            prop_assert!(i < m);
            if by_zone {
                let mut per_zone = vec![0usize; zones.min(m)];
                for (j, c) in counts.iter().enumerate() {
                    per_zone[zone_of(&format!("n{j}"))] += c;
                }
                let zmin = per_zone.iter().copied().min().unwrap_or(0);
                prop_assert_eq!(per_zone[zone_of(&p.node_id)], zmin);
                let in_zone_min = (0..m).filter(|&j| j % zones == i % zones).map(|j| counts[j]).min().unwrap_or(0);
                prop_assert_eq!(counts[i], in_zone_min);
            } else {
                prop_assert_eq!(counts[i], counts.iter().copied().min().unwrap_or(0));
            }
            counts[i] += 1;
        }
        if existing.is_empty() && !by_zone {
            let max = counts.iter().copied().max().unwrap_or(0);
            let min = counts.iter().copied().min().unwrap_or(0);
            prop_assert!(max - min <= 1, "{:?}", counts);
        }
    }

    #[test]
    fn binpack_fills_a_node_before_opening_another(
        m in 1..8usize,
        per in 1..5u64,
        quarters in prop::collection::vec(0..=4u64, 8),
        count in 0..32usize,
    ) {
        // Equal nodes, some partly used (in whole replicas, so fractions differ visibly).
        let req = Resources::new(500, GIB);
        let cap = Resources::new(500 * per, per * GIB);
        let nodes: Vec<NodeView> = (0..m)
            .map(|i| {
                let used = quarters[i].min(per);
                NodeView::new(format!("n{i}"), cap)
                    .with_allocated(Resources::new(500 * used, used * GIB))
            })
            .collect();
        let w = WorkloadView::new("w", req, 0);
        let result = place(&nodes, &w, &[], count);
        let mut allocated: Vec<Resources> = nodes.iter().map(|n| n.allocated).collect();
        for p in &result.placements {
            let i: usize = p.node_id[1..].parse().unwrap_or(usize::MAX);
            prop_assert!(i < m);
            // The fullest node that fits takes it.
            let fits = |a: Resources| req.fits_in(cap.saturating_sub(a));
            let fullest = allocated.iter().copied().filter(|a| fits(*a)).map(|a| a.cpu_millis).max();
            prop_assert_eq!(Some(allocated[i].cpu_millis), fullest);
            allocated[i] = allocated[i].saturating_add(req);
        }
        // From empty nodes: ceil(count / per) nodes used, all full but the last.
        if quarters.iter().take(m).all(|&q| q == 0) {
            let used = per_node(&result.placements);
            let fit = (m as u64 * per) as usize;
            let expect = count.min(fit).div_ceil(per as usize);
            prop_assert_eq!(used.len(), expect);
            prop_assert!(used.values().filter(|&&k| (k as u64) < per).count() <= 1);
        }
    }

    #[test]
    fn scale_reaches_the_target_and_removes_only_existing((nodes, w, existing, _count) in arb_case(), target in 0..12u32) {
        let w = WorkloadView { replicas: target, ..w };
        let plan = plan_scale(&nodes, &w, &existing);
        let target = target as usize;
        if existing.len() > target {
            prop_assert!(plan.place.placements.is_empty() && plan.place.unplaced.is_empty());
            prop_assert_eq!(plan.remove.len(), existing.len() - target);
            let all: BTreeSet<&Placement> = existing.iter().collect();
            let removed: BTreeSet<&Placement> = plan.remove.iter().collect();
            prop_assert_eq!(removed.len(), plan.remove.len(), "removed twice");
            prop_assert!(removed.is_subset(&all));
            prop_assert_eq!(&choose_removals(&nodes, &w, &existing, existing.len() - target), &plan.remove);
        } else {
            prop_assert!(plan.remove.is_empty());
            prop_assert_eq!(plan.place.placements.len() + plan.place.unplaced.len(), target - existing.len());
        }
    }

    #[test]
    fn drain_moves_everything_off_without_breaking_guarantees(
        nodes in arb_nodes(8),
        ws in prop::collection::vec((arb_workload(), prop::collection::vec(0..8usize, 0..6)), 1..4),
        drained in 0..8usize,
    ) {
        prop_assume!(!nodes.is_empty());
        let drained = nodes[drained % nodes.len()].id.clone();
        let deployed: Vec<Deployed> = ws
            .into_iter()
            .enumerate()
            .map(|(j, (w, on))| Deployed {
                workload: WorkloadView { name: format!("w{j}"), ..w },
                placements: on
                    .into_iter()
                    .enumerate()
                    .map(|(r, n)| Placement::new(r as u32, nodes[n % nodes.len()].id.clone()))
                    .collect(),
            })
            .collect();
        let plan = plan_drain(&drained, &nodes, &deployed);
        let on_drained: usize = deployed
            .iter()
            .map(|d| d.placements.iter().filter(|p| p.node_id == drained).count())
            .sum();
        prop_assert_eq!(plan.moves.len() + plan.stuck.len(), on_drained);

        let mut allocated: BTreeMap<&str, Resources> =
            nodes.iter().map(|n| (n.id.as_str(), n.allocated)).collect();
        for m in &plan.moves {
            prop_assert_eq!(&m.from, &drained);
            prop_assert!(m.to != drained);
            let d = deployed.iter().find(|d| d.workload.name == m.workload);
            prop_assert!(d.is_some());
            let d = d.unwrap_or(&deployed[0]);
            let node = nodes.iter().find(|n| n.id == m.to);
            prop_assert!(node.is_some());
            let node = node.unwrap_or(&nodes[0]);
            prop_assert!(node.ready && node.schedulable);
            for c in &d.workload.constraints {
                prop_assert!(c.matches(&node.labels));
            }
            if d.workload.anti_affinity == AntiAffinity::Hard {
                prop_assert!(!d.placements.iter().any(|p| p.node_id == m.to));
                prop_assert_eq!(plan.moves.iter().filter(|o| o.workload == m.workload && o.to == m.to).count(), 1);
            }
            let a = allocated.entry(m.to.as_str()).or_default();
            *a = a.saturating_add(d.workload.resources);
            prop_assert!(a.fits_in(node.capacity), "{} over-committed", m.to);
        }
        for s in &plan.stuck {
            prop_assert_eq!(s.reason.accounted(), nodes.len());
            prop_assert!(s.reason.draining >= 1);
        }
    }

    #[test]
    fn rolling_update_keeps_its_bounds_and_finishes(
        replicas in 1..6u32,
        max_unavailable in 0..3u32,
        max_surge in 0..3u32,
        not_ready in prop::collection::vec(any::<bool>(), 6),
        world in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let nodes: Vec<NodeView> = (0..8)
            .map(|i| NodeView::new(format!("n{i}"), Resources::new(64_000, 256 * GIB)))
            .collect();
        let w = WorkloadView::new("w", Resources::new(100, 128 * MIB), replicas);
        let policy = RolloutPolicy { max_unavailable, max_surge };
        let effective_unavailable = if max_unavailable == 0 && max_surge == 0 { 1 } else { max_unavailable } as usize;
        let r = replicas as usize;
        let mut state: Vec<RolloutInstance> = (0..replicas)
            .map(|i| RolloutInstance {
                id: format!("old{i}"),
                replica: i,
                node_id: format!("n{i}"),
                up_to_date: false,
                state: if not_ready[i as usize] { InstanceState::NotReady } else { InstanceState::Ready },
            })
            .collect();
        let unavailable = |state: &[RolloutInstance]| {
            (0..replicas)
                .filter(|&s| !state.iter().any(|i| i.replica == s && i.state == InstanceState::Ready))
                .count()
        };
        let mut world = world.into_iter();
        let mut next_id = 0;
        let mut finished = false;
        for _ in 0..400 {
            let step = plan_rollout(&nodes, &w, &state, policy);
            if step.done {
                prop_assert!(step.stop.is_empty() && step.start.placements.is_empty());
                finished = true;
                break;
            }
            let (unavailable_before, total_before) = (unavailable(&state), state.len());
            for id in &step.stop {
                let inst = state.iter_mut().find(|i| &i.id == id);
                prop_assert!(inst.is_some(), "stop of unknown {}", id);
                if let Some(inst) = inst {
                    prop_assert!(inst.state != InstanceState::Stopping, "{} stopped twice", id);
                    inst.state = InstanceState::Stopping;
                }
            }
            for p in &step.start.placements {
                prop_assert!((p.replica as usize) < r);
                state.push(RolloutInstance {
                    id: format!("new{next_id}"),
                    replica: p.replica,
                    node_id: p.node_id.clone(),
                    up_to_date: true,
                    state: InstanceState::NotReady,
                });
                next_id += 1;
            }
            prop_assert!(step.start.unplaced.is_empty());
            prop_assert!(unavailable(&state) <= unavailable_before.max(effective_unavailable),
                "availability: {} unavailable after, {} before", unavailable(&state), unavailable_before);
            prop_assert!(state.len() <= total_before.max(r + max_surge as usize),
                "surge: {} instances after, {} before", state.len(), total_before);

            // The world: instances become ready and stopping ones go away, at the pace of the
            // generated bytes, then all at once.
            let mut gone = Vec::new();
            for (k, inst) in state.iter_mut().enumerate() {
                let progress = world.next().is_none_or(|b| b % 3 == 0);
                match inst.state {
                    InstanceState::NotReady if progress && inst.up_to_date => inst.state = InstanceState::Ready,
                    InstanceState::Stopping if progress => gone.push(k),
                    _ => {}
                }
            }
            for k in gone.into_iter().rev() {
                state.remove(k);
            }
        }
        prop_assert!(finished, "rollout did not finish: {:?}", state);
        prop_assert_eq!(state.len(), r);
        prop_assert!(state.iter().all(|i| i.up_to_date && i.state == InstanceState::Ready));
    }
}

#[test]
fn the_issue_example_reason() {
    // "no node with 4 GiB of free memory": three nodes short of memory, one in the wrong zone,
    // two cordoned.
    let mut nodes: Vec<NodeView> = (0..3)
        .map(|i| {
            NodeView::new(format!("n{i}"), Resources::new(8000, 8 * GIB))
                .with_label("zone", "a")
                .with_allocated(Resources::new(1000, 5 * GIB))
        })
        .collect();
    nodes.push(NodeView::new("n3", Resources::new(8000, 8 * GIB)).with_label("zone", "b"));
    for i in 4..6 {
        nodes.push(NodeView {
            schedulable: false,
            ..NodeView::new(format!("n{i}"), Resources::new(8000, 8 * GIB)).with_label("zone", "a")
        });
    }
    let w = WorkloadView {
        constraints: vec![LabelSelector::not_in("zone", ["b"])],
        ..WorkloadView::new("db", Resources::new(1000, 4 * GIB), 1)
    };
    let result: PlanResult = place(&nodes, &w, &[], 1);
    assert_eq!(
        result.unplaced[0].reason.to_string(),
        "no node with 4 GiB of free memory (3 nodes short of memory, 1 excluded by constraint zone notin (b), 2 cordoned)"
    );
}
