//! The control requests peers send each other (CONTROL frames carrying
//! JSON, docs/replication-protocol.md "Control requests"), as one typed
//! enum. A request that does not parse into it (unknown `op`, a missing or
//! extra field, a wrong type) is refused before anything looks at it.

use super::config::{GroupConfig, Member};
use super::generation::Generations;
use super::Mode;
use serde::{Deserialize, Serialize};

/// Longest chunk read a peer may ask for (a reverse sync reads one chunk).
pub const MAX_READ_BYTES: u64 = 4 << 20;
/// Longest range one `checksums` request covers (a verify batch of 64
/// chunks of up to 1 MiB).
pub const MAX_CHECKSUM_BYTES: u64 = 64 << 20;
/// Highest set id within one link (consistency groups are small).
pub const MAX_SET_ID: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerRequest {
    /// Create the secondary side of a new set.
    Create {
        set: String,
        volume: String,
        size_bytes: u64,
        mode: Mode,
        #[serde(default)]
        group: Option<String>,
        /// The primary's replication listener.
        primary: String,
        primary_volume: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// The generation the secondary starts with: the primary's when
        /// the volumes are declared identical (`--no-sync`), else none.
        #[serde(default)]
        generation: Option<u64>,
    },
    /// Remove the secondary side.
    Disable { set: String },
    /// Before a sync: this side's role and generations for each set of a
    /// group, compared with the sender's (a primary that finds itself the
    /// older side steps down; split brain is noticed by both).
    Compare { sets: Vec<SetGenerations> },
    /// A sync is about to start: compare generations, protect the
    /// secondary (safety snapshot), return the chunks it changed itself.
    SyncBegin {
        set: String,
        generations: Generations,
        /// The sender, when it is (or becomes) this secondary's primary:
        /// a secondary whose primary changed (a promotion elsewhere)
        /// follows the sender if its data is an ancestor of the sender's.
        #[serde(default)]
        primary: Option<PrimaryInfo>,
        /// The set's other secondaries.
        #[serde(default)]
        members: Option<Vec<Member>>,
    },
    /// The sync completed: the secondary adopts the primary's generation
    /// and drops its safety snapshot.
    SyncEnd {
        set: String,
        generations: Generations,
    },
    /// The chunks this side changed that its peer may lack.
    Bitmap { set: String },
    /// A reverse sync is done with these sets' bitmaps.
    BitmapClear { sets: Vec<String> },
    /// Read a range of the secondary's volume (reverse sync).
    Read { set: String, offset: u64, len: u64 },
    /// CRC32C of each `chunk_bytes` piece of a range of the secondary's
    /// volume (verify, checksum resync); the answer is a DATA frame of
    /// 4-byte little-endian checksums.
    Checksums {
        set: String,
        offset: u64,
        len: u64,
        chunk_bytes: u64,
    },
    /// Planned role swap: become the primary of these sets (and of the
    /// other secondaries, `members`, which then follow this node).
    Swap {
        sets: Vec<String>,
        primary: String,
        #[serde(default)]
        members: Vec<Member>,
    },
    /// The set's other secondaries changed.
    Members { set: String, members: Vec<Member> },
    /// A replicating secondary holds every write of the primary's current
    /// generation: it adopts it (sent after the primary started a new one
    /// because another secondary was lost).
    Adopt {
        set: String,
        generations: Generations,
    },
    /// Release round, step 1: start a new epoch and answer the chunks
    /// this secondary holds writes in that another member may lack (a
    /// DATA frame of bitmap words), with the epoch they were received in.
    Mark {
        set: String,
        /// The leg's lag right now, which the secondary keeps: a takeover
        /// there knows what may be missing (`group online`).
        #[serde(default)]
        lag_bytes: u64,
        #[serde(default)]
        lag_ms: u64,
    },
    /// This node's view of a group (`group status` asks the production
    /// node).
    GroupStatus { group: String },
    /// Run `group online` on this node (failover or failback asked from
    /// another node).
    GroupOnline {
        group: String,
        #[serde(default)]
        accept_data_loss: bool,
        #[serde(default)]
        use_inconsistent: bool,
    },
    /// From a secondary's `group online`, to the production node: go
    /// offline and swap roles with `to`.
    Handover { group: String, to: String },
    /// A group's policy changed; store it.
    GroupPolicy { policy: GroupConfig },
    /// The group's definition on this node (`group verify`).
    GroupDefinition { group: String },
    /// Does this node reach its cluster's etcd? (A production node whose
    /// lease is not renewing asks before it fences itself.)
    ClusterProbe {},
    /// Release round, step 2: these chunks (runs of `[first, count]`) are
    /// the same on every member; forget the writes received in `epoch` or
    /// before on them.
    Release {
        set: String,
        session: u64,
        epoch: u32,
        runs: Vec<[u64; 2]>,
    },
    /// Split brain resolved: this side's data is discarded, it becomes
    /// (or stays) the secondary and takes an update sync.
    Discard { set: String },
    /// Split brain resolved in this side's favour: leave `split brain`
    /// and sync to the peer.
    Resume { set: String },
    /// Turn this connection into the data link of a group.
    Link {
        group: String,
        mode: Mode,
        sets: Vec<LinkSet>,
    },
}

