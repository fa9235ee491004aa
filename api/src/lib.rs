//! Serialized types at Flotilla API boundaries.
