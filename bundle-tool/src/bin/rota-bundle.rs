//! Host-side bundle tool.
fn main() {}
