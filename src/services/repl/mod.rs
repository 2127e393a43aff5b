//! Replication to a remote peer over TCP: sync, async and hybrid
//! group-ordered mirroring (seed 001), SNDR's set lifecycle (seed 002) and
//! PPRC's states and failure policy (seed 003).
//!
//! ```text
//!  primary volume stack            link (one per consistency group)        secondary volume stack
//!  ... -> repl (PrimaryLayer) ---> queue -> sender ==TCP==> reader -> applier -> workers
//!                      ^               acks <- receiver <==TCP== acks      |
//!                      |                                                    v
//!               scoreboard (bit per chunk)                  repl-secondary guard (clients: EPERM)
//! ```
//!
//! * `wire.rs`: frames, WRITE/ACK payloads, the mutual HMAC handshake.
//! * `scoreboard.rs`: the persistent out-of-sync bitmap.
//! * `link.rs`: the primary side of a connection: ordering, queue, acks,
//!   link loss; its sender runs only while there is something to send.
//! * `heartbeat.rs`: one thread sends every link end's heartbeats.
//! * `manager.rs`: one link manager per daemon (autosync, probes, rounds).
//! * `pool.rs`: threads that exist only while there is work.
//! * `set.rs`: a primary set: its layer (the write path) and the resync.
//! * `secondary.rs`: the guard layer and the ordered applier.
//! * `peer.rs`: dialling, control requests, the listener.
//!
//! The daemon (`control/daemon/repl.rs`) owns configuration, volumes, the
//! secondary's safety snapshot, and the operations that span both hosts.

pub mod config;
mod error;
pub mod generation;
pub mod groups;
mod handler;
mod heartbeat;
pub mod link;
mod manager;
mod ops;
pub mod peer;
mod pool;
pub mod proxy;
pub mod requests;
mod roles;
mod runtime;
pub mod scoreboard;
pub mod secondary;
pub mod set;
mod state;
mod sync;
pub mod tls;
pub mod verify;
pub mod wire;

pub use error::{RResult, ReplError};
pub use groups::{OnlineOptions, PolicyOptions};
pub use ops::{
    EnableOptions, SyncOptions, TuneOptions, WaitOptions, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_ITEMS,
    DEFAULT_TIMEOUT_MS,
};
pub use roles::Discard;
pub use runtime::{Host, Replication};
pub use state::SetState;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// DRBD closes an epoch after 2048 writes; so do we close a group.
pub const MAX_GROUP_WRITES: u32 = 2048;

/// Publishes an event: (kind, object, detail).
pub type Notifier = Arc<dyn Fn(&str, &str, crate::services::Note) + Send + Sync>;

/// How a sync-mode primary in a cluster tells etcd that a secondary's copy
/// is outdated (group, secondary node), while it still holds the group's
/// lock, before it acknowledges a write that secondary does not have:
/// `None` when this node is in no cluster, else whether etcd recorded it.
pub type Outdater = Arc<dyn Fn(&str, &str) -> Option<Result<(), String>> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Acknowledged after the local and the remote write.
    Sync,
    /// Acknowledged after the local write; the peer applies in order.
    Async,
    /// Acknowledged after the local write; the peer applies group by group.
    Hybrid,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// What a set does when its peer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PeerLoss {
    /// Keep writing locally, record the chunks in the scoreboard.
    #[default]
    Log,
    /// Fail writes with EIO until the peer is back and synced.
    Fail,
}

/// What an async or hybrid writer does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueFull {
    #[default]
    Block,
    /// Drop the group to logging (the scoreboard takes over).
    Log,
}

/// This node's identity and its peers' secrets, shared by the listener
/// and every dialler.
#[derive(Default)]
pub struct NodeCtx {
    name: RwLock<String>,
    secrets: RwLock<HashMap<String, Vec<u8>>>,
    notify: RwLock<Option<Notifier>>,
}

impl NodeCtx {
    pub fn name(&self) -> String {
        self.name.read().clone()
    }

    pub fn set_name(&self, n: &str) {
        *self.name.write() = n.to_owned();
    }

    pub fn secret(&self, peer: &str) -> Option<Vec<u8>> {
        self.secrets.read().get(peer).cloned()
    }

    pub fn set_secret(&self, peer: &str, secret: Option<Vec<u8>>) {
        let mut s = self.secrets.write();
        match secret {
            Some(v) => s.insert(peer.to_owned(), v),
            None => s.remove(peer),
        };
    }

    pub fn set_notifier(&self, n: Notifier) {
        *self.notify.write() = Some(n);
    }

    pub fn notify(&self, kind: &str, object: &str, note: impl Into<crate::services::Note>) {
        if let Some(n) = self.notify.read().as_ref() {
            n(kind, object, note.into());
        }
    }
}

#[cfg(test)]
mod tests;
