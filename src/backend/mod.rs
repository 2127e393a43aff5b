//! Backends: where a volume's bytes finally live.
//!
//! * [`memory::MemoryBackend`]: a `Vec<u8>` behind a lock, for tests and
//!   benches.
//! * [`file::FileBackend`]: a regular file or a raw block device, driven by
//!   one of two engines (io_uring with batched submission, or portable
//!   `pread`/`pwrite`), optionally with `O_DIRECT`.

pub mod file;
pub mod memory;

pub use file::{EngineKind, FileBackend, FileOptions};
pub use memory::MemoryBackend;
