//! One image set: its bitmaps, the copy-on-write rules, group commit of
//! bitmap changes and the background copy engine.
//!
//! # The two bitmaps and what a chunk's bits mean
//! * **shadow bitmap** (`diff`): the chunk may differ between master and
//!   shadow since the point in time. Set, durably, before any write to
//!   either side is acknowledged.
//! * **copy bitmap** (`copy`): the chunk is still to be moved in the
//!   set's copy direction. Until it is, the target side's chunk *is* the
//!   source side's chunk, and reads of it are served from the source.
//!
//! Where a side's data for chunk `c` lives:
//! * the shadow holds its own copy ([`ImageSet::shadow_holds`]) when, for an
//!   independent set, no copy to the shadow is pending for `c`; for a
//!   dependent set, when `c` was copied on write (`diff`) or a restore of
//!   it is pending. Otherwise shadow reads of `c` come from the master.
//! * the master holds its own data unless a restore of `c` is pending;
//!   then master reads of `c` come from the shadow.
//!
//! # Ordering on a write (the crash rule)
//! Before a write that makes chunk `c` differ reaches the side it changes
//! (a shadow write: before it is acknowledged; a master write without FUA
//! may be acknowledged earlier, queued by `behind.rs`): the data a
//! copy moved (the master's point-in-time chunk, or the shadow's chunk of a
//! restore) is flushed on its target, then the bits are written to the
//! bitmap volume and flushed. Bit changes are batched by a group commit:
//! concurrent first-touch writers share one flush of each side and one of
//! the bitmap volume. Writes to chunks whose bits are already durable pay
//! nothing but two atomic loads per chunk.

use super::format::{
    Direction, Header, HeaderState, Kind, Layout, Transition, BITMAP_BLOCK_BYTES,
    INDEX_ENTRY_BYTES, INDEX_OVERFLOW,
};
use super::layers::{MasterSide, ShadowSide};
use super::overflow::Overflow;
use crate::bitmap::AtomicBitmap;
use crate::buffer::AlignedBuf;
use crate::device::{BlockDevice, DeviceError, Result};
use crate::interposer::Volume;
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Chunk locks are striped: chunk `c` uses stripe `c % LOCK_STRIPES`.
const LOCK_STRIPES: u64 = 1024;
/// The copy engine commits its progress every this many chunks.
const ENGINE_COMMIT_CHUNKS: u64 = 256;
/// Longest run of consecutive pending chunks the engine copies in one I/O.
const ENGINE_RUN_BYTES: u64 = 1 << 20;
/// Bits per bitmap block written to the bitmap volume.
const BITS_PER_BLOCK: u64 = BITMAP_BLOCK_BYTES * 8;

/// A callback for state changes a user should see (copy finished, set
/// failed): `(event kind, set name, detail)`.
pub type Notifier = Arc<dyn Fn(&str, &str, crate::services::Note) + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Diff,
    Copy,
    /// The compact chunk index.
    Index,
}

/// Index entries per bitmap-volume block.
const INDEX_PER_BLOCK: u64 = BITMAP_BLOCK_BYTES / INDEX_ENTRY_BYTES;

/// Where a compact set keeps its saved chunks: the shadow volume's own
/// slots first, then an overflow volume.
struct CompactMap {
    /// Per master chunk: 0 = not saved; `slot + 1` in the shadow; with
    /// [`INDEX_OVERFLOW`] set, in the overflow volume.
    index: Box<[AtomicU64]>,
    dirty: Box<[AtomicBool]>,
    shadow_slots: u64,
    next_slot: AtomicU64,
    overflow: RwLock<Option<Arc<Overflow>>>,
}

#[derive(Default)]
struct CommitState {
    durable: u64,
    running: bool,
}

struct Engine {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Throttle {
    /// Sleep this long…
    pub delay_ms: u32,
    /// …after every this many chunks copied (0: never sleep).
    pub unit: u32,
}

pub struct ImageSet {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) chunk_bytes: u64,
    pub(super) chunks: u64,
    pub(super) master_bytes: u64,
    pub(super) master_name: String,
    pub(super) shadow_name: String,
    diff: AtomicBitmap,
    copy: AtomicBitmap,
    compact: Option<CompactMap>,
    direction: AtomicU8,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,

    // Persistence.
    store: Arc<dyn BlockDevice>,
    header: Mutex<Header>,
    memory_bitmap: bool,
    copy_inverted: bool,
    diff_dirty: Box<[AtomicBool]>,
    copy_dirty: Box<[AtomicBool]>,
    /// Highest generation that changed a bit of each 64-chunk word.
    word_gen: Box<[AtomicU64]>,
    gen: AtomicU64,
    durable: AtomicU64,
    /// Bit changers hold it shared; the commit leader takes it exclusively
    /// for the instant it snapshots, so a snapshot never sees half a change.
    gate: RwLock<()>,
    commit: Mutex<CommitState>,
    commit_cv: Condvar,
    /// A commit failed: no generation becomes durable any more.
    commit_failed: AtomicBool,
    master_dirty: AtomicBool,
    shadow_dirty: AtomicBool,

    locks: Box<[RwLock<()>]>,
    pub(super) master: Arc<MasterSide>,
    pub(super) shadow: Arc<ShadowSide>,
    pub(super) master_volume: Weak<Volume>,
    pub(super) shadow_volume: Weak<Volume>,

    engine: Mutex<Option<Engine>>,
    engine_done: Condvar,
    copying: AtomicBool,
    copy_total: AtomicU64,
    throttle: Mutex<Throttle>,
    notify: Option<Notifier>,
    pub(super) counters: Counters,
}

/// What the set moved since it was opened (`umbra stats`, metrics).
#[derive(Default)]
pub struct Counters {
    /// Chunks copied because a master write touched them first
    /// (copy-on-write, or a pending restore finished before the write).
    pub cow_chunks: AtomicU64,
    /// Chunks the background copy moved (full copies, updates, restores).
    pub copied_chunks: AtomicU64,
    /// Of all those, chunks that moved by sharing the filesystem's extents
    /// (reflink) instead of being read and written.
    pub cloned_chunks: AtomicU64,
}

/// What a master write owes a set before it reaches the master's lower
/// device ([`ImageSet::prepare_master`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Prepared {
    /// The generation that must be durable first (0: none).
    pub need: u64,
    /// A chunk was restored for this write: the write must not go on if
    /// the restore's commit fails.
    pub restored: bool,
}

thread_local! {
    /// Each thread's buffer for moving chunks (copy-on-write, the copy
    /// engine): no allocation per copy.
    static COPY_BUF: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new(0));
}

/// Run `f` on a `len`-byte page-aligned scratch buffer of this thread.
/// Whether `buf` holds only zero bytes (eight at a time).
fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&b| b == 0)
        && words
            .into_iter()
            .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

