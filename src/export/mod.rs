//! Frontends that make volumes visible outside the process: NBD, and ublk
//! (a real `/dev/ublkbN` through the kernel's ublk driver; the UAPI binding
//! is the `ublk/` crate). A frontend only ever talks to
//! [`crate::interposer::Volume`] through the `BlockDevice` trait.

pub mod nbd;
pub mod ublk;
