//! The scoreboard: one bit per chunk of a replicated volume, saying "this
//! chunk may differ on the peer". The on-disk format is in
//! docs/replication-protocol.md ("Scoreboard file").
//!
//! Three views of a chunk:
//! * `pending`: writes to it that the peer has not acknowledged yet (and
//!   that are in flight locally). A counter per chunk.
//! * `oos` (out of sync, in memory): a write to it did not reach the peer
//!   (logging, a lost link, a failed queue). A resync copies these.
//! * `disk`: the bit as it is (or is about to be) in the file. Invariant:
//!   before any write is issued to the local volume, its chunks' disk bits
//!   are durable; a disk bit is cleared only while the chunk has nothing
//!   pending and is in sync. So after a crash the file is a superset of
//!   every chunk that can differ, and an update sync is always enough.
//!
//! Cost: a write to a chunk whose bit is already durable pays one atomic
//! increment and two loads. Only the first write to a cold chunk waits for
//! a metadata write, and concurrent first touches share it (group commit,
//! as imaging's bitmaps do). Bits are cleared lazily by `clean` (once a
//! second from the link manager, at the end of a sync, at shutdown), so a
//! hot chunk keeps its bit and pays nothing: DRBD's activity log gets the
//! same effect with extents; a bit per 64 KiB chunk with lazy clearing is
//! simpler and needs no separate log.

use super::generation::{Generations, HISTORY_LEN};
use crate::bitmap::AtomicBitmap;
use crate::device::{BlockDevice, DeviceError, Result};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"UMSB";
/// Version 2 added the generations; version 1 files are read with none
/// (current 0: "accepts any primary") and rewritten as version 2.
pub const VERSION: u32 = 2;
/// Where the generations sit in the header.
const GEN_OFFSET: usize = 128;
/// Header size; the bits start here.
pub const HEADER_BYTES: u64 = 4096;
/// The bits are written in pages of this size.
const PAGE_BYTES: u64 = 4096;
const WORDS_PER_PAGE: u64 = PAGE_BYTES / 8;
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;
/// At most this many chunks: bigger volumes get bigger chunks, so the
/// per-chunk counters stay within 16 MiB of memory.
const MAX_CHUNKS: u64 = 4 << 20;

/// The chunk size for a volume: the default, doubled until the volume has
/// at most `MAX_CHUNKS` chunks.
pub fn chunk_bytes_for(volume_bytes: u64) -> u32 {
    let mut c = DEFAULT_CHUNK_BYTES as u64;
    while volume_bytes.div_ceil(c) > MAX_CHUNKS {
        c *= 2;
    }
    c as u32
}

/// Bytes of a scoreboard file for a volume.
pub fn file_bytes_for(volume_bytes: u64, chunk_bytes: u32) -> u64 {
    let words = volume_bytes.div_ceil(chunk_bytes as u64).div_ceil(64);
    HEADER_BYTES + (words * 8).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    chunk_bytes: u32,
    volume_bytes: u64,
    chunks: u64,
    set: String,
}

