//! Why a replica could not be placed: every node counted once, under the first filter that
//! rejected it, and a sentence for the workload's status, for example
//! `no node with 4 GiB of free memory (3 nodes short of memory, 1 excluded by constraint zone=b, 2 cordoned)`.

use std::fmt;

use crate::types::Resources;

/// Counts by the resource dimension that was missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DimensionCounts {
    /// Only CPU was missing.
    pub cpu: usize,
    /// Only memory was missing.
    pub memory: usize,
    /// Both were missing.
    pub both: usize,
}

impl DimensionCounts {
    pub fn total(&self) -> usize {
        self.cpu + self.memory + self.both
    }

    pub(crate) fn add(&mut self, cpu_missing: bool, memory_missing: bool) {
        match (cpu_missing, memory_missing) {
            (true, true) => self.both += 1,
            (true, false) => self.cpu += 1,
            (false, true) => self.memory += 1,
            (false, false) => {}
        }
    }

    fn cpu_limits(&self) -> bool {
        self.cpu + self.both > 0
    }

    fn memory_limits(&self) -> bool {
        self.memory + self.both > 0
    }
}

/// Why no node could take a replica, when the plan gave up. Every node given to the planner is
/// counted in exactly one field, by the first check it failed in this order: draining, not
/// ready, cordoned, constraints (first failing selector), too small, hard anti-affinity, short of
/// free resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reason {
    /// What one replica requests.
    pub request: Resources,
    /// How many nodes were considered.
    pub nodes: usize,
    /// The node being drained.
    pub draining: usize,
    /// Lease not valid.
    pub not_ready: usize,
    pub cordoned: usize,
    /// Per selector (in the workload's order, as text): the nodes it was the first to exclude.
    /// Selectors that excluded nothing are absent.
    pub excluded_by: Vec<(String, usize)>,
    /// Capacity (not just free room) below the request.
    pub too_small: DimensionCounts,
    /// Already running a replica of the workload (hard anti-affinity).
    pub anti_affinity: usize,
    /// Free room below the request, counting what the same plan placed before.
    pub short: DimensionCounts,
}

impl Reason {
    /// How many nodes the fields account for (equals `nodes`).
    pub fn accounted(&self) -> usize {
        self.draining
            + self.not_ready
            + self.cordoned
            + self.excluded_by.iter().map(|(_, n)| n).sum::<usize>()
            + self.too_small.total()
            + self.anti_affinity
            + self.short.total()
    }

    fn headline(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes in the cluster");
        }
        let cpu = self.short.cpu_limits() || self.too_small.cpu_limits();
        let memory = self.short.memory_limits() || self.too_small.memory_limits();
        let req = self.request;
        match (cpu, memory) {
            (true, true) => write!(
                f,
                "no node with {} and {} of memory free",
                Cpu(req.cpu_millis),
                Bytes(req.memory_bytes)
            ),
            (true, false) => write!(f, "no node with {} free", Cpu(req.cpu_millis)),
            (false, true) => write!(f, "no node with {} of free memory", Bytes(req.memory_bytes)),
            (false, false) if self.anti_affinity > 0 => {
                f.write_str("no node without a replica of this workload (hard anti-affinity)")
            }
            (false, false) => match self.excluded_by.as_slice() {
                [(selector, _)] => write!(f, "no node matches constraint {selector}"),
                [_, _, ..] => f.write_str("no node matches the constraints"),
                [] => f.write_str("no ready, schedulable node"),
            },
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.headline(f)?;
        let mut items: Vec<(usize, String)> = Vec::new();
        let dims = |c: &DimensionCounts,
                    items: &mut Vec<(usize, String)>,
                    what: &dyn Fn(&str) -> String| {
            for (n, dim) in [
                (c.memory, "memory"),
                (c.cpu, "CPU"),
                (c.both, "CPU and memory"),
            ] {
                if n > 0 {
                    items.push((n, what(dim)));
                }
            }
        };
        dims(&self.short, &mut items, &|d| format!("short of {d}"));
        dims(&self.too_small, &mut items, &|d| {
            format!("with too little {d} in total")
        });
        if self.anti_affinity > 0 {
            items.push((self.anti_affinity, "already running a replica".into()));
        }
        for (selector, n) in &self.excluded_by {
            items.push((*n, format!("excluded by constraint {selector}")));
        }
        for (n, what) in [
            (self.draining, "draining"),
            (self.cordoned, "cordoned"),
            (self.not_ready, "not ready"),
        ] {
            if n > 0 {
                items.push((n, what.into()));
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        f.write_str(" (")?;
        for (i, (n, what)) in items.iter().enumerate() {
            match (i, n) {
                (0, 1) => write!(f, "1 node {what}")?,
                (0, n) => write!(f, "{n} nodes {what}")?,
                (_, n) => write!(f, ", {n} {what}")?,
            }
        }
        f.write_str(")")
    }
}

/// CPU in millicores, shown as `250m CPU`, `1 CPU`, `1.5 CPUs`.
#[derive(Debug, Clone, Copy)]
pub struct Cpu(pub u64);

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        if m < 1000 {
            return write!(f, "{m}m CPU");
        }
        let whole = m / 1000;
        let frac = m % 1000;
        let plural = if m == 1000 { "" } else { "s" };
        if frac == 0 {
            write!(f, "{whole} CPU{plural}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{whole}.{} CPU{plural}", frac.trim_end_matches('0'))
        }
    }
}

