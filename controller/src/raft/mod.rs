//! Everything that names openraft types lives below this module (and in `store`, `network`),
//! so the move to openraft 0.10 touches one place.

pub mod types;
