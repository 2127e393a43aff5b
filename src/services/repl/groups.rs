//! Groups as the unit of operation (seed 000): a consistency group of
//! replication sets, or a set that has none, is what is brought online,
//! taken offline, swapped and failed over.
//!
//! Every operation is one loop: **query** the group's state (this node's
//! sets, and its production node's view when that one answers),
//! **decide** what the requested state needs ([`decide_online`], a pure
//! function of the query, also shown by `group status` as the next step),
//! **act**, and query again until the state holds or the time is up.
//! Nothing is assumed, so every operation is safe to repeat: one whose
//! state already holds succeeds at once and does nothing.
//!
//! Replica states, as `group status` shows them (DRBD's and seed 000's
//! words): `up-to-date` (replicating, nothing in flight), `consistent`
//! (replicating with writes in flight, or logging: an older image written
//! in order), `inconsistent` (a resync runs or was cut: the volume is
//! mixed, its last consistent image is the safety snapshot),
//! `split-brain`, `failed`, `unknown` (no answer).

use super::config::{ClusterConfig, GroupConfig, OfflineExports, ReplRole, ReplSetConfig};
use super::error::{RResult, ReplError};
use super::peer;
use super::requests::PeerRequest;
use super::runtime::{group_name, Replication};
use super::SetState;
use crate::device::BlockDevice;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a group operation drives toward its state by default.
pub const DEFAULT_GROUP_TIMEOUT_MS: u64 = 120_000;
/// A peer that does not answer a group query within this long counts as
/// unreachable (the decision then is a takeover or a refusal).
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between the rounds of an operation's loop.
const ROUND: Duration = Duration::from_millis(200);

/// Options of `group online` (and of failover, which is online elsewhere).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineOptions {
    pub group: String,
    /// Take over although acknowledged writes may be missing here.
    #[serde(default)]
    pub accept_data_loss: bool,
    /// A copy cut mid-resync comes up on its safety snapshot's data.
    #[serde(default)]
    pub use_inconsistent: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Changes to a group's policy; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOptions {
    pub group: String,
    #[serde(default)]
    pub preferred: Option<Vec<String>>,
    #[serde(default)]
    pub max_lag_on_failover_bytes: Option<u64>,
    #[serde(default)]
    pub auto_failover: Option<bool>,
    #[serde(default)]
    pub auto_accept_data_loss: Option<bool>,
    #[serde(default)]
    pub offline_exports: Option<OfflineExports>,
    #[serde(default)]
    pub fence: Option<super::config::FenceMode>,
}

/// What bringing the group online on this node takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Plan {
    /// Production here already, and healthy.
    Nothing,
    /// The production node answers: it drains and swaps roles with us.
    Swap { from: String },
    /// The production node does not answer and this copy may take over.
    Takeover {
        from: String,
        at_risk_bytes: u64,
        at_risk_ms: u64,
    },
    /// First bring the volumes back to their safety snapshots (a copy cut
    /// mid-resync, `--use-inconsistent`), then take over.
    RecoverThenTakeover {
        from: String,
        snapshots: Vec<String>,
    },
    /// Not possible (or not without a flag that says so).
    Refuse { reason: String },
}

