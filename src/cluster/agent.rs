//! [`Cluster`]: the agent's handle, and the agent loop itself.

pub use crate::services::repl::config::ClusterConfig;
use crate::services::repl::config::{GroupConfig, ReplRole};
use crate::services::repl::{OnlineOptions, RResult, ReplError, Replication};
use crate::services::Note;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the agent looks at etcd and at its groups.
const TICK: Duration = Duration::from_millis(500);
/// Every etcd request gives up after this long (a renewal that fails is
/// retried on a new connection at once: with the default TTL there are
/// 6.7 s before the watchdog fences).
const ETCD_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer's question "do you reach etcd?" is answered within this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The watchdog looks at the lease this often.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// The voting window: candidate number k (by priority, from 0) waits k
/// steps after it saw the owner's lease go, so the best one is first and
/// a later one only tries when the better ones did not take the group.
const VOTE_STEP: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the agent shares with its handle and its watchdog.
struct Shared {
    stop: AtomicBool,
    /// When the lease was last renewed (unix ms; 0: never).
    renewed_ms: AtomicU64,
    ttl_ms: AtomicU64,
    /// Groups fenced because the lease could not be renewed.
    fenced: Mutex<HashSet<String>>,
    /// The last thing the agent could not do, for `cluster status`.
    last_error: Mutex<Option<String>>,
    lease: AtomicU64,
    /// Groups for which this node marked a secondary outdated: the agent
    /// looks at their marks every tick (not once per renewal) until none
    /// is left, so a copy in sync again is a candidate again soon.
    marked: Mutex<HashSet<String>>,
}

/// The cluster agent of one daemon.
pub struct Cluster {
    repl: Arc<Replication>,
    running: Mutex<Option<Running>>,
    /// An agent runs (read without the lock by writes in logging mode).
    active: AtomicBool,
}

