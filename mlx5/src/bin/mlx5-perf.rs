//! mlx5-perf: perftest-style bandwidth and latency of the soft HCA.
fn main() {}
