//! The multi-call `rota` binary.
fn main() {}
