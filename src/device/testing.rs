//! The conformance suite every device runs: each backend, each engine, and
//! every data service stacked on them. The helpers take `&dyn BlockDevice`
//! so one set of checks covers the whole grid.
//!
//! It panics with a message naming the check on the first violation. The
//! device under test must be at least [`MIN_DEVICE_BYTES`] long and its
//! contents are overwritten.

use super::{BlockDevice, DeviceError};
use std::sync::Arc;

/// Smallest device the suite accepts: room for a 1 MiB request plus the
/// boundary checks at the end.
pub const MIN_DEVICE_BYTES: u64 = 4 << 20;

/// A deterministic byte pattern: distinct per offset and per `seed`, so a
/// misplaced or stale block never matches by accident.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let x = (offset + i)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(seed.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        out.push((x >> 29) as u8);
    }
    out
}

fn read_vec(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xEEu8; len];
    dev.read(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read [{offset}, +{len}) failed: {e}"));
    buf
}

/// Run every check. `name` appears in failure messages.
pub fn run_all(name: &str, dev: Arc<dyn BlockDevice>) {
    let size = dev.size_bytes();
    assert!(
        size >= MIN_DEVICE_BYTES,
        "{name}: device of {size} bytes is below the suite's minimum"
    );
    type Check = fn(&dyn BlockDevice);
    let checks: &[(&str, Check)] = &[
        ("read_after_write", read_after_write),
        ("unaligned_io", unaligned_io),
        ("large_io", large_io),
        ("last_byte_and_out_of_range", last_byte_and_out_of_range),
        ("fua_and_flush", fua_and_flush),
        ("discard_reads_zeroes", discard_reads_zeroes),
        ("write_zeroes", write_zeroes),
        ("zero_length_requests", zero_length_requests),
        ("overwrite_keeps_neighbours", overwrite_keeps_neighbours),
    ];
    for (check, f) in checks {
        eprintln!("conformance {name}: {check}");
        f(dev.as_ref());
    }
    eprintln!("conformance {name}: concurrent_disjoint_writers");
    concurrent_disjoint_writers(dev);
}

fn read_after_write(dev: &dyn BlockDevice) {
    let data = pattern(1, 0, 64 * 1024);
    dev.write(&data, 0, false).unwrap();
    assert_eq!(read_vec(dev, 0, data.len()), data, "read_after_write");
}

fn unaligned_io(dev: &dyn BlockDevice) {
    // Byte-granular offsets and lengths that straddle sector boundaries.
    for (i, (off, len)) in [(1u64, 1usize), (511, 2), (4095, 4098), (12345, 777)]
        .into_iter()
        .enumerate()
    {
        let base = 256 * 1024;
        let before = read_vec(dev, base, 16 * 1024);
        let data = pattern(10 + i as u64, off, len);
        dev.write(&data, base + off, false).unwrap();
        let after = read_vec(dev, base, 16 * 1024);
        let mut expect = before;
        expect[off as usize..off as usize + len].copy_from_slice(&data);
        assert_eq!(after, expect, "unaligned_io at +{off} len {len}");
    }
}

fn large_io(dev: &dyn BlockDevice) {
    let len = 1 << 20;
    let data = pattern(2, 1 << 20, len);
    dev.write(&data, 1 << 20, false).unwrap();
    assert_eq!(read_vec(dev, 1 << 20, len), data, "large_io");
}

