//! Placeholder until the pull/unpack benchmark lands.
fn main() {}
