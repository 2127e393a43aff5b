//! Page-aligned byte buffers.
//!
//! `O_DIRECT` needs the memory, the offset and the length aligned to the
//! device's logical block size. The NBD frontend reads request payloads
//! straight into these buffers so the direct-I/O path needs no bounce copy.
//! This is one of the few files with `unsafe`; every block says why it holds.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: 4096 covers both 512-byte and 4 KiB
/// logical-block devices and the page size of every target we run on.
pub const BUF_ALIGN_BYTES: usize = 4096;

/// A heap buffer aligned to [`BUF_ALIGN_BYTES`], zero-filled at allocation.
/// Its length can shrink and grow up to the capacity it was allocated with.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); moving it
// to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocate `capacity` bytes (rounded up to the alignment, at least one
    /// page), zeroed, with length `capacity`.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_multiple_of(BUF_ALIGN_BYTES);
        let layout = Layout::from_size_align(capacity, BUF_ALIGN_BYTES)
            .expect("aligned buffer size overflows isize");
        // SAFETY: layout has a non-zero size (capacity >= BUF_ALIGN_BYTES).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: capacity,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Set the visible length. Bytes between the old and new length keep
    /// whatever an earlier use left there (always initialised: the
    /// allocation was zeroed).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "AlignedBuf::set_len beyond capacity");
        self.len = len;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for `capacity` initialised bytes (zeroed at
        // allocation) for the life of self, and len <= capacity.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.capacity, BUF_ALIGN_BYTES)
            .expect("layout was valid at allocation");
        // SAFETY: ptr was allocated by alloc_zeroed with this exact layout and
        // is freed once, here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Is `buf` usable for `O_DIRECT` at `offset` as it stands?
pub fn is_direct_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize) % BUF_ALIGN_BYTES == 0
        && buf.len() % BUF_ALIGN_BYTES == 0
        && offset % BUF_ALIGN_BYTES as u64 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(100);
        assert_eq!(b.len(), 4096);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        assert!(b.iter().all(|&x| x == 0));
        b.set_len(10);
        b[9] = 7;
        assert!(!is_direct_aligned(&b, 0));
        b.set_len(4096);
        assert!(is_direct_aligned(&b, 8192));
        assert!(!is_direct_aligned(&b, 512));
    }
}
