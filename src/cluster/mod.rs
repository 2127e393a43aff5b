//! The cluster agent (seed 004 on etcd): membership with a lease, the
//! production lock of every group, automatic cascading failover among
//! candidates ranked by load, and fencing of a production node cut from
//! etcd.
//!
//! etcd is the shared repository; nothing here is a consensus of its own.
//! Keys, under `/umbra/CLUSTER/` (docs/cluster.md):
//!
//! * `nodes/NODE`: `{node, listen, load, primary_groups, priority, bias}`,
//!   bound to the node's lease (TTL 10 s, renewed every TTL/3): the node
//!   is alive while it exists; `priority` ranks candidates (lower wins).
//! * `groups/G/owner`: `{node, since_unix_ms}`, bound to the production
//!   node's lease: the seed's lock with a timestamp (the lease is the
//!   bound after which a dead holder's lock goes).
//! * `groups/G/last_owner`: the production node's name, no lease: what a
//!   candidate's transaction checks, so a late candidate drops out.
//! * `groups/G/policy`: the group's policy, written by its production
//!   node: what candidates decide from.
//!
//! The agent runs on its own thread with a single-threaded tokio runtime
//! (the etcd client is asynchronous); it never touches the data path: it
//! calls the replication service's group operations, on threads of their
//! own, and sets or clears a group's fence. A watchdog thread fences the
//! node's production groups when the lease could not be renewed for two
//! thirds of its TTL, before it can expire anywhere, unless every peer
//! says etcd is unreachable for it too (an etcd outage: nobody can take
//! over, so writes go on: Patroni's failsafe mode).

mod agent;

pub use agent::{Cluster, ClusterConfig};
