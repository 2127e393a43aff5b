//! umbra: a kernel-style block-device layer in user space.
//!
//! See `ARCHITECTURE.md` for the life of a write and the code map.

pub mod backend;
pub mod bitmap;
pub mod buffer;
pub mod cluster;
pub mod control;
pub mod device;
pub mod export;
pub mod fault;
pub mod interposer;
pub mod park;
pub mod services;
pub mod tls;