/// A started agent: its configuration, shared state and threads.
struct Running {
    cfg: ClusterConfig,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Cluster {
    pub fn new(repl: Arc<Replication>) -> Arc<Cluster> {
        Arc::new(Cluster {
            repl,
            running: Mutex::new(None),
            active: AtomicBool::new(false),
        })
    }

    /// Start the agent for `cfg` (at daemon start, or after `join`).
    pub fn start(&self, cfg: ClusterConfig) {
        self.stop();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            renewed_ms: AtomicU64::new(0),
            ttl_ms: AtomicU64::new(cfg.ttl_s * 1000),
            fenced: Mutex::new(HashSet::new()),
            last_error: Mutex::new(None),
            lease: AtomicU64::new(0),
            marked: Mutex::new(HashSet::new()),
        });
        let mut threads = Vec::new();
        {
            let (repl, shared, cfg) = (self.repl.clone(), shared.clone(), cfg.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-agent".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a tokio runtime for the cluster agent");
                        rt.block_on(Agent::new(repl, shared, cfg).run());
                    })
                    .expect("spawn the cluster agent"),
            );
        }
        {
            let (repl, shared) = (self.repl.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cluster-fence".into())
                    .spawn(move || watchdog(&repl, &shared))
                    .expect("spawn the fence watchdog"),
            );
        }
        *self.running.lock() = Some(Running {
            cfg,
            shared,
            threads,
        });
        self.active.store(true, Ordering::SeqCst);
    }

    /// Stop the agent (its lease expires by itself unless `leave` revoked it).
    pub fn stop(&self) {
        self.active.store(false, Ordering::SeqCst);
        let r = self.running.lock().take();
        if let Some(Running {
            shared, threads, ..
        }) = r
        {
            shared.stop.store(true, Ordering::SeqCst);
            for t in threads {
                let _ = t.join();
            }
            for g in shared.fenced.lock().drain() {
                self.repl.fence_group(&g, false);
            }
        }
    }

    /// For a peer's `cluster_probe`: whether this node reaches etcd right
    /// now (one read, at most `PROBE_TIMEOUT`), none when it is in no
    /// cluster. Asked only by a production node whose renewals fail.
    pub fn probe(&self) -> Option<bool> {
        let cfg = self.running.lock().as_ref().map(|r| r.cfg.clone())?;
        let r = block_on(async {
            let f = async {
                let mut c = connect(&cfg.etcd).await?;
                timed(c.get(prefix(&cfg.name), Some(GetOptions::new().with_count_only()))).await
            };
            tokio::time::timeout(PROBE_TIMEOUT, f)
                .await
                .map_err(|_| "timed out".to_owned())?
        });
        Some(r.is_ok())
    }

    /// Whether this node renewed its lease recently (half a TTL): what a
    /// peer asks before it fences itself.
    pub fn etcd_ok(&self) -> bool {
        self.running
            .lock()
            .as_ref()
            .is_some_and(|Running { shared: s, .. }| {
                now_ms().saturating_sub(s.renewed_ms.load(Ordering::SeqCst))
                    < s.ttl_ms.load(Ordering::SeqCst) / 2
            })
    }

    /// `cluster join`: persist the configuration and start the agent.
    pub fn join(&self, cfg: ClusterConfig) -> RResult<Value> {
        if cfg.etcd.is_empty() {
            return Err(ReplError::Invalid(
                "cluster join: give at least one etcd endpoint (--etcd http://HOST:2379)".into(),
            ));
        }
        crate::control::validate_name(&cfg.name)
            .map_err(|e| ReplError::Invalid(format!("cluster name: {e}")))?;
        if !(3..=300).contains(&cfg.ttl_s) {
            return Err(ReplError::Invalid(format!(
                "cluster join: a lease TTL of {} s; use 3 to 300",
                cfg.ttl_s
            )));
        }
        // Reach etcd before anything is stored (a few tries: a cluster
        // that just started may still be electing its leader).
        block_on(async {
            let mut last = String::new();
            for _ in 0..5 {
                let r = async {
                    let mut c = connect(&cfg.etcd).await?;
                    timed(c.get(prefix(&cfg.name), Some(GetOptions::new().with_count_only()))).await
                }
                .await;
                match r {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(last)
        })
        .map_err(|e| ReplError::Peer(format!("cluster join: etcd {}: {e}", cfg.etcd.join(","))))?;
        self.repl.set_cluster_config(Some(cfg.clone()))?;
        self.start(cfg.clone());
        self.repl.publish(
            "cluster.joined",
            &cfg.name,
            Note::new(cfg.etcd.join(","))
                .field("etcd", &cfg.etcd)
                .field("ttl_s", cfg.ttl_s),
        );
        self.status()
    }

    /// `cluster leave`: hand every production group to a replica first,
    /// then stop, revoke the lease and forget the configuration.
    pub fn leave(&self) -> RResult<Value> {
        let Some((cfg, shared)) = self
            .running
            .lock()
            .as_ref()
            .map(|r| (r.cfg.clone(), r.shared.clone()))
        else {
            // Leaving twice is done already (scripts repeat operations).
            return Ok(json!({"cluster": null, "note": "this node is in no cluster"}));
        };
        let mut notes = Vec::new();
        for (g, v) in self.repl.groups_here() {
            if v.role == ReplRole::Primary {
                if let Err(e) = self.repl.group_swap(&g, None) {
                    notes.push(format!("group {g} stays production here: {e}"));
                }
            }
        }
        let lease = shared.lease.load(Ordering::SeqCst) as i64;
        self.stop();
        if lease != 0 {
            let _ = block_on(async {
                let mut c = connect(&cfg.etcd).await?;
                timed(c.lease_revoke(lease)).await?;
                Ok::<(), String>(())
            });
        }
        self.repl.set_cluster_config(None)?;
        self.repl.publish(
            "cluster.left",
            &cfg.name,
            Note::new(notes.join("; ")).field("notes", &notes),
        );
        Ok(json!({"cluster": cfg.name, "note": notes.join("; ")}))
    }

    /// `cluster priority --bias N`.
    pub fn set_bias(&self, bias: i64) -> RResult<Value> {
        let Some(mut cfg) = self.repl.cluster_config() else {
            return Err(ReplError::Invalid("this node is in no cluster".into()));
        };
        cfg.priority_bias = bias;
        self.repl.set_cluster_config(Some(cfg.clone()))?;
        self.start(cfg);
        self.status()
    }

    /// For a sync-mode leg about to acknowledge a write without `peer`:
    /// record in etcd that `peer`'s copy of group `g` is outdated, only
    /// while this node holds the group's lock with its current lease (one
    /// transaction). `None`: no agent runs, or the group does not fail
    /// over by itself (no candidate would take it: nothing to fence).
    pub fn outdate(&self, g: &str, peer: &str) -> Option<Result<(), String>> {
        if !self.active.load(Ordering::SeqCst) {
            return None;
        }
        let (cfg, shared) = self
            .running
            .lock()
            .as_ref()
            .map(|r| (r.cfg.clone(), r.shared.clone()))?;
        let lease = shared.lease.load(Ordering::SeqCst) as i64;
        if !self.repl.group_policy(g).auto_failover {
            return None;
        }
        let me = self.repl.node_name();
        Some(block_on(async {
            let mut c = connect(&cfg.etcd).await?;
            let owner = format!("{}groups/{g}/owner", prefix(&cfg.name));
            let out = format!("{}groups/{g}/outdated/{peer}", prefix(&cfg.name));
            let mark = json!({"by": me, "since_unix_ms": now_ms()}).to_string();
            let txn = Txn::new()
                .when([Compare::lease(owner, CompareOp::Equal, lease)])
                .and_then([TxnOp::put(out, mark, None)]);
            if timed(c.txn(txn)).await?.succeeded() {
                shared.marked.lock().insert(g.to_owned());
                Ok(())
            } else {
                Err(format!(
                    "this node does not hold group {g}'s lock with lease {lease:x}"
                ))
            }
        }))
    }

    /// Group `g`'s definition as etcd has it, for `group verify`; `None`
    /// when this node is in no cluster.
    pub fn shared_definition(&self, g: &str) -> Option<Result<Option<Value>, String>> {
        let cfg = self.repl.cluster_config()?;
        Some(Agent::shared_definition_in_etcd(&cfg, g))
    }

    /// `cluster status`: members with their leases and load keys, groups
    /// with their owners, as etcd has them; and this agent's state.
    pub fn status(&self) -> RResult<Value> {
        let Some(cfg) = self.repl.cluster_config() else {
            return Ok(json!({"cluster": null}));
        };
        let (fenced, last_error, renewed) = match self.running.lock().as_ref() {
            Some(Running { shared: s, .. }) => (
                s.fenced.lock().iter().cloned().collect::<Vec<_>>(),
                s.last_error.lock().clone(),
                s.renewed_ms.load(Ordering::SeqCst),
            ),
            None => (Vec::new(), None, 0),
        };
        let remote = block_on(async {
            let mut c = connect(&cfg.etcd).await?;
            let r = timed(c.get(prefix(&cfg.name), Some(GetOptions::new().with_prefix()))).await?;
            let mut nodes = Vec::new();
            let mut groups: HashMap<String, Value> = HashMap::new();
            for kv in r.kvs() {
                let key = kv.key_str().unwrap_or_default();
                let rest = key.strip_prefix(&prefix(&cfg.name)).unwrap_or(key);
                let val: Value = serde_json::from_slice(kv.value()).unwrap_or(Value::Null);
                if let Some(n) = rest.strip_prefix("nodes/") {
                    let mut v = val;
                    v["lease"] = json!(kv.lease());
                    v["node"] = json!(n);
                    nodes.push(v);
                } else if let Some(g) = rest.strip_prefix("groups/") {
                    if let Some((name, field)) = g.split_once('/') {
                        let e = groups
                            .entry(name.to_owned())
                            .or_insert(json!({"group": name}));
                        if let Some(n) = field.strip_prefix("candidates/") {
                            let mut v = val;
                            v["node"] = json!(n);
                            match e["candidates"].as_array_mut() {
                                Some(list) => list.push(v),
                                None => e["candidates"] = json!([v]),
                            }
                            continue;
                        }
                        if let Some(n) = field.strip_prefix("outdated/") {
                            if !e["outdated"].is_object() {
                                e["outdated"] = json!({});
                            }
                            e["outdated"][n] = val;
                            continue;
                        }
                        e[field] = if field == "owner" {
                            let mut o = val.clone();
                            o["lease"] = json!(kv.lease());
                            o
                        } else {
                            val
                        };
                    }
                }
            }
            let mut groups: Vec<Value> = groups.into_values().collect();
            groups.sort_by_key(|g| g["group"].as_str().unwrap_or_default().to_owned());
            Ok::<_, String>((nodes, groups))
        });
        let (nodes, groups, etcd_error) = match remote {
            Ok((n, g)) => (n, g, None),
            Err(e) => (Vec::new(), Vec::new(), Some(e)),
        };
        Ok(json!({
            "cluster": cfg.name,
            "etcd": cfg.etcd,
            "ttl_s": cfg.ttl_s,
            "priority_bias": cfg.priority_bias,
            "node": self.repl.node_name(),
            "lease_renewed_unix_ms": renewed,
            "etcd_reachable": etcd_error.is_none(),
            "etcd_error": etcd_error,
            "fenced_groups": fenced,
            "last_error": last_error,
            "members": nodes,
            "groups": groups,
        }))
    }
}

fn prefix(cluster: &str) -> String {
    format!("/umbra/{cluster}/")
}

/// Run `f` on a runtime of its own (admin operations on the calling
/// thread; the agent has its own runtime).
fn block_on<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

/// A client on the first endpoint, from the one that worked last, that
/// answers a read. (One client over all endpoints keeps sending requests
/// to a dead member; one endpoint at a time moves on at once.)
async fn connect(endpoints: &[String]) -> Result<Client, String> {
    static LAST_GOOD: AtomicU64 = AtomicU64::new(0);
    let n = endpoints.len().max(1);
    let start = LAST_GOOD.load(Ordering::Relaxed) as usize;
    let mut errors = Vec::new();
    for i in 0..n {
        let k = (start + i) % n;
        let Some(ep) = endpoints.get(k) else { break };
        let opts = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT);
        let r = async {
            let mut c = tokio::time::timeout(ETCD_TIMEOUT, Client::connect([ep], Some(opts)))
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            timed(c.get("/umbra/", Some(GetOptions::new().with_count_only()))).await?;
            Ok::<Client, String>(c)
        }
        .await;
        match r {
            Ok(c) => {
                LAST_GOOD.store(k as u64, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => errors.push(format!("{ep}: {e}")),
        }
    }
    Err(errors.join("; "))
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(ETCD_TIMEOUT, f)
        .await
        .map_err(|_| "etcd did not answer in time".to_owned())?
        .map_err(|e| e.to_string())
}

/// This node's priority key: 1-minute load average (hundredths) plus ten
/// per production group, plus the administrator's bias. Lower wins.
fn priority(primaries: usize, bias: i64) -> i64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0);
    (load * 100.0) as i64 + 10 * primaries as i64 + bias
}