fn last_byte_and_out_of_range(dev: &dyn BlockDevice) {
    let size = dev.size_bytes();
    dev.write(&[0xAB], size - 1, false).unwrap();
    assert_eq!(read_vec(dev, size - 1, 1), vec![0xAB]);
    let mut buf = [0u8; 2];
    assert!(matches!(
        dev.read(&mut buf, size - 1),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write(&[1, 2], size - 1, false),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.discard(size, 1),
        Err(DeviceError::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_zeroes(u64::MAX - 1, 4, false),
        Err(DeviceError::OutOfRange { .. })
    ));
    // The refused write touched nothing.
    assert_eq!(read_vec(dev, size - 1, 1), vec![0xAB], "refused write");
}

fn fua_and_flush(dev: &dyn BlockDevice) {
    let data = pattern(3, 2 << 20, 8192);
    dev.write(&data, 2 << 20, true).unwrap();
    dev.flush().unwrap();
    assert_eq!(read_vec(dev, 2 << 20, 8192), data, "fua_and_flush");
}

fn discard_reads_zeroes(dev: &dyn BlockDevice) {
    let off = 3 << 20;
    dev.write(&pattern(4, off, 128 * 1024), off, false).unwrap();
    dev.discard(off + 4096, 64 * 1024).unwrap();
    let got = read_vec(dev, off, 128 * 1024);
    let mut expect = pattern(4, off, 128 * 1024);
    expect[4096..4096 + 64 * 1024].fill(0);
    assert_eq!(got, expect, "discard_reads_zeroes");
}

fn write_zeroes(dev: &dyn BlockDevice) {
    let off = (3 << 20) + (256 << 10);
    dev.write(&pattern(5, off, 64 * 1024), off, false).unwrap();
    dev.write_zeroes(off + 100, 5000, false).unwrap();
    dev.write_zeroes(off + 10_000, 4096, true).unwrap();
    let got = read_vec(dev, off, 64 * 1024);
    let mut expect = pattern(5, off, 64 * 1024);
    expect[100..5100].fill(0);
    expect[10_000..14_096].fill(0);
    assert_eq!(got, expect, "write_zeroes");
}

fn zero_length_requests(dev: &dyn BlockDevice) {
    dev.write(&[], 0, false).unwrap();
    dev.read(&mut [], dev.size_bytes()).unwrap();
    dev.discard(0, 0).unwrap();
    dev.write_zeroes(0, 0, false).unwrap();
}

fn overwrite_keeps_neighbours(dev: &dyn BlockDevice) {
    let off = 3_500_000;
    dev.write(&pattern(6, off, 12_288), off, false).unwrap();
    dev.write(&pattern(7, off + 4096, 4096), off + 4096, false)
        .unwrap();
    let got = read_vec(dev, off, 12_288);
    let mut expect = pattern(6, off, 12_288);
    expect[4096..8192].copy_from_slice(&pattern(7, off + 4096, 4096));
    assert_eq!(got, expect, "overwrite_keeps_neighbours");
}

fn concurrent_disjoint_writers(dev: Arc<dyn BlockDevice>) {
    const THREADS: u64 = 4;
    const WRITES: u64 = 64;
    const BLOCK: u64 = 4096;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for i in 0..WRITES {
                    let off = (i * THREADS + t) * BLOCK;
                    dev.write(&pattern(100 + t, off, BLOCK as usize), off, i % 8 == 0)
                        .unwrap();
                    if i % 16 == 0 {
                        dev.flush().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread panicked");
    }
    for i in 0..WRITES * THREADS {
        let t = i % THREADS;
        let off = i * BLOCK;
        assert_eq!(
            read_vec(dev.as_ref(), off, BLOCK as usize),
            pattern(100 + t, off, BLOCK as usize),
            "concurrent_disjoint_writers block {i}"
        );
    }
}

/// One request as the device below the stack saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Write { offset: u64, len: u64, fua: bool },
    Flush,
    Other,
}

/// Wraps a device and logs, per calling thread, every request that reaches
/// it, in arrival order. Tests check that a stack neither loses nor reorders
/// a thread's requests (in particular across a flush).
pub struct RecordingDevice {
    inner: Arc<dyn BlockDevice>,
    log: parking_lot::Mutex<Vec<(std::thread::ThreadId, Recorded)>>,
}

impl RecordingDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        RecordingDevice {
            inner,
            log: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The requests thread `t` made, in the order they reached the device.
    pub fn log_of(&self, t: std::thread::ThreadId) -> Vec<Recorded> {
        self.log
            .lock()
            .iter()
            .filter(|(id, _)| *id == t)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn record(&self, r: Recorded) {
        self.log.lock().push((std::thread::current().id(), r));
    }
}

impl BlockDevice for RecordingDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> super::Result<()> {
        self.inner.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> super::Result<()> {
        self.inner.write(buf, offset, fua)?;
        self.record(Recorded::Write {
            offset,
            len: buf.len() as u64,
            fua,
        });
        Ok(())
    }
    fn flush(&self) -> super::Result<()> {
        self.inner.flush()?;
        self.record(Recorded::Flush);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> super::Result<()> {
        self.inner.discard(offset, len)?;
        self.record(Recorded::Other);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> super::Result<()> {
        self.inner.write_zeroes(offset, len, fua)?;
        self.record(Recorded::Other);
        Ok(())
    }
}

/// A device whose flushes (and writes) can be made to fail on demand, for
/// rollback and fail-stop tests.
pub struct FaultyDevice {
    inner: Arc<dyn BlockDevice>,
    pub fail_flush: std::sync::atomic::AtomicBool,
    pub fail_writes: std::sync::atomic::AtomicBool,
}

impl FaultyDevice {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        FaultyDevice {
            inner,
            fail_flush: Default::default(),
            fail_writes: Default::default(),
        }
    }

    fn injected(offset: u64) -> DeviceError {
        DeviceError::io(offset, std::io::Error::other("injected fault"))
    }
}

impl BlockDevice for FaultyDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> super::Result<()> {
        self.inner.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> super::Result<()> {
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Self::injected(offset));
        }
        self.inner.write(buf, offset, fua)
    }
    fn flush(&self) -> super::Result<()> {
        if self.fail_flush.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Self::injected(0));
        }
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> super::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> super::Result<()> {
        self.inner.write_zeroes(offset, len, fua)
    }
}

