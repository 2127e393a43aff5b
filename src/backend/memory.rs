//! In-memory backend. Durability is trivially "everything": there is no
//! crash to survive. Used by unit and property tests and the criterion bench.

use crate::device::{check_range, BlockDevice, Describe, LatencyClass, Result};
use parking_lot::RwLock;

pub struct MemoryBackend {
    data: RwLock<Vec<u8>>,
}

impl MemoryBackend {
    pub fn new(size_bytes: u64) -> Self {
        MemoryBackend {
            data: RwLock::new(vec![0; size_bytes as usize]),
        }
    }

    /// A device holding exactly `bytes` (tests restart on a crash image).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemoryBackend {
            data: RwLock::new(bytes),
        }
    }

    /// A copy of the whole contents (tests compare it against a model).
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }
}

impl BlockDevice for MemoryBackend {
    fn size_bytes(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read();
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64, _fua: bool) -> Result<()> {
        let mut data = self.data.write();
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        let mut data = self.data.write();
        check_range(offset, len, data.len() as u64)?;
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn latency_class(&self) -> LatencyClass {
        LatencyClass::Memory
    }
}

impl Describe for MemoryBackend {
    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.size_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::testing;
    use std::sync::Arc;

    #[test]
    fn conformance() {
        testing::run_all("memory", Arc::new(MemoryBackend::new(8 << 20)));
    }
}
