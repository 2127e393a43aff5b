//! The replication part of the daemon's configuration file (`repl` in
//! `umbra.json`, docs/config.md): this node's identity, the peers it
//! trusts, and every set it takes part in, in either role. The service
//! owns the schema; the control plane persists it atomically.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplConfig {
    /// This node's name, announced to peers in the handshake.
    pub node: String,
    /// Where the replication listener accepts peers (`HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub sets: Vec<ReplSetConfig>,
    /// Group policies (`umbra group policy`), the same on every member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
    /// The cluster this node joined (`umbra cluster join`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// The lease's time to live by default (Patroni's loop is 10 s too).
pub const DEFAULT_TTL_S: u64 = 10;

/// Which etcd, which cluster (the cluster agent, `src/cluster/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub etcd: Vec<String>,
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Added to this node's priority key (higher: picked later): the
    /// administrator's failover priority.
    #[serde(default)]
    pub priority_bias: i64,
}

fn default_ttl() -> u64 {
    DEFAULT_TTL_S
}

/// What `group offline` does to the exports of a group's volumes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineExports {
    /// Serve on, read-only (clients keep reading; `online` restores).
    #[default]
    ReadOnly,
    /// Stop serving them (`online` starts them again).
    Remove,
    /// Leave them; the volume still refuses nothing until a swap.
    Keep,
}

/// What a fenced production node does with new writes (the cluster agent
/// fences when it cannot renew its lease).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FenceMode {
    /// Fail them with EIO at once.
    #[default]
    Eio,
    /// Hold them until the lease is renewed (they then complete) or the
    /// node steps down (they then fail with EIO): applications stall
    /// instead of seeing errors, like DRBD's `suspend-io`.
    Block,
}

/// A group's policy (seed 000: the user's decisions), stored with the
/// group on every member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Nodes that should run the group, best first (failback goes to the
    /// first).
    #[serde(default)]
    pub preferred: Vec<String>,
    /// A takeover is refused when more acknowledged bytes than this may be
    /// missing here (Patroni's `maximum_lag_on_failover`, same default).
    #[serde(default = "default_max_lag_on_failover")]
    pub max_lag_on_failover_bytes: u64,
    /// Fail over by itself when the production node is lost (the cluster
    /// agent acts on it).
    #[serde(default)]
    pub auto_failover: bool,
    /// An automatic failover may accept data loss (default no).
    #[serde(default)]
    pub auto_accept_data_loss: bool,
    #[serde(default)]
    pub offline_exports: OfflineExports,
    #[serde(default)]
    pub fence: FenceMode,
    /// This node's exports `group offline` took writes from (volume,
    /// listen): `group online` restores them. Local state, not policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_exports: Vec<(String, String)>,
}

fn default_max_lag_on_failover() -> u64 {
    1 << 20
}

impl GroupConfig {
    pub fn new(name: &str) -> GroupConfig {
        GroupConfig {
            name: name.to_owned(),
            preferred: Vec::new(),
            max_lag_on_failover_bytes: default_max_lag_on_failover(),
            auto_failover: false,
            auto_accept_data_loss: false,
            offline_exports: OfflineExports::default(),
            fence: FenceMode::default(),
            fenced_exports: Vec::new(),
        }
    }

    /// The policy alone (what members must agree on).
    pub fn policy(&self) -> GroupConfig {
        GroupConfig {
            fenced_exports: Vec::new(),
            ..self.clone()
        }
    }
}

/// A peer this node trusts: its name and the file holding the secret both
/// share (the secret itself is never written into the configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub secret_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplRole {
    Primary,
    Secondary,
}

/// One replication set as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplSetConfig {
    pub name: String,
    pub role: ReplRole,
    pub volume: String,
    pub remote_volume: String,
    /// The other side's replication listener.
    pub peer: String,
    #[serde(default)]
    pub peer_node: String,
    pub mode: super::Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub on_peer_loss: super::PeerLoss,
    #[serde(default = "yes")]
    pub autosync: bool,
    /// Suspended by `repl log` (no autosync until `repl sync`).
    #[serde(default)]
    pub suspended: bool,
    /// The scoreboard file (both roles: it holds the generations, and on
    /// a demoted former primary the chunks the peer may lack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoreboard: Option<PathBuf>,
    pub timeout_ms: u64,
    pub queue_bytes: u64,
    pub queue_items: usize,
    #[serde(default)]
    pub on_queue_full: super::QueueFull,
    /// Secondary: the safety snapshot (an image set) while a sync runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,
    /// The generations disagreed at the last contact: nothing replicates
    /// until `repl resolve` (kept across restarts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_brain: bool,
    /// Secondary: the set's other secondaries as its primary last named
    /// them; a promotion here re-attaches them (docs/replication-protocol.md
    /// "Several secondaries").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Primary, async and hybrid: writers wait while the peer lags more
    /// than this many bytes or milliseconds (`--max-lag`, the RPO bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    /// Primary: resync bandwidth limit in bytes per second (`--sync-rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_rate: Option<u64>,
}

impl ReplSetConfig {
    /// On a primary a set has one entry per secondary (a leg); this is the
    /// entry of set `name` toward node `peer_node`. A secondary has one
    /// entry per set, whatever its primary.
    pub fn is(&self, name: &str, peer_node: &str) -> bool {
        self.name == name && (self.role == ReplRole::Secondary || self.peer_node == peer_node)
    }
}

/// Another secondary of a set, as the primary describes it to each
/// secondary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node: String,
    /// Its replication listener.
    pub addr: String,
    pub volume: String,
    pub mode: super::Mode,
}

fn yes() -> bool {
    true
}
