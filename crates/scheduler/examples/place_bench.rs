//! Placements per second of the pure scheduler: 10,000 instances on 1,000 simulated nodes, as
//! 1,000 workloads × 10 replicas and as 100 × 100, one plan per workload, each seeing the
//! allocations of the previous ones: through one `NodeIndex` (the batch path), through
//! `place(&nodes, ..)` per workload, and with the naive rescan as a baseline. Median of `--runs` runs (default 7), by wall
//! time and by the thread's CPU time (the machine is shared: CPU time is the steadier figure).
//!
//! Usage: `place_bench [--runs N] [--nodes N] [--no-reference]`
//! (run through `crates/scheduler/bench/place.sh` for a release build).

use std::collections::HashMap;
use std::time::Instant;

use flotilla_scheduler::reference::place_naive_in;
use flotilla_scheduler::{
    place, AntiAffinity, LabelSelector, NodeIndex, NodeView, PlanResult, Resources, Strategy,
    WorkloadView,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    Binpack,
    Spread,
    /// Binpack and spread, constraints, spread keys, soft and hard anti-affinity.
    Mixed,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Binpack => "binpack",
            Mix::Spread => "spread",
            Mix::Mixed => "mixed",
        }
    }
}

fn nodes(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let (cpu, mem) = match i % 4 {
                0 => (8_000, 32 * GIB),
                3 => (32_000, 128 * GIB),
                _ => (16_000, 64 * GIB),
            };
            NodeView::new(format!("node-{i:04}"), Resources::new(cpu, mem))
                .with_label("zone", ["a", "b", "c", "d", "e"][i % 5])
                .with_label("disk", if i % 3 == 0 { "ssd" } else { "hdd" })
                .with_label("rack", format!("r{:02}", i / 20))
        })
        .collect()
}

fn workloads(count: usize, replicas: u32, mix: Mix) -> Vec<WorkloadView> {
    (0..count)
        .map(|j| {
            let resources = Resources::new(
                [100, 250, 500, 1000][j % 4],
                [128 * MIB, 256 * MIB, 512 * MIB, GIB, 2 * GIB][j % 5],
            );
            let mut w = WorkloadView::new(format!("w{j:04}"), resources, replicas);
            match mix {
                Mix::Binpack => {}
                Mix::Spread => w.strategy = Strategy::Spread,
                Mix::Mixed => {
                    if j % 5 < 2 {
                        w.strategy = Strategy::Spread;
                    }
                    match j % 10 {
                        0 => w.constraints.push(LabelSelector::is_in("zone", ["a", "b"])),
                        1 => w.constraints.push(LabelSelector::equals("disk", "ssd")),
                        _ => {}
                    }
                    if j % 7 == 0 {
                        w.spread_key = Some("zone".into());
                    }
                    w.anti_affinity = match j % 10 {
                        3 => AntiAffinity::Hard,
                        4 => AntiAffinity::Soft,
                        _ => AntiAffinity::None,
                    };
                }
            }
            w
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Planner {
    /// One `NodeIndex` for the whole run (the controller's batch path).
    Index,
    /// `place(&nodes, ..)` per workload, the caller applying each plan to its nodes.
    PerCall,
    /// The naive rescan (`reference::place_naive_in`) on one `NodeIndex`.
    Naive,
}

impl Planner {
    fn name(self) -> &'static str {
        match self {
            Planner::Index => "index",
            Planner::PerCall => "per-call",
            Planner::Naive => "naive",
        }
    }
}

/// CPU time of this thread in seconds: unlike wall time, not inflated by waiting for a CPU on a
/// loaded machine.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

struct Run {
    wall: f64,
    cpu: f64,
    placed: usize,
    unplaced: usize,
}

/// One run over all workloads.
fn run(planner: Planner, template: &[NodeView], workloads: &[WorkloadView]) -> Run {
    let mut nodes = template.to_vec();
    let positions: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let (mut placed, mut unplaced) = (0, 0);
    let start = Instant::now();
    let cpu_start = thread_cpu_secs();
    let mut count = |result: &PlanResult| {
        placed += result.placements.len();
        unplaced += result.unplaced.len();
    };
    match planner {
        Planner::Index | Planner::Naive => {
            let mut index = NodeIndex::new(&nodes);
            for w in workloads {
                let result = if planner == Planner::Index {
                    index.place(w, &[], w.replicas as usize)
                } else {
                    place_naive_in(&mut index, w, &[], w.replicas as usize)
                };
                count(&result);
            }
        }
        Planner::PerCall => {
            for w in workloads {
                let result = place(&nodes, w, &[], w.replicas as usize);
                for p in &result.placements {
                    let node = &mut nodes[positions[&p.node_id]];
                    node.allocated = node.allocated.saturating_add(w.resources);
                }
                count(&result);
            }
        }
    }
    Run {
        wall: start.elapsed().as_secs_f64(),
        cpu: thread_cpu_secs() - cpu_start,
        placed,
        unplaced,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() {
    let mut runs = 7usize;
    let mut node_count = 1000usize;
    let mut reference = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--runs" => runs = value("--runs").max(1),
            "--nodes" => node_count = value("--nodes"),
            "--no-reference" => reference = false,
            other => panic!("unknown argument {other}"),
        }
    }
    let template = nodes(node_count);
    println!("{node_count} nodes, {runs} runs per row (after one warm-up run), medians");
    println!(
        "{:<8} {:<8} {:<8} {:>13} {:>13} {:>13} {:>9} {:>9}",
        "shape", "mix", "planner", "placements/s", "(min..max)", "per CPU-s", "ms", "unplaced"
    );
    for (count, replicas) in [(1000usize, 10u32), (100, 100)] {
        for mix in [Mix::Binpack, Mix::Spread, Mix::Mixed] {
            let ws = workloads(count, replicas, mix);
            let mut planners = vec![Planner::Index, Planner::PerCall];
            if reference && mix == Mix::Mixed {
                planners.push(Planner::Naive);
            }
            for planner in planners {
                let _ = run(planner, &template, &ws);
                let runs: Vec<Run> = (0..runs).map(|_| run(planner, &template, &ws)).collect();
                let rate = |r: &Run| r.placed as f64 / r.wall;
                let lo = runs.iter().map(rate).fold(f64::INFINITY, f64::min);
                let hi = runs.iter().map(rate).fold(0.0, f64::max);
                println!(
                    "{:<8} {:<8} {:<8} {:>13.0} {:>13} {:>13.0} {:>9.2} {:>9}",
                    format!("{count}x{replicas}"),
                    mix.name(),
                    planner.name(),
                    median(runs.iter().map(rate).collect()),
                    format!("{:.0}k..{:.0}k", lo / 1e3, hi / 1e3),
                    median(runs.iter().map(|r| r.placed as f64 / r.cpu).collect()),
                    median(runs.iter().map(|r| r.wall * 1e3).collect()),
                    runs.iter().map(|r| r.unplaced).max().unwrap_or(0),
                );
            }
        }
    }
}
