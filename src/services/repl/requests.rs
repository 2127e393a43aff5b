//! The control requests peers send each other (CONTROL frames carrying
//! JSON, docs/replication-protocol.md "Control requests"), as one typed
//! enum. A request that does not parse into it (unknown `op`, a missing or
//! extra field, a wrong type) is refused before anything looks at it.

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
    /// Planned role swap: become the primary of these sets.
    Swap { sets: Vec<String>, primary: String },
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
