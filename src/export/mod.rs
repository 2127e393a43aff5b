//! Frontends that make volumes visible outside the process: NBD today,
//! ublk in its own crate later. A frontend only ever talks to
//! [`crate::interposer::Volume`] through the `BlockDevice` trait.

pub mod nbd;
