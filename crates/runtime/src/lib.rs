//! Flotilla node container runtime.