/// Counts flushes across a group of [`CrashDevice`]s and freezes all their
/// durable states at the N-th one: what a power cut at that moment would
/// leave on every disk at once.
///
/// Two kinds of cut. [`CrashClock::new`]: right after the N-th flush
/// completed; every write acknowledged before it is there, nothing after
/// it. [`CrashClock::reordering`]: during the N-th flush, before it
/// completed (CrashMonkey's in-flush-epoch reordering): each device keeps
/// what its flush before made durable and its FUA writes, plus any subset
/// of the other writes since, each of them kept whole or torn at 512-byte
/// sectors (any subset of its sectors), in an order a device could have
/// written them. Writes and flushes after the cut reach nothing durable.
pub struct CrashClock {
    flushes: std::sync::atomic::AtomicU64,
    freeze_at: u64,
    frozen: std::sync::atomic::AtomicBool,
    /// Reordering cut: the random choices' state (splitmix64).
    reorder: Option<parking_lot::Mutex<u64>>,
}

impl CrashClock {
    /// Freeze after the `freeze_at`-th flush (0: never freeze).
    pub fn new(freeze_at: u64) -> Arc<Self> {
        Arc::new(CrashClock {
            flushes: Default::default(),
            freeze_at,
            frozen: Default::default(),
            reorder: None,
        })
    }

    /// Cut power during the `freeze_at`-th flush, keeping a subset of the
    /// writes since the flush before it (torn or whole), chosen from
    /// `seed`: the same seed makes the same choices.
    pub fn reordering(freeze_at: u64, seed: u64) -> Arc<Self> {
        Arc::new(CrashClock {
            flushes: Default::default(),
            freeze_at,
            frozen: Default::default(),
            reorder: Some(parking_lot::Mutex::new(seed)),
        })
    }

