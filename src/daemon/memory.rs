//! Give freed heap back to the system after a burst.
//!
//! Listing the store or programming tens of thousands of entries allocates tens of MiB for a
//! moment (the store's answer, its parsed copy, a read-back of the kernel's tables). glibc's
//! malloc keeps what is freed in its arenas, so without this rnetd's resident size would stay
//! at the peak of its largest burst for good. Bursts are rare; trimming after one costs a
//! millisecond or so.

/// Table changes in one pass from which the pass counts as a burst.
pub const BURST: usize = 1000;

/// Return the free memory at the top of the heap and in every arena to the system.
/// (glibc's; musl's allocator returns freed memory by itself and has no `malloc_trim`.)
pub fn give_back() {
    // SAFETY: malloc_trim takes no pointer and only releases memory the allocator holds free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
