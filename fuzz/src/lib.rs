//! rota's fuzz targets: the bodies live in `targets.rs`, which the test
//! suite also includes to replay the corpora on every CI run.

#[path = "targets.rs"]
mod shared;

pub use shared::*;
