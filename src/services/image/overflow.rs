//! Overflow volumes: space that compact sets spill saved chunks into once
//! their own small shadow is full. Several sets may share one.
//!
//! Allocation is a bump pointer persisted in the header before the chunk
//! is used (a crash can leak a chunk, never hand one out twice). Chunks
//! are not reused while any set is attached; when the last set leaves, the
//! volume is empty again.

use super::format::{OverflowHeader, HEADER_BYTES, OVERFLOW_DATA_OFFSET};
use crate::device::{BlockDevice, Result};
use parking_lot::Mutex;
use std::sync::Arc;

pub struct Overflow {
    name: String,
    dev: Arc<dyn BlockDevice>,
    header: Mutex<OverflowHeader>,
}

impl Overflow {
    /// Format `dev` as an empty overflow volume of `chunk_bytes` chunks.
    pub fn create(
        name: &str,
        dev: Arc<dyn BlockDevice>,
        chunk_bytes: u32,
    ) -> std::result::Result<Overflow, String> {
        super::format::validate_chunk_bytes(chunk_bytes).map_err(|e| e.0)?;
        let size = dev.size_bytes();
        if size < OVERFLOW_DATA_OFFSET + chunk_bytes as u64 {
            return Err(format!(
                "overflow volume {name}: {size} bytes is too small for one {chunk_bytes}-byte chunk"
            ));
        }
        let header = OverflowHeader {
            chunk_bytes,
            capacity_chunks: (size - OVERFLOW_DATA_OFFSET) / chunk_bytes as u64,
            next_chunk: 0,
            name: name.to_owned(),
        };
        dev.write(&header.encode(), 0, false)
            .and_then(|_| dev.flush())
            .map_err(|e| format!("overflow volume {name}: writing the header: {e}"))?;
        Ok(Overflow {
            name: name.to_owned(),
            dev,
            header: Mutex::new(header),
        })
    }

    /// Open an existing overflow volume, validating its header.
    pub fn open(name: &str, dev: Arc<dyn BlockDevice>) -> std::result::Result<Overflow, String> {
        let mut b = vec![0u8; HEADER_BYTES as usize];
        if dev.size_bytes() < HEADER_BYTES {
            return Err(format!("overflow volume {name} is truncated"));
        }
        dev.read(&mut b, 0)
            .map_err(|e| format!("overflow volume {name}: reading the header: {e}"))?;
        let header = OverflowHeader::decode(&b, dev.size_bytes())
            .map_err(|e| format!("overflow volume {name}: {e}"))?;
        if header.name != name {
            return Err(format!(
                "overflow volume {name}: its header names it {}",
                header.name
            ));
        }
        Ok(Overflow {
            name: name.to_owned(),
            dev,
            header: Mutex::new(header),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn chunk_bytes(&self) -> u32 {
        self.header.lock().chunk_bytes
    }

    /// (capacity, used) in chunks.
    pub fn usage(&self) -> (u64, u64) {
        let h = self.header.lock();
        (h.capacity_chunks, h.next_chunk)
    }

    pub(super) fn device(&self) -> &dyn BlockDevice {
        self.dev.as_ref()
    }

    #[cfg(test)]
    pub(super) fn device_arc(&self) -> Arc<dyn BlockDevice> {
        self.dev.clone()
    }

    /// Byte offset of overflow chunk `slot`.
    pub(super) fn offset(&self, slot: u64) -> u64 {
        OVERFLOW_DATA_OFFSET + slot * self.chunk_bytes() as u64
    }

    /// Hand out one chunk, durably; `None` when the volume is full.
    pub(super) fn alloc(&self) -> Result<Option<u64>> {
        let mut h = self.header.lock();
        if h.next_chunk >= h.capacity_chunks {
            return Ok(None);
        }
        let mut next = h.clone();
        next.next_chunk += 1;
        self.dev.write(&next.encode(), 0, false)?;
        self.dev.flush()?;
        let slot = h.next_chunk;
        *h = next;
        Ok(Some(slot))
    }

    /// Forget every allocation (no set uses the volume any more).
    pub(super) fn reset(&self) -> Result<()> {
        let mut h = self.header.lock();
        let mut next = h.clone();
        next.next_chunk = 0;
        self.dev.write(&next.encode(), 0, false)?;
        self.dev.flush()?;
        *h = next;
        Ok(())
    }
}