/// Bytes in binary units, shown as `512 MiB`, `1.5 GiB` (at most two decimals, rounded down).
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let b = self.0;
        let mut unit = 0;
        while unit + 1 < UNITS.len() && b >> (10 * (unit + 1)) > 0 {
            unit += 1;
        }
        let size = 1u128 << (10 * unit);
        let whole = u128::from(b) / size;
        let hundredths = (u128::from(b) % size) * 100 / size;
        let name = UNITS[unit];
        if hundredths == 0 {
            write!(f, "{whole} {name}")
        } else {
            let frac = format!("{hundredths:02}");
            write!(f, "{whole}.{} {name}", frac.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn units() {
        assert_eq!(Cpu(250).to_string(), "250m CPU");
        assert_eq!(Cpu(1000).to_string(), "1 CPU");
        assert_eq!(Cpu(2000).to_string(), "2 CPUs");
        assert_eq!(Cpu(1500).to_string(), "1.5 CPUs");
        assert_eq!(Cpu(1250).to_string(), "1.25 CPUs");
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(512 << 20).to_string(), "512 MiB");
        assert_eq!(Bytes(4 * GIB).to_string(), "4 GiB");
        assert_eq!(Bytes(3 * GIB / 2).to_string(), "1.5 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "15.99 EiB");
    }

    #[test]
    fn nomad_like_sentence() {
        let reason = Reason {
            request: Resources::new(500, 4 * GIB),
            nodes: 6,
            cordoned: 2,
            excluded_by: vec![("zone=b".into(), 1)],
            short: DimensionCounts {
                memory: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(reason.accounted(), 6);
        assert_eq!(
            reason.to_string(),
            "no node with 4 GiB of free memory (3 nodes short of memory, 1 excluded by constraint zone=b, 2 cordoned)"
        );
    }

    #[test]
    fn headline_names_the_limiting_dimensions() {
        let mut reason = Reason {
            request: Resources::new(1500, GIB),
            nodes: 2,
            short: DimensionCounts {
                cpu: 1,
                ..Default::default()
            },
            too_small: DimensionCounts {
                memory: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            reason.to_string(),
            "no node with 1.5 CPUs and 1 GiB of memory free (1 node short of CPU, 1 with too little memory in total)"
        );
        reason.too_small = DimensionCounts::default();
        reason.not_ready = 1;
        assert_eq!(
            reason.to_string(),
            "no node with 1.5 CPUs free (1 node short of CPU, 1 not ready)"
        );
    }

    #[test]
    fn headlines_without_resource_shortage() {
        let base = Reason {
            request: Resources::new(100, GIB),
            nodes: 3,
            ..Default::default()
        };
        let r = Reason {
            anti_affinity: 2,
            cordoned: 1,
            ..base.clone()
        };
        assert_eq!(
            r.to_string(),
            "no node without a replica of this workload (hard anti-affinity) (2 nodes already running a replica, 1 cordoned)"
        );
        let r = Reason {
            excluded_by: vec![("zone in (a, b)".into(), 2), ("!gpu".into(), 1)],
            ..base.clone()
        };
        assert_eq!(
            r.to_string(),
            "no node matches the constraints (2 nodes excluded by constraint zone in (a, b), 1 excluded by constraint !gpu)"
        );
        let r = Reason {
            not_ready: 2,
            draining: 1,
            ..base.clone()
        };
        assert_eq!(
            r.to_string(),
            "no ready, schedulable node (1 node draining, 2 not ready)"
        );
        let r = Reason { nodes: 0, ..base };
        assert_eq!(r.to_string(), "no nodes in the cluster");
    }
}