fn with_copy_buf<T>(len: usize, f: impl FnOnce(&mut [u8]) -> Result<T>) -> Result<T> {
    COPY_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.capacity() < len {
                *buf = AlignedBuf::new(len);
            }
            buf.set_len(len);
            f(&mut buf[..])
        }
        // Re-entered (never expected): a private buffer keeps it correct.
        Err(_) => {
            let mut buf = AlignedBuf::new(len);
            f(&mut buf[..])
        }
    })
}

fn dir_to_u8(d: Direction) -> u8 {
    match d {
        Direction::None => 0,
        Direction::ToShadow => 1,
        Direction::ToMaster => 2,
    }
}

fn dir_from_u8(d: u8) -> Direction {
    match d {
        1 => Direction::ToShadow,
        2 => Direction::ToMaster,
        _ => Direction::None,
    }
}

/// Everything `ImageSet::new` needs; the constructor is shared by enable
/// (fresh header) and open (header read back).
pub(super) struct SetParts {
    pub header: Header,
    pub store: Arc<dyn BlockDevice>,
    pub master: Arc<MasterSide>,
    pub shadow: Arc<ShadowSide>,
    pub master_volume: Weak<Volume>,
    pub shadow_volume: Weak<Volume>,
    pub notify: Option<Notifier>,
    pub overflow: Option<Arc<Overflow>>,
}

impl ImageSet {
    pub(super) fn new(p: SetParts) -> ImageSet {
        let h = p.header;
        let blocks =
            Layout::for_chunks(h.chunks, h.kind == Kind::Compact).bitmap_bytes / BITMAP_BLOCK_BYTES;
        let flags = || (0..blocks).map(|_| AtomicBool::new(false)).collect();
        ImageSet {
            name: h.set.clone(),
            kind: h.kind,
            chunk_bytes: h.chunk_bytes as u64,
            chunks: h.chunks,
            master_bytes: h.master_bytes,
            master_name: h.master.clone(),
            shadow_name: h.shadow.clone(),
            diff: AtomicBitmap::new(h.chunks),
            copy: AtomicBitmap::new(h.chunks),
            compact: (h.kind == Kind::Compact).then(|| {
                let layout = Layout::for_chunks(h.chunks, true);
                CompactMap {
                    index: (0..h.chunks).map(|_| AtomicU64::new(0)).collect(),
                    dirty: (0..layout.index_bytes / BITMAP_BLOCK_BYTES)
                        .map(|_| AtomicBool::new(false))
                        .collect(),
                    shadow_slots: h.shadow_bytes / h.chunk_bytes as u64,
                    next_slot: AtomicU64::new(0),
                    overflow: RwLock::new(p.overflow.clone()),
                }
            }),
            direction: AtomicU8::new(dir_to_u8(h.direction)),
            failed: AtomicBool::new(h.state == HeaderState::Failed),
            failure: Mutex::new(
                (h.state == HeaderState::Failed)
                    .then(|| "the shadow was failed before the restart".to_owned()),
            ),
            store: p.store,
            memory_bitmap: h.memory_bitmap,
            copy_inverted: h.copy_inverted,
            diff_dirty: flags(),
            copy_dirty: flags(),
            word_gen: (0..h.chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            gen: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            gate: RwLock::new(()),
            commit: Mutex::new(CommitState::default()),
            commit_cv: Condvar::new(),
            commit_failed: AtomicBool::new(false),
            master_dirty: AtomicBool::new(false),
            shadow_dirty: AtomicBool::new(false),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            master: p.master,
            shadow: p.shadow,
            master_volume: p.master_volume,
            shadow_volume: p.shadow_volume,
            engine: Mutex::new(None),
            engine_done: Condvar::new(),
            copying: AtomicBool::new(false),
            counters: Counters::default(),
            copy_total: AtomicU64::new(0),
            throttle: Mutex::new(Throttle {
                delay_ms: h.throttle_delay_ms,
                unit: h.throttle_unit,
            }),
            header: Mutex::new(h),
            notify: p.notify,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn master_name(&self) -> &str {
        &self.master_name
    }
    pub fn shadow_name(&self) -> &str {
        &self.shadow_name
    }
    pub fn direction(&self) -> Direction {
        dir_from_u8(self.direction.load(Ordering::SeqCst))
    }
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }
    pub fn is_copying(&self) -> bool {
        self.copying.load(Ordering::SeqCst)
    }
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }
    pub fn chunks(&self) -> u64 {
        self.chunks
    }
    /// Is chunk `c`'s shadow-bitmap bit set (tests check invariant 3)?
    pub fn differs(&self, c: u64) -> bool {
        self.diff.get(c)
    }
    pub fn differing(&self) -> u64 {
        self.diff.count()
    }
    /// Chunks still to copy in the current direction.
    pub fn pending(&self) -> u64 {
        if self.direction() == Direction::None {
            0
        } else {
            self.copy.count()
        }
    }
    pub fn copy_total(&self) -> u64 {
        self.copy_total.load(Ordering::SeqCst)
    }
    pub fn memory_bitmap(&self) -> bool {
        self.memory_bitmap
    }
    pub fn throttle(&self) -> Throttle {
        *self.throttle.lock()
    }
    pub fn header_snapshot(&self) -> Header {
        self.header.lock().clone()
    }

    pub(super) fn emit(&self, kind: &str, note: impl Into<crate::services::Note>) {
        if let Some(n) = &self.notify {
            n(kind, &self.name, note.into());
        }
    }

    // ----- where each side's data lives --------------------------------

    #[inline]
    pub(super) fn shadow_holds(&self, c: u64) -> bool {
        match self.kind {
            Kind::Independent => !(self.direction() == Direction::ToShadow && self.copy.get(c)),
            Kind::Dependent | Kind::Compact => {
                self.diff.get(c) || (self.direction() == Direction::ToMaster && self.copy.get(c))
            }
        }
    }

    #[inline]
    pub(super) fn restore_pending(&self, c: u64) -> bool {
        self.direction() == Direction::ToMaster && self.copy.get(c)
    }

    /// Chunks overlapping `[offset, offset + len)`, clipped to the master.
    pub(super) fn chunks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 || offset >= self.master_bytes {
            return 0..0;
        }
        let end = (offset + len).min(self.master_bytes);
        offset / self.chunk_bytes..end.div_ceil(self.chunk_bytes)
    }

    pub(super) fn lock(&self, c: u64) -> &RwLock<()> {
        &self.locks[(c % LOCK_STRIPES) as usize]
    }

    // ----- failure ------------------------------------------------------

    /// Take the shadow offline. Master I/O continues unaffected; shadow
    /// I/O fails with EIO until the set is disabled or fully recopied.
    pub(super) fn fail(&self, why: String) {
        if self.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        log::error!(
            "image set {}: shadow {} is offline: {why}",
            self.name,
            self.shadow_name
        );
        *self.failure.lock() = Some(why.clone());
        let _ = self.write_header(|h| h.state = HeaderState::Failed);
        self.emit(
            "image.failed",
            crate::services::Note::new(why.clone()).field("why", why),
        );
    }

