//! Views built from the replicated cluster state (`flotilla_api::cluster`), which this crate
//! reads and never changes. Lease validity needs the leader's clock, so the caller says which
//! nodes are ready.

use std::collections::BTreeMap;

use flotilla_api::cluster as api;

use crate::types::{
    AntiAffinity, LabelSelector, NodeView, Resources, SelectorOp, Strategy, WorkloadView,
};

impl From<&api::Capacity> for Resources {
    fn from(c: &api::Capacity) -> Self {
        Resources::new(c.cpu_millis, c.memory_bytes)
    }
}

impl From<&api::WorkloadResources> for Resources {
    fn from(r: &api::WorkloadResources) -> Self {
        Resources::new(r.cpu_millis, r.memory_bytes)
    }
}

impl From<&api::LabelConstraint> for LabelSelector {
    fn from(c: &api::LabelConstraint) -> Self {
        let op = match c.op {
            api::ConstraintOp::In => SelectorOp::In(c.values.clone()),
            api::ConstraintOp::NotIn => SelectorOp::NotIn(c.values.clone()),
            api::ConstraintOp::Exists => SelectorOp::Exists,
            api::ConstraintOp::DoesNotExist => SelectorOp::DoesNotExist,
        };
        LabelSelector {
            key: c.key.clone(),
            op,
        }
    }
}

impl From<api::PlacementStrategy> for Strategy {
    fn from(s: api::PlacementStrategy) -> Self {
        match s {
            api::PlacementStrategy::Binpack => Strategy::Binpack,
            api::PlacementStrategy::Spread => Strategy::Spread,
        }
    }
}

/// The spec's `anti_affinity: true` is hard; the spec has no spread key yet.
impl From<&api::WorkloadSpec> for WorkloadView {
    fn from(spec: &api::WorkloadSpec) -> Self {
        WorkloadView {
            name: spec.name.clone(),
            resources: Resources::from(&spec.resources),
            replicas: spec.replicas,
            constraints: spec
                .placement
                .constraints
                .iter()
                .map(LabelSelector::from)
                .collect(),
            strategy: spec.placement.strategy.into(),
            anti_affinity: if spec.placement.anti_affinity {
                AntiAffinity::Hard
            } else {
                AntiAffinity::None
            },
            spread_key: None,
        }
    }
}

impl NodeView {
    /// `ready`: the lease is valid by the leader's clock; `allocated`: see [`allocated_by_node`].
    pub fn from_record(record: &api::NodeRecord, ready: bool, allocated: Resources) -> Self {
        NodeView {
            id: record.info.id.clone(),
            labels: record.info.labels.clone(),
            capacity: Resources::from(&record.info.capacity),
            allocated,
            schedulable: record.schedulable,
            ready,
        }
    }
}

/// Whether an instance in this phase holds its resources on its owner node: scheduled,
/// running, migrating (on the source) and stopping do; stopped, failed and lost do not.
pub fn holds_resources(phase: api::InstancePhase) -> bool {
    use api::InstancePhase::*;
    match phase {
        Scheduled | Running | Migrating | Stopping => true,
        Stopped | Failed | Lost => false,
    }
}

/// Sums, per owner node, the requests of the instances that hold resources. `resources_of`
/// gives a workload's request per replica (`None`: unknown workload, not counted).
pub fn allocated_by_node<'a>(
    instances: impl IntoIterator<Item = &'a api::InstanceRecord>,
    resources_of: impl Fn(&str) -> Option<Resources>,
) -> BTreeMap<String, Resources> {
    let mut allocated: BTreeMap<String, Resources> = BTreeMap::new();
    for inst in instances {
        let Some(node) = &inst.owner_node else {
            continue;
        };
        if !holds_resources(inst.phase) {
            continue;
        }
        let Some(req) = resources_of(&inst.workload) else {
            continue;
        };
        let slot = allocated.entry(node.clone()).or_default();
        *slot = slot.saturating_add(req);
    }
    allocated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_from_cluster_records() {
        let record = api::NodeRecord {
            info: api::NodeInfo {
                id: "n1".into(),
                address: "198.18.0.2:7000".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                capacity: api::Capacity {
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                },
                features: BTreeMap::new(),
            },
            schedulable: false,
            draining: false,
            ready: None,
            lease: None,
            registered_at_ms: 1,
            updated_at_ms: 2,
            revision: 3,
        };
        let node = NodeView::from_record(&record, true, Resources::new(100, 200));
        assert_eq!(node.capacity, Resources::new(4000, 8 << 30));
        assert!(!node.schedulable && node.ready);
        assert_eq!(node.labels["zone"], "a");

        let spec = api::WorkloadSpec {
            name: "web".into(),
            resources: api::WorkloadResources {
                cpu_millis: 250,
                memory_bytes: 1 << 28,
            },
            replicas: 3,
            placement: api::Placement {
                constraints: vec![api::LabelConstraint {
                    key: "zone".into(),
                    op: api::ConstraintOp::NotIn,
                    values: vec!["b".into()],
                }],
                strategy: api::PlacementStrategy::Spread,
                anti_affinity: true,
            },
            ..Default::default()
        };
        let w = WorkloadView::from(&spec);
        assert_eq!(w.strategy, Strategy::Spread);
        assert_eq!(w.anti_affinity, AntiAffinity::Hard);
        assert_eq!(w.constraints[0].to_string(), "zone notin (b)");
        assert!(w.constraints[0].matches(&node.labels));
    }

    #[test]
    fn allocations_sum_live_instances() {
        let inst = |id: &str, node: Option<&str>, phase| api::InstanceRecord {
            id: id.into(),
            workload: "web".into(),
            owner_node: node.map(Into::into),
            epoch: 1,
            phase,
            observed: None,
            replica: 0,
            generation: 1,
            spec: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            revision: 1,
        };
        let instances = [
            inst("1", Some("a"), api::InstancePhase::Running),
            inst("2", Some("a"), api::InstancePhase::Scheduled),
            inst("3", Some("a"), api::InstancePhase::Failed),
            inst("4", None, api::InstancePhase::Scheduled),
            inst("5", Some("b"), api::InstancePhase::Stopping),
        ];
        let by_node = allocated_by_node(&instances, |w| {
            (w == "web").then_some(Resources::new(100, 10))
        });
        assert_eq!(by_node["a"], Resources::new(200, 20));
        assert_eq!(by_node["b"], Resources::new(100, 10));
        assert_eq!(by_node.len(), 2);
    }
}
