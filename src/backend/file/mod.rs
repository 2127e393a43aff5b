//! File backend: a regular file or a raw block device.
//!
//! The format × engine grid reads from this folder: one backend (a flat
//! file, byte `n` of the volume is byte `n` of the file) driven by one of two
//! engines, chosen at open and dispatched through an enum:
//! * `engine_uring.rs`: io_uring with batched submission (the default);
//! * `engine_sync.rs`: portable `pread`/`pwrite` from the calling thread.
//!
//! With `direct` the file is opened `O_DIRECT`: page-aligned requests go
//! straight from the caller's buffer; anything else goes through an aligned
//! bounce buffer (reads) or a read-modify-write under a lock (writes).
//!
//! Discard punches a hole (files) or issues BLKDISCARD (devices);
//! write-zeroes uses FALLOC_FL_ZERO_RANGE or BLKZEROOUT, falling back to
//! writing zeroes where the filesystem cannot.
//!
//! Fail-stop: once a flush fails, the kernel may already have dropped the
//! dirty pages it could not write, and a later fsync would report success
//! for data that is gone. So after a failed flush (or FUA write) the
//! backend refuses every write, flush, discard and write-zeroes until it is
//! reopened; reads are still served (they return what the device holds,
//! which is all anyone can have now).

mod engine_sync;
mod engine_uring;
mod ioctl;

use crate::buffer::{is_direct_aligned, AlignedBuf, BUF_ALIGN_BYTES};
use crate::device::{check_range, BlockDevice, Describe, DeviceError, LatencyClass, Result};
use engine_sync::SyncEngine;
use engine_uring::UringEngine;
use nix::fcntl::{fallocate, FallocateFlags};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Which engine drives the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring where requests wait on a device (O_DIRECT, raw block
    /// devices), pread/pwrite on buffered regular files, where a request is
    /// a page-cache copy and a hand-off to the ring thread (and the kernel's
    /// io-wq) costs more than the copy. Measured in tools/bench-nbd.sh.
    #[default]
    Auto,
    /// io_uring, batched submission from a ring thread.
    Uring,
    /// pread/pwrite from the calling thread.
    Sync,
}

