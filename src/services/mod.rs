//! Data services: layers of a volume's stack (see `interposer`). Each
//! service is a folder named for it.

pub mod cache;
pub mod image;
pub mod repl;
