//! The two layers an image set puts into volume stacks: one imaging layer
//! per master (shared by every set of that master, so a restore from one
//! set first saves the chunk into every other shadow) and one layer per
//! shadow.
//!
//! Each side remembers the device below its layer (`lower`), because the
//! other side's requests and the copy engine reach it directly: a shadow
//! read of a chunk it does not hold reads the master's lower device, not
//! the master volume (which would take the master's admission lock from
//! inside the shadow's and could deadlock a group quiesce). `lower` is
//! replaced at every rebuild of the stack; users hold its read lock for
//! the whole access, so a rebuild waits for them and nothing reaches a
//! device that was just taken out of a stack.

use super::behind::WriteBehind;
use super::set::{ImageSet, Prepared};
use crate::device::{BlockDevice, DeviceError, LatencyClass, Result};
use crate::interposer::Service;
use parking_lot::RwLock;
use std::sync::{Arc, Weak};

/// Name of the master-side layer in a volume's stack.
pub const MASTER_LAYER: &str = "image";
/// Name of the shadow-side layer in a volume's stack.
pub const SHADOW_LAYER: &str = "image-shadow";

fn with_slot<T>(
    slot: &RwLock<Option<Arc<dyn BlockDevice>>>,
    volume: &str,
    f: impl FnOnce(&dyn BlockDevice) -> Result<T>,
) -> Result<T> {
    // Recursive: a restore reads the master's slot again while preparing
    // the other sets of the same master.
    let guard = slot.read_recursive();
    match guard.as_ref() {
        Some(d) => f(d.as_ref()),
        None => Err(DeviceError::Failed {
            reason: format!("volume {volume} has no imaging layer"),
        }),
    }
}

/// The imaging layer of one master volume.
pub struct MasterSide {
    volume: String,
    lower: RwLock<Option<Arc<dyn BlockDevice>>>,
    sets: RwLock<Vec<Arc<ImageSet>>>,
}

impl MasterSide {
    pub fn new(volume: &str) -> Self {
        MasterSide {
            volume: volume.to_owned(),
            lower: RwLock::new(None),
            sets: RwLock::new(Vec::new()),
        }
    }

    pub fn sets(&self) -> Vec<Arc<ImageSet>> {
        self.sets.read().clone()
    }

    pub(super) fn add_set(&self, set: Arc<ImageSet>) {
        self.sets.write().push(set);
    }

    pub(super) fn remove_set(&self, name: &str) {
        self.sets.write().retain(|s| s.name() != name);
    }

    pub(super) fn with_lower<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        with_slot(&self.lower, &self.volume, f)
    }
}

impl Service for MasterSide {
    fn name(&self) -> &str {
        MASTER_LAYER
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        *self.lower.write() = Some(lower.clone());
        let sets = self.sets();
        Ok(Arc::new(MasterDevice {
            behind: WriteBehind::new(&self.volume, lower.clone(), sets.clone()),
            lower,
            sets,
        }))
    }

    fn sync_metadata(&self) -> Result<()> {
        for s in self.sets() {
            if !s.is_failed() {
                s.commit_all()?;
            }
        }
        Ok(())
    }
}

/// The shadow layer of one set.
pub struct ShadowSide {
    volume: String,
    lower: RwLock<Option<Arc<dyn BlockDevice>>>,
    set: RwLock<Weak<ImageSet>>,
}

impl ShadowSide {
    pub fn new(volume: &str) -> Self {
        ShadowSide {
            volume: volume.to_owned(),
            lower: RwLock::new(None),
            set: RwLock::new(Weak::new()),
        }
    }

    pub(super) fn bind(&self, set: &Arc<ImageSet>) {
        *self.set.write() = Arc::downgrade(set);
    }

    pub(super) fn with_lower<T>(&self, f: impl FnOnce(&dyn BlockDevice) -> Result<T>) -> Result<T> {
        with_slot(&self.lower, &self.volume, f)
    }
}

impl Service for ShadowSide {
    fn name(&self) -> &str {
        SHADOW_LAYER
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        let set = self
            .set
            .read()
            .upgrade()
            .ok_or_else(|| format!("shadow {} has no image set", self.volume))?;
        *self.lower.write() = Some(lower.clone());
        Ok(Arc::new(ShadowDevice { lower, set }))
    }

    fn sync_metadata(&self) -> Result<()> {
        match self.set.read().upgrade() {
            Some(s) if !s.is_failed() => s.commit_all(),
            _ => Ok(()),
        }
    }
}

struct MasterDevice {
    lower: Arc<dyn BlockDevice>,
    /// The master's sets as they were at the last rebuild; adding or
    /// removing a set rebuilds the stack (under quiesce).
    sets: Vec<Arc<ImageSet>>,
    /// Writes acknowledged before their copy-on-write was durable
    /// (`behind.rs`); a quiesce's flush drains it before any rebuild.
    behind: WriteBehind,
}