impl EngineKind {
    /// The engine `Auto` stands for on a file opened with these properties.
    pub fn resolve(self, direct: bool, is_block_device: bool) -> EngineKind {
        match self {
            EngineKind::Auto if direct || is_block_device => EngineKind::Uring,
            EngineKind::Auto => EngineKind::Sync,
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileOptions {
    #[serde(default)]
    pub engine: EngineKind,
    /// Open with O_DIRECT (bypass the page cache).
    #[serde(default)]
    pub direct: bool,
    /// Added before every request (read, write, flush, discard, write
    /// zeroes), microseconds: a slow device for tests and benchmarks
    /// (dm-delay, nbdkit's delay filter), so queue depth can be measured
    /// on a machine whose storage is memory. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_us: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Errors opening or creating a backing file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; use `volume add` to serve an existing file")]
    Exists { path: PathBuf },
    #[error("{path} is neither a regular file nor a block device")]
    NotAFileOrDevice { path: PathBuf },
    #[error("{path} is empty; a volume needs a size")]
    Empty { path: PathBuf },
    #[error(
        "{path}: O_DIRECT needs a size that is a multiple of {BUF_ALIGN_BYTES} bytes, not {size}"
    )]
    DirectMisaligned { path: PathBuf, size: u64 },
    #[error("cannot start the io_uring engine for {path}: {source}")]
    Uring {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

enum Engine {
    Uring(UringEngine),
    Sync(SyncEngine),
}

impl Engine {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Engine::Uring(e) => e.read_at(buf, offset),
            Engine::Sync(e) => e.read_at(buf, offset),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        match self {
            Engine::Uring(e) => e.write_at(buf, offset, fua),
            Engine::Sync(e) => e.write_at(buf, offset, fua),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        match self {
            Engine::Uring(e) => e.sync_data(),
            Engine::Sync(e) => e.sync_data(),
        }
    }
}

pub struct FileBackend {
    path: PathBuf,
    /// Used for fallocate and ioctls; the engine holds its own dup.
    file: File,
    engine: Engine,
    size_bytes: u64,
    is_block_device: bool,
    options: FileOptions,
    /// Serialises read-modify-write of partial blocks under O_DIRECT.
    rmw_lock: Mutex<()>,
    failed: AtomicBool,
    failed_reason: Mutex<String>,
}

impl FileBackend {
    /// Like [`Self::create`], with every block allocated and written
    /// (zeroes) up front: later overwrites and `fdatasync`s change no file
    /// metadata (not even unwritten-extent conversion), which makes a log
    /// that flushes after every append (the write-back safe store) several
    /// times cheaper on ext4 and XFS.
    pub fn create_preallocated(
        path: &Path,
        size_bytes: u64,
        options: FileOptions,
    ) -> Result<Self, OpenError> {
        let be = Self::create(path, size_bytes, options)?;
        let zeroes = AlignedBuf::new(1 << 20);
        let mut off = 0;
        let res = (|| -> Result<(), crate::device::DeviceError> {
            while off < size_bytes {
                let n = (size_bytes - off).min(zeroes.len() as u64) as usize;
                be.write(&zeroes[..n], off, false)?;
                off += n as u64;
            }
            be.flush()
        })();
        res.map_err(|e| OpenError::Open {
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(be)
    }

    /// Create a new sparse file of `size_bytes` and open it. Refuses to
    /// overwrite an existing file.
    pub fn create(path: &Path, size_bytes: u64, options: FileOptions) -> Result<Self, OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => OpenError::Exists {
                    path: path.to_owned(),
                },
                _ => OpenError::Open {
                    path: path.to_owned(),
                    source,
                },
            })?;
        file.set_len(size_bytes)
            .and_then(|_| file.sync_all())
            .map_err(|source| OpenError::Open {
                path: path.to_owned(),
                source,
            })?;
        drop(file);
        Self::open(path, options)
    }

    /// Open an existing regular file or block device; its size is the
    /// volume's size.
    pub fn open(path: &Path, options: FileOptions) -> Result<Self, OpenError> {
        let open_err = |source| OpenError::Open {
            path: path.to_owned(),
            source,
        };
        let mut flags = libc::O_CLOEXEC;
        if options.direct {
            flags |= libc::O_DIRECT;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let is_block_device = meta.file_type().is_block_device();
        let size_bytes = if is_block_device {
            file.seek(SeekFrom::End(0)).map_err(open_err)?
        } else if meta.file_type().is_file() {
            meta.len()
        } else {
            return Err(OpenError::NotAFileOrDevice {
                path: path.to_owned(),
            });
        };
        if size_bytes == 0 {
            return Err(OpenError::Empty {
                path: path.to_owned(),
            });
        }
        if options.direct && size_bytes % BUF_ALIGN_BYTES as u64 != 0 {
            return Err(OpenError::DirectMisaligned {
                path: path.to_owned(),
                size: size_bytes,
            });
        }
        let engine_file = file.try_clone().map_err(open_err)?;
        let engine = match options.engine.resolve(options.direct, is_block_device) {
            EngineKind::Sync | EngineKind::Auto => Engine::Sync(SyncEngine::new(engine_file)),
            EngineKind::Uring => Engine::Uring(UringEngine::new(engine_file).map_err(
                |source| OpenError::Uring {
                    path: path.to_owned(),
                    source,
                },
            )?),
        };
        Ok(FileBackend {
            path: path.to_owned(),
            file,
            engine,
            size_bytes,
            is_block_device,
            options,
            rmw_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
            failed_reason: Mutex::new(String::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn options(&self) -> FileOptions {
        self.options
    }

    /// The configured per-request latency (`FileOptions::latency_us`).
    fn delay(&self) {
        if self.options.latency_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(
                self.options.latency_us as u64,
            ));
        }
    }

    /// The engine actually driving the file (`Auto` resolved).
    pub fn engine_in_use(&self) -> EngineKind {
        match self.engine {
            Engine::Uring(_) => EngineKind::Uring,
            Engine::Sync(_) => EngineKind::Sync,
        }
    }

    fn check_live(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(DeviceError::Failed {
                reason: self.failed_reason.lock().clone(),
            });
        }
        Ok(())
    }

    fn fail_stop(&self, what: &str, err: &io::Error) {
        *self.failed_reason.lock() = format!("{what} on {}: {err}", self.path.display());
        self.failed.store(true, Ordering::Release);
        log::error!(
            "{}: {what} failed ({err}); refusing writes and flushes until reopened",
            self.path.display()
        );
    }

    /// The smallest page-aligned range covering `[offset, offset+len)`.
    fn aligned_span(offset: u64, len: u64) -> (u64, u64) {
        let a = BUF_ALIGN_BYTES as u64;
        let start = offset / a * a;
        let end = (offset + len).next_multiple_of(a);
        (start, end - start)
    }

    fn read_direct_unaligned(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (start, span) = Self::aligned_span(offset, buf.len() as u64);
        let mut bounce = AlignedBuf::new(span as usize);
        self.engine.read_at(&mut bounce, start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_direct_unaligned(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let (start, span) = Self::aligned_span(offset, buf.len() as u64);
        let mut bounce = AlignedBuf::new(span as usize);
        let _rmw = self.rmw_lock.lock();
        let skip = (offset - start) as usize;
        let partial = skip != 0 || buf.len() as u64 != span;
        if partial {
            self.engine.read_at(&mut bounce, start)?;
        }
        bounce[skip..skip + buf.len()].copy_from_slice(buf);
        self.engine.write_at(&bounce, start, fua)
    }

    fn zero_by_writing(&self, offset: u64, len: u64) -> io::Result<()> {
        const ZERO_CHUNK_BYTES: u64 = 1 << 20;
        let zeroes = AlignedBuf::new(ZERO_CHUNK_BYTES as usize);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK_BYTES);
            self.write_bytes(&zeroes[..n as usize], offset + done, false)?;
            done += n;
        }
        Ok(())
    }

    fn write_bytes(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if self.options.direct && !is_direct_aligned(buf, offset) {
            self.write_direct_unaligned(buf, offset, fua)
        } else {
            self.engine.write_at(buf, offset, fua)
        }
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        fallocate(self.file.as_raw_fd(), flags, offset as i64, len as i64).map_err(io::Error::from)
    }

    fn after_fua(&self, fua: bool, offset: u64) -> Result<()> {
        if fua {
            self.engine.sync_data().map_err(|e| {
                self.fail_stop("FUA sync", &e);
                DeviceError::io(offset, e)
            })?;
        }
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl BlockDevice for FileBackend {
    /// A regular file's holes (SEEK_DATA / SEEK_HOLE); a block device is
    /// all data.
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<crate::device::Extent>> {
        use crate::device::Extent;
        use nix::unistd::{lseek, Whence};
        check_range(offset, len, self.size_bytes)?;
        let end = offset + len;
        if self.is_block_device || len == 0 {
            return Ok(vec![Extent { len, hole: false }]);
        }
        let fd = self.file.as_raw_fd();
        let seek = |at: u64, whence| match lseek(fd, at as i64, whence) {
            Ok(o) => Ok((o as u64).min(end)),
            // Past the last data (SEEK_DATA): the rest is a hole.
            Err(nix::errno::Errno::ENXIO) => Ok(end),
            Err(e) => Err(DeviceError::io(at, io::Error::from(e))),
        };
        let mut runs = Vec::new();
        let mut at = offset;
        // Bounded: a reply names at most this many runs, the caller asks on.
        while at < end && runs.len() < 1024 {
            let data = seek(at, Whence::SeekData)?;
            if data > at {
                runs.push(Extent {
                    len: data - at,
                    hole: true,
                });
                at = data;
                continue;
            }
            let hole = seek(at, Whence::SeekHole)?.max(at + 1).min(end);
            runs.push(Extent {
                len: hole - at,
                hole: false,
            });
            at = hole;
        }
        Ok(runs)
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .load(Ordering::Acquire)
            .then(|| self.failed_reason.lock().clone())
    }

    fn clone_source(&self) -> Option<&File> {
        (!self.is_block_device).then_some(&self.file)
    }

    /// FICLONERANGE from `src`. What the range held before is replaced, as
    /// a write would; durable at the next flush, like one. A filesystem
    /// that cannot share extents, or an unaligned range, says `false`.
    fn clone_range_from(&self, src: &File, offset: u64, len: u64) -> Result<bool> {
        check_range(offset, len, self.size_bytes)?;
        if self.is_block_device || len == 0 {
            return Ok(false);
        }
        self.check_live()?;
        self.delay();
        match ioctl::clone_range(&self.file, src, offset, len) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS
                    )
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(DeviceError::io(offset, e)),
        }
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size_bytes)?;
        self.delay();
        // No fail-stop check: reads of what the device holds go on.
        if buf.is_empty() {
            return Ok(());
        }
        let res = if self.options.direct && !is_direct_aligned(buf, offset) {
            self.read_direct_unaligned(buf, offset)
        } else {
            self.engine.read_at(buf, offset)
        };
        res.map_err(|e| DeviceError::io(offset, e))
    }

    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size_bytes)?;
        self.check_live()?;
        self.delay();
        if buf.is_empty() {
            return self.after_fua(fua, offset);
        }
        self.write_bytes(buf, offset, fua).map_err(|e| {
            if fua {
                self.fail_stop("FUA write", &e);
            }
            DeviceError::io(offset, e)
        })
    }

    fn flush(&self) -> Result<()> {
        self.check_live()?;
        self.delay();
        self.engine.sync_data().map_err(|source| {
            self.fail_stop("flush", &source);
            DeviceError::Flush { source }
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size_bytes)?;
        self.check_live()?;
        self.delay();
        if len == 0 {
            return Ok(());
        }
        let res = if self.is_block_device {
            ioctl::discard(&self.file, offset, len)
        } else {
            self.fallocate(
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match res {
            Ok(()) => Ok(()),
            // Our contract says discarded ranges read as zeroes.
            Err(e) if unsupported(&e) => self.write_zeroes(offset, len, false),
            Err(e) => Err(DeviceError::io(offset, e)),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        check_range(offset, len, self.size_bytes)?;
        self.check_live()?;
        self.delay();
        if len == 0 {
            return self.after_fua(fua, offset);
        }
        // A buffered file is sparse: punch (a replica of a sparse volume
        // stays sparse). An O_DIRECT file was preallocated so that writes
        // change no metadata: zero the range in place. Each falls back to
        // the other where the filesystem lacks it.
        let (punch, zero) = (
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        );
        let (first, second) = if self.options.direct {
            (zero, punch)
        } else {
            (punch, zero)
        };
        let res = if self.is_block_device {
            ioctl::zero_out(&self.file, offset, len)
        } else {
            self.fallocate(first, offset, len).or_else(|e| {
                if unsupported(&e) {
                    self.fallocate(second, offset, len)
                } else {
                    Err(e)
                }
            })
        };
        match res {
            Ok(()) => {}
            Err(e) if unsupported(&e) => self
                .zero_by_writing(offset, len)
                .map_err(|e| DeviceError::io(offset, e))?,
            Err(e) => return Err(DeviceError::io(offset, e)),
        }
        self.after_fua(fua, offset)
    }

    fn block_size_bytes(&self) -> u32 {
        if self.options.direct {
            BUF_ALIGN_BYTES as u32
        } else {
            crate::device::SECTOR_SIZE_BYTES as u32
        }
    }

    /// A buffered regular file is served from the page cache as a rule;
    /// O_DIRECT and raw devices go to the device every time.
    fn latency_class(&self) -> LatencyClass {
        if self.options.direct || self.is_block_device {
            LatencyClass::Blocking
        } else {
            LatencyClass::Memory
        }
    }
}

impl Describe for FileBackend {
    fn describe(&self) -> String {
        format!(
            "{} {} ({:?} engine{})",
            if self.is_block_device {
                "block device"
            } else {
                "file"
            },
            self.path.display(),
            self.engine_in_use(),
            if self.options.direct {
                ", O_DIRECT"
            } else {
                ""
            }
        ) + &if self.options.latency_us > 0 {
            format!(", {} us added per request", self.options.latency_us)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::testing;
    use std::sync::Arc;

    fn conformance(engine: EngineKind, direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.img");
        let dev = FileBackend::create(
            &path,
            8 << 20,
            FileOptions {
                engine,
                direct,
                ..Default::default()
            },
        )
        .unwrap();
        testing::run_all(&format!("file/{engine:?}/direct={direct}"), Arc::new(dev));
    }

    #[test]
    fn conformance_uring() {
        conformance(EngineKind::Uring, false);
    }
    #[test]
    fn conformance_sync() {
        conformance(EngineKind::Sync, false);
    }
    #[test]
    fn conformance_uring_direct() {
        conformance(EngineKind::Uring, true);
    }
    #[test]
    fn conformance_sync_direct() {
        conformance(EngineKind::Sync, true);
    }
    #[test]
    fn conformance_auto() {
        conformance(EngineKind::Auto, false);
    }

    #[test]
    fn auto_picks_uring_only_for_device_bound_io() {
        assert_eq!(EngineKind::Auto.resolve(false, false), EngineKind::Sync);
        assert_eq!(EngineKind::Auto.resolve(true, false), EngineKind::Uring);
        assert_eq!(EngineKind::Auto.resolve(false, true), EngineKind::Uring);
        assert_eq!(EngineKind::Sync.resolve(true, true), EngineKind::Sync);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let be = FileBackend::create(
            &p,
            1 << 20,
            FileOptions {
                engine: EngineKind::Auto,
                direct: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(be.engine_in_use(), EngineKind::Uring);
        assert!(be.describe().contains("Uring"), "{}", be.describe());
    }

    #[test]
    fn create_refuses_existing_and_open_refuses_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        FileBackend::create(&path, 1 << 20, FileOptions::default()).unwrap();
        let err = FileBackend::create(&path, 1 << 20, FileOptions::default())
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::Exists { .. }), "{err}");
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        let err = FileBackend::open(&empty, FileOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = FileBackend::open(dir.path(), FileOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    /// A request longer than one io_uring window (128 segments of 256 KiB)
    /// goes out in two windows; O_DIRECT and buffered alike.
    #[test]
    fn uring_request_spanning_two_windows() {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let size = 40 << 20;
            let dev = FileBackend::create(
                &dir.path().join("v"),
                size,
                FileOptions {
                    engine: EngineKind::Uring,
                    direct,
                    ..Default::default()
                },
            )
            .unwrap();
            let len = (33 << 20) + 4096;
            let mut data = AlignedBuf::new(len);
            data.copy_from_slice(&testing::pattern(3, 4096, len));
            dev.write(&data, 4096, false).unwrap();
            let mut back = AlignedBuf::new(len);
            dev.read(&mut back, 4096).unwrap();
            assert!(back[..] == data[..], "direct={direct}");
        }
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let data = testing::pattern(9, 4096, 8192);
        {
            let dev = FileBackend::create(&path, 1 << 20, FileOptions::default()).unwrap();
            dev.write(&data, 4096, false).unwrap();
            dev.flush().unwrap();
        }
        let dev = FileBackend::open(&path, FileOptions::default()).unwrap();
        let mut buf = vec![0; 8192];
        dev.read(&mut buf, 4096).unwrap();
        assert_eq!(buf, data);
    }
}
