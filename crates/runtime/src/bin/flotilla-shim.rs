//! The shim binary: container zygote/monitor and exec helper. Kept separate
//! from the agent so each container costs the exec of a small binary.
fn main() {
    flotilla_runtime::shim::maybe_run_shim();
    eprintln!("flotilla-shim is started by the Flotilla runtime, not by hand");
    std::process::exit(2);
}