impl Header {
    fn encode(&self, g: &Generations) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.chunks.to_le_bytes());
        b[32] = self.set.len() as u8;
        b[33..33 + self.set.len()].copy_from_slice(self.set.as_bytes());
        let o = GEN_OFFSET;
        b[o..o + 8].copy_from_slice(&g.current.to_le_bytes());
        b[o + 8..o + 16].copy_from_slice(&g.agreed.to_le_bytes());
        let n = g.history.len().min(HISTORY_LEN);
        b[o + 16] = n as u8;
        for (i, h) in g.history.iter().take(n).enumerate() {
            b[o + 24 + i * 8..o + 32 + i * 8].copy_from_slice(&h.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..508]);
        b[508..512].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> std::result::Result<(Header, Generations), String> {
        if &b[0..4] != MAGIC {
            return Err("not a scoreboard (bad magic)".into());
        }
        let crc = u32::from_le_bytes(b[508..512].try_into().expect("4"));
        if crc != crc32c::crc32c(&b[..508]) {
            return Err("header checksum mismatch".into());
        }
        let version = u32::from_le_bytes(b[4..8].try_into().expect("4"));
        if version != 1 && version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let chunk_bytes = u32::from_le_bytes(b[8..12].try_into().expect("4"));
        let volume_bytes = u64::from_le_bytes(b[16..24].try_into().expect("8"));
        let chunks = u64::from_le_bytes(b[24..32].try_into().expect("8"));
        if chunk_bytes < 4096 || !chunk_bytes.is_power_of_two() {
            return Err(format!("bad chunk size {chunk_bytes}"));
        }
        if chunks != volume_bytes.div_ceil(chunk_bytes as u64) {
            return Err(format!(
                "{chunks} chunks does not match {volume_bytes} bytes"
            ));
        }
        let n = b[32] as usize;
        let set = std::str::from_utf8(&b[33..33 + n.min(64)])
            .map_err(|_| "set name is not UTF-8".to_string())?
            .to_owned();
        let mut g = Generations::default();
        if version >= 2 {
            let o = GEN_OFFSET;
            let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
            g.current = word(o);
            g.agreed = word(o + 8);
            let n = b[o + 16] as usize;
            if n > HISTORY_LEN {
                return Err(format!(
                    "{n} generations in the history (at most {HISTORY_LEN})"
                ));
            }
            g.history = (0..n).map(|i| word(o + 24 + i * 8)).collect();
        }
        Ok((
            Header {
                chunk_bytes,
                volume_bytes,
                chunks,
                set,
            },
            g,
        ))
    }
}

struct Commit {
    durable: u64,
    failed: Option<String>,
}

/// Parts of a chunk the in-memory map tracks (`Scoreboard::fine`): a 64 KiB
/// chunk in 4 KiB pieces, the page size and what random writes touch.
pub const SUB_BLOCKS: u64 = 16;
/// A fine mask that means "the whole chunk".
const WHOLE: u16 = u16::MAX;

pub struct Scoreboard {
    dev: Arc<dyn BlockDevice>,
    header: Header,
    oos: AtomicBitmap,
    /// Per chunk, which of its [`SUB_BLOCKS`] parts changed while it was
    /// out of sync, in memory only: a resync after an outage moves what
    /// was written, not whole chunks. Written before the chunk's `oos` bit
    /// and taken with it. A chunk out of sync for a reason that names no
    /// range (read back from disk after a restart, a full sync, a peer's
    /// bitmap, an error) has every part set; 0 on an out-of-sync chunk
    /// (a write raced a take) also means the whole chunk.
    fine: Box<[AtomicU16]>,
    disk: AtomicBitmap,
    pending: Box<[AtomicU32]>,
    /// Generation of the last change per page of bits.
    page_gen: Box<[AtomicU64]>,
    mod_gen: AtomicU64,
    durable_gen: AtomicU64,
    /// Changes to `disk` hold it shared; a commit takes it exclusively
    /// for the instant it snapshots the pages, so a snapshot never holds
    /// half a change.
    gate: RwLock<()>,
    commit: Mutex<Commit>,
    /// The generations, written into the header (`update_generations`).
    gens: Mutex<Generations>,
    /// `gens.diverged()`, readable on the write path without the lock.
    diverged: std::sync::atomic::AtomicBool,
}

