//! `umbra repl ...`: remote mirroring, managed from the primary's host.

use super::commands::{absolute, call, human_bytes, print_json, progress_bar, s, table};
use super::{parse_duration_ms, parse_size};
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum ReplCommand {
    /// Name this node and start its replication listener
    #[command(
        long_about = "Give this node its replication identity: a NAME peers know it by \
(sent in the handshake) and the address of its replication listener (TCP, separate from NBD \
exports). Run once on every host; persists across restarts.\n\n\
Example:\n  umbra repl setup --node site-a --listen 0.0.0.0:7800"
    )]
    Setup(SetupArgs),
    /// Trust a peer: the secret both nodes share
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Mirror a local volume to a peer's volume (sets up both sides)
    #[command(
        long_about = "Create a replication set from this host, the primary: LOCAL is \
mirrored to REMOTE on the peer whose replication listener is at --peer. The peer's side is \
set up through the peer link (it must know this node, `repl peer add`, and REMOTE must exist \
and be at least as large). From now on REMOTE refuses client writes.\n\n\
Modes:\n  sync    a write completes once it is on both sides (FUA and flush pass through)\n  \
async   a write completes locally; the peer applies writes one by one in order\n  \
hybrid  a write completes locally; the peer applies writes in groups: concurrently inside \
a group, group after group, so it always holds a state the primary could have crashed in\n\n\
The set starts in logging with every chunk out of sync: run `repl sync` (or pass --no-sync \
for volumes known to be identical, e.g. both freshly zeroed).\n\n\
Examples:\n  umbra repl enable db --local db --peer site-b:7800 --remote db --mode hybrid\n  \
umbra repl enable logs --local logs --peer site-b:7800 --remote logs --mode sync --on-peer-loss fail"
    )]
    Enable(EnableArgs),
    /// Copy out-of-sync chunks to the peer (or back, --reverse); ends in replicating
    #[command(
        long_about = "Start a resync while the set is logging. --update (default) copies \
only chunks marked in the scoreboards; --full copies every chunk. New writes replicate while \
the sync runs. Before anything reaches the secondary it takes a dependent snapshot of itself \
(`SET-safety`, see `image list` there), so a consistent image exists while the resync makes \
it inconsistent; the snapshot is dropped when the sync completes.\n\n\
--checksum compares each chunk to be sent with the peer's copy first (CRC32C) and sends \
only those that differ: with --full after a restore from backup on one side, it moves only \
what really differs. On a replicating set, `repl sync` resyncs the chunks an online verify \
marked (the link stays up), and succeeds at once when nothing is out of sync.\n\n\
--reverse copies the peer's chunks back onto the local volume (failback). It is refused \
while the local volume is exported read-write unless --force.\n\n\
--wait shows the sync's progress on a terminal (bytes, rate, ETA).\n\n\
Examples:\n  umbra repl sync db --wait\n  umbra repl sync db --full --checksum --wait\n  umbra repl sync db --reverse --wait"
    )]
    Sync(SyncArgs),
    /// Compare both sides chunk by chunk while replicating (online verify)
    #[command(
        long_about = "Read every chunk on both sides and compare CRC32C checksums, while \
the set replicates and writes go on (a batch of 64 chunks is held still for one round \
trip). Differing chunks are marked in the scoreboard and listed in `repl info` (verify); \
`repl sync SET` then resyncs exactly those. --wait shows progress and prints the result.\n\n\
Examples:\n  umbra repl verify db --wait\n  umbra repl sync db --wait    # repair what verify found"
    )]
    Verify(VerifyArgs),
    /// Suspend mirroring: writes are only recorded in the scoreboard
    #[command(
        long_about = "Put the set (and its consistency group) in logging: the link is \
closed, writes go on locally and their chunks are recorded. No autosync until the next \
`repl sync`.\n\nExample:\n  umbra repl log db"
    )]
    Log(NameArgs),
    /// Wait until a set reaches a state (default: replicating)
    #[command(
        long_about = "Block until the set reaches STATE (replicating, logging, \
syncing, need-sync, ...). Exits 1 on timeout or when the set fails.\n\n\
Example:\n  umbra repl wait db --state replicating --timeout 600"
    )]
    Wait(WaitArgs),
    /// Reverse the roles: the secondary becomes the primary (failover, failback)
    #[command(
        long_about = "Swap roles while replicating: writes to the local volume stop, \
everything acknowledged reaches the peer, then the peer becomes the primary and this volume \
its secondary (client writes here are refused from now on). Swapping again fails back.\n\n\
--force acts on this side alone, for when the peer cannot take part. Run on the secondary \
when the primary is gone (failover): this node becomes the primary and records every write. \
A new generation starts there (see `repl info`). When the old primary comes back having \
written nothing since, it notices the newer generation and becomes the secondary by itself. \
If it did write, both sides are in split brain: nothing replicates until `repl resolve`. \
`repl swap --force` on the old primary demotes it explicitly, discarding its data: it hands \
its own unreplicated chunks to the new primary, whose autosync then makes both identical. \
Refused on a secondary in the middle of a resync (restore its safety snapshot first).\n\n\
Examples:\n  umbra repl swap db\n  umbra repl swap db --force     # on the secondary, primary lost"
    )]
    Swap(SwapArgs),
    /// End a split brain: pick the side whose data is discarded
    #[command(
        long_about = "Both sides of the set wrote since they last agreed (state `split brain`, \
event `repl.split_brain` with both generations): umbra keeps both and replicates nothing \
until you decide. `--discard here` throws this side's changes away: it becomes the \
secondary and the peer syncs onto it. `--discard peer` keeps this side (it must be the \
primary) and the peer becomes its secondary. Either way the update sync moves the chunks \
either side changed (the union of both scoreboards), never a full copy. Take a snapshot \
(`umbra image enable ... --mode independent`) of the side you discard first if in doubt.\n\n\
Examples:\n  umbra repl resolve db --discard here\n  umbra repl resolve db --discard peer"
    )]
    Resolve(ResolveArgs),
    /// End a set on both sides (the scoreboard is deleted)
    #[command(
        long_about = "Stop mirroring and forget the set on both hosts. The volumes \
keep their data; the secondary takes writes again. --force ends this side even when the \
peer cannot be reached.\n\nExample:\n  umbra repl disable db"
    )]
    Disable(DisableArgs),
    /// List replication sets
    List(JsonArg),
    /// Show a set: state, lag, out-of-sync bytes, safety snapshot
    #[command(
        long_about = "Show one set: role, state, mode, link, lag (bytes, writes, groups, \
seconds), queue depth, out-of-sync bytes and percent synced, counters, the secondary's \
safety snapshot.\n\nExample:\n  umbra repl info db --json"
    )]
    Info(NameArgs),
    /// This node's name, listener and peers
    Status(JsonArg),
    /// Change a set's resync rate, also while a sync runs
    #[command(
        long_about = "Change the resync bandwidth limit of a set's secondary (or of all of \
them): a running sync follows at its next chunk; 0 removes the limit. The value is kept.\n\n\
Example:\n  umbra repl tune db --sync-rate 50M"
    )]
    Tune(TuneArgs),
}

