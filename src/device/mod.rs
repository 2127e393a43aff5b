//! The one core block-device trait, the capability traits beside it, and
//! the error type every device returns.
//!
//! Everything that moves blocks in umbra is a [`BlockDevice`]: the backends
//! (memory, file), every data service (a service is a device that owns the
//! device below it), and the volume itself (the top of its stack). Exports
//! (NBD, ublk) only ever talk to this trait.
//!
//! # Contract
//! * All methods take `&self` and may be called from many threads at once.
//!   A device orders nothing between concurrent requests; callers that need
//!   an order wait for the earlier request to complete.
//! * `offset` and lengths are in bytes. Every request must lie inside
//!   `[0, size_bytes())`; a device checks and returns
//!   [`DeviceError::OutOfRange`] (EINVAL at the export boundary) rather than
//!   touching anything.
//! * A completed `write` is visible to every later `read`. It is *durable*
//!   (survives power loss or `kill -9` of the daemon) only once a later
//!   `flush` has completed, or at once when it was written with `fua = true`.
//! * `flush` makes durable every write that completed before the flush was
//!   issued, from any thread or connection (volume-wide, which is what lets
//!   NBD advertise multi-conn).
//! * `discard` is advisory for data (later reads may return old data or
//!   zeroes, umbra's backends return zeroes); `write_zeroes` is not: later
//!   reads return zeroes.
//! * After an I/O error on a flush, the device does not pretend the next
//!   flush covers what the failed one lost: see `FileBackend`'s fail-stop.

pub mod testing;

use std::io;

/// Sector size the exports speak in. Requests are byte-addressed, but the
/// NBD and ublk frontends advertise this as the minimum block size.
pub const SECTOR_SIZE_BYTES: u64 = 512;

/// Errors a block device returns. Each maps to one errno, which is what both
/// the NBD and the ublk frontends complete requests with.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("request [{offset}, +{len}) is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("I/O error at offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("flush failed: {source}")]
    Flush {
        #[source]
        source: io::Error,
    },
    #[error("device is failed after an earlier I/O error ({reason}); reopen it")]
    Failed { reason: String },
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("device is read-only")]
    ReadOnly,
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("volume is shutting down")]
    ShuttingDown,
}

impl DeviceError {
    /// The errno this error is reported as at an export boundary.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::OutOfRange { .. } => libc::EINVAL,
            DeviceError::Io { source, .. } | DeviceError::Flush { source } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            DeviceError::Failed { .. } => libc::EIO,
            DeviceError::Unsupported(_) => libc::EOPNOTSUPP,
            DeviceError::ReadOnly => libc::EPERM,
            DeviceError::NoSpace(_) => libc::ENOSPC,
            DeviceError::ShuttingDown => libc::ESHUTDOWN,
        }
    }

    pub fn io(offset: u64, source: io::Error) -> Self {
        DeviceError::Io { offset, source }
    }
}

pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// The core block-device trait. See the module docs for the contract.
pub trait BlockDevice: Send + Sync {
    /// Capacity in bytes; fixed for the life of the device object.
    fn size_bytes(&self) -> u64;