/// A candidate's state for a group whose owner is gone.
struct Vacancy {
    failed: String,
    seen: Instant,
}

struct Agent {
    repl: Arc<Replication>,
    shared: Arc<Shared>,
    cfg: ClusterConfig,
    me: String,
    /// Groups whose owner key vanished, since when, and whose it was.
    vacant: HashMap<String, Vacancy>,
    /// Groups this node refused for a failed owner (it drops out).
    refused: HashSet<(String, String)>,
    /// Group operations running on threads of their own.
    busy: Arc<Mutex<HashSet<String>>>,
    etcd_down_said: bool,
    /// The next failure reconnects without waiting (reset by a session
    /// that got its lease).
    retry_now: bool,
    /// Groups whose lock this node holds: with which lease, checked when.
    held: HashMap<String, (i64, Instant)>,
    /// The policies and definitions this node last wrote to etcd.
    shared_policies: HashMap<String, (String, String)>,
    /// Groups this node stands as a candidate for: with which lease, since.
    stood: HashMap<String, (i64, Instant)>,
}

impl Agent {
    fn new(repl: Arc<Replication>, shared: Arc<Shared>, cfg: ClusterConfig) -> Agent {
        let me = repl.node_name();
        Agent {
            repl,
            shared,
            cfg,
            me,
            vacant: HashMap::new(),
            refused: HashSet::new(),
            busy: Arc::new(Mutex::new(HashSet::new())),
            etcd_down_said: false,
            retry_now: true,
            held: HashMap::new(),
            shared_policies: HashMap::new(),
            stood: HashMap::new(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", prefix(&self.cfg.name))
    }

    fn error(&self, e: String) {
        log::warn!("cluster {}: {e}", self.cfg.name);
        *self.shared.last_error.lock() = Some(e);
    }

    async fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            match self.session().await {
                Ok(()) => return,
                // Lost the connection: try another endpoint at once, once.
                Err(e) if !self.etcd_down_said && self.retry_now => {
                    self.retry_now = false;
                    log::info!("cluster {}: etcd: {e}; reconnecting", self.cfg.name);
                    continue;
                }
                Err(e) => {
                    self.error(e.clone());
                    if !self.etcd_down_said {
                        self.etcd_down_said = true;
                        self.repl.publish(
                            "cluster.etcd_unreachable",
                            &self.cfg.name,
                            Note::new(e.clone()).field("why", e),
                        );
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// One connection to etcd with one lease, until it fails or the agent
    /// stops (then the lease is left to expire, or revoked by `leave`).
    async fn session(&mut self) -> Result<(), String> {
        let mut c = connect(&self.cfg.etcd).await?;
        let ttl = self.cfg.ttl_s as i64;
        // A new connection keeps the lease it had while that is alive (an
        // etcd member went away, not this node): the keys bound to it, the
        // group locks above all, stay.
        let old = self.shared.lease.load(Ordering::SeqCst) as i64;
        let mut kept = None;
        if old != 0 {
            // etcd answers an expired lease's keep-alive with an error
            // ("lease not found"): that lease is gone for good, so a new
            // one is granted below (a lost connection fails the grant too).
            let renewed = async {
                let (mut k, mut st) = timed(c.lease_keep_alive(old)).await?;
                timed(k.keep_alive()).await?;
                let alive = timed(st.message()).await?.is_some_and(|r| r.ttl() > 0);
                Ok::<_, String>(alive.then_some((k, st)))
            }
            .await;
            match renewed {
                Ok(k) => kept = k,
                Err(e) => log::info!(
                    "cluster {}: lease {old:x} not renewed ({e}); asking for a new one",
                    self.cfg.name
                ),
            }
        }
        let (lease, mut keeper, mut stream) = match kept {
            Some((k, st)) => (old, k, st),
            None => {
                let id = timed(c.lease_grant(ttl, None)).await?.id();
                let (k, st) = timed(c.lease_keep_alive(id)).await?;
                (id, k, st)
            }
        };
        self.shared.lease.store(lease as u64, Ordering::SeqCst);
        self.shared.renewed_ms.store(now_ms(), Ordering::SeqCst);
        self.retry_now = true;
        if self.etcd_down_said {
            self.etcd_down_said = false;
            self.repl.publish(
                "cluster.etcd_reachable",
                &self.cfg.name,
                Note::new(format!("lease {lease:x}")).field("lease", format!("{lease:x}")),
            );
        }
        let renew_every = Duration::from_millis(self.cfg.ttl_s * 1000 / 3);
        let mut last_renew = Instant::now();
        let mut last_publish: Option<Instant> = None;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if last_renew.elapsed() >= renew_every {
                timed(keeper.keep_alive()).await?;
                let r = timed(stream.message()).await?;
                match r {
                    Some(r) if r.ttl() > 0 => {
                        self.shared.renewed_ms.store(now_ms(), Ordering::SeqCst);
                        last_renew = Instant::now();
                    }
                    _ => return Err(format!("lease {lease:x} expired")),
                }
            }
            let views = self.repl.groups_here();
            if last_publish.is_none_or(|t| t.elapsed() >= renew_every) {
                let primaries = views
                    .iter()
                    .filter(|(_, v)| v.role == ReplRole::Primary)
                    .count();
                let me = json!({
                    "listen": self.repl.listen_addr(),
                    "load_priority": priority(primaries, self.cfg.priority_bias),
                    "primary_groups": primaries,
                    "bias": self.cfg.priority_bias,
                    "updated_unix_ms": now_ms(),
                });
                timed(c.put(
                    self.key(&format!("nodes/{}", self.me)),
                    me.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                ))
                .await?;
                last_publish = Some(Instant::now());
            }
            // Every group's keys in one read per tick (candidates look at
            // them; a vacancy costs more requests, a quiet tick one).
            let groups: HashMap<String, Vec<u8>> =
                if views.iter().any(|(_, v)| v.role == ReplRole::Secondary) {
                    timed(c.get(self.key("groups/"), Some(GetOptions::new().with_prefix())))
                        .await?
                        .kvs()
                        .iter()
                        .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value().to_vec())))
                        .collect()
                } else {
                    HashMap::new()
                };
            for (g, v) in &views {
                if self.busy.lock().contains(g) {
                    continue;
                }
                match v.role {
                    // The lock is bound to the lease: once it is held,
                    // checking it once per renewal is enough.
                    ReplRole::Primary => {
                        self.withdraw(&mut c, g).await?;
                        let due = self
                            .held
                            .get(g)
                            .is_none_or(|(l, t)| *l != lease || t.elapsed() >= renew_every);
                        if due {
                            if self.hold(&mut c, lease, g).await? {
                                self.held.insert(g.clone(), (lease, Instant::now()));
                                self.share_definition(&mut c, g).await?;
                                if self.clear_outdated(&mut c, g).await? > 0 {
                                    self.shared.marked.lock().insert(g.clone());
                                }
                            } else {
                                self.held.remove(g);
                            }
                        } else if self.shared.marked.lock().contains(g)
                            && self.clear_outdated(&mut c, g).await? == 0
                        {
                            self.shared.marked.lock().remove(g);
                        }
                    }
                    ReplRole::Secondary => {
                        self.held.remove(g);
                        self.release_if_mine(&mut c, lease, g, &groups).await?;
                        let outdated = groups
                            .contains_key(&self.key(&format!("groups/{g}/outdated/{}", self.me)));
                        self.stand(&mut c, lease, g, v, outdated).await?;
                        self.candidate(&mut c, lease, g, &groups).await?
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// A secondary here tells etcd what it could take over with
    /// (`groups/G/candidates/NODE`, bound to the lease, refreshed once per
    /// renewal): the candidates' list in the shared repository, which
    /// `cluster status` shows. A node that is production withdraws.
    async fn stand(
        &mut self,
        c: &mut Client,
        lease: i64,
        g: &str,
        v: &crate::services::repl::groups::NodeView,
        outdated: bool,
    ) -> Result<(), String> {
        let renew_every = Duration::from_millis(self.cfg.ttl_s * 1000 / 3);
        if self
            .stood
            .get(g)
            .is_some_and(|(l, t)| *l == lease && t.elapsed() < renew_every)
        {
            return Ok(());
        }
        let consistent = !outdated && v.sets.iter().all(|s| s.safety_snapshot.is_none());
        let me = json!({
            "consistent": consistent,
            "outdated": outdated,
            "connected": v.sets.iter().all(|s| s.connected),
            "lag_bytes": v.sets.iter().map(|s| s.lag_bytes).sum::<u64>(),
            "updated_unix_ms": now_ms(),
        });
        timed(c.put(
            self.key(&format!("groups/{g}/candidates/{}", self.me)),
            me.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        ))
        .await?;
        self.stood.insert(g.to_owned(), (lease, Instant::now()));
        Ok(())
    }

    /// Production here: a secondary whose copy was recorded as outdated
    /// and is in sync again is a candidate again. The mark is read before
    /// the leg's state and deleted only if unchanged since, so a mark a
    /// new loss wrote meanwhile stays.
    /// Returns how many marks are left.
    async fn clear_outdated(&mut self, c: &mut Client, g: &str) -> Result<usize, String> {
        let dir = self.key(&format!("groups/{g}/outdated/"));
        let marks = timed(c.get(dir.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let mut left = 0;
        for kv in marks.kvs() {
            let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(&dir)) else {
                continue;
            };
            if !self.repl.peer_in_sync(g, node) {
                left += 1;
                continue;
            }
            let key = kv.key_str().unwrap_or_default().to_owned();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key, None)]);
            if timed(c.txn(txn)).await?.succeeded() {
                self.repl.publish(
                    "cluster.peer_current",
                    g,
                    Note::new(format!("{node} is in sync again: a candidate again"))
                        .field("peer", node),
                );
            } else {
                left += 1;
            }
        }
        Ok(left)
    }

    /// Production here: no longer a candidate for `g`.
    async fn withdraw(&mut self, c: &mut Client, g: &str) -> Result<(), String> {
        if self.stood.remove(g).is_some() {
            timed(c.delete(
                self.key(&format!("groups/{g}/candidates/{}", self.me)),
                None,
            ))
            .await?;
        }
        Ok(())
    }

    /// A secondary here that still holds the group's lock (it handed the
    /// group over in a planned swap, `group swap` or `cluster leave`):
    /// give the lock up, so the new production node can take it.
    async fn release_if_mine(
        &mut self,
        c: &mut Client,
        lease: i64,
        g: &str,
        groups: &HashMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let owner = self.key(&format!("groups/{g}/owner"));
        let mine = groups
            .get(&owner)
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
            .is_some_and(|v| v["node"] == self.me.as_str());
        if !mine {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::lease(owner.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(owner, None)]);
        if timed(c.txn(txn)).await?.succeeded() {
            self.repl.publish(
                "cluster.released",
                g,
                "this node is a secondary now: the lock goes to the production node",
            );
        }
        Ok(())
    }

    /// Production here: hold the group's lock, or find that another node
    /// holds it (this node was away: fence, then join as a secondary).
    /// Returns whether this node holds it.
    async fn hold(&mut self, c: &mut Client, lease: i64, g: &str) -> Result<bool, String> {
        let owner = self.key(&format!("groups/{g}/owner"));
        let last = self.key(&format!("groups/{g}/last_owner"));
        let mine = json!({"node": self.me, "since_unix_ms": now_ms()}).to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(owner.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    owner.clone(),
                    mine,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(last, json!(self.me).to_string(), None),
            ])
            .or_else([TxnOp::get(owner.clone(), None)]);
        let r = timed(c.txn(txn)).await?;
        if r.succeeded() {
            self.repl.publish(
                "cluster.locked",
                g,
                Note::new(format!("production here, lease {lease:x}"))
                    .field("lease", format!("{lease:x}")),
            );
            self.unfence(g);
            return Ok(true);
        }
        let holder = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                    serde_json::from_slice::<Value>(kv.value()).unwrap_or(Value::Null)["node"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                }),
                _ => None,
            })
            .unwrap_or_default();
        if holder == self.me {
            // Ours, maybe bound to a lease that is gone by now: bind it to
            // this one.
            let bound = r.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                _ => None,
            });
            if bound != Some(lease) {
                let mine = json!({"node": self.me, "since_unix_ms": now_ms()}).to_string();
                timed(c.put(owner, mine, Some(PutOptions::new().with_lease(lease)))).await?;
            }
            self.unfence(g);
            return Ok(true);
        }
        // A holder that is our own secondary handed the group to us in a
        // planned swap and has not given its lock up yet: wait for it.
        let follows = {
            let (repl, g, holder) = (self.repl.clone(), g.to_owned(), holder.clone());
            tokio::task::spawn_blocking(move || repl.peer_follows_me(&g, &holder))
                .await
                .unwrap_or(false)
        };
        if follows {
            log::info!(
                "cluster: group {g}: {holder} still holds the lock but follows this node; waiting for it to let go"
            );
            return Ok(false);
        }
        // Another node is production: stop writes here at once, then join
        // it as a secondary (generations decide; split brain stops there).
        self.repl.fence_group(g, true);
        self.shared.fenced.lock().insert(g.to_owned());
        self.repl.publish(
            "cluster.demoted",
            g,
            Note::new(format!(
                "{holder} holds the group's lock: this node joins it"
            ))
            .field("holder", &holder),
        );
        self.spawn_op(g, "join", {
            let (repl, g, shared) = (self.repl.clone(), g.to_owned(), self.shared.clone());
            move || {
                let r = repl.group_demote_to_secondary(&g, Some(60_000)).map(|_| ());
                if r.is_ok() {
                    shared.fenced.lock().remove(&g);
                    repl.fence_group(&g, false);
                }
                r
            }
        });
        Ok(false)
    }

    /// The production node keeps the group's policy and definition (its
    /// sets, its nodes) in etcd, the shared repository every candidate
    /// decides from and `group verify` checks against (written when they
    /// changed).
    async fn share_definition(&mut self, c: &mut Client, g: &str) -> Result<(), String> {
        let p = serde_json::to_string(&self.repl.group_policy(g).policy()).expect("serialisable");
        let mut d = match self.repl.group_definition(g) {
            Ok(d) => d,
            Err(e) => return Err(format!("group {g}: {e}")),
        };
        let mut nodes = self.repl.group_members(g);
        nodes.push(self.me.clone());
        nodes.sort();
        d["nodes"] = json!(nodes);
        let d = d.to_string();
        let both = (p, d);
        if self.shared_policies.get(g) == Some(&both) {
            return Ok(());
        }
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.key(&format!("groups/{g}/policy")),
                both.0.clone(),
                None,
            ),
            TxnOp::put(
                self.key(&format!("groups/{g}/definition")),
                both.1.clone(),
                None,
            ),
        ]);
        timed(c.txn(txn)).await?;
        self.shared_policies.insert(g.to_owned(), both);
        Ok(())
    }

    /// The definition of group `g` its production node keeps in etcd
    /// (`None`: none written yet).
    fn shared_definition_in_etcd(cfg: &ClusterConfig, g: &str) -> Result<Option<Value>, String> {
        block_on(async {
            let mut c = connect(&cfg.etcd).await?;
            let key = format!("{}groups/{g}/definition", prefix(&cfg.name));
            let r = timed(c.get(key, None)).await?;
            Ok(r.kvs()
                .first()
                .map(|kv| serde_json::from_slice(kv.value()).unwrap_or(Value::Null)))
        })
    }

    fn unfence(&self, g: &str) {
        if self.shared.fenced.lock().remove(g) {
            self.repl.fence_group(g, false);
            self.repl
                .publish("cluster.unfenced", g, "the lease is renewed");
        }
    }

    /// A replica here: when the group's owner is gone and the policy fails
    /// over by itself, wait this node's turn, then try the lock.
    async fn candidate(
        &mut self,
        c: &mut Client,
        lease: i64,
        g: &str,
        groups: &HashMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        // The policy in etcd (the production node's) decides; this node's
        // copy only when etcd has none.
        let policy = groups
            .get(&self.key(&format!("groups/{g}/policy")))
            .and_then(|v| serde_json::from_slice::<GroupConfig>(v).ok())
            .unwrap_or_else(|| self.repl.group_policy(g));
        if !policy.auto_failover {
            return Ok(());
        }
        let owner = self.key(&format!("groups/{g}/owner"));
        let last = self.key(&format!("groups/{g}/last_owner"));
        if groups.contains_key(&owner) {
            self.vacant.remove(g);
            return Ok(());
        }
        if groups.contains_key(&self.key(&format!("groups/{g}/outdated/{}", self.me))) {
            // The production node acknowledged writes this copy lacks.
            if self.refused.insert((g.to_owned(), String::new())) {
                self.repl.publish(
                    "cluster.refused",
                    g,
                    Note::new(format!(
                        "{}'s copy is outdated in etcd: not a candidate",
                        self.me
                    ))
                    .field("why", "outdated"),
                );
            }
            return Ok(());
        }
        self.refused.remove(&(g.to_owned(), String::new()));
        let failed: String = groups
            .get(&last)
            .and_then(|v| serde_json::from_slice(v).ok())
            .unwrap_or_default();
        if failed.is_empty() || failed == self.me {
            return Ok(()); // never owned, or ours: nothing to take over
        }
        if self.refused.contains(&(g.to_owned(), failed.clone())) {
            return Ok(());
        }
        let vac = self.vacant.entry(g.to_owned()).or_insert_with(|| {
            log::info!(
                "cluster: group {g} has no owner (last: {failed}); this node is a candidate"
            );
            Vacancy {
                failed: failed.clone(),
                seen: Instant::now(),
            }
        });
        if vac.failed != failed {
            *vac = Vacancy {
                failed: failed.clone(),
                seen: Instant::now(),
            };
        }
        let waited = vac.seen.elapsed();
        // This node's rank among the live candidates (lower key first).
        let nodes = timed(c.get(self.key("nodes/"), Some(GetOptions::new().with_prefix()))).await?;
        let members: HashSet<String> = self.repl.group_members(g).into_iter().collect();
        let mut keys: Vec<(i64, String)> = nodes
            .kvs()
            .iter()
            .filter_map(|kv| {
                let n = kv.key_str().ok()?.rsplit('/').next()?.to_owned();
                let val: Value = serde_json::from_slice(kv.value()).ok()?;
                (n == self.me || members.contains(&n))
                    .then(|| (val["load_priority"].as_i64().unwrap_or(i64::MAX), n))
            })
            .collect();
        keys.sort();
        let rank = keys
            .iter()
            .position(|(_, n)| *n == self.me)
            .unwrap_or(keys.len());
        if waited < VOTE_STEP * rank as u32 {
            return Ok(());
        }
        // The lock, only if it is still free and the failed node is still
        // the last owner (a late candidate drops out here).
        let mine = json!({"node": self.me, "since_unix_ms": now_ms()}).to_string();
        let txn = Txn::new()
            .when([
                Compare::create_revision(owner.clone(), CompareOp::Equal, 0),
                Compare::value(last.clone(), CompareOp::Equal, json!(failed).to_string()),
            ])
            .and_then([
                TxnOp::put(
                    owner.clone(),
                    mine,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(last.clone(), json!(self.me).to_string(), None),
            ]);
        if !timed(c.txn(txn)).await?.succeeded() {
            log::info!("cluster: group {g}: another candidate took the lock first (rank {rank})");
            return Ok(()); // another candidate was first
        }
        self.vacant.remove(g);
        self.repl.publish(
            "cluster.takeover",
            g,
            Note::new(format!(
                "{failed} is gone: this node (rank {rank} of {}) takes the group over",
                keys.len()
            ))
            .field("from", &failed)
            .field("rank", rank)
            .field("candidates", keys.len()),
        );
        // Serve it (group online: the same checks as by hand), or give the
        // lock back so the failover cascades to the next candidate.
        let (repl, gname, failed2) = (self.repl.clone(), g.to_owned(), failed.clone());
        let cluster = self.cfg.clone();
        let me = self.me.clone();
        self.refused.insert((g.to_owned(), failed.clone()));
        self.spawn_op(g, "takeover", move || {
            let r = repl.group_online(OnlineOptions {
                group: gname.clone(),
                accept_data_loss: policy.auto_accept_data_loss,
                use_inconsistent: false,
                timeout_ms: Some(60_000),
            });
            if let Err(e) = &r {
                repl.publish(
                    "cluster.refused",
                    &gname,
                    Note::new(format!(
                        "{me} cannot serve the group: {e}; the lock goes to the next candidate"
                    ))
                    .field("why", e.to_string()),
                );
                let _ = block_on(async {
                    let mut c = connect(&cluster.etcd).await?;
                    let owner = format!("{}groups/{gname}/owner", prefix(&cluster.name));
                    let last = format!("{}groups/{gname}/last_owner", prefix(&cluster.name));
                    // Only while the lock is still ours: the last owner
                    // goes back to the failed node, so the next candidate's
                    // transaction holds.
                    let txn = Txn::new()
                        .when([Compare::lease(owner.clone(), CompareOp::Equal, lease)])
                        .and_then([
                            TxnOp::delete(owner, None),
                            TxnOp::put(last, json!(failed2).to_string(), None),
                        ]);
                    timed(c.txn(txn)).await?;
                    Ok::<(), String>(())
                });
                repl.publish(
                    "cluster.cascade",
                    &gname,
                    Note::new(format!("released by {me}")).field("by", &me),
                );
            }
            r.map(|_| ())
        });
        Ok(())
    }

    /// Run a group operation on a thread of its own (the agent goes on
    /// renewing its lease meanwhile); the group is skipped until it ends.
    fn spawn_op(&self, g: &str, what: &str, f: impl FnOnce() -> RResult<()> + Send + 'static) {
        self.busy.lock().insert(g.to_owned());
        let busy = self.busy.clone();
        let (g, what) = (g.to_owned(), what.to_owned());
        let shared = self.shared.clone();
        let _ = std::thread::Builder::new()
            .name(format!("cluster-{what}"))
            .spawn(move || {
                if let Err(e) = f() {
                    log::warn!("cluster: {what} of group {g}: {e}");
                    *shared.last_error.lock() = Some(format!("{what} of group {g}: {e}"));
                }
                busy.lock().remove(&g);
            });
    }
}

