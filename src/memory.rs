//! The memory allocator of every program that links evalsink: jemalloc on Linux.
//!
//! glibc's malloc was about a tenth of the CPU time of a replay into PostgreSQL (events are
//! decoded on one thread and freed on another, and its heaps were given back to the system
//! and faulted in again, 60,000 page faults per 100,000 events), and it kept the free holes
//! that the Parquet encoders' large buffers leave, so a long replay's memory crept up.
//! jemalloc with two arenas and a background thread that gives freed pages back after a
//! second: the Parquet replay of `scripts/bench-parquet.sh` 25% faster at the same peak memory.

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`: a C string, which jemalloc reads at start through a
/// pointer to its first byte). `_RJEM_MALLOC_CONF` in the environment overrides them.
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 =
    &b"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];