impl Scoreboard {
    /// Write a new scoreboard on `dev` (at least `file_bytes_for` bytes).
    /// `all_out_of_sync`: every chunk needs a sync (a new set that was not
    /// declared identical).
    pub fn create(
        dev: Arc<dyn BlockDevice>,
        set: &str,
        volume_bytes: u64,
        chunk_bytes: u32,
        all_out_of_sync: bool,
        gens: Generations,
    ) -> Result<Scoreboard, String> {
        if set.len() > 64 {
            return Err(format!("set name {set} is longer than 64 bytes"));
        }
        let header = Header {
            chunk_bytes,
            volume_bytes,
            chunks: volume_bytes.div_ceil(chunk_bytes as u64),
            set: set.to_owned(),
        };
        if dev.size_bytes() < file_bytes_for(volume_bytes, chunk_bytes) {
            return Err(format!(
                "scoreboard file of {} bytes is smaller than the {} needed",
                dev.size_bytes(),
                file_bytes_for(volume_bytes, chunk_bytes)
            ));
        }
        let sb = Scoreboard::with_header(dev, header, gens);
        if all_out_of_sync {
            sb.oos.fill();
            sb.disk.fill();
        }
        let io = |e: DeviceError| format!("scoreboard of set {set}: {e}");
        sb.write_pages(0..sb.pages()).map_err(io)?;
        let mut h = sb.header.encode(&sb.gens.lock());
        h.resize(HEADER_BYTES as usize, 0);
        sb.dev.write(&h, 0, false).map_err(io)?;
        sb.dev.flush().map_err(io)?;
        Ok(sb)
    }