    pub fn frozen(&self) -> bool {
        self.frozen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes issued so far, before and after the freeze.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next random number of a reordering cut (splitmix64).
    fn next(&self) -> u64 {
        let mut s = self.reorder.as_ref().expect("a reordering clock").lock();
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One write since the last flush: where, what, and whether it was FUA
/// (durable when acknowledged, so a cut keeps it).
struct Pending {
    offset: usize,
    data: Vec<u8>,
    fua: bool,
}

/// A memory device with two images: what reads see, and what would survive
/// a crash (updated by flushes and FUA writes until its clock freezes).
pub struct CrashDevice {
    current: parking_lot::RwLock<Vec<u8>>,
    /// What the last flush made durable.
    durable: parking_lot::Mutex<Vec<u8>>,
    /// Writes since the last flush, in the order they completed.
    pending: parking_lot::Mutex<Vec<Pending>>,
    clock: Arc<CrashClock>,
}

/// The unit a write can tear at.
const SECTOR: usize = 512;

impl CrashDevice {
    pub fn new(image: Vec<u8>, clock: Arc<CrashClock>) -> Self {
        CrashDevice {
            durable: parking_lot::Mutex::new(image.clone()),
            current: parking_lot::RwLock::new(image),
            pending: Default::default(),
            clock,
        }
    }

    /// The bytes a crash would leave: after the cut, what the cut left;
    /// before it, what the last flush made durable and the FUA writes
    /// since.
    pub fn durable_image(&self) -> Vec<u8> {
        let mut durable = self.durable.lock();
        if self.clock.frozen() {
            // The cut came at another device's flush: this one's writes
            // since its last flush are cut now (idempotent).
            self.cut(&mut durable);
            return durable.clone();
        }
        let mut img = durable.clone();
        for p in self.pending.lock().iter().filter(|p| p.fua) {
            img[p.offset..p.offset + p.data.len()].copy_from_slice(&p.data);
        }
        img
    }

    fn apply(&self, offset: u64, len: u64, data: Option<&[u8]>, fua: bool) -> super::Result<()> {
        let mut cur = self.current.write();
        super::check_range(offset, len, cur.len() as u64)?;
        let r = offset as usize..(offset + len) as usize;
        match data {
            Some(d) => cur[r.clone()].copy_from_slice(d),
            None => cur[r.clone()].fill(0),
        }
        if len > 0 && !self.clock.frozen() {
            self.pending.lock().push(Pending {
                offset: r.start,
                data: cur[r].to_vec(),
                fua,
            });
        }
        Ok(())
    }

    /// The cut, for this device: of the writes since its last flush keep
    /// the FUA ones and, in a reordering cut, a random subset of the
    /// others, each whole or torn.
    fn cut(&self, durable: &mut [u8]) {
        for p in std::mem::take(&mut *self.pending.lock()) {
            let keep = if p.fua {
                Keep::Whole
            } else if self.clock.reorder.is_none() {
                Keep::Nothing
            } else {
                match self.clock.next() % 4 {
                    0 => Keep::Nothing,
                    1 => Keep::Torn,
                    _ => Keep::Whole,
                }
            };
            let at = p.offset;
            match keep {
                Keep::Nothing => {}
                Keep::Whole => durable[at..at + p.data.len()].copy_from_slice(&p.data),
                Keep::Torn => {
                    // Sector by sector (the first and last may be partial
                    // when the write is not aligned): each kept or not.
                    let mut i = 0;
                    while i < p.data.len() {
                        let end = ((at + i) / SECTOR + 1) * SECTOR - at;
                        let end = end.min(p.data.len());
                        if self.clock.next() % 2 == 0 {
                            durable[at + i..at + end].copy_from_slice(&p.data[i..end]);
                        }
                        i = end;
                    }
                }
            }
        }
    }
}

enum Keep {
    Nothing,
    Torn,
    Whole,
}

impl BlockDevice for CrashDevice {
    fn size_bytes(&self) -> u64 {
        self.current.read().len() as u64
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> super::Result<()> {
        let cur = self.current.read();
        super::check_range(offset, buf.len() as u64, cur.len() as u64)?;
        buf.copy_from_slice(&cur[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> super::Result<()> {
        self.apply(offset, buf.len() as u64, Some(buf), fua)
    }
    fn flush(&self) -> super::Result<()> {
        use std::sync::atomic::Ordering;
        let _cur = self.current.read();
        let mut durable = self.durable.lock();
        let n = self.clock.flushes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.clock.frozen() {
            return Ok(());
        }
        if n == self.clock.freeze_at && self.clock.reorder.is_some() {
            // Power goes during this flush: it makes nothing durable.
            self.cut(&mut durable);
            self.clock.frozen.store(true, Ordering::SeqCst);
            return Ok(());
        }
        for p in std::mem::take(&mut *self.pending.lock()) {
            durable[p.offset..p.offset + p.data.len()].copy_from_slice(&p.data);
        }
        if n == self.clock.freeze_at {
            self.clock.frozen.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> super::Result<()> {
        self.apply(offset, len, None, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> super::Result<()> {
        self.apply(offset, len, None, fua)
    }
}