impl PeerRequest {
    /// The op name, for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            PeerRequest::Create { .. } => "create",
            PeerRequest::Disable { .. } => "disable",
            PeerRequest::Compare { .. } => "compare",
            PeerRequest::SyncBegin { .. } => "sync_begin",
            PeerRequest::SyncEnd { .. } => "sync_end",
            PeerRequest::Bitmap { .. } => "bitmap",
            PeerRequest::BitmapClear { .. } => "bitmap_clear",
            PeerRequest::Read { .. } => "read",
            PeerRequest::Checksums { .. } => "checksums",
            PeerRequest::Swap { .. } => "swap",
            PeerRequest::Members { .. } => "members",
            PeerRequest::Adopt { .. } => "adopt",
            PeerRequest::Mark { .. } => "mark",
            PeerRequest::GroupStatus { .. } => "group_status",
            PeerRequest::GroupOnline { .. } => "group_online",
            PeerRequest::Handover { .. } => "handover",
            PeerRequest::GroupPolicy { .. } => "group_policy",
            PeerRequest::GroupDefinition { .. } => "group_definition",
            PeerRequest::ClusterProbe {} => "cluster_probe",
            PeerRequest::Release { .. } => "release",
            PeerRequest::Discard { .. } => "discard",
            PeerRequest::Resume { .. } => "resume",
            PeerRequest::Link { .. } => "link",
        }
    }
}

/// One set of a link request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSet {
    pub id: u32,
    pub name: String,
    pub size_bytes: u64,
}

/// A set's generations, in `compare` and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGenerations {
    pub name: String,
    pub generations: Generations,
}

/// The answer to `compare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareReply {
    /// The responder's role for the group after the comparison
    /// (`primary` after a failover the sender has not heard of).
    pub role: super::config::ReplRole,
    pub sets: Vec<SetGenerations>,
    /// A secondary's primary (node name), when it is not the sender: the
    /// responder follows another primary now.
    #[serde(default)]
    pub follows: Option<String>,
}

/// Who a secondary's primary is: its node, listener and volume, and the
/// mode of the leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryInfo {
    pub node: String,
    pub addr: String,
    pub volume: String,
    pub mode: Mode,
}

/// The answer to `mark`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkReply {
    /// Changes when the secondary restarts: a release of another session
    /// is ignored.
    pub session: u64,
    pub epoch: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_round_trip_and_junk_is_refused() {
        let r = PeerRequest::Read {
            set: "db".into(),
            offset: 0,
            len: 4096,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["op"], "read");
        assert_eq!(serde_json::from_value::<PeerRequest>(v).unwrap(), r);
        for bad in [
            json!({"op": "read", "set": "db", "offset": 0}),
            json!({"op": "read", "set": "db", "offset": 0, "len": 1, "bogus": 1}),
            json!({"op": "read", "set": 7, "offset": 0, "len": 1}),
            json!({"op": "format_disk", "set": "db"}),
            json!({"set": "db"}),
            json!([1, 2]),
        ] {
            assert!(
                serde_json::from_value::<PeerRequest>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
