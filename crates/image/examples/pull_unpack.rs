//! Benchmark: pull and unpack a ~100 MB image from a local docker-registry, Flotilla's store
//! against `skopeo copy docker://… oci:DIR` + `umoci unpack`, in the same run, alternating
//! the order each round. Prints a table and one JSON line.
//!
//! `cargo run --release -p flotilla-image --features test-support --example pull_unpack -- [--size-mb N] [--runs N]`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flotilla_image::registry::push_oci_layout;
use flotilla_image::testimage::{build_big_oci_layout, busybox_path};
use flotilla_image::testregistry::{temp_dir, TestRegistry};
use flotilla_image::{ImageStore, PullOptions, RegistryAuth, StoreOptions};

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn main() -> anyhow::Result<()> {
    let mut size_mb = 100u64;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mb" => size_mb = args.next().expect("value").parse()?,
            "--runs" => runs = args.next().expect("value").parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let work = temp_dir("flotilla-bench-pull")?;
    let result = bench(&work, size_mb, runs);
    std::fs::remove_dir_all(&work)?;
    result
}

fn bench(work: &Path, size_mb: u64, runs: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reg = TestRegistry::start_plain()?;
    let layout = work.join("layout");
    let t = Instant::now();
    let info = build_big_oci_layout(&busybox_path(), &layout, "big", size_mb << 20)?;
    let blob_bytes: u64 = info
        .layers
        .iter()
        .map(|d| {
            std::fs::metadata(layout.join("blobs/sha256").join(d.hex()))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let reference = reg.reference("bench/big:1");
    rt.block_on(push_oci_layout(
        &layout,
        None,
        &reference,
        &reg.options(RegistryAuth::Anonymous),
    ))?;
    eprintln!(
        "image built and pushed in {:.1} s: {} layers, {:.1} MB of blobs",
        t.elapsed().as_secs_f64(),
        info.layers.len(),
        blob_bytes as f64 / 1e6
    );

    let opts = PullOptions {
        registry: reg.options(RegistryAuth::Anonymous),
        ..PullOptions::default()
    };
    let mut ours = Vec::new();
    let mut ours_nosync = Vec::new();
    let mut theirs = Vec::new();
    let flotilla = |fsync: bool, out: &mut Vec<f64>| -> anyhow::Result<()> {
        let root = work.join("store");
        let store = ImageStore::open_with(
            &root,
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )?;
        let t = Instant::now();
        let img = rt.block_on(store.pull(&reference, &opts))?;
        out.push(t.elapsed().as_secs_f64());
        assert!(store.layer_dirs(&img)[1].join("bin/busybox").is_file());
        drop(store);
        std::fs::remove_dir_all(&root)?;
        Ok(())
    };
    let skopeo_umoci = |out: &mut Vec<f64>| -> anyhow::Result<()> {
        let oci = work.join("skopeo-oci");
        let bundle = work.join("umoci-bundle");
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:big", oci.display())))?;
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:big", oci.display()))
            .arg(&bundle))?;
        out.push(t.elapsed().as_secs_f64());
        assert!(bundle.join("rootfs/bin/busybox").is_file());
        std::fs::remove_dir_all(&oci)?;
        std::fs::remove_dir_all(&bundle)?;
        Ok(())
    };
    // One warm-up round of each (page cache, registry), not counted.
    flotilla(true, &mut Vec::new())?;
    skopeo_umoci(&mut Vec::new())?;
    for i in 0..runs {
        if i % 2 == 0 {
            flotilla(true, &mut ours)?;
            flotilla(false, &mut ours_nosync)?;
            skopeo_umoci(&mut theirs)?;
        } else {
            skopeo_umoci(&mut theirs)?;
            flotilla(false, &mut ours_nosync)?;
            flotilla(true, &mut ours)?;
        }
        eprintln!(
            "run {}: flotilla {:.3} s, flotilla (no fsync) {:.3} s, skopeo+umoci {:.3} s",
            i + 1,
            ours[i],
            ours_nosync[i],
            theirs[i]
        );
    }
    let (om, omin, omax) = stats(&mut ours);
    let (nm, nmin, nmax) = stats(&mut ours_nosync);
    let (tm, tmin, tmax) = stats(&mut theirs);
    println!(
        "pull+unpack of a {:.1} MB image ({} layers) from docker-registry on loopback, {} runs",
        blob_bytes as f64 / 1e6,
        info.layers.len(),
        runs
    );
    println!("{:<34} {:>9} {:>9} {:>9}", "", "median s", "min s", "max s");
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.3}",
        "flotilla pull (fsync, default)", om, omin, omax
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.3}",
        "flotilla pull (no fsync)", nm, nmin, nmax
    );
    println!(
        "{:<34} {:>9.3} {:>9.3} {:>9.3}",
        "skopeo copy + umoci unpack", tm, tmin, tmax
    );
    println!(
        "ratio flotilla/skopeo+umoci (median): {:.2} (no fsync: {:.2})",
        om / tm,
        nm / tm
    );
    println!(
        "{}",
        serde_json::json!({"bench": "pull_unpack", "blob_mb": blob_bytes as f64 / 1e6, "runs": runs,
            "flotilla_median_s": om, "flotilla_min_s": omin, "flotilla_nosync_median_s": nm,
            "skopeo_umoci_median_s": tm, "skopeo_umoci_min_s": tmin, "ratio": om / tm})
    );
    Ok(())
}
