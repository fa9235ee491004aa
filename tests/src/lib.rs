//! Live test helpers.
