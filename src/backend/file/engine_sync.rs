//! Portable engine: positional `pread`/`pwrite` from the calling thread.
//! Concurrency comes from the callers (the NBD worker threads); the kernel
//! serialises nothing between them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub struct SyncEngine {
    file: File,
}

impl SyncEngine {
    pub fn new(file: File) -> Self {
        SyncEngine { file }
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        if fua {
            // pwritev2(RWF_DSYNC) would limit the sync to this range, but it
            // is not portable; fdatasync is the portable FUA.
            self.file.sync_data()?;
        }
        Ok(())
    }

    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
