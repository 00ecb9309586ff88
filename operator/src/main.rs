//! `mip-operator` (docs/operator.md).

fn main() {}