impl MasterDevice {
    /// Every set's work before a change of `[offset, offset + len)`: what
    /// the change owes them (`None`: nothing, it may go straight down).
    fn prepare(&self, offset: u64, len: u64) -> Result<Option<Vec<Prepared>>> {
        crate::device::check_range(offset, len, self.lower.size_bytes())?;
        let mut owed: Option<Vec<Prepared>> = None;
        for (i, s) in self.sets.iter().enumerate() {
            let p = s.prepare_master(offset, len, self.lower.as_ref())?;
            if p.need > 0 || p.restored {
                owed.get_or_insert_with(|| vec![Prepared::default(); self.sets.len()])[i] = p;
            }
        }
        Ok(owed)
    }

    /// Order a change that goes down now behind the queued writes it
    /// overlaps, and wait for what it owes.
    fn settle(&self, owed: Option<Vec<Prepared>>, offset: u64, len: u64) -> Result<()> {
        if self.behind.overlaps(offset, len) {
            self.behind.drain();
        }
        for (s, p) in self.sets.iter().zip(owed.unwrap_or_default()) {
            s.finish_master(p)?;
        }
        Ok(())
    }
}

impl BlockDevice for MasterDevice {
    fn size_bytes(&self) -> u64 {
        self.lower.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let overlay = self.behind.snapshot(offset, buf.len() as u64);
        let mut restoring = false;
        for s in &self.sets {
            if s.direction() == super::Direction::ToMaster
                && s.read_master_restoring(buf, offset, self.lower.as_ref())?
            {
                restoring = true;
                break;
            }
        }
        if !restoring {
            self.lower.read(buf, offset)?;
        }
        overlay.apply(buf, offset);
        Ok(())
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        let len = buf.len() as u64;
        let owed = self.prepare(offset, len)?;
        let queue = match &owed {
            // Nothing owed: straight down unless a queued write is in the way.
            None => self.behind.overlaps(offset, len),
            // A write that restored a chunk fails if the restore's commit
            // does (and a FUA write must be durable when acknowledged).
            Some(o) => !o.iter().any(|p| p.restored),
        };
        if !fua
            && queue
            && self
                .behind
                .push(buf, offset, owed.as_deref().unwrap_or(&[]))
        {
            return Ok(());
        }
        self.settle(owed, offset, len)?;
        self.lower.write(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        self.behind.drain();
        if let Some(e) = self.behind.take_error() {
            return Err(e);
        }
        self.lower.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let owed = self.prepare(offset, len)?;
        self.settle(owed, offset, len)?;
        self.lower.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        let owed = self.prepare(offset, len)?;
        self.settle(owed, offset, len)?;
        self.lower.write_zeroes(offset, len, fua)
    }
    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }
    fn latency_class(&self) -> LatencyClass {
        self.lower.latency_class()
    }
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        self.lower.write_may_block(offset, len)
            || self.sets.iter().any(|s| s.write_needs_work(offset, len))
    }
}

struct ShadowDevice {
    lower: Arc<dyn BlockDevice>,
    set: Arc<ImageSet>,
}

impl ShadowDevice {
    /// A compact shadow shows the master's size over its smaller store.
    fn size(&self) -> u64 {
        if self.set.is_compact() {
            self.set.master_bytes
        } else {
            self.lower.size_bytes()
        }
    }

    fn prepare(&self, offset: u64, len: u64) -> Result<()> {
        crate::device::check_range(offset, len, self.size())?;
        self.set.prepare_shadow_write(offset, len)
    }
}

impl BlockDevice for ShadowDevice {
    fn size_bytes(&self) -> u64 {
        self.size()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::device::check_range(offset, buf.len() as u64, self.size())?;
        self.set.read_shadow(buf, offset, self.lower.as_ref())
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.prepare(offset, buf.len() as u64)?;
        self.set.write_shadow_data(
            Some(buf),
            offset,
            buf.len() as u64,
            fua,
            self.lower.as_ref(),
        )
    }
    fn flush(&self) -> Result<()> {
        // Even offline: a quiesce (to disable the failed set) flushes.
        self.set.flush_shadow_data(self.lower.as_ref())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // Through the chunk index like a write of zeroes; umbra's discard
        // reads back as zeroes.
        self.write_zeroes(offset, len, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.prepare(offset, len)?;
        self.set
            .write_shadow_data(None, offset, len, fua, self.lower.as_ref())
    }
    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }
    fn latency_class(&self) -> LatencyClass {
        // Copy-on-write reaches the bitmap volume and flushes: a shadow
        // request may block even over a memory backend.
        LatencyClass::Blocking
    }
}