/// One node's sets of a group, as queried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub role: ReplRole,
    /// The production node as this node knows it.
    pub production: String,
    pub sets: Vec<SetView>,
    /// A primary's secondaries (one entry per node, the worst set state).
    #[serde(default)]
    pub replicas: Vec<Replica>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetView {
    pub name: String,
    pub volume: String,
    pub state: String,
    pub mode: super::Mode,
    #[serde(default)]
    pub safety_snapshot: Option<String>,
    /// Secondary: whether the link from its primary is up, the lag the
    /// primary last reported and when (unix ms).
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub lag_bytes: u64,
    #[serde(default)]
    pub lag_ms: u64,
    #[serde(default)]
    pub last_contact_unix_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replica {
    pub node: String,
    pub state: String,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    pub out_of_sync_bytes: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A leg's state in seed 000's words.
fn replica_state(s: SetState, lag_bytes: u64, oos: u64) -> &'static str {
    match s {
        SetState::Replicating if lag_bytes == 0 && oos == 0 => "up-to-date",
        SetState::Replicating | SetState::Logging => "consistent",
        SetState::Syncing | SetState::NeedSync => "inconsistent",
        SetState::ReverseSyncing | SetState::NeedReverseSync => "inconsistent",
        SetState::SplitBrain => "split-brain",
        SetState::Failed => "failed",
    }
}

/// Worse of two replica states (the group's state is its worst set's).
fn worse(a: &str, b: &str) -> String {
    let rank = |s: &str| match s {
        "up-to-date" => 0,
        "consistent" => 1,
        "unknown" => 2,
        "inconsistent" => 3,
        "split-brain" => 4,
        _ => 5,
    };
    if rank(b) > rank(a) {
        b.to_owned()
    } else {
        a.to_owned()
    }
}

/// What `group online` on the node of `mine` does, given the production
/// node's view when it answered (`production`), and the policy.
pub fn decide_online(
    mine: &NodeView,
    production: Option<&NodeView>,
    policy: &GroupConfig,
    opts: &OnlineOptions,
) -> Plan {
    if mine.role == ReplRole::Primary {
        return match mine.sets.iter().find(|s| s.state == "split brain") {
            Some(s) => Plan::Refuse {
                reason: format!(
                    "set {} is in split brain: `umbra repl resolve {} --discard here|peer` first",
                    s.name, s.name
                ),
            },
            None => Plan::Nothing,
        };
    }
    let from = mine.production.clone();
    if let Some(p) = production.filter(|p| p.role == ReplRole::Primary && p.node == from) {
        // The production node answers: a planned swap, once this copy is
        // in sync (the swap drains what is in flight).
        let here = p.replicas.iter().find(|r| r.node == mine.node);
        return match here.map(|r| r.state.as_str()) {
            Some("up-to-date" | "consistent") if here.is_some_and(|r| r.out_of_sync_bytes == 0) => {
                Plan::Swap { from }
            }
            Some(s) => Plan::Refuse {
                reason: format!(
                    "production node {from} answers, but this node's copy is {s}; wait until it is in sync (`umbra group wait {} --state in-sync`)",
                    policy.name
                ),
            },
            None => Plan::Refuse {
                reason: format!("production node {from} does not replicate the group to this node"),
            },
        };
    }
    // The production node is gone (or follows another): take over, if
    // this copy is good enough.
    let snapshots: Vec<String> = mine
        .sets
        .iter()
        .filter_map(|s| s.safety_snapshot.clone())
        .collect();
    if !snapshots.is_empty() {
        if opts.use_inconsistent {
            return Plan::RecoverThenTakeover { from, snapshots };
        }
        return Plan::Refuse {
            reason: format!(
                "potential data loss: this node's copy was cut mid-resync and is inconsistent; its last consistent image is in {} (the writes of the cut resync are lost); pass --use-inconsistent to bring the group up on that image",
                snapshots.join(", ")
            ),
        };
    }
    let at_risk_bytes: u64 = mine
        .sets
        .iter()
        .filter(|s| s.mode != super::Mode::Sync)
        .map(|s| s.lag_bytes)
        .sum();
    let at_risk_ms = mine
        .sets
        .iter()
        .filter(|s| s.mode != super::Mode::Sync)
        .map(|s| s.lag_ms)
        .max()
        .unwrap_or(0);
    let bound = policy.max_lag_on_failover_bytes;
    let accept = opts.accept_data_loss || policy.auto_accept_data_loss;
    if at_risk_bytes > bound && !accept {
        return Plan::Refuse {
            reason: format!(
                "potential data loss: production node {from} does not answer and, at the last contact, {at_risk_bytes} bytes ({at_risk_ms} ms) it acknowledged had not reached this node (policy allows {bound}); pass --accept-data-loss to take over anyway"
            ),
        };
    }
    Plan::Takeover {
        from,
        at_risk_bytes,
        at_risk_ms,
    }
}

impl Replication {
    /// The configured sets of group `g` on this node (on a primary, one
    /// entry per set: its first leg).
    fn group_sets(&self, g: &str) -> RResult<Vec<ReplSetConfig>> {
        let mut out: Vec<ReplSetConfig> = Vec::new();
        for c in self.group_entries(g) {
            if !out.iter().any(|o| o.name == c.name) {
                out.push(c);
            }
        }
        if out.is_empty() {
            return Err(ReplError::NotFound(format!(
                "no group or replication set named {g} on node {}",
                self.ctx.name()
            )));
        }
        Ok(out)
    }

    /// Every configuration entry of group `g` here (a primary's legs
    /// each).
    fn group_entries(&self, g: &str) -> Vec<ReplSetConfig> {
        self.config()
            .map(|rc| rc.sets)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| group_name(c) == g)
            .collect()
    }

    /// Group `g`'s policy (defaults when none was set).
    pub fn group_policy(&self, g: &str) -> GroupConfig {
        self.config()
            .ok()
            .and_then(|rc| rc.groups.into_iter().find(|x| x.name == g))
            .unwrap_or_else(|| GroupConfig::new(g))
    }

    /// This node's view of group `g`.
    pub fn node_view(&self, g: &str) -> RResult<NodeView> {
        let sets = self.group_sets(g)?;
        let role = sets[0].role;
        let me = self.ctx.name();
        let mut view = NodeView {
            node: me.clone(),
            role,
            production: if role == ReplRole::Primary {
                me
            } else {
                sets[0].peer_node.clone()
            },
            sets: Vec::new(),
            replicas: Vec::new(),
        };
        for c in &sets {
            match role {
                ReplRole::Primary => {
                    let legs = self.legs(&c.name);
                    let worst = legs
                        .iter()
                        .map(|l| l.state())
                        // A split brain or a failed leg first: what needs
                        // a person (or a join) shows over a leg merely
                        // logging.
                        .max_by_key(|s| match s {
                            SetState::Replicating => 0,
                            SetState::SplitBrain | SetState::Failed => 2,
                            _ => 1,
                        })
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_else(|| "offline".into());
                    view.sets.push(SetView {
                        name: c.name.clone(),
                        volume: c.volume.clone(),
                        state: worst,
                        mode: c.mode,
                        safety_snapshot: None,
                        connected: true,
                        lag_bytes: 0,
                        lag_ms: 0,
                        last_contact_unix_ms: now_ms(),
                    });
                    for l in legs {
                        let (_, bytes, age) = l.link().lag();
                        let oos = l.scoreboard.oos_bytes();
                        let st = replica_state(l.state(), bytes, oos).to_owned();
                        let ms = (age * 1000.0) as u64;
                        match view.replicas.iter_mut().find(|r| r.node == l.peer_node) {
                            Some(r) => {
                                r.state = worse(&r.state, &st);
                                r.lag_bytes += bytes;
                                r.lag_ms = r.lag_ms.max(ms);
                                r.out_of_sync_bytes += oos;
                            }
                            None => view.replicas.push(Replica {
                                node: l.peer_node.clone(),
                                state: st,
                                lag_bytes: bytes,
                                lag_ms: ms,
                                out_of_sync_bytes: oos,
                            }),
                        }
                    }
                }
                ReplRole::Secondary => {
                    let e = self.secondary(&c.name).ok();
                    let s = e.as_ref().map(|e| &e.set);
                    view.sets.push(SetView {
                        name: c.name.clone(),
                        volume: c.volume.clone(),
                        state: if c.safety_snapshot.is_some() {
                            "sync target".into()
                        } else {
                            "target".into()
                        },
                        mode: c.mode,
                        safety_snapshot: c.safety_snapshot.clone(),
                        connected: s.is_some_and(|s| s.connected.load(Ordering::SeqCst)),
                        lag_bytes: s.map_or(0, |s| s.primary_lag_bytes.load(Ordering::Relaxed)),
                        lag_ms: s.map_or(0, |s| s.primary_lag_ms.load(Ordering::Relaxed)),
                        last_contact_unix_ms: s
                            .map_or(0, |s| s.last_contact_ms.load(Ordering::Relaxed)),
                    });
                }
            }
        }
        Ok(view)
    }

    /// The production node's view of `g`, asked through the peer link of
    /// the first set (None when it does not answer in time).
    fn production_view(&self, mine: &NodeView, g: &str) -> Option<NodeView> {
        if mine.role == ReplRole::Primary {
            return Some(mine.clone());
        }
        let c = self.group_sets(g).ok()?.into_iter().next()?;
        let (v, _) = peer::request_within(
            &self.ctx,
            &c.peer,
            &PeerRequest::GroupStatus {
                group: g.to_owned(),
            },
            QUERY_TIMEOUT,
        )
        .ok()?;
        serde_json::from_value(v).ok()
    }

    /// `group status G`: where G is production, every replica's state,
    /// and what `group online` on this node would do.
    pub fn group_status(&self, g: &str) -> RResult<Value> {
        let mine = self.node_view(g)?;
        let prod = self.production_view(&mine, g);
        let policy = self.group_policy(g);
        let plan = decide_online(&mine, prod.as_ref(), &policy, &OnlineOptions::default());
        let (production, reachable, replicas) = match &prod {
            Some(p) if p.role == ReplRole::Primary => (p.node.clone(), true, p.replicas.clone()),
            _ => (mine.production.clone(), false, Vec::new()),
        };
        Ok(json!({
            "group": g,
            "node": mine.node,
            "role": mine.role,
            "production": production,
            "production_reachable": reachable,
            "replicas": replicas,
            "sets": mine.sets,
            "policy": policy.policy(),
            "online_here": plan,
        }))
    }

    /// `group online G`: make this node production for G (see [`Plan`]),
    /// then return once it holds.
    pub fn group_online(&self, opts: OnlineOptions) -> RResult<Value> {
        let g = opts.group.clone();
        let deadline = Instant::now()
            + Duration::from_millis(opts.timeout_ms.unwrap_or(DEFAULT_GROUP_TIMEOUT_MS));
        let mut done = Vec::new();
        loop {
            let mine = self.node_view(&g)?;
            let prod = self.production_view(&mine, &g);
            let policy = self.group_policy(&g);
            let plan = decide_online(&mine, prod.as_ref(), &policy, &opts);
            match &plan {
                Plan::Nothing => {
                    self.exports_writable(&g, true)?;
                    let mut v = self.group_status(&g)?;
                    v["actions"] = json!(done);
                    return Ok(v);
                }
                Plan::Refuse { reason } => {
                    return Err(ReplError::Busy(format!("group {g}: {reason}")));
                }
                Plan::Swap { from } => {
                    let c = self.group_sets(&g)?.remove(0);
                    peer::request(
                        &self.ctx,
                        &c.peer,
                        &PeerRequest::Handover {
                            group: g.clone(),
                            to: self.ctx.name(),
                        },
                    )
                    .map_err(|e| {
                        ReplError::Peer(format!("group {g}: {from} did not hand over: {e}"))
                    })?;
                }
                Plan::Takeover { .. } => {
                    let first = self.group_sets(&g)?.remove(0);
                    self.takeover(&first.name, None)?;
                }
                Plan::RecoverThenTakeover { snapshots, .. } => {
                    let host = self.host()?;
                    for snap in snapshots {
                        host.snapshot_restore(snap)?;
                        self.publish(
                            "group.recovered",
                            &g,
                            crate::services::Note::new(format!(
                                "the volume was brought back to {snap}"
                            ))
                            .field("snapshot", snap),
                        );
                    }
                    self.commit(
                        |rc| {
                            for c in rc.sets.iter_mut() {
                                if c.safety_snapshot
                                    .as_ref()
                                    .is_some_and(|s| snapshots.contains(s))
                                {
                                    c.safety_snapshot = None;
                                }
                            }
                            Ok(())
                        },
                        || {},
                    )?;
                    for snap in snapshots {
                        host.snapshot_drop(snap)?;
                    }
                }
            }
            self.publish(
                "group.online_step",
                &g,
                crate::services::Note::new(format!("{plan:?}")).field("step", &plan),
            );
            done.push(plan);
            if Instant::now() >= deadline {
                return Err(ReplError::Busy(format!(
                    "group {g} is not production here after {} ms; see `umbra group status {g}`",
                    opts.timeout_ms.unwrap_or(DEFAULT_GROUP_TIMEOUT_MS)
                )));
            }
            std::thread::sleep(ROUND);
        }
    }

    /// `group offline G` on its production node: flush every volume, stop
    /// serving writes (exports read-only or removed, by policy), wait until
    /// every replica holds everything (ready for a swap).
    pub fn group_offline(&self, g: &str, timeout_ms: Option<u64>) -> RResult<Value> {
        let sets = self.group_sets(g)?;
        if sets[0].role != ReplRole::Primary {
            // Not production here: offline holds already.
            return self.group_status(g);
        }
        let host = self.host()?;
        for c in &sets {
            host.volume(&c.volume)?
                .flush()
                .map_err(|e| ReplError::Failed(format!("volume {}: flush: {e}", c.volume)))?;
        }
        self.exports_writable(g, false)?;
        let deadline =
            Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_GROUP_TIMEOUT_MS));
        loop {
            let mine = self.node_view(g)?;
            if mine.replicas.iter().all(|r| r.state == "up-to-date") {
                self.publish("group.offline", g, "writes stopped; replicas in sync");
                return self.group_status(g);
            }
            if Instant::now() >= deadline {
                return Err(ReplError::Busy(format!(
                    "group {g}: writes stopped, but not every replica is in sync: {}",
                    serde_json::to_string(&mine.replicas).expect("serialisable")
                )));
            }
            std::thread::sleep(ROUND);
        }
    }

    /// On the production node: swap roles with `to` (a peer asked for it
    /// with `group online`, or `group swap`): offline, then the planned
    /// swap of every set of the group toward `to`.
    pub(super) fn handover(&self, g: &str, to: &str) -> RResult<()> {
        let sets = self.group_sets(g)?;
        if sets[0].role != ReplRole::Primary {
            return Err(ReplError::Invalid(format!(
                "group {g} is not production on node {}",
                self.ctx.name()
            )));
        }
        self.group_offline(g, None)?;
        // One swap moves the whole consistency group on that link.
        self.swap(&sets[0].name, Some(to))?;
        self.publish(
            "group.handed_over",
            g,
            crate::services::Note::new(format!("to {to}")).field("to", to),
        );
        Ok(())
    }

    /// `group swap G [--to NODE]` from the production node: hand G over
    /// to NODE (the only, or first preferred, replica) and wait until it
    /// is production there.
    pub fn group_swap(&self, g: &str, to: Option<&str>) -> RResult<Value> {
        let mine = self.node_view(g)?;
        if mine.role != ReplRole::Primary {
            return Err(ReplError::Invalid(format!(
                "group {g} is production on {}, not here; run `umbra group swap {g}` there, or `umbra group online {g}` on the node that should take it",
                mine.production
            )));
        }
        let target = match to {
            Some(t) => t.to_owned(),
            None => {
                let policy = self.group_policy(g);
                policy
                    .preferred
                    .iter()
                    .find(|p| mine.replicas.iter().any(|r| &r.node == *p))
                    .cloned()
                    .or_else(|| mine.replicas.first().map(|r| r.node.clone()))
                    .ok_or_else(|| ReplError::Invalid(format!("group {g} has no replica")))?
            }
        };
        self.handover(g, &target)?;
        self.group_status(g)
    }

    /// `group failover G --to NODE` / `group failback G` from any node: ask
    /// NODE to bring G online (`group online` there).
    pub fn group_online_at(&self, node: Option<&str>, opts: OnlineOptions) -> RResult<Value> {
        let me = self.ctx.name();
        let target = node.map(str::to_owned).unwrap_or_else(|| me.clone());
        if target == me {
            return self.group_online(opts);
        }
        let addr = self.address_of(&opts.group, &target)?;
        let (v, _) = peer::request(
            &self.ctx,
            &addr,
            &PeerRequest::GroupOnline {
                group: opts.group.clone(),
                accept_data_loss: opts.accept_data_loss,
                use_inconsistent: opts.use_inconsistent,
            },
        )
        .map_err(|e| ReplError::Peer(format!("group {}: node {target}: {e}", opts.group)))?;
        Ok(v)
    }

    /// `group failback G`: production goes back to the group's first
    /// preferred node.
    pub fn group_failback(&self, g: &str) -> RResult<Value> {
        let policy = self.group_policy(g);
        let home = policy.preferred.first().cloned().ok_or_else(|| {
            ReplError::Invalid(format!(
                "group {g} has no preferred node to fail back to (`umbra group policy {g} --preferred NODE,...`)"
            ))
        })?;
        self.group_online_at(
            Some(&home),
            OnlineOptions {
                group: g.to_owned(),
                ..Default::default()
            },
        )
    }

    /// Where node `node`'s replication listener is, as group `g`'s sets
    /// here know it (a leg, the primary, or a member).
    fn address_of(&self, g: &str, node: &str) -> RResult<String> {
        self.group_peers(g)
            .into_iter()
            .find(|(n, _)| n == node)
            .map(|(_, addr)| addr)
            .ok_or_else(|| {
                ReplError::NotFound(format!("group {g}: node {node} is not a member here"))
            })
    }

    /// Whether `node` says it is a secondary of this node for group `g`
    /// (asked over the peer link): a lock it still holds in etcd is then
    /// left from a planned swap, not a sign that it is production.
    pub fn peer_follows_me(&self, g: &str, node: &str) -> bool {
        let Ok(addr) = self.address_of(g, node) else {
            return false;
        };
        peer::request_within(
            &self.ctx,
            &addr,
            &PeerRequest::GroupStatus {
                group: g.to_owned(),
            },
            QUERY_TIMEOUT,
        )
        .ok()
        .and_then(|(v, _)| serde_json::from_value::<NodeView>(v).ok())
        .is_some_and(|v| v.role == ReplRole::Secondary && v.production == self.ctx.name())
    }

    /// `group join G` on a node back after a forced takeover elsewhere:
    /// step down toward the production node and wait until its copy is
    /// resynced. A node that wrote meanwhile is in split brain, which
    /// only `repl resolve` ends.
    pub fn group_join(&self, g: &str, timeout_ms: Option<u64>) -> RResult<Value> {
        self.join_until(g, timeout_ms, true)
    }

    /// The cluster agent's join: done once this node is a secondary (the
    /// resync then runs by itself), so the agent is free again to stand as
    /// a candidate should the production node fail meanwhile.
    pub fn group_demote_to_secondary(&self, g: &str, timeout_ms: Option<u64>) -> RResult<Value> {
        self.join_until(g, timeout_ms, false)
    }

    fn join_until(&self, g: &str, timeout_ms: Option<u64>, in_sync: bool) -> RResult<Value> {
        let deadline =
            Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_GROUP_TIMEOUT_MS));
        loop {
            let mine = self.node_view(g)?;
            if mine.role == ReplRole::Secondary && !in_sync {
                self.publish(
                    "group.joined",
                    g,
                    crate::services::Note::new(format!(
                        "secondary of {} (resyncing by itself)",
                        mine.production
                    ))
                    .field("production", &mine.production),
                );
                return self.group_status(g);
            }
            if mine.role == ReplRole::Secondary {
                let prod = self.production_view(&mine, g);
                let synced = prod.as_ref().is_some_and(|p| {
                    p.role == ReplRole::Primary
                        && p.replicas
                            .iter()
                            .any(|r| r.node == mine.node && r.state == "up-to-date")
                });
                if synced {
                    self.publish(
                        "group.joined",
                        g,
                        crate::services::Note::new(format!("secondary of {}", mine.production))
                            .field("production", &mine.production),
                    );
                    return self.group_status(g);
                }
            } else if let Some(s) = mine.sets.iter().find(|s| s.state == "split brain") {
                // This node wrote while another took production (it was
                // cut off, or the takeover was forced). Joining means the
                // production side's data wins: what this node wrote since
                // they last agreed is discarded, and said so with its size
                // (never silently), then it resyncs as a secondary.
                let Some(leg) = self
                    .legs(&s.name)
                    .into_iter()
                    .find(|l| l.state() == SetState::SplitBrain)
                else {
                    return Err(ReplError::SplitBrain(format!(
                        "group {g}: set {} is in split brain; `umbra repl resolve {} --discard here` to join",
                        s.name, s.name
                    )));
                };
                let bytes = leg.scoreboard.oos_bytes();
                self.resolve(&s.name, super::roles::Discard::Here, Some(&leg.peer_node))?;
                self.publish(
                    "group.discarded",
                    g,
                    crate::services::Note::new(format!(
                        "set {}: this node wrote while {} was production; joining it discards those writes ({bytes} bytes)",
                        s.name, leg.peer_node
                    ))
                    .field("set", &s.name)
                    .field("production", &leg.peer_node)
                    .field("out_of_sync_bytes", bytes)
                    .field("why", "this node wrote while the other was production; joining it discards those writes"),
                );
                continue;
            } else {
                // Still primary here: the autosync's comparison makes it
                // step down when the peer took over; ask for one now.
                for c in self.group_sets(g)? {
                    for l in self.legs(&c.name) {
                        l.set_peer_lost(true);
                        l.suspended.store(false, Ordering::SeqCst);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ReplError::Busy(format!(
                    "group {g} did not join within the time; see `umbra group status {g}`"
                )));
            }
            std::thread::sleep(ROUND);
        }
    }

    /// `group wait G --state S`: `online` (production here), `offline`
    /// (not production here), `in-sync` (every replica up to date, asked
    /// of the production node), `consistent` (no replica inconsistent).
    pub fn group_wait(&self, g: &str, state: &str, timeout_ms: Option<u64>) -> RResult<Value> {
        if !matches!(state, "online" | "offline" | "in-sync" | "consistent") {
            return Err(ReplError::Invalid(format!(
                "unknown group state {state:?}: online, offline, in-sync or consistent"
            )));
        }
        let deadline =
            Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(60_000).min(60_000));
        loop {
            let mine = self.node_view(g)?;
            let prod = self.production_view(&mine, g);
            let reps = prod
                .as_ref()
                .map(|p| p.replicas.clone())
                .unwrap_or_default();
            let reached = match state {
                "online" => mine.role == ReplRole::Primary,
                "offline" => mine.role == ReplRole::Secondary,
                "in-sync" => !reps.is_empty() && reps.iter().all(|r| r.state == "up-to-date"),
                _ => !reps.is_empty() && reps.iter().all(|r| r.state != "inconsistent"),
            };
            if reached || Instant::now() >= deadline {
                let mut v = self.group_status(g)?;
                v["reached"] = json!(reached);
                return Ok(v);
            }
            std::thread::sleep(ROUND);
        }
    }

    /// `group policy G ...`: change the policy here and tell every member
    /// (best effort; `group verify` shows a node that missed it).
    pub fn group_set_policy(&self, o: PolicyOptions) -> RResult<Value> {
        self.group_sets(&o.group)?;
        let mut p = self.group_policy(&o.group);
        if let Some(v) = o.preferred {
            p.preferred = v;
        }
        if let Some(v) = o.max_lag_on_failover_bytes {
            p.max_lag_on_failover_bytes = v;
        }
        if let Some(v) = o.auto_failover {
            p.auto_failover = v;
        }
        if let Some(v) = o.auto_accept_data_loss {
            p.auto_accept_data_loss = v;
        }
        if let Some(v) = o.offline_exports {
            p.offline_exports = v;
        }
        if let Some(v) = o.fence {
            p.fence = v;
        }
        self.store_policy(&p)?;
        let mut notes = Vec::new();
        for (node, addr) in self.group_peers(&o.group) {
            if let Err(e) = peer::request(
                &self.ctx,
                &addr,
                &PeerRequest::GroupPolicy { policy: p.policy() },
            ) {
                notes.push(format!("node {node} did not take the policy: {e}"));
            }
        }
        let mut v = self.group_status(&o.group)?;
        v["note"] = json!(notes.join("; "));
        Ok(v)
    }

    pub(super) fn store_policy(&self, p: &GroupConfig) -> RResult<()> {
        let p = p.clone();
        self.commit(
            |rc| {
                rc.groups.retain(|x| x.name != p.name);
                rc.groups.push(p.clone());
                Ok(())
            },
            || {},
        )
    }

    /// Every other node of group `g` this node knows, with its address.
    fn group_peers(&self, g: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for c in self.group_entries(g) {
            let mut add = |n: &str, a: &str| {
                if !n.is_empty() && !out.iter().any(|(x, _)| x == n) {
                    out.push((n.to_owned(), a.to_owned()));
                }
            };
            add(&c.peer_node, &c.peer);
            for m in &c.members {
                add(&m.node, &m.addr);
            }
        }
        out
    }

    /// `group verify G`: the group's definition (its sets, their volumes
    /// and modes, its policy) as every member sees it, and what differs.
    /// `group verify`: the definition here against every member's and,
    /// in a cluster, against the one its production node keeps in etcd
    /// (`shared`: `Ok(None)` when etcd has none yet, `Err` when etcd does
    /// not answer).
    pub fn group_verify(
        &self,
        g: &str,
        shared: Option<Result<Option<Value>, String>>,
    ) -> RResult<Value> {
        let mine = self.group_definition(g)?;
        let mut nodes = vec![json!({"node": self.ctx.name(), "definition": mine})];
        let mut problems = Vec::new();
        let differences = |who: &str, d: &Value, problems: &mut Vec<String>| {
            for field in ["sets", "policy"] {
                if d[field] != mine[field] {
                    problems.push(format!(
                        "{who} has the {field} {} where this node has {}",
                        d[field], mine[field]
                    ));
                }
            }
        };
        for (node, addr) in self.group_peers(g) {
            match peer::request_within(
                &self.ctx,
                &addr,
                &PeerRequest::GroupDefinition {
                    group: g.to_owned(),
                },
                QUERY_TIMEOUT,
            ) {
                Ok((d, _)) => {
                    differences(&format!("node {node}"), &d, &mut problems);
                    nodes.push(json!({"node": node, "definition": d}));
                }
                Err(e) => {
                    problems.push(format!("node {node} does not answer: {e}"));
                    nodes.push(json!({"node": node, "error": e}));
                }
            }
        }
        let etcd = match shared {
            None => Value::Null,
            Some(Ok(Some(d))) => {
                differences("etcd", &d, &mut problems);
                json!({"definition": d})
            }
            Some(Ok(None)) => {
                problems.push(format!(
                    "etcd has no definition of group {g} yet (its production node writes it)"
                ));
                json!({"definition": null})
            }
            Some(Err(e)) => {
                problems.push(format!("etcd does not answer: {e}"));
                json!({"error": e})
            }
        };
        Ok(json!({
            "group": g,
            "consistent": problems.is_empty(),
            "problems": problems,
            "nodes": nodes,
            "etcd": etcd,
        }))
    }

    /// What must be the same on every member: each set's name and mode
    /// (volumes may be named differently per node), and the policy.
    pub fn group_definition(&self, g: &str) -> RResult<Value> {
        let mut sets: Vec<Value> = self
            .group_sets(g)?
            .iter()
            .map(|c| json!({"name": c.name, "group": c.group}))
            .collect();
        sets.sort_by_key(|s| s["name"].as_str().unwrap_or_default().to_owned());
        Ok(json!({"sets": sets, "policy": self.group_policy(g).policy()}))
    }

    /// Make the NBD exports of group `g`'s volumes read-write again
    /// (`writable`, after `offline` made them read-only) or take writes
    /// away from them (offline, by policy).
    fn exports_writable(&self, g: &str, writable: bool) -> RResult<()> {
        let host = self.host()?;
        let mut policy = self.group_policy(g);
        let volumes: Vec<String> = self.group_sets(g)?.into_iter().map(|c| c.volume).collect();
        if writable {
            if policy.fenced_exports.is_empty() {
                return Ok(());
            }
            for (vol, listen) in std::mem::take(&mut policy.fenced_exports) {
                // Read-only now (or removed, by policy): serve it writable.
                if !host.nbd_exports(&vol, true).is_empty() {
                    host.export_remove(&vol)?;
                }
                if let Err(e) = host.export_nbd(&vol, &listen, false) {
                    log::warn!("group {g}: restoring the export of {vol} on {listen}: {e}");
                }
            }
            return self.store_policy(&policy);
        }
        if policy.offline_exports == OfflineExports::Keep {
            return Ok(());
        }
        for vol in volumes {
            for listen in host.nbd_exports(&vol, false) {
                host.export_remove(&vol)?;
                if policy.offline_exports == OfflineExports::ReadOnly {
                    host.export_nbd(&vol, &listen, true)?;
                }
                policy.fenced_exports.push((vol.clone(), listen));
            }
        }
        self.store_policy(&policy)
    }
}

