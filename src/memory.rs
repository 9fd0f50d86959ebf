//! Gives memory freed during bootstrap back to the operating system.
//!
//! Bootstrap churns through short-lived buffers (librdkafka fetch batches, decoded keys and values)
//! interleaved with the long-lived records, and glibc keeps the freed pages. `malloc_trim` gives
//! them back: about 35 bytes per entry when measured at a million small entries (BENCHMARKS.md).
//! That measured win is why this module contains `unsafe` (the other place is `store/record.rs`,
//! for thin record pointers).

/// Returns free heap pages to the OS (glibc only; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks glibc's own allocator state and takes its locks; it has no
    // preconditions on the caller and does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}