    pub(super) fn offline_error(&self) -> DeviceError {
        DeviceError::Failed {
            reason: format!(
                "shadow of image set {} is offline: {}",
                self.name,
                self.failure().unwrap_or_default()
            ),
        }
    }

    // ----- bit changes and group commit ---------------------------------

    /// Change bits of chunk `c` with `f` and return the generation a writer
    /// must see durable before acknowledging.
    fn change(&self, c: u64, touched: &[Which], f: impl FnOnce()) -> u64 {
        self.change_run(c, 1, touched, f)
    }

    /// [`Self::change`] for the `n` chunks from `first`.
    fn change_run(&self, first: u64, n: u64, touched: &[Which], f: impl FnOnce()) -> u64 {
        let _gate = self.gate.read_recursive();
        let g = self.gen.fetch_add(1, Ordering::SeqCst) + 1;
        let last = first + n - 1;
        // The words' generation is raised before any bit changes, so a
        // writer that sees the new bit also sees that it must wait for `g`.
        for w in first / 64..=last / 64 {
            self.word_gen[w as usize].fetch_max(g, Ordering::SeqCst);
        }
        f();
        for block in first / BITS_PER_BLOCK..=last / BITS_PER_BLOCK {
            for w in touched {
                match w {
                    Which::Diff => &self.diff_dirty[block as usize],
                    Which::Copy => &self.copy_dirty[block as usize],
                    Which::Index => continue,
                }
                .store(true, Ordering::SeqCst);
            }
        }
        if let (Some(m), true) = (&self.compact, touched.contains(&Which::Index)) {
            for block in first / INDEX_PER_BLOCK..=last / INDEX_PER_BLOCK {
                m.dirty[block as usize].store(true, Ordering::SeqCst);
            }
        }
        g
    }

    /// Generation chunk `c`'s bits need to be durable, if not yet.
    #[inline]
    fn undurable(&self, c: u64) -> Option<u64> {
        let g = self.word_gen[(c / 64) as usize].load(Ordering::SeqCst);
        (g > self.durable.load(Ordering::SeqCst)).then_some(g)
    }

    /// Wait until generation `g` is durable, leading a commit if none runs.
    pub(super) fn wait_durable(&self, g: u64) -> Result<()> {
        let mut st = self.commit.lock();
        loop {
            if st.durable >= g {
                return Ok(());
            }
            if self.commit_failed.load(Ordering::SeqCst) {
                return Err(self.offline_error());
            }
            if st.running {
                self.commit_cv.wait(&mut st);
                continue;
            }
            st.running = true;
            let res = parking_lot::MutexGuard::unlocked(&mut st, || self.commit_round());
            st.running = false;
            match res {
                Ok(target) => {
                    st.durable = st.durable.max(target);
                    self.durable.store(st.durable, Ordering::SeqCst);
                }
                Err(e) => {
                    self.commit_failed.store(true, Ordering::SeqCst);
                    self.fail(format!("bitmap commit failed: {e}"));
                }
            }
            self.commit_cv.notify_all();
        }
    }

    /// Commit everything changed so far; used by the engine and at quiesce.
    pub(super) fn commit_all(&self) -> Result<()> {
        let g = self.gen.load(Ordering::SeqCst);
        self.wait_durable(g)
    }

    /// One group-commit round: flush the sides that received copied data,
    /// then write the changed bitmap blocks and flush the bitmap volume.
    /// Returns the generation now durable.
    fn commit_round(&self) -> Result<u64> {
        let (target, blocks) = {
            let _gate = self.gate.write();
            let target = self.gen.load(Ordering::SeqCst);
            let mut blocks = Vec::new();
            if !self.memory_bitmap {
                let index_dirty: &[AtomicBool] = match &self.compact {
                    Some(m) => &m.dirty,
                    None => &[],
                };
                for (which, flags) in [
                    (Which::Diff, &self.diff_dirty[..]),
                    (Which::Copy, &self.copy_dirty[..]),
                    (Which::Index, index_dirty),
                ] {
                    for (b, f) in flags.iter().enumerate() {
                        if f.swap(false, Ordering::SeqCst) {
                            blocks.push((which, b, self.block_image(which, b)));
                        }
                    }
                }
            }
            (target, blocks)
        };
        if self.memory_bitmap {
            return Ok(target);
        }
        if self.master_dirty.swap(false, Ordering::SeqCst) {
            self.master.with_lower(|d| d.flush())?;
        }
        if self.shadow_dirty.swap(false, Ordering::SeqCst) {
            self.shadow.with_lower(|d| d.flush())?;
            if let Some(o) = self.overflow() {
                o.device().flush()?;
            }
        }
        // A compact set's index (where each copied chunk lives) is durable
        // before the bits that say the chunk was copied: within one flush
        // a device may keep either write without the other, and a bit
        // whose chunk has no place would be a copy lost.
        let (index, bits): (Vec<_>, Vec<_>) = blocks
            .iter()
            .partition(|(which, _, _)| *which == Which::Index);
        for part in [index, bits] {
            if part.is_empty() {
                continue;
            }
            for (which, b, image) in part {
                self.store
                    .write(image, self.block_offset(*which, *b), false)?;
            }
            self.store.flush()?;
        }
        Ok(target)
    }

    fn block_offset(&self, which: Which, block: usize) -> u64 {
        let layout = Layout::for_chunks(self.chunks, self.kind == Kind::Compact);
        let base = match which {
            Which::Diff => layout.diff_offset,
            Which::Copy => layout.copy_offset,
            Which::Index => layout.index_offset,
        };
        base + block as u64 * BITMAP_BLOCK_BYTES
    }

