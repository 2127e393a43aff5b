//! Replication to a remote peer (issue 4, under construction).
//!
//! Built so far: the wire protocol's framing and the peers' mutual
//! authentication (`wire.rs`, docs/replication-protocol.md). Not built yet:
//! the primary and secondary layers, modes, scoreboards, resync, groups,
//! the listener, the daemon operations and the CLI.

pub mod wire;