/// Fence this node's production groups when the lease was not renewed
/// for two thirds of its TTL (before it can expire at etcd), unless every
/// peer that answers cannot reach etcd either (an etcd outage: no one can
/// take over, writes go on).
fn watchdog(repl: &Replication, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(WATCH_EVERY);
        // A fence ends with the role: a group that became a secondary here
        // (a swap while fenced, a join) refuses client writes by itself.
        let demoted = if shared.fenced.lock().is_empty() {
            Vec::new()
        } else {
            repl.groups_here()
        };
        for (g, _) in demoted
            .iter()
            .filter(|(_, v)| v.role == ReplRole::Secondary)
        {
            if shared.fenced.lock().remove(g) {
                repl.fence_group(g, false);
                repl.publish(
                    "cluster.unfenced",
                    g,
                    "this node is a secondary of the group now",
                );
            }
        }
        let renewed = shared.renewed_ms.load(Ordering::SeqCst);
        let ttl = shared.ttl_ms.load(Ordering::SeqCst);
        if renewed == 0 || now_ms().saturating_sub(renewed) < ttl * 2 / 3 {
            continue;
        }
        let due: Vec<String> = repl
            .groups_here()
            .into_iter()
            .filter(|(g, v)| v.role == ReplRole::Primary && !shared.fenced.lock().contains(g))
            .map(|(g, _)| g)
            .collect();
        if due.is_empty() {
            continue;
        }
        // The lease can expire at etcd a TTL after the last renewal; the
        // watchdog looked at 2/3 of it: the peers' answers must be in
        // within the third left, less a look's delay and a margin.
        let within = Duration::from_millis(ttl / 3)
            .saturating_sub(2 * WATCH_EVERY)
            .clamp(Duration::from_millis(100), Duration::from_secs(3));
        let said = repl.probe_peers(&due, within);
        for g in due {
            let peers = said.get(&g).map(Vec::as_slice).unwrap_or_default();
            let outage = !peers.is_empty() && peers.iter().all(|ok| !*ok);
            if outage {
                continue;
            }
            repl.fence_group(&g, true);
            shared.fenced.lock().insert(g.clone());
            repl.publish(
                "cluster.fenced",
                &g,
                {
                    let unrenewed_ms = now_ms().saturating_sub(renewed);
                    Note::new(format!(
                        "lease not renewed for {unrenewed_ms} ms and a peer reaches etcd (or none answers): writes stop"
                    ))
                    .field("unrenewed_ms", unrenewed_ms)
                },
            );
        }
    }
}