    /// Read `buf.len()` bytes at `offset`.
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` at `offset`; with `fua` the data is durable on return.
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()>;

    /// Make every write completed before this call durable.
    fn flush(&self) -> Result<()>;

    /// Tell the device the range is unused. Reads of it return zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Make the range read as zeroes; with `fua` durable on return.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()>;

    /// Preferred I/O granularity (the export's minimum block size).
    fn block_size_bytes(&self) -> u32 {
        SECTOR_SIZE_BYTES as u32
    }

    /// Whether a request usually completes without sleeping (memory, the
    /// page cache) or may block for a device or network round trip. The
    /// NBD frontend runs `Memory`-class requests inline on the connection
    /// thread and hands `Blocking`-class ones to workers. Layers answer for
    /// the whole chain below them; the safe default is `Blocking`.
    fn latency_class(&self) -> LatencyClass {
        LatencyClass::Blocking
    }

    /// Whether a write (or discard, write-zeroes) of this range may block
    /// beyond the device's latency class: a layer with work to do first
    /// (imaging's copy-on-write and bitmap commit) says so for the ranges
    /// that need it, so a frontend runs only those off its inline path.
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        self.latency_class() == LatencyClass::Blocking
    }

    /// Whether every client write is refused right now (a replication
    /// secondary's guard): exports then offer the device read-only.
    fn refuses_writes(&self) -> bool {
        false
    }

    /// Why the device refuses all I/O, once it does (a file backend after
    /// a failed flush or FUA write: fail-stop); `None` while it serves.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Which parts of `[offset, offset + len)` are allocated, as runs that
    /// start at `offset`, in order, the first non-empty; they may stop
    /// short of `len` (the caller asks again from where they end). A hole
    /// is unallocated and reads as zeroes. The safe answer, the default, is
    /// "all data": a layer that may serve other data than its lower
    /// device's (imaging, a write-back cache) must not pass the lower's
    /// holes on.
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(offset, len, self.size_bytes())?;
        Ok(vec![Extent { len, hole: false }])
    }

    /// The regular file this device reads as, byte for byte at the same
    /// offsets, if any: a file backend's own, or its lower's through a
    /// layer whose reads are its lower's (replication, a write-through
    /// cache). The source of [`BlockDevice::clone_range_from`].
    fn clone_source(&self) -> Option<&std::fs::File> {
        None
    }

    /// Make `[offset, offset + len)` hold what `src` holds at the same
    /// offsets by sharing the filesystem's extents (FICLONERANGE on XFS and
    /// btrfs): no data is read or written. `Ok(false)`: not possible here
    /// (another filesystem, unaligned, not a plain file), the caller copies.
    /// Only a file backend does it: every layer must see the data written
    /// through it, so the default refuses.
    fn clone_range_from(&self, _src: &std::fs::File, _offset: u64, _len: u64) -> Result<bool> {
        Ok(false)
    }
}

/// Runs shorter than this are read rather than asked about with
/// [`BlockDevice::allocation`] (copy-on-write, resync): a hole query can
/// walk far past a small run (tmpfs's SEEK_HOLE scans the page cache up to
/// the next hole, the whole file when it has none), and a run that reads
/// as zeroes still becomes a zeroing.
pub const HOLE_QUERY_MIN_BYTES: u64 = 256 << 10;

/// A run of [`BlockDevice::allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Unallocated, reads as zeroes.
    pub hole: bool,
}

/// See [`BlockDevice::latency_class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyClass {
    Memory,
    Blocking,
}

/// Capability: a device that can tell where it is stored (for `volume info`).
pub trait Describe {
    fn describe(&self) -> String;
}

/// Check that `[offset, offset+len)` lies inside a device of `size` bytes.
/// Every device calls this before touching anything.
#[inline]
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange { offset, len, size }),
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn size_bytes(&self) -> u64 {
        (**self).size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        (**self).write(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        (**self).write_zeroes(offset, len, fua)
    }
    fn block_size_bytes(&self) -> u32 {
        (**self).block_size_bytes()
    }
    fn latency_class(&self) -> LatencyClass {
        (**self).latency_class()
    }
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        (**self).write_may_block(offset, len)
    }
    fn failure(&self) -> Option<String> {
        (**self).failure()
    }
    fn refuses_writes(&self) -> bool {
        (**self).refuses_writes()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        (**self).allocation(offset, len)
    }
    fn clone_source(&self) -> Option<&std::fs::File> {
        (**self).clone_source()
    }
    fn clone_range_from(&self, src: &std::fs::File, offset: u64, len: u64) -> Result<bool> {
        (**self).clone_range_from(src, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_check_rejects_overflow_and_past_end() {
        assert!(check_range(0, 4096, 4096).is_ok());
        assert!(check_range(4096, 0, 4096).is_ok());
        assert!(check_range(1, 4096, 4096).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn errors_map_to_errno() {
        let e = DeviceError::OutOfRange {
            offset: 1,
            len: 2,
            size: 0,
        };
        assert_eq!(e.errno(), libc::EINVAL);
        assert_eq!(DeviceError::NoSpace("x".into()).errno(), libc::ENOSPC);
        let e = DeviceError::io(0, io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
    }
}
