//! The pass-through service: forwards every request unchanged and counts
//! them. It proves the stack and the quiesce protocol (attach and detach
//! under load) before real services exist, and measures the cost of one
//! layer in the criterion bench.

use super::Service;
use crate::device::{BlockDevice, LatencyClass, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct PassthroughStats {
    pub requests: AtomicU64,
}

pub struct Passthrough {
    name: String,
    stats: Arc<PassthroughStats>,
}

impl Passthrough {
    pub fn new(name: &str) -> Self {
        Passthrough {
            name: name.to_owned(),
            stats: Arc::default(),
        }
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

impl Service for Passthrough {
    fn name(&self) -> &str {
        &self.name
    }

    fn stack_on(
        &self,
        lower: Arc<dyn BlockDevice>,
    ) -> std::result::Result<Arc<dyn BlockDevice>, String> {
        Ok(Arc::new(PassthroughDevice {
            lower,
            stats: self.stats.clone(),
        }))
    }
}

pub struct PassthroughDevice {
    lower: Arc<dyn BlockDevice>,
    stats: Arc<PassthroughStats>,
}

impl PassthroughDevice {
    #[inline]
    fn count(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
    }
}

impl BlockDevice for PassthroughDevice {
    fn size_bytes(&self) -> u64 {
        self.lower.size_bytes()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.count();
        self.lower.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.count();
        self.lower.write(buf, offset, fua)
    }
    fn flush(&self) -> Result<()> {
        self.count();
        self.lower.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.count();
        self.lower.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.count();
        self.lower.write_zeroes(offset, len, fua)
    }
    fn block_size_bytes(&self) -> u32 {
        self.lower.block_size_bytes()
    }
    fn write_may_block(&self, offset: u64, len: u64) -> bool {
        self.lower.write_may_block(offset, len)
    }
    fn latency_class(&self) -> LatencyClass {
        self.lower.latency_class()
    }
}