    /// Open an existing scoreboard: every bit set on disk is out of sync.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        set: &str,
        volume_bytes: u64,
    ) -> Result<Scoreboard, String> {
        let why = |m: String| format!("scoreboard of set {set}: {m}");
        if dev.size_bytes() < HEADER_BYTES {
            return Err(why("file is truncated".into()));
        }
        let mut b = vec![0u8; 512];
        dev.read(&mut b, 0).map_err(|e| why(e.to_string()))?;
        let (header, gens) = Header::decode(&b).map_err(why)?;
        if header.volume_bytes != volume_bytes {
            return Err(why(format!(
                "made for a volume of {} bytes, this one has {volume_bytes}",
                header.volume_bytes
            )));
        }
        if header.set != set {
            return Err(why(format!("belongs to set {}", header.set)));
        }
        if dev.size_bytes() < file_bytes_for(volume_bytes, header.chunk_bytes) {
            return Err(why("file is truncated".into()));
        }
        let sb = Scoreboard::with_header(dev, header, gens);
        let words = sb.disk.words();
        let mut buf = vec![0u8; words * 8];
        sb.dev
            .read(&mut buf, HEADER_BYTES)
            .map_err(|e| why(e.to_string()))?;
        for w in 0..words {
            let v = u64::from_le_bytes(buf[w * 8..w * 8 + 8].try_into().expect("8"));
            if !sb.disk.load_disk_word(w, v, false) {
                return Err(why(format!("bits past the end set in word {w}")));
            }
            sb.oos.load_disk_word(w, v, false);
        }
        Ok(sb)
    }

    fn with_header(dev: Arc<dyn BlockDevice>, header: Header, gens: Generations) -> Scoreboard {
        let chunks = header.chunks;
        let pages = chunks.div_ceil(64).div_ceil(WORDS_PER_PAGE).max(1);
        Scoreboard {
            dev,
            oos: AtomicBitmap::new(chunks),
            fine: (0..chunks).map(|_| AtomicU16::new(0)).collect(),
            disk: AtomicBitmap::new(chunks),
            pending: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            page_gen: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            mod_gen: AtomicU64::new(0),
            durable_gen: AtomicU64::new(0),
            gate: RwLock::new(()),
            commit: Mutex::new(Commit {
                durable: 0,
                failed: None,
            }),
            header,
            diverged: std::sync::atomic::AtomicBool::new(gens.diverged()),
            gens: Mutex::new(gens),
        }
    }

    pub fn generations(&self) -> Generations {
        self.gens.lock().clone()
    }

    /// Change the generations with `f` and make the result durable.
    pub fn update_generations(&self, f: impl FnOnce(&mut Generations)) -> Result<(), String> {
        let mut cur = self.gens.lock();
        let mut g = cur.clone();
        f(&mut g);
        self.write_header(&g)?;
        self.diverged.store(g.diverged(), Ordering::SeqCst);
        *cur = g;
        Ok(())
    }

    /// This side wrote without its peer since they last agreed.
    pub fn is_diverged(&self) -> bool {
        self.diverged.load(Ordering::Acquire)
    }

    /// Called before a write is issued without the peer: the first such
    /// write starts a new generation (durable before the write proceeds)
    /// and returns it; later ones pay one atomic load.
    pub fn ensure_diverged(&self) -> Result<Option<Generations>> {
        if self.diverged.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mut cur = self.gens.lock();
        if cur.diverged() {
            self.diverged.store(true, Ordering::Release);
            return Ok(None);
        }
        let mut g = cur.clone();
        g.begin_new();
        self.write_header(&g)
            .map_err(|reason| DeviceError::Failed { reason })?;
        *cur = g.clone();
        self.diverged.store(true, Ordering::Release);
        Ok(Some(g))
    }

    fn write_header(&self, g: &Generations) -> Result<(), String> {
        let mut h = self.header.encode(g);
        h.resize(HEADER_BYTES as usize, 0);
        let io = |e: DeviceError| format!("scoreboard of set {}: header: {e}", self.header.set);
        self.dev.write(&h, 0, false).map_err(io)?;
        self.dev.flush().map_err(io)
    }

    /// Every chunk in sync (the peer has everything this side wrote),
    /// durable on return.
    pub fn clear_all(&self) -> Result<(), String> {
        let mut c = 0;
        while let Some(b) = self.next_oos(c) {
            c = b + 1;
            self.take(b);
        }
        self.clean().map_err(|e| e.to_string())
    }

    fn pages(&self) -> u64 {
        self.page_gen.len() as u64
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.header.chunk_bytes as u64
    }

    pub fn chunks(&self) -> u64 {
        self.header.chunks
    }

    pub fn chunk_range(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let c = self.chunk_bytes();
        offset / c..(offset + len.max(1)).div_ceil(c)
    }

    /// A write to `[offset, offset+len)` begins: count it pending and make
    /// its chunks' bits durable. Returns once it is safe to write locally.
    pub fn begin(&self, offset: u64, len: u64) -> Result<()> {
        let chunks = self.chunk_range(offset, len);
        self.count(chunks.clone());
        self.make_durable(chunks.clone())
            .inspect_err(|_| self.uncount(chunks))
    }

    /// Count one more write pending on each chunk.
    pub fn count(&self, chunks: std::ops::Range<u64>) {
        for c in chunks {
            self.pending[c as usize].fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn uncount(&self, chunks: std::ops::Range<u64>) {
        for c in chunks {
            self.pending[c as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Make the chunks' disk bits durable (the caller counted them pending
    /// first, so `clean` cannot clear them meanwhile).
    pub fn make_durable(&self, chunks: std::ops::Range<u64>) -> Result<()> {
        self.make_durable_each(chunks)
    }

    /// Set the disk bit of every chunk `chunks` yields, then wait for one
    /// commit covering them all.
    pub fn make_durable_each(&self, chunks: impl Iterator<Item = u64>) -> Result<()> {
        let mut need = 0;
        for c in chunks {
            let p = (c / 64 / WORDS_PER_PAGE) as usize;
            if !self.disk.get(c) {
                let _g = self.gate.read();
                let g = self.mod_gen.fetch_add(1, Ordering::SeqCst) + 1;
                self.page_gen[p].fetch_max(g, Ordering::SeqCst);
                self.disk.set(c);
            }
            need = need.max(self.page_gen[p].load(Ordering::SeqCst));
        }
        if need > self.durable_gen.load(Ordering::SeqCst) {
            self.commit_to(need)?;
        }
        Ok(())
    }

    /// Whether every chunk of the range has its bit durable already (a
    /// write there waits for no metadata commit).
    pub fn is_durable(&self, offset: u64, len: u64) -> bool {
        let durable = self.durable_gen.load(Ordering::SeqCst);
        let r = self.chunk_range(offset, len);
        if r.end > self.chunks() {
            return false;
        }
        r.into_iter().all(|c| {
            self.disk.get(c)
                && self.page_gen[(c / 64 / WORDS_PER_PAGE) as usize].load(Ordering::SeqCst)
                    <= durable
        })
    }

    /// The write ended: acknowledged by the peer (`in_sync`) or not (the
    /// chunk is now out of sync).
    pub fn end(&self, offset: u64, len: u64, in_sync: bool) {
        if !in_sync {
            self.mark_written(offset, len);
        }
        for c in self.chunk_range(offset, len) {
            self.pending[c as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// `[offset, offset + len)` changed without the peer: its chunks are
    /// out of sync, and the map remembers which parts of them.
    pub fn mark_written(&self, offset: u64, len: u64) {
        let cb = self.chunk_bytes();
        let sub = cb / SUB_BLOCKS;
        let end = offset + len.max(1);
        for c in self.chunk_range(offset, len) {
            let (lo, hi) = (offset.max(c * cb), end.min((c + 1) * cb));
            let (first, last) = ((lo - c * cb) / sub, (hi - c * cb).div_ceil(sub));
            let mask = if last - first >= SUB_BLOCKS {
                WHOLE
            } else {
                (((1u32 << (last - first)) - 1) << first) as u16
            };
            self.fine[c as usize].fetch_or(mask, Ordering::SeqCst);
            self.oos.set(c);
        }
    }

    /// The byte ranges of chunk `c` that a fine `mask` names, merged into
    /// runs and clipped to the volume.
    pub fn runs_of(&self, c: u64, mask: u16) -> Vec<(u64, u64)> {
        let cb = self.chunk_bytes();
        let sub = cb / SUB_BLOCKS;
        let end = self.header.volume_bytes.min((c + 1) * cb);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in (0..SUB_BLOCKS).filter(|i| mask & (1 << i) != 0) {
            let off = c * cb + i * sub;
            if off >= end {
                break;
            }
            let len = sub.min(end - off);
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => runs.push((off, len)),
            }
        }
        runs
    }

    pub fn pending(&self, chunk: u64) -> u32 {
        self.pending[chunk as usize].load(Ordering::SeqCst)
    }

    pub fn is_oos(&self, chunk: u64) -> bool {
        self.oos.get(chunk)
    }

    /// Mark every chunk out of sync (a full sync). Their disk bits are
    /// made durable first, so a crash during the sync resumes it.
    pub fn mark_all(&self) -> Result<()> {
        for f in self.fine.iter() {
            f.store(WHOLE, Ordering::SeqCst);
        }
        self.oos.fill();
        self.make_durable(0..self.chunks())
    }

    /// OR a peer's bitmap (on-disk word form) into the out-of-sync bits.
    pub fn merge(&self, words: &[u8]) -> Result<(), String> {
        let peer = AtomicBitmap::new(self.chunks());
        if words.len() != peer.words() * 8 {
            return Err(format!(
                "peer bitmap of {} bytes, expected {}",
                words.len(),
                peer.words() * 8
            ));
        }
        for w in 0..peer.words() {
            let v = u64::from_le_bytes(words[w * 8..w * 8 + 8].try_into().expect("8"));
            if !peer.load_disk_word(w, v, false) {
                return Err("peer bitmap has bits past the end".into());
            }
        }
        let mut c = 0;
        while let Some(b) = peer.next_set(c) {
            self.set_oos(b);
            c = b + 1;
        }
        self.make_durable_all().map_err(|e| e.to_string())
    }

    /// Make every out-of-sync chunk's disk bit durable, in one commit.
    fn make_durable_all(&self) -> Result<()> {
        let mut next = 0;
        self.make_durable_each(std::iter::from_fn(|| {
            let b = self.oos.next_set(next)?;
            next = b + 1;
            Some(b)
        }))
    }

    /// The out-of-sync bits in on-disk word form (for the peer).
    pub fn oos_words(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.oos.words() * 8);
        for w in 0..self.oos.words() {
            v.extend_from_slice(&self.oos.disk_word(w, false).to_le_bytes());
        }
        v
    }

    /// Take chunk `c` for a resync: clear its out-of-sync bit (the disk bit
    /// stays until `clean`). Returns whether it was out of sync.
    pub fn take(&self, chunk: u64) -> bool {
        self.take_parts(chunk).is_some()
    }

    /// [`Self::take`], saying which parts changed (a fine mask; every bit
    /// when the whole chunk must go), or `None` when it was in sync.
    pub fn take_parts(&self, chunk: u64) -> Option<u16> {
        if !self.oos.clear(chunk) {
            return None;
        }
        match self.fine[chunk as usize].swap(0, Ordering::SeqCst) {
            0 => Some(WHOLE),
            m => Some(m),
        }
    }

    pub fn next_oos(&self, from: u64) -> Option<u64> {
        self.oos.next_set(from)
    }

    pub fn oos_chunks(&self) -> u64 {
        self.oos.count()
    }

    pub fn oos_bytes(&self) -> u64 {
        (self.oos_chunks() * self.chunk_bytes()).min(self.header.volume_bytes)
    }

    /// The next chunk from `from` on whose disk bit is set.
    pub fn next_disk(&self, from: u64) -> Option<u64> {
        self.disk.next_set(from)
    }

    /// Chunk `chunk` is out of sync as a whole.
    pub fn set_oos(&self, chunk: u64) {
        self.fine[chunk as usize].store(WHOLE, Ordering::SeqCst);
        self.oos.set(chunk);
    }

    /// Clear the disk bits of chunks that are in sync and idle, and write
    /// them. Safe against concurrent `begin`: a writer counts itself
    /// pending before it looks at the disk bit, and `clean` clears a bit
    /// before it looks at the counter (re-setting it when it finds one),
    /// so one of them always sees the other.
    pub fn clean(&self) -> Result<()> {
        let mut changed = false;
        {
            let _g = self.gate.write();
            let mut c = 0;
            while let Some(b) = self.disk.next_set(c) {
                c = b + 1;
                if self.oos.get(b) || self.pending(b) > 0 {
                    continue;
                }
                self.disk.clear(b);
                if self.pending(b) > 0 || self.oos.get(b) {
                    self.disk.set(b);
                    continue;
                }
                let g = self.mod_gen.fetch_add(1, Ordering::SeqCst) + 1;
                self.page_gen[(b / 64 / WORDS_PER_PAGE) as usize].fetch_max(g, Ordering::SeqCst);
                changed = true;
            }
        }
        if changed {
            self.commit_to(self.mod_gen.load(Ordering::SeqCst))?;
        }
        Ok(())
    }

    /// Wait until generation `g` is durable, leading a commit if needed.
    fn commit_to(&self, g: u64) -> Result<()> {
        let mut st = self.commit.lock();
        if let Some(f) = &st.failed {
            return Err(DeviceError::Failed {
                reason: format!("scoreboard write failed earlier: {f}"),
            });
        }
        if st.durable >= g {
            return Ok(());
        }
        let from = st.durable;
        let (target, pages) = {
            let _g = self.gate.write();
            let target = self.mod_gen.load(Ordering::SeqCst);
            let pages: Vec<u64> = (0..self.pages())
                .filter(|&p| self.page_gen[p as usize].load(Ordering::SeqCst) > from)
                .collect();
            let snaps: Vec<(u64, Vec<u8>)> =
                pages.iter().map(|&p| (p, self.page_bytes(p))).collect();
            (target, snaps)
        };
        let res = (|| {
            for (p, bytes) in &pages {
                self.dev
                    .write(bytes, HEADER_BYTES + p * PAGE_BYTES, false)?;
            }
            self.dev.flush()
        })();
        match res {
            Ok(()) => {
                st.durable = target;
                self.durable_gen.store(target, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                st.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn page_bytes(&self, p: u64) -> Vec<u8> {
        let mut b = vec![0u8; PAGE_BYTES as usize];
        let first = (p * WORDS_PER_PAGE) as usize;
        for i in 0..WORDS_PER_PAGE as usize {
            let w = first + i;
            if w >= self.disk.words() {
                break;
            }
            b[i * 8..i * 8 + 8].copy_from_slice(&self.disk.disk_word(w, false).to_le_bytes());
        }
        b
    }

    fn write_pages(&self, pages: std::ops::Range<u64>) -> Result<()> {
        for p in pages {
            self.dev
                .write(&self.page_bytes(p), HEADER_BYTES + p * PAGE_BYTES, false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::device::testing::{CrashClock, CrashDevice};

    #[test]
    fn bits_survive_reopen_and_clean_clears_only_idle_in_sync_chunks() {
        let vol = 1 << 20;
        let dev: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(file_bytes_for(vol, 4096)));
        let sb =
            Scoreboard::create(dev.clone(), "s", vol, 4096, false, Default::default()).unwrap();
        sb.begin(0, 4096).unwrap();
        sb.begin(8192, 8192).unwrap();
        sb.end(8192, 8192, false); // not acknowledged: out of sync
        let re = Scoreboard::open(dev.clone(), "s", vol).unwrap();
        // Everything with a write in flight or out of sync is on disk.
        assert_eq!(re.oos_chunks(), 3);
        sb.clean().unwrap();
        let re = Scoreboard::open(dev.clone(), "s", vol).unwrap();
        assert_eq!(re.oos_chunks(), 3, "pending and out-of-sync chunks stay");
        sb.end(0, 4096, true);
        sb.take(2);
        sb.take(3);
        sb.clean().unwrap();
        let re = Scoreboard::open(dev.clone(), "s", vol).unwrap();
        assert_eq!(re.oos_chunks(), 0);
        assert!(Scoreboard::open(dev.clone(), "other", vol).is_err());
        assert!(Scoreboard::open(dev, "s", vol * 2).is_err());
    }

    #[test]
    fn the_map_names_the_4k_parts_written_and_falls_back_to_whole_chunks() {
        let vol = (1 << 20) + 12288; // the last chunk is 12 KiB
        let cb = 65536u64;
        let dev: Arc<dyn BlockDevice> =
            Arc::new(MemoryBackend::new(file_bytes_for(vol, cb as u32)));
        let sb = Scoreboard::create(dev.clone(), "s", vol, cb as u32, false, Default::default())
            .unwrap();
        // Two 4 KiB writes in chunk 0, one write across chunks 1 and 2.
        sb.mark_written(3 * 4096, 4096);
        sb.mark_written(4 * 4096, 100);
        sb.mark_written(2 * cb - 4096, 8192);
        assert_eq!(sb.oos_chunks(), 3);
        let p0 = sb.take_parts(0).unwrap();
        assert_eq!(sb.runs_of(0, p0), vec![(3 * 4096, 8192)]);
        assert_eq!(
            sb.runs_of(1, sb.take_parts(1).unwrap()),
            vec![(2 * cb - 4096, 4096)]
        );
        assert_eq!(
            sb.runs_of(2, sb.take_parts(2).unwrap()),
            vec![(2 * cb, 4096)]
        );
        assert_eq!(sb.take_parts(0), None, "taken: in sync");
        // A whole-chunk mark wins over parts; the short last chunk is clipped.
        sb.mark_written(16 * cb, 4096);
        sb.set_oos(16);
        assert_eq!(
            sb.runs_of(16, sb.take_parts(16).unwrap()),
            vec![(16 * cb, 12288)]
        );
        // After a restart the map is gone: whole chunks.
        sb.begin(5 * cb, 4096).unwrap();
        sb.end(5 * cb, 4096, false);
        let re = Scoreboard::open(dev, "s", vol).unwrap();
        assert_eq!(re.runs_of(5, re.take_parts(5).unwrap()), vec![(5 * cb, cb)]);
    }

    #[test]
    fn generations_survive_reopen_and_the_first_logging_write_starts_one() {
        let vol = 1 << 20;
        let dev: Arc<dyn BlockDevice> = Arc::new(MemoryBackend::new(file_bytes_for(vol, 4096)));
        let mut g = Generations::fresh();
        g.agreed = g.current;
        let sb = Scoreboard::create(dev.clone(), "s", vol, 4096, false, g.clone()).unwrap();
        assert_eq!(
            Scoreboard::open(dev.clone(), "s", vol)
                .unwrap()
                .generations(),
            g
        );
        sb.ensure_diverged().unwrap();
        let after = sb.generations();
        assert_ne!(after.current, g.current);
        assert_eq!(after.history, vec![g.current]);
        sb.ensure_diverged().unwrap();
        assert_eq!(sb.generations(), after, "one new generation per episode");
        assert_eq!(
            Scoreboard::open(dev.clone(), "s", vol)
                .unwrap()
                .generations(),
            after
        );
        // A version 1 file (no generations) reads as "accepts any primary".
        let mut h = vec![0u8; 512];
        dev.read(&mut h, 0).unwrap();
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[GEN_OFFSET..GEN_OFFSET + 64].fill(0);
        let crc = crc32c::crc32c(&h[..508]);
        h[508..512].copy_from_slice(&crc.to_le_bytes());
        dev.write(&h, 0, false).unwrap();
        assert_eq!(
            Scoreboard::open(dev, "s", vol).unwrap().generations(),
            Generations::default()
        );
    }

    #[test]
    fn a_crash_at_any_flush_keeps_every_begun_write_marked() {
        // Freeze the file at every flush while writers begin, end and the
        // cleaner runs: every chunk with a write begun and not ended in
        // sync before the freeze has its bit in the frozen image. Cut
        // right after each flush, and during it (any subset of the writes
        // since the flush before kept, torn at sectors).
        let clocks = (1..40u64).flat_map(|n| {
            [CrashClock::new(n)]
                .into_iter()
                .chain((1..=3u64).map(move |seed| CrashClock::reordering(n, seed * 1000 + n)))
                .map(move |c| (n, c))
        });
        for (n, clock) in clocks {
            let vol = 256 * 4096;
            let crash = Arc::new(CrashDevice::new(
                vec![0; file_bytes_for(vol, 4096) as usize],
                clock.clone(),
            ));
            let dev: Arc<dyn BlockDevice> = crash.clone();
            let sb =
                Scoreboard::create(dev.clone(), "s", vol, 4096, false, Default::default()).unwrap();
            if clock.frozen() {
                continue; // frozen before the header was durable
            }
            let mut must: Vec<u64> = Vec::new();
            for i in 0..60u64 {
                let c = (i * 37) % 256;
                if sb.begin(c * 4096, 4096).is_err() {
                    break;
                }
                if !clock.frozen() {
                    must.push(c);
                }
                if i % 3 == 0 {
                    sb.end(c * 4096, 4096, true);
                    must.retain(|&x| x != c || sb.pending(c) > 0);
                    let _ = sb.clean();
                }
            }
            let image = crash.durable_image();
            let re =
                Scoreboard::open(Arc::new(MemoryBackend::from_bytes(image)), "s", vol).unwrap();
            for c in must {
                assert!(re.is_oos(c), "crash at flush {n}: chunk {c} lost its bit");
            }
        }
    }
}
