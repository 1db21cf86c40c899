//! Where GCRA states live: this process's memory, or Redis for many replicas.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