#[derive(Args)]
pub struct TuneArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Resync bandwidth per second (e.g. 100M; 0: unlimited)
    #[arg(long, value_parser = parse_size)]
    sync_rate: u64,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum PeerCommand {
    /// Trust peer NAME with the secret in FILE (both nodes need the same secret)
    #[command(
        long_about = "Add (or replace) a peer: NAME is the node name it announces \
(`repl setup --node`), FILE holds the shared secret (at least 16 bytes; trailing whitespace \
is ignored). Peers prove they know it with an HMAC-SHA256 challenge-response; anyone else is \
refused and logged. The configuration stores the file's path, not the secret.\n\n\
Example:\n  head -c 32 /dev/urandom | base64 > /etc/umbra/site-b.key\n  \
umbra repl peer add site-b --secret-file /etc/umbra/site-b.key"
    )]
    Add(PeerAddArgs),
    /// Forget a peer
    Remove(NameOnly),
}

#[derive(Args)]
pub struct SetupArgs {
    /// This node's name
    #[arg(long)]
    node: String,
    /// Replication listener address, HOST:PORT
    #[arg(long)]
    listen: Option<String>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PeerAddArgs {
    /// The peer's node name (its `repl setup --node`)
    name: String,
    /// File holding the shared secret
    #[arg(long)]
    secret_file: PathBuf,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NameOnly {
    /// Peer name
    name: String,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Sync,
    Async,
    Hybrid,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LossArg {
    Log,
    Fail,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FullArg {
    Block,
    Log,
}

#[derive(Args)]
pub struct EnableArgs {
    /// Set name
    set: String,
    /// The local (primary) volume
    #[arg(long)]
    local: String,
    /// The peer's replication listener, HOST:PORT
    #[arg(long)]
    peer: String,
    /// The peer's volume (the secondary)
    #[arg(long)]
    remote: String,
    #[arg(long, value_enum)]
    mode: ModeArg,
    /// Consistency group: sets in a group share one write order, drop to logging together and sync together
    #[arg(long)]
    group: Option<String>,
    /// The volumes are known identical: start replicating at once
    #[arg(long)]
    no_sync: bool,
    /// Do not start an update sync by itself when the peer comes back
    #[arg(long)]
    no_autosync: bool,
    /// When the peer is lost: keep writing and log (default), or fail writes with EIO
    #[arg(long, value_enum)]
    on_peer_loss: Option<LossArg>,
    /// Peer timeout: no frame for this long and the link is down (e.g. 10s, 500ms)
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    /// Async/hybrid queue limit in bytes (default 64M)
    #[arg(long, value_parser = parse_size)]
    queue_bytes: Option<u64>,
    /// Async/hybrid queue limit in writes (default 16384)
    #[arg(long)]
    queue_items: Option<usize>,
    /// When the queue is full: block writers (default) or drop to logging
    #[arg(long, value_enum)]
    on_queue_full: Option<FullArg>,
    /// RPO bound for async/hybrid: writers wait (never fail) while the peer lags more than
    /// this, a time (5s, 500ms) or an amount of data (64M)
    #[arg(long, value_parser = parse_max_lag)]
    max_lag: Option<MaxLag>,
    /// Resync bandwidth limit per second (e.g. 100M); `repl tune` changes it on a running sync
    #[arg(long, value_parser = parse_size)]
    sync_rate: Option<u64>,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SyncArgs {
    /// Set name (its whole consistency group syncs)
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Copy every chunk
    #[arg(long, conflicts_with = "update")]
    full: bool,
    /// Copy only the changed chunks (the default)
    #[arg(long)]
    update: bool,
    /// Copy from the peer to this host
    #[arg(long)]
    reverse: bool,
    /// Reverse sync even though the local volume is exported read-write
    #[arg(long)]
    force: bool,
    /// Send only the chunks whose checksums differ from the peer's
    #[arg(long, conflicts_with = "reverse")]
    checksum: bool,
    /// Wait until the set is replicating
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (1h, 30m); without it, wait as long as it takes
    #[arg(long, value_parser = super::parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Wait for the result (progress on a terminal); exit 1 if chunks differ
    #[arg(long)]
    wait: bool,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NameArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SwapArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Act on this side only (the peer is unreachable or was failed over)
    #[arg(long)]
    force: bool,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ResolveArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// Whose data to throw away: `here` or `peer`
    #[arg(long, value_parser = ["here", "peer"])]
    discard: String,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// The state to wait for
    #[arg(long, default_value = "replicating")]
    state: String,
    /// Give up after this long (10m, 30s); without it, wait as long as it takes
    #[arg(long, value_parser = super::parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DisableArgs {
    /// Set name
    set: String,
    /// Which secondary (node name), when the set has several
    #[arg(long, value_name = "NODE")]
    secondary: Option<String>,
    /// End this side even when the peer cannot be reached
    #[arg(long)]
    force: bool,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct JsonArg {
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum MaxLag {
    Ms(u64),
    Bytes(u64),
}

/// `5s`, `500ms` (a time) or `64M` (bytes).
fn parse_max_lag(s: &str) -> Result<MaxLag, String> {
    let t = s.trim();
    if t.ends_with('s') || t.ends_with('h') {
        return parse_duration_ms(t).map(MaxLag::Ms);
    }
    parse_size(t)
        .map(MaxLag::Bytes)
        .map_err(|_| format!("{s:?} is neither a time (5s, 500ms) nor a size (64M)"))
}

fn mode_str(m: ModeArg) -> &'static str {
    match m {
        ModeArg::Sync => "sync",
        ModeArg::Async => "async",
        ModeArg::Hybrid => "hybrid",
    }
}

fn print_info(v: &Value) {
    let rows = [
        ("set", s(&v["name"])),
        ("role", s(&v["role"])),
        ("state", s(&v["state"])),
        ("mode", s(&v["mode"])),
        ("volume", s(&v["volume"])),
        (
            "peer",
            format!(
                "{} ({}) volume {}",
                s(&v["peer"]),
                s(&v["peer_node"]),
                s(&v["remote_volume"])
            ),
        ),
        ("group", s(&v["group"])),
        ("link", s(&v["link"])),
        ("on peer loss", s(&v["on_peer_loss"])),
    ];
    for (k, val) in rows {
        println!("{k:<16}{val}");
    }
    if v["role"] == "primary" {
        println!(
            "{:<16}{} in {} writes, {} groups, oldest {:.3}s",
            "lag",
            human_bytes(v["lag_bytes"].as_u64().unwrap_or(0)),
            s(&v["lag_writes"]),
            s(&v["lag_groups"]),
            v["lag_seconds"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:<16}{} ({}% synced)",
            "out of sync",
            human_bytes(v["out_of_sync_bytes"].as_u64().unwrap_or(0)),
            s(&v["percent_synced"])
        );
        println!("{:<16}{}", "writes", s(&v["writes"]));
        if !v["last_error"].is_null() {
            println!("{:<16}{}", "last error", s(&v["last_error"]));
        }
    } else {
        println!("{:<16}{}", "applied writes", s(&v["applied_writes"]));
    }
    println!("{:<16}{}", "safety snapshot", s(&v["safety_snapshot"]));
    if let Some(peers) = v["peers"].as_array().filter(|p| p.len() > 1) {
        println!();
        let rows = peers
            .iter()
            .map(|p| {
                vec![
                    s(&p["peer_node"]),
                    s(&p["mode"]),
                    s(&p["state"]),
                    s(&p["link"]),
                    human_bytes(p["lag_bytes"].as_u64().unwrap_or(0)),
                    human_bytes(p["out_of_sync_bytes"].as_u64().unwrap_or(0)),
                ]
            })
            .collect();
        table(
            &["SECONDARY", "MODE", "STATE", "LINK", "LAG", "OUT-OF-SYNC"],
            rows,
        );
    }
}

/// Poll until the set reaches `state`. With `progress` (a terminal and no
/// `--json`), a bar shows the running sync: bytes done, rate, ETA.
fn wait(
    socket: &Path,
    set: &str,
    secondary: Option<&str>,
    state: &str,
    timeout: Option<u64>,
    progress: bool,
) -> Result<Value> {
    let deadline = super::deadline(timeout);
    let bar = if progress {
        progress_bar(
            set,
            "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
    } else {
        None
    };
    let finish = |b: &Option<indicatif::ProgressBar>| {
        if let Some(b) = b {
            b.finish_and_clear();
        }
    };
    loop {
        // Short polls while a bar is shown, so it moves.
        let poll_ms = if bar.is_some() { 500 } else { 60_000 };
        let left = super::time_left(deadline, Duration::from_millis(poll_ms));
        let v = call(
            socket,
            "repl.wait",
            json!({"name": set, "secondary": secondary, "state": state, "timeout_ms": left.as_millis() as u64}),
        )?;
        if let Some(b) = &bar {
            // Every leg's sync when waiting for the whole set.
            let legs = match (&v["peers"], secondary) {
                (Value::Array(p), None) => p.clone(),
                _ => vec![v.clone()],
            };
            let sum = |k: &str| legs.iter().map(|l| l[k].as_u64().unwrap_or(0)).sum::<u64>();
            b.set_length(sum("sync_total_bytes"));
            b.set_position(sum("sync_done_bytes"));
        }
        if v["reached"] == true {
            finish(&bar);
            return Ok(v);
        }
        if v["state"] == "failed" {
            finish(&bar);
            bail!("replication set {set} failed: {}", s(&v["last_error"]));
        }
        if v["state"] == "split brain" {
            finish(&bar);
            bail!(
                "replication set {set} is in split brain: both sides wrote since they last agreed; \
                 see `umbra repl info {set}` and `umbra repl resolve --help`"
            );
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            finish(&bar);
            bail!(
                "replication set {set} is {} after {}, not {state} ({}% synced{})",
                s(&v["state"]),
                super::duration_text(timeout.unwrap_or(0)),
                s(&v["percent_synced"]),
                v["last_error"]
                    .as_str()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Poll until the set's verify ends; a bar on a terminal.
fn wait_verify(socket: &Path, set: &str, secondary: &str, progress: bool) -> Result<Value> {
    let bar = if progress {
        progress_bar(set, "{msg} verify [{bar:40}] {pos}/{len} chunks eta {eta}")
    } else {
        None
    };
    loop {
        let v = call(
            socket,
            "repl.info",
            json!({"name": set, "secondary": secondary}),
        )?;
        let r = &v["verify"];
        if let Some(b) = &bar {
            b.set_length(r["chunks_total"].as_u64().unwrap_or(0));
            b.set_position(r["chunks_done"].as_u64().unwrap_or(0));
        }
        if r["running"] != true {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(socket: &Path, cmd: ReplCommand) -> Result<()> {
    match cmd {
        ReplCommand::Setup(a) => {
            let v = call(
                socket,
                "repl.setup",
                json!({"node": a.node, "listen": a.listen}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "node {} listening for peers on {}",
                    s(&v["node"]),
                    s(&v["listen"])
                );
            }
        }
        ReplCommand::Peer(PeerCommand::Add(a)) => {
            let v = call(
                socket,
                "repl.peer.add",
                json!({"name": a.name, "secret_file": absolute(&a.secret_file)?}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("peer {} trusted", a.name);
            }
        }
        ReplCommand::Peer(PeerCommand::Remove(a)) => {
            let v = call(socket, "repl.peer.remove", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("peer {} removed", a.name);
            }
        }
        ReplCommand::Enable(a) => {
            let v = call(
                socket,
                "repl.enable",
                json!({
                    "name": a.set, "local": a.local, "peer": a.peer, "remote": a.remote,
                    "mode": mode_str(a.mode), "group": a.group, "no_sync": a.no_sync,
                    "no_autosync": a.no_autosync,
                    "on_peer_loss": a.on_peer_loss.map(|l| match l { LossArg::Log => "log", LossArg::Fail => "fail" }),
                    "timeout_ms": a.timeout, "queue_bytes": a.queue_bytes, "queue_items": a.queue_items,
                    "on_queue_full": a.on_queue_full.map(|f| match f { FullArg::Block => "block", FullArg::Log => "log" }),
                    "max_lag_ms": match a.max_lag { Some(MaxLag::Ms(m)) => Some(m), _ => None },
                    "max_lag_bytes": match a.max_lag { Some(MaxLag::Bytes(b)) => Some(b), _ => None },
                    "sync_rate": a.sync_rate,
                }),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "replication set {} enabled: {} -> {} on {} ({}), {}",
                    a.set,
                    a.local,
                    a.remote,
                    a.peer,
                    mode_str(a.mode),
                    s(&v["state"])
                );
                if !a.no_sync {
                    println!("next: umbra repl sync {} --wait", a.set);
                }
            }
        }
        ReplCommand::Sync(a) => {
            let mut v = call(
                socket,
                "repl.sync",
                json!({"name": a.set, "secondary": a.secondary, "full": a.full, "reverse": a.reverse, "force": a.force, "checksum": a.checksum}),
            )?;
            if a.wait {
                v = wait(
                    socket,
                    &a.set,
                    a.secondary.as_deref(),
                    "replicating",
                    a.timeout,
                    !a.json,
                )?;
            }
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "replication set {}: {} ({} {})",
                    a.set,
                    s(&v["state"]),
                    human_bytes(v["sync_total_bytes"].as_u64().unwrap_or(0)),
                    if a.wait { "synced" } else { "to sync" }
                );
            }
        }
        ReplCommand::Verify(a) => {
            let mut v = call(
                socket,
                "repl.verify",
                json!({"name": a.set, "secondary": a.secondary}),
            )?;
            if a.wait {
                v = wait_verify(socket, &a.set, s(&v["peer_node"]).as_str(), !a.json)?;
            }
            let r = &v["verify"];
            if a.json {
                print_json(&v);
            } else if a.wait {
                println!(
                    "replication set {}: verify compared {} chunks: {} differ ({})",
                    a.set,
                    s(&r["chunks_done"]),
                    s(&r["chunks_differing"]),
                    human_bytes(r["bytes_differing"].as_u64().unwrap_or(0))
                );
            } else {
                println!("replication set {}: verify started", a.set);
            }
            if a.wait {
                if let Some(e) = r["error"].as_str() {
                    bail!("replication set {}: verify stopped: {e}", a.set);
                }
                if r["chunks_differing"].as_u64().unwrap_or(0) > 0 && !a.json {
                    println!("run `umbra repl sync {}` to resync them", a.set);
                }
            }
        }
        ReplCommand::Log(a) => {
            let v = call(
                socket,
                "repl.log",
                json!({"name": a.set, "secondary": a.secondary}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("replication set {}: {}", a.set, s(&v["state"]));
            }
        }
        ReplCommand::Wait(a) => {
            let v = wait(
                socket,
                &a.set,
                a.secondary.as_deref(),
                &a.state,
                a.timeout,
                !a.json,
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("replication set {}: {}", a.set, s(&v["state"]));
            }
        }
        ReplCommand::Swap(a) => {
            let v = call(
                socket,
                "repl.swap",
                json!({"name": a.set, "secondary": a.secondary, "force": a.force}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "replication set {}: this node is now the {} (peer {})",
                    a.set,
                    s(&v["role"]),
                    s(&v["peer"])
                );
            }
        }
        ReplCommand::Resolve(a) => {
            let v = call(
                socket,
                "repl.resolve",
                json!({"name": a.set, "secondary": a.secondary, "discard": a.discard}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "replication set {}: this node is the {} ({}); the update sync follows",
                    a.set,
                    s(&v["role"]),
                    s(&v["state"])
                );
                if let Some(n) = v["note"].as_str().filter(|n| !n.is_empty()) {
                    println!("note: {n}");
                }
            }
        }
        ReplCommand::Disable(a) => {
            let v = call(
                socket,
                "repl.disable",
                json!({"name": a.set, "secondary": a.secondary, "force": a.force}),
            )?;
            if a.json {
                print_json(&v);
            } else if a.secondary.is_some() {
                println!(
                    "replication set {}: secondary {} removed",
                    a.set,
                    a.secondary.as_deref().unwrap_or_default()
                );
            } else {
                println!("replication set {} disabled", a.set);
            }
            if let Some(n) = v["note"].as_str().filter(|n| !n.is_empty() && !a.json) {
                println!("note: {n}");
            }
        }
        ReplCommand::List(a) => {
            let v = call(socket, "repl.list", json!({}))?;
            if a.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|x| {
                        vec![
                            s(&x["name"]),
                            s(&x["role"]),
                            s(&x["state"]),
                            s(&x["mode"]),
                            s(&x["volume"]),
                            format!(
                                "{} {}:{}",
                                s(&x["peer_node"]),
                                s(&x["peer"]),
                                s(&x["remote_volume"])
                            ),
                            x["out_of_sync_bytes"]
                                .as_u64()
                                .map(human_bytes)
                                .unwrap_or("-".into()),
                            x["lag_bytes"]
                                .as_u64()
                                .map(human_bytes)
                                .unwrap_or("-".into()),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SET",
                        "ROLE",
                        "STATE",
                        "MODE",
                        "VOLUME",
                        "PEER",
                        "OUT-OF-SYNC",
                        "LAG",
                    ],
                    rows,
                );
            }
        }
        ReplCommand::Tune(a) => {
            let v = call(
                socket,
                "repl.tune",
                json!({"name": a.set, "secondary": a.secondary, "sync_rate": a.sync_rate}),
            )?;
            if a.json {
                print_json(&v);
            } else if a.sync_rate == 0 {
                println!("replication set {}: resync rate unlimited", a.set);
            } else {
                println!(
                    "replication set {}: resync rate {}/s",
                    a.set,
                    human_bytes(a.sync_rate)
                );
            }
        }
        ReplCommand::Info(a) => {
            let v = call(
                socket,
                "repl.info",
                json!({"name": a.set, "secondary": a.secondary}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                print_info(&v);
            }
        }
        ReplCommand::Status(a) => {
            let v = call(socket, "repl.status", json!({}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("node    {}", s(&v["node"]));
                println!("listen  {}", s(&v["listen"]));
                for p in v["peers"].as_array().cloned().unwrap_or_default() {
                    println!("peer    {} ({})", s(&p["name"]), s(&p["secret_file"]));
                }
            }
        }
    }
    Ok(())
}

/// `umbra fault-proxy`: forward TCP with injected delay (benchmarks).
#[derive(Args)]
pub struct FaultProxyArgs {
    /// Listen address, HOST:PORT
    #[arg(long)]
    listen: String,
    /// Forward to HOST:PORT
    #[arg(long)]
    to: String,
    /// One-way delay in microseconds, each direction
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
}

pub fn fault_proxy(a: FaultProxyArgs) -> Result<()> {
    let p = umbra::services::repl::proxy::FaultProxy::start(&a.listen, &a.to)?;
    p.set_delay(Duration::from_micros(a.delay_us));
    println!(
        "forwarding {} -> {} with {} µs one-way delay",
        p.addr, a.to, a.delay_us
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
