//! Embedding examples for dbops: see `examples/`.