/// What the cluster agent (`src/cluster/`) uses.
impl Replication {
    /// Every group on this node (a consistency group, or a set without
    /// one), with this node's view of it.
    pub fn groups_here(&self) -> Vec<(String, NodeView)> {
        let mut names: Vec<String> = self
            .config()
            .map(|rc| rc.sets.iter().map(|c| group_name(c).to_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|g| self.node_view(&g).ok().map(|v| (g, v)))
            .collect()
    }

    /// The other nodes of group `g` this node knows.
    pub fn group_members(&self, g: &str) -> Vec<String> {
        self.group_peers(g).into_iter().map(|(n, _)| n).collect()
    }

    /// Fence (or unfence) every leg of group `g`'s sets here: fenced
    /// writes fail with EIO.
    pub fn fence_group(&self, g: &str, on: bool) {
        let block = self.group_policy(g).fence == super::config::FenceMode::Block;
        for c in self.group_sets(g).unwrap_or_default() {
            for l in self.legs(&c.name) {
                l.fence_blocks.store(block, Ordering::SeqCst);
                l.fenced.store(on, Ordering::SeqCst);
            }
        }
        log::warn!(
            "group {g}: {}",
            if on && block {
                "fenced (writes wait)"
            } else if on {
                "fenced (writes fail)"
            } else {
                "unfenced"
            }
        );
    }

    /// Ask every other node of the groups `groups` whether it reaches
    /// etcd: for each group, one entry per node of it that answered. Each
    /// node is asked once, all at once, and no later than `within` in all:
    /// the caller must decide before its lease can expire. A node still
    /// being asked then counts as silent (its thread ends by its own
    /// timeouts).
    pub fn probe_peers(&self, groups: &[String], within: Duration) -> HashMap<String, Vec<bool>> {
        let deadline = Instant::now() + within;
        let members: Vec<(String, Vec<(String, String)>)> = groups
            .iter()
            .map(|g| (g.clone(), self.group_peers(g)))
            .collect();
        let mut addrs: Vec<String> = members
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, a)| a.clone()))
            .collect();
        addrs.sort();
        addrs.dedup();
        let (tx, rx) = std::sync::mpsc::channel();
        for addr in addrs {
            let (ctx, tx) = (self.ctx.clone(), tx.clone());
            let _ = std::thread::Builder::new()
                .name("cluster-probe".into())
                .spawn(move || {
                    let r =
                        peer::request_within(&ctx, &addr, &PeerRequest::ClusterProbe {}, within)
                            .ok()
                            .map(|(v, _)| v["etcd_ok"] == true);
                    let _ = tx.send((addr, r));
                });
        }
        drop(tx);
        let mut answers: HashMap<String, bool> = HashMap::new();
        while let Ok((addr, r)) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(ok) = r {
                answers.insert(addr, ok);
            }
        }
        members
            .into_iter()
            .map(|(g, peers)| {
                let said = peers
                    .iter()
                    .filter_map(|(_, a)| answers.get(a).copied())
                    .collect();
                (g, said)
            })
            .collect()
    }

    /// Whether every set of group `g` here replicates to `node` (its legs
    /// toward it are in sync and connected).
    pub fn peer_in_sync(&self, g: &str, node: &str) -> bool {
        let sets = self.group_sets(g).unwrap_or_default();
        !sets.is_empty()
            && sets.iter().all(|c| {
                self.legs(&c.name)
                    .iter()
                    .any(|l| l.peer_node == node && l.state() == SetState::Replicating)
            })
    }

    /// The cluster agent tells the sync-mode legs how to record a peer's
    /// copy as outdated in etcd.
    pub fn set_outdater(&self, f: super::Outdater) {
        let _ = self.outdater.set(f);
    }

    /// The cluster agent tells the service how to answer `cluster_probe`.
    pub fn set_cluster_probe(&self, f: Box<dyn Fn() -> Option<bool> + Send + Sync>) {
        let _ = self.cluster_probe.set(f);
    }

    pub(super) fn etcd_ok(&self) -> Option<bool> {
        self.cluster_probe.get().and_then(|f| f())
    }

    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        self.config().ok().and_then(|rc| rc.cluster)
    }

    pub fn set_cluster_config(&self, c: Option<ClusterConfig>) -> RResult<()> {
        self.commit(
            |rc| {
                rc.cluster = c.clone();
                Ok(())
            },
            || {},
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(role: ReplRole, node: &str, production: &str) -> NodeView {
        NodeView {
            node: node.into(),
            role,
            production: production.into(),
            sets: vec![SetView {
                name: "s".into(),
                volume: "v".into(),
                state: "target".into(),
                mode: super::super::Mode::Async,
                safety_snapshot: None,
                connected: false,
                lag_bytes: 0,
                lag_ms: 0,
                last_contact_unix_ms: 0,
            }],
            replicas: Vec::new(),
        }
    }

    #[test]
    fn online_decisions_follow_the_state() {
        let policy = GroupConfig::new("g");
        let o = OnlineOptions::default();
        // Production here: nothing to do.
        let p = view(ReplRole::Primary, "a", "a");
        assert_eq!(decide_online(&p, Some(&p), &policy, &o), Plan::Nothing);
        // The primary answers and we are up to date: a swap.
        let mut b = view(ReplRole::Secondary, "b", "a");
        let mut pa = view(ReplRole::Primary, "a", "a");
        pa.replicas.push(Replica {
            node: "b".into(),
            state: "up-to-date".into(),
            lag_bytes: 0,
            lag_ms: 0,
            out_of_sync_bytes: 0,
        });
        assert_eq!(
            decide_online(&b, Some(&pa), &policy, &o),
            Plan::Swap { from: "a".into() }
        );
        // Gone, nothing at risk: take over.
        assert!(matches!(
            decide_online(&b, None, &policy, &o),
            Plan::Takeover { .. }
        ));
        // Gone with more lag than the policy allows: refuse, unless told.
        b.sets[0].lag_bytes = 10 << 20;
        assert!(matches!(
            decide_online(&b, None, &policy, &o),
            Plan::Refuse { .. }
        ));
        let yes = OnlineOptions {
            accept_data_loss: true,
            ..Default::default()
        };
        assert!(matches!(
            decide_online(&b, None, &policy, &yes),
            Plan::Takeover { .. }
        ));
        // Cut mid-resync: refuse, or recover with --use-inconsistent.
        b.sets[0].lag_bytes = 0;
        b.sets[0].safety_snapshot = Some("s-safety".into());
        match decide_online(&b, None, &policy, &o) {
            Plan::Refuse { reason } => assert!(reason.contains("potential data loss")),
            p => panic!("{p:?}"),
        }
        let inc = OnlineOptions {
            use_inconsistent: true,
            ..Default::default()
        };
        assert!(matches!(
            decide_online(&b, None, &policy, &inc),
            Plan::RecoverThenTakeover { .. }
        ));
    }
}
