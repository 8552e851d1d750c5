//! glibc malloc tuning. glibc gives every thread that allocates its own arena, up to 8 per
//! core, and keeps memory freed in the middle of a heap instead of returning it: the Parquet
//! encoders on tokio's blocking pool allocate large, short-lived buffers on whichever thread
//! runs them, and peak memory of a long replay was twice the memory in use.

/// Two arenas (unless `MALLOC_ARENA_MAX` is set). Call first thing in `main`.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Returns the free pages of every arena to the system.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