    /// The on-disk bytes of one bitmap block.
    fn block_image(&self, which: Which, block: usize) -> Vec<u8> {
        let (bm, inverted) = match which {
            Which::Diff => (&self.diff, false),
            Which::Copy => (&self.copy, self.copy_inverted),
            Which::Index => {
                let m = self
                    .compact
                    .as_ref()
                    .expect("only compact sets write an index");
                let mut out = vec![0u8; BITMAP_BLOCK_BYTES as usize];
                let first = block as u64 * INDEX_PER_BLOCK;
                for i in 0..INDEX_PER_BLOCK.min(self.chunks.saturating_sub(first)) {
                    let e = m.index[(first + i) as usize].load(Ordering::SeqCst);
                    out[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
                }
                return out;
            }
        };
        let words_per_block = (BITMAP_BLOCK_BYTES / 8) as usize;
        let mut out = vec![0u8; BITMAP_BLOCK_BYTES as usize];
        let first = block * words_per_block;
        for i in 0..words_per_block {
            let w = first + i;
            if w >= bm.words() {
                break;
            }
            out[i * 8..i * 8 + 8].copy_from_slice(&bm.disk_word(w, inverted).to_le_bytes());
        }
        out
    }

    /// Read both bitmaps back from the bitmap volume, validating that no
    /// bit past the last chunk is set.
    pub(super) fn load_bitmaps(&self) -> std::result::Result<(), String> {
        let layout = Layout::for_chunks(self.chunks, self.kind == Kind::Compact);
        for (which, bm, inverted) in [
            (Which::Diff, &self.diff, false),
            (Which::Copy, &self.copy, self.copy_inverted),
        ] {
            let mut buf = vec![0u8; layout.bitmap_bytes as usize];
            self.store
                .read(&mut buf, self.block_offset(which, 0))
                .map_err(|e| format!("reading the bitmaps: {e}"))?;
            for w in 0..bm.words() {
                let disk = u64::from_le_bytes(buf[w * 8..w * 8 + 8].try_into().expect("8"));
                if !bm.load_disk_word(w, disk, inverted) {
                    return Err(format!("{which:?} bitmap has bits set past the last chunk"));
                }
            }
            if buf[bm.words() * 8..].iter().any(|&b| b != 0) {
                return Err(format!(
                    "{which:?} bitmap has bytes set past the last chunk"
                ));
            }
        }
        if let Some(m) = &self.compact {
            let mut buf = vec![0u8; layout.index_bytes as usize];
            self.store
                .read(&mut buf, layout.index_offset)
                .map_err(|e| format!("reading the chunk index: {e}"))?;
            let overflow_chunks = self.overflow().map(|o| o.usage().0).unwrap_or(0);
            let mut next = 0;
            for c in 0..self.chunks as usize {
                let e = u64::from_le_bytes(buf[c * 8..c * 8 + 8].try_into().expect("8"));
                if e != 0 {
                    let slot = (e & !INDEX_OVERFLOW) - 1;
                    let ok = if e & INDEX_OVERFLOW != 0 {
                        slot < overflow_chunks
                    } else {
                        next = next.max(slot + 1);
                        slot < m.shadow_slots
                    };
                    if !ok {
                        return Err(format!(
                            "chunk index entry {c} points outside the shadow and overflow ({e:#x})"
                        ));
                    }
                }
                m.index[c].store(e, Ordering::SeqCst);
            }
            if buf[self.chunks as usize * 8..].iter().any(|&b| b != 0) {
                return Err("chunk index has entries past the last chunk".into());
            }
            m.next_slot.store(next, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Write every bitmap block and flush (used at suspend, and after a
    /// whole-bitmap transition).
    pub(super) fn write_all_bitmaps(&self) -> Result<()> {
        let blocks = Layout::for_chunks(self.chunks, self.kind == Kind::Compact).bitmap_bytes
            / BITMAP_BLOCK_BYTES;
        let _gate = self.gate.write();
        for which in [Which::Diff, Which::Copy] {
            for b in 0..blocks as usize {
                let image = self.block_image(which, b);
                self.store
                    .write(&image, self.block_offset(which, b), false)?;
            }
        }
        for f in self.diff_dirty.iter().chain(self.copy_dirty.iter()) {
            f.store(false, Ordering::SeqCst);
        }
        if let Some(m) = &self.compact {
            for b in 0..m.dirty.len() {
                let image = self.block_image(Which::Index, b);
                self.store
                    .write(&image, self.block_offset(Which::Index, b), false)?;
                m.dirty[b].store(false, Ordering::SeqCst);
            }
        }
        self.store.flush()
    }

    /// Write the header (next slot, higher sequence) and flush it.
    pub(super) fn write_header(&self, f: impl FnOnce(&mut Header)) -> Result<()> {
        let mut h = self.header.lock();
        let mut next = h.clone();
        f(&mut next);
        next.seq = h.seq + 1;
        self.store
            .write(&next.encode(), next.slot_offset(), false)?;
        self.store.flush()?;
        *h = next;
        Ok(())
    }

    // ----- moving chunks -----------------------------------------------

    /// Copy the `n` chunks from `first` from one side's device to the other's.
    /// With `share`, where both are files of one filesystem that shares
    /// extents (XFS, btrfs), by reflink: no data moves. Only the background
    /// copy asks for that: cloning makes the filesystem write the source's
    /// dirty pages back first, under the file's locks, which measured 0.01x
    /// of a plain write for first touches on XFS (tools/bench-image.sh),
    /// while a copy-on-write's read and write stay in the page cache.
    /// Sparse stays sparse: what `from` reports as a hole, and what reads
    /// as zeroes, becomes a zeroing of `to` (a file backend punches it),
    /// so copying a mostly empty volume writes little more than its data.
    fn copy_chunks(
        &self,
        first: u64,
        n: u64,
        from: &dyn BlockDevice,
        to: &dyn BlockDevice,
        share: bool,
    ) -> Result<()> {
        let (start, len) = self.run_range(first, n);
        if let Some(src) = from.clone_source().filter(|_| share) {
            if to.clone_range_from(src, start, len as u64)? {
                self.counters.cloned_chunks.fetch_add(n, Ordering::Relaxed);
                return Ok(());
            }
        }
        let end = start + len as u64;
        let mut at = start;
        while at < end {
            // A small run (a first touch) is read, not asked about. The
            // answer may stop short of the range; ask again from there.
            let runs = if end - at < crate::device::HOLE_QUERY_MIN_BYTES {
                vec![crate::device::Extent {
                    len: end - at,
                    hole: false,
                }]
            } else {
                from.allocation(at, end - at)?
            };
            if runs.is_empty() {
                break;
            }
            for run in runs {
                let run_len = run.len.min(end - at);
                if run.hole {
                    to.write_zeroes(at, run_len, false)?;
                } else {
                    with_copy_buf(run_len as usize, |buf| {
                        from.read(buf, at)?;
                        if is_zero(buf) {
                            to.write_zeroes(at, run_len, false)
                        } else {
                            to.write(buf, at, false)
                        }
                    })?;
                }
                at += run_len;
                if at >= end {
                    break;
                }
            }
        }
        if at < end {
            // An allocation answer with nothing in it: copy the rest as data.
            let rest = (end - at) as usize;
            with_copy_buf(rest, |buf| {
                from.read(buf, at)?;
                to.write(buf, at, false)
            })?;
        }
        Ok(())
    }

    /// Byte range of the `n` chunks from `first` (the last may be short).
    fn run_range(&self, first: u64, n: u64) -> (u64, usize) {
        let start = first * self.chunk_bytes;
        let end = ((first + n) * self.chunk_bytes).min(self.master_bytes);
        (start, (end - start) as usize)
    }

    /// Save the master's point-in-time chunks into the shadow.
    /// Caller holds the chunks' locks exclusively.
    /// `share`: by reflink where possible (see `copy_chunks`).
    fn cow_to_shadow(
        &self,
        first: u64,
        n: u64,
        master_lower: &dyn BlockDevice,
        share: bool,
    ) -> Result<()> {
        if self.compact.is_some() {
            for c in first..first + n {
                self.alloc_slot(c)?;
                let (start, len) = self.run_range(c, 1);
                with_copy_buf(len, |buf| {
                    master_lower.read(buf, start)?;
                    self.on_shadow(c, start, |d, off| d.write(buf, off, false))
                })?;
            }
        } else {
            self.shadow
                .with_lower(|shadow| self.copy_chunks(first, n, master_lower, shadow, share))?;
        }
        self.shadow_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn overflow(&self) -> Option<Arc<Overflow>> {
        self.compact
            .as_ref()
            .and_then(|m| m.overflow.read().clone())
    }

    /// Name of a compact set's overflow volume ("" without one).
    pub fn overflow_name(&self) -> String {
        self.overflow()
            .map(|o| o.name().to_owned())
            .unwrap_or_default()
    }

    /// Change a compact set's overflow volume (the caller checked that no
    /// chunk lives in the old one) and record it in the header.
    pub(super) fn set_overflow(&self, o: Option<Arc<Overflow>>) -> Result<()> {
        let m = self.compact.as_ref().expect("compact");
        let name = o.as_ref().map(|o| o.name().to_owned()).unwrap_or_default();
        self.write_header(|h| h.overflow = name)?;
        *m.overflow.write() = o;
        Ok(())
    }

    /// Chunks of a compact set kept in the overflow volume.
    pub fn overflow_chunks(&self) -> u64 {
        self.compact.as_ref().map_or(0, |m| {
            m.index
                .iter()
                .filter(|e| e.load(Ordering::Relaxed) & INDEX_OVERFLOW != 0)
                .count() as u64
        })
    }

    /// Give compact chunk `c` a place: the next shadow slot, else an
    /// overflow chunk. No room fails the set (visibly), never silently.
    /// Caller holds the chunk lock; the entry becomes durable with the
    /// chunk's bits.
    fn alloc_slot(&self, c: u64) -> Result<()> {
        let m = self.compact.as_ref().expect("compact");
        if m.index[c as usize].load(Ordering::SeqCst) != 0 {
            return Ok(());
        }
        let slot = m.next_slot.fetch_add(1, Ordering::SeqCst);
        let entry = if slot < m.shadow_slots {
            slot + 1
        } else {
            m.next_slot.store(m.shadow_slots, Ordering::SeqCst);
            let Some(o) = self.overflow() else {
                return Err(DeviceError::NoSpace(format!(
                    "compact shadow {} is full ({} chunks) and image set {} has no overflow volume",
                    self.shadow_name, m.shadow_slots, self.name
                )));
            };
            match o.alloc()? {
                Some(s) => (s + 1) | INDEX_OVERFLOW,
                None => {
                    return Err(DeviceError::NoSpace(format!(
                        "compact shadow {} and overflow volume {} are full",
                        self.shadow_name,
                        o.name()
                    )))
                }
            }
        };
        m.index[c as usize].store(entry, Ordering::SeqCst);
        Ok(())
    }

    /// Run `f(device, offset)` where the shadow keeps byte `pos` (inside
    /// chunk `c`, or past the master's end) of its data.
    fn on_shadow<T>(
        &self,
        c: u64,
        pos: u64,
        f: impl FnOnce(&dyn BlockDevice, u64) -> Result<T>,
    ) -> Result<T> {
        let Some(m) = &self.compact else {
            return self.shadow.with_lower(|d| f(d, pos));
        };
        let e = m.index[c as usize].load(Ordering::SeqCst);
        if e == 0 {
            return Err(DeviceError::Failed {
                reason: format!(
                    "image set {}: chunk {c} has no place in the compact shadow",
                    self.name
                ),
            });
        }
        let within = pos - c * self.chunk_bytes;
        let slot = (e & !INDEX_OVERFLOW) - 1;
        if e & INDEX_OVERFLOW != 0 {
            let Some(o) = self.overflow() else {
                return Err(DeviceError::Failed {
                    reason: format!(
                        "image set {}: chunk {c} is in a detached overflow volume",
                        self.name
                    ),
                });
            };
            f(o.device(), o.offset(slot) + within)
        } else {
            self.shadow
                .with_lower(|d| f(d, slot * self.chunk_bytes + within))
        }
    }

    /// Write to the shadow's data (after `prepare_shadow_write`), through
    /// the chunk index for a compact set. `buf` None writes zeroes.
    pub(super) fn write_shadow_data(
        &self,
        buf: Option<&[u8]>,
        offset: u64,
        len: u64,
        fua: bool,
        lower: &dyn BlockDevice,
    ) -> Result<()> {
        if self.compact.is_none() {
            return match buf {
                Some(b) => lower.write(b, offset, fua),
                None => lower.write_zeroes(offset, len, fua),
            };
        }
        let zeroes;
        let data = match buf {
            Some(b) => b,
            None => {
                zeroes = vec![0u8; len as usize];
                &zeroes
            }
        };
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk_bytes;
            let piece_end = ((c + 1) * self.chunk_bytes).min(end);
            let piece = &data[(pos - offset) as usize..(piece_end - offset) as usize];
            self.on_shadow(c, pos, |d, off| d.write(piece, off, fua))?;
            pos = piece_end;
        }
        Ok(())
    }

    /// Flush the shadow's data (the shadow volume and any overflow).
    pub(super) fn flush_shadow_data(&self, lower: &dyn BlockDevice) -> Result<()> {
        lower.flush()?;
        if let Some(o) = self.overflow() {
            o.device().flush()?;
        }
        Ok(())
    }

    pub(super) fn is_compact(&self) -> bool {
        self.compact.is_some()
    }

    /// Restore chunks of the master from the shadow: first every other set
    /// of the master saves its own point in time of them. Caller holds the
    /// chunks' locks exclusively.
    fn restore_chunks(
        &self,
        first: u64,
        n: u64,
        master_lower: &dyn BlockDevice,
        share: bool,
    ) -> Result<()> {
        let (start, len) = self.run_range(first, n);
        for other in self.master.sets().iter() {
            if !std::ptr::eq(other.as_ref(), self) {
                other.prepare_master_write(start, len as u64, master_lower)?;
            }
        }
        if self.compact.is_some() {
            for c in first..first + n {
                let (start, len) = self.run_range(c, 1);
                with_copy_buf(len, |buf| {
                    self.on_shadow(c, start, |d, off| d.read(buf, off))?;
                    master_lower.write(buf, start, false)
                })?;
            }
        } else {
            self.shadow
                .with_lower(|shadow| self.copy_chunks(first, n, shadow, master_lower, share))?;
        }
        self.master_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Would a master write to this range copy, commit or wait? (The
    /// frontend's hint; the answer may be stale by the time the write runs,
    /// which costs only where it runs, never correctness.)
    pub(super) fn write_needs_work(&self, offset: u64, len: u64) -> bool {
        !self.is_failed()
            && self.chunks_of(offset, len).any(|c| {
                self.restore_pending(c)
                    || !self.shadow_holds(c)
                    || !self.diff.get(c)
                    || self.undurable(c).is_some()
            })
    }

    /// Everything that must happen before a write to the master's
    /// `[offset, offset + len)` reaches `master_lower`: the work, then the
    /// wait for its commit.
    pub(super) fn prepare_master_write(
        &self,
        offset: u64,
        len: u64,
        master_lower: &dyn BlockDevice,
    ) -> Result<()> {
        let p = self.prepare_master(offset, len, master_lower)?;
        self.finish_master(p)
    }

    /// The work before a master write: copy-on-write of every chunk the
    /// shadow does not hold yet, a restore of every chunk still to be
    /// restored, and the bits. Returns what the write must wait for before
    /// it reaches the master's lower device ([`Self::finish_master`]).
    pub(super) fn prepare_master(
        &self,
        offset: u64,
        len: u64,
        master_lower: &dyn BlockDevice,
    ) -> Result<Prepared> {
        let mut need = 0u64;
        let mut restored = false;
        let chunks = self.chunks_of(offset, len);
        let mut c = chunks.start;
        while c < chunks.end {
            let run = self.first_touch_run(c, chunks.end);
            if run > 1 {
                need = need.max(self.move_run_before_write(c, run, master_lower));
                c += run;
                continue;
            }
            let g = if self.restore_pending(c) {
                // The master still reads this chunk from the shadow: it is
                // restored first, even for a failed set, and a failure here
                // fails the master write (acknowledging it would lose it).
                let _l = self.lock(c).write();
                restored = true;
                self.move_before_write(c, master_lower)?
            } else if self.is_failed() {
                // A failed set moves nothing more, but what it changed
                // before still must be durable before the write lands: a
                // restore's clear of this chunk (then the master no longer
                // reads it from the shadow; after a crash without the
                // clear it would, and this write would be lost). The
                // request that restored it may have failed before its
                // commit (a compact shadow out of room for a later chunk).
                let g = self.undurable(c);
                restored |= g.is_some() && self.direction() == Direction::ToMaster;
                g
            } else if !self.shadow_holds(c) {
                let _l = self.lock(c).write();
                self.move_before_write(c, master_lower)
                    .inspect_err(|e| self.fail(format!("copy-on-write of chunk {c}: {e}")))
                    .unwrap_or(None)
            } else {
                self.mark_differing(c)
            };
            need = need.max(g.unwrap_or(0));
            c += 1;
        }
        Ok(Prepared { need, restored })
    }

    /// How many chunks from `c` (before `end`) a master write touches
    /// first: none restoring, the shadow holding none of them, the set not
    /// failed. At most to the end of `c`'s run of lock stripes, so the
    /// locks of a run are taken in ascending stripe order (see
    /// [`Self::move_run_before_write`]).
    fn first_touch_run(&self, c: u64, end: u64) -> u64 {
        let limit = (end - c).min(LOCK_STRIPES - c % LOCK_STRIPES);
        let first = |i: u64| !self.restore_pending(i) && !self.shadow_holds(i);
        if limit < 2 || self.is_failed() || !first(c) {
            return 0;
        }
        (1..limit).find(|&n| !first(c + n)).unwrap_or(limit)
    }

    /// [`Self::move_before_write`] for the `n` chunks from `c`, with the
    /// point-in-time data of those still unsaved copied in one run (one
    /// read and one write, or one zeroing of a hole, instead of one per
    /// chunk: a 64 KiB write over 4 KiB chunks, a resync's on a secondary
    /// with a safety snapshot, cost sixteen of each). Takes the chunks'
    /// locks in ascending stripe order (the run never wraps past the last
    /// stripe, nor does the copy engine's), so two paths holding several
    /// cannot deadlock. Returns the generation to wait for (0: none). A
    /// copy that fails fails the set, not the write, as for one chunk;
    /// what the chunks before it changed is still waited for.
    fn move_run_before_write(&self, c: u64, n: u64, master_lower: &dyn BlockDevice) -> u64 {
        let _locks: Vec<_> = (c..c + n).map(|i| self.lock(i).write()).collect();
        // Writers may have moved some while we waited: the leading run
        // still unsaved is copied at once, the rest one by one.
        let k = (0..n)
            .find(|&i| self.restore_pending(c + i) || self.shadow_holds(c + i))
            .unwrap_or(n);
        let mut need = 0;
        if k > 0 {
            match self.save_before_write(c, k, master_lower) {
                Ok(g) => need = g,
                Err(e) => {
                    self.fail(format!("copy-on-write of chunks {c} to {}: {e}", c + k - 1));
                    return 0;
                }
            }
        }
        for i in c + k..c + n {
            match self.move_before_write(i, master_lower) {
                Ok(g) => need = need.max(g.unwrap_or(0)),
                Err(e) => {
                    self.fail(format!("copy-on-write of chunk {i}: {e}"));
                    break;
                }
            }
        }
        need
    }

    /// Wait until what [`Self::prepare_master`] changed is durable.
    pub(super) fn finish_master(&self, p: Prepared) -> Result<()> {
        if p.need > 0 {
            // A commit failure takes the shadow offline; the master write
            // itself goes on (the shadow is lost, not the master's data)
            // unless it needed a restore to be durable first.
            if let Err(e) = self.wait_durable(p.need) {
                if p.restored {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Everything that must happen before a write to the shadow's range.
    pub(super) fn prepare_shadow_write(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_failed() {
            return Err(self.offline_error());
        }
        let mut need = 0u64;
        for c in self.chunks_of(offset, len) {
            let g = if self.restore_pending(c) || !self.shadow_holds(c) {
                let _l = self.lock(c).write();
                match self.master.with_lower(|m| self.move_before_write(c, m)) {
                    Ok(g) => g,
                    Err(e) => {
                        self.fail(format!("copy before shadow write, chunk {c}: {e}"));
                        // What the earlier chunks changed (a restore) is
                        // committed all the same: later requests rely on it.
                        if need > 0 {
                            let _ = self.wait_durable(need);
                        }
                        return Err(e);
                    }
                }
            } else {
                self.mark_differing(c)
            };
            need = need.max(g.unwrap_or(0));
        }
        if need > 0 {
            self.wait_durable(need)?;
        }
        Ok(())
    }

    /// Under chunk `c`'s exclusive lock: finish whatever copy `c` still
    /// owes (a restore to the master, or the point-in-time data to the
    /// shadow), then mark it differing. Returns the generation to wait for.
    fn move_before_write(&self, c: u64, master_lower: &dyn BlockDevice) -> Result<Option<u64>> {
        if self.restore_pending(c) {
            self.restore_chunks(c, 1, master_lower, false)?;
            self.counters.cow_chunks.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(self.change(c, &[Which::Diff, Which::Copy], || {
                self.copy.clear(c);
                self.diff.set(c);
            })));
        }
        if !self.shadow_holds(c) {
            return self.save_before_write(c, 1, master_lower).map(Some);
        }
        // Another writer moved it while we waited for the lock.
        Ok(self.mark_differing(c))
    }

    /// Copy the point-in-time data of the `n` chunks from `c` to the shadow
    /// and mark them differing (and copied, for an independent set).
    /// Caller holds their locks. Returns the generation to wait for.
    fn save_before_write(&self, c: u64, n: u64, master_lower: &dyn BlockDevice) -> Result<u64> {
        self.cow_to_shadow(c, n, master_lower, false)?;
        self.counters.cow_chunks.fetch_add(n, Ordering::Relaxed);
        Ok(
            self.change_run(c, n, &[Which::Diff, Which::Copy, Which::Index], || {
                for i in c..c + n {
                    if self.kind == Kind::Independent {
                        self.copy.clear(i);
                    }
                    self.diff.set(i);
                }
            }),
        )
    }

    /// Chunk `c` is held by the side being written: make sure its shadow
    /// bit is set. Returns the generation to wait for, if any.
    fn mark_differing(&self, c: u64) -> Option<u64> {
        if !self.diff.get(c) {
            Some(self.change(c, &[Which::Diff], || {
                self.diff.set(c);
            }))
        } else {
            self.undurable(c)
        }
    }

    /// The copy engine's step: copy the run of pending chunks that starts
    /// at `c` (at most [`ENGINE_RUN_BYTES`]) in one read and one write.
    /// Returns how many chunks it moved past.
    fn engine_copy(&self, c: u64) -> Result<u64> {
        // Never past the last lock stripe: every path that holds several
        // chunk locks takes them in ascending stripe order.
        let mut max = (ENGINE_RUN_BYTES / self.chunk_bytes)
            .clamp(1, LOCK_STRIPES)
            .min(LOCK_STRIPES - c % LOCK_STRIPES);
        let t = self.throttle();
        if t.unit > 0 {
            // A throttled copy sleeps after every `unit` chunks exactly.
            max = max.min(t.unit as u64);
        }
        let mut n = 1;
        while n < max && c + n < self.chunks && self.copy.get(c + n) {
            n += 1;
        }
        // Ascending stripe order, distinct stripes (the run ends at the last
        // stripe at the latest), as a master write's first-touch run takes
        // them: no two paths can wait for each other's.
        let _locks: Vec<_> = (c..c + n).map(|i| self.lock(i).write()).collect();
        // A writer may have moved some of them while we waited.
        let mut k = 0;
        while k < n && self.copy.get(c + k) {
            k += 1;
        }
        if k == 0 {
            return Ok(1);
        }
        match self.direction() {
            Direction::ToShadow => self
                .master
                .with_lower(|m| self.cow_to_shadow(c, k, m, true))?,
            Direction::ToMaster => self
                .master
                .with_lower(|m| self.restore_chunks(c, k, m, true))?,
            Direction::None => return Ok(n),
        }
        self.change_run(c, k, &[Which::Copy], || {
            for i in c..c + k {
                self.copy.clear(i);
            }
        });
        self.counters.copied_chunks.fetch_add(k, Ordering::Relaxed);
        Ok(k)
    }

    // ----- reads ---------------------------------------------------------

    /// Read `buf` at `offset` from the shadow side.
    pub(super) fn read_shadow(
        &self,
        buf: &mut [u8],
        offset: u64,
        shadow_lower: &dyn BlockDevice,
    ) -> Result<()> {
        if self.is_failed() {
            return Err(self.offline_error());
        }
        let range = self.chunks_of(offset, buf.len() as u64);
        if self.compact.is_none() && range.clone().all(|c| self.shadow_holds(c)) {
            return shadow_lower.read(buf, offset);
        }
        // Split at chunk boundaries; chunks the shadow does not hold are
        // read from the master under the chunk's shared lock, so no
        // copy-on-write can change the master under the read.
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk_bytes;
            let piece_end = if c < self.chunks {
                ((c + 1) * self.chunk_bytes).min(end)
            } else {
                end
            };
            let piece = &mut buf[(pos - offset) as usize..(piece_end - offset) as usize];
            if c >= self.chunks {
                shadow_lower.read(piece, pos)?;
            } else if self.shadow_holds(c) {
                self.on_shadow(c, pos, |d, off| d.read(piece, off))?;
            } else {
                let _l = self.lock(c).read();
                if self.shadow_holds(c) {
                    self.on_shadow(c, pos, |d, off| d.read(piece, off))?;
                } else {
                    self.master.with_lower(|m| m.read(piece, pos))?;
                }
            }
            pos = piece_end;
        }
        Ok(())
    }

    /// Serve the pieces of a master read whose restore is pending from the
    /// shadow. Returns false (nothing read) when no chunk of the range is
    /// pending, so the caller reads the master as usual.
    pub(super) fn read_master_restoring(
        &self,
        buf: &mut [u8],
        offset: u64,
        master_lower: &dyn BlockDevice,
    ) -> Result<bool> {
        let range = self.chunks_of(offset, buf.len() as u64);
        if !range.clone().any(|c| self.restore_pending(c)) {
            return Ok(false);
        }
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let c = pos / self.chunk_bytes;
            let piece_end = ((c + 1) * self.chunk_bytes).min(end);
            let piece = &mut buf[(pos - offset) as usize..(piece_end - offset) as usize];
            let _l = self.lock(c).read();
            if self.restore_pending(c) {
                self.on_shadow(c, pos, |d, off| d.read(piece, off))?;
            } else {
                master_lower.read(piece, pos)?;
            }
            pos = piece_end;
        }
        Ok(true)
    }

    // ----- transitions (both volumes quiesced) ---------------------------

    /// Apply a whole-bitmap transition in memory.
    fn apply_transition(&self, t: Transition) {
        match t {
            Transition::None => {}
            Transition::Merge => {
                self.copy.or_from(&self.diff);
                self.diff.clear_all();
            }
            Transition::Fill => {
                self.copy.fill();
                self.diff.clear_all();
            }
            Transition::Clear => {
                self.copy.clear_all();
                self.diff.clear_all();
                // A refreshed compact shadow saves nothing yet: every slot
                // is free again.
                if let Some(m) = &self.compact {
                    for e in m.index.iter() {
                        e.store(0, Ordering::SeqCst);
                    }
                    m.next_slot.store(0, Ordering::SeqCst);
                }
            }
        }
    }

    /// Take a new point in time or start a restore. The header records the
    /// transition first; a crash part-way is redone at open.
    pub(super) fn transition(&self, t: Transition, dir: Direction) -> Result<()> {
        let active = dir != Direction::None;
        if !self.memory_bitmap {
            self.write_header(|h| {
                h.transition = t;
                h.direction = dir;
                h.copy_active = active;
            })?;
        }
        self.direction.store(dir_to_u8(dir), Ordering::SeqCst);
        self.apply_transition(t);
        if !self.memory_bitmap {
            self.write_all_bitmaps()?;
            self.write_header(|h| h.transition = Transition::None)?;
        } else {
            let mut h = self.header.lock();
            h.direction = dir;
            h.copy_active = active;
        }
        Ok(())
    }

    /// Redo a transition the header says was under way at a crash.
    pub(super) fn redo_transition(&self) -> Result<()> {
        let h = self.header_snapshot();
        if h.transition != Transition::None {
            log::warn!(
                "image set {}: finishing a {:?} interrupted by a crash",
                self.name,
                h.transition
            );
            self.apply_transition(h.transition);
            self.write_all_bitmaps()?;
            self.write_header(|h| h.transition = Transition::None)?;
        }
        Ok(())
    }

    // ----- the copy engine ----------------------------------------------

    /// Start the background copy in the current direction (if any chunk
    /// is pending).
    pub(super) fn start_engine(self: &Arc<Self>) {
        let mut slot = self.engine.lock();
        if slot.is_some() {
            return;
        }
        if self.direction() == Direction::None {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        self.copy_total.store(self.copy.count(), Ordering::SeqCst);
        self.copying.store(true, Ordering::SeqCst);
        let set = self.clone();
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("image-copy-{}", self.name))
            .spawn(move || set.run_engine(&st))
            .expect("spawn the copy thread");
        *slot = Some(Engine { stop, handle });
    }

    fn run_engine(&self, stop: &AtomicBool) {
        let dir = self.direction();
        log::info!(
            "image set {}: copy {:?} started, {} chunks",
            self.name,
            dir,
            self.copy.count()
        );
        let mut next = 0;
        let mut since_commit = 0;
        let mut since_sleep = 0u32;
        let mut result: std::result::Result<(), String> = Ok(());
        while let Some(c) = self.copy.next_set(next) {
            // A restore goes on for a failed set (the master depends on
            // it); a copy to an offline shadow stops.
            if stop.load(Ordering::SeqCst) || (self.is_failed() && dir != Direction::ToMaster) {
                break;
            }
            let moved = match self.engine_copy(c) {
                Ok(moved) => moved,
                Err(e) => {
                    result = Err(format!("copying from chunk {c}: {e}"));
                    break;
                }
            };
            next = c + moved;
            since_commit += moved;
            if since_commit >= ENGINE_COMMIT_CHUNKS {
                since_commit = 0;
                if let Err(e) = self.commit_all() {
                    result = Err(format!("committing copy progress: {e}"));
                    break;
                }
            }
            let t = self.throttle();
            if t.unit > 0 {
                since_sleep += moved as u32;
                if since_sleep >= t.unit {
                    since_sleep = 0;
                    std::thread::sleep(Duration::from_millis(t.delay_ms as u64));
                }
            }
        }
        if result.is_ok() {
            if let Err(e) = self.commit_all() {
                result = Err(format!("committing copy progress: {e}"));
            }
        }
        let stopped = stop.load(Ordering::SeqCst);
        match result {
            Err(e) => {
                if dir == Direction::ToMaster {
                    // The master still depends on the shadow for the
                    // pending chunks; keep the set, report the error.
                    log::error!("image set {}: restore stopped: {e}", self.name);
                    self.emit(
                        "image.copy_failed",
                        crate::services::Note::new(e.clone())
                            .field("direction", dir)
                            .field("why", e),
                    );
                } else {
                    self.fail(e);
                }
            }
            Ok(()) if !stopped && self.copy.count() == 0 => {
                let _ = self.write_header(|h| h.copy_active = false);
                log::info!("image set {}: copy {dir:?} complete", self.name);
                self.emit(
                    "image.copy_done",
                    crate::services::Note::new(format!("{dir:?}"))
                        .field("direction", dir)
                        .field("copied_bytes", self.copy_total() * self.chunk_bytes()),
                );
            }
            Ok(()) => {}
        }
        self.copying.store(false, Ordering::SeqCst);
        let _g = self.engine.lock();
        self.engine_done.notify_all();
    }

    /// Stop the copy engine and wait for it. Pending bits stay: the target
    /// keeps reading those chunks from the source (it is a dependent copy
    /// of them). `persist` records the abort in the header so the copy does
    /// not resume at restart.
    pub(super) fn stop_engine(&self, persist: bool) -> Result<()> {
        let engine = self.engine.lock().take();
        if let Some(e) = engine {
            e.stop.store(true, Ordering::SeqCst);
            let _ = e.handle.join();
        }
        if persist {
            self.write_header(|h| h.copy_active = false)?;
        }
        Ok(())
    }

    /// Wait for a running copy to end (finished, aborted or failed), at
    /// most `timeout`. Returns true when no copy runs any more.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.engine.lock();
        while self.is_copying() {
            if self.engine_done.wait_until(&mut slot, deadline).timed_out() {
                return !self.is_copying();
            }
        }
        // Reap a finished thread.
        if let Some(e) = slot.take() {
            drop(slot);
            let _ = e.handle.join();
        }
        true
    }

    pub(super) fn set_throttle(&self, t: Throttle) -> Result<()> {
        *self.throttle.lock() = t;
        self.write_header(|h| {
            h.throttle_delay_ms = t.delay_ms;
            h.throttle_unit = t.unit;
        })
    }

    /// Clean suspend: stop the copy (it resumes at the next open), write
    /// every bit and mark the header clean.
    pub(super) fn suspend(&self) -> Result<()> {
        self.stop_engine(false)?;
        if !self.is_failed() {
            self.master.with_lower(|d| d.flush())?;
            self.shadow.with_lower(|d| d.flush())?;
        }
        self.write_all_bitmaps()?;
        self.write_header(|h| {
            if h.state == HeaderState::Dirty {
                h.state = HeaderState::Clean;
            }
        })
    }

    /// A new independent set: every chunk is pending. On disk this is the
    /// zero-filled inverted copy bitmap, so nothing is written.
    pub(super) fn copy_fill_for_enable(&self) {
        self.copy.fill();
    }

    /// Mark the header dirty: the set is in use.
    pub(super) fn mark_dirty(&self) -> Result<()> {
        self.write_header(|h| {
            if h.state == HeaderState::Clean {
                h.state = HeaderState::Dirty;
            }
        })
    }

    /// Bring the shadow back online after a full copy re-established it.
    pub(super) fn clear_failure(&self) -> Result<()> {
        self.failed.store(false, Ordering::SeqCst);
        *self.failure.lock() = None;
        self.write_header(|h| h.state = HeaderState::Dirty)
    }
}
