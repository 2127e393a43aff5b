//! `umbra group ...`: seed 000's operations on a group (a consistency
//! group of replication sets, or one set), each of which drives the group
//! into its state and returns once it holds.

use super::commands::{call, human_bytes, print_json, s, table};
use super::parse_size;
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Where the group is production, every replica's state, what `online` here would do
    #[command(
        long_about = "Show group GROUP (a consistency group, or a replication set without one) \
from this node: the production node (asked over the peer link when it is elsewhere), every \
replica's state (up-to-date, consistent, inconsistent: cut mid-resync, its last consistent \
image is the safety snapshot), the policy, and what `umbra group online GROUP` on this node \
would do.\n\nExample:\n  umbra group status db --json"
    )]
    Status(GroupArgs),
    /// Make this node (or --to NODE) production for the group
    #[command(
        long_about = "Bring GROUP online here: nothing if this node is production already; a \
planned swap when the production node answers (it flushes, stops writes, drains every \
replica and swaps roles); a takeover when it does not, only if this copy is consistent and \
at most the policy's max-lag-on-failover behind (else refused with what may be lost, unless \
--accept-data-loss). A copy cut mid-resync is refused unless --use-inconsistent, which \
brings the group up on the safety snapshot's data. Returns once this node is production; \
repeating it does nothing. --to NODE runs it on NODE (a failover or failback from \
elsewhere).\n\nExamples:\n  umbra group online db\n  umbra group online db --accept-data-loss\n  \
umbra group online db --to site-b"
    )]
    Online(OnlineArgs),
    /// On the production node: flush, stop serving writes, leave replicas in sync
    #[command(
        long_about = "Take GROUP offline on its production node: flush every volume, stop \
serving writes (NBD exports become read-only, or are removed, by the group's policy; `group \
online` restores them), and return once every replica holds everything, ready for a swap. \
On a node that is not production it does nothing.\n\nExample:\n  umbra group offline db"
    )]
    Offline(TimeoutArgs),
    /// Failover: bring the group online on NODE (default this node) when production is lost
    #[command(
        long_about = "Failover after the production node is lost: `group online` on NODE \
(default: this node), with the same checks (consistent copy, lag within policy).\n\n\
Example:\n  umbra group failover db --to site-b"
    )]
    Failover(OnlineArgs),
    /// Planned swap from the production node to a replica (--to, or the preferred one)
    Swap(ToArgs),
    /// Return production to the group's first preferred node
    #[command(
        long_about = "Failback: `group online` on the first node of the group's preferred list \
(`umbra group policy GROUP --preferred NODE,...`), a planned swap once its copy is in sync.\n\n\
Example:\n  umbra group failback db"
    )]
    Failback(GroupArgs),
    /// On a node back after a forced takeover: step down and resync from production
    #[command(
        long_about = "Join after a forced takeover elsewhere: this node (a former production \
node) becomes a secondary of the production node and returns once its copy is in sync. If \
it wrote while the other was production, both sides are in split brain and `umbra repl \
resolve` decides.\n\nExample:\n  umbra group join db"
    )]
    Join(TimeoutArgs),
    /// Wait until the group is online here, offline here, in sync or consistent
    Wait(WaitArgs),
    /// Check that every member has the same definition and policy
    Verify(GroupArgs),
    /// Show or change the group's policy (sent to every member)
    #[command(
        long_about = "Set GROUP's policy: preferred nodes in order (failback goes to the first), \
the most acknowledged data a takeover may lose (default 1M), whether failover is automatic, \
whether an automatic failover may accept data loss (default no), and what `offline` does to \
exports. The policy is stored on every member.\n\nExample:\n  \
umbra group policy db --preferred site-a,site-b --max-lag-on-failover 0 --auto-failover on"
    )]
    Policy(PolicyArgs),
}

#[derive(Args)]
pub struct GroupArgs {
    /// Group (or replication set) name
    group: String,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TimeoutArgs {
    group: String,
    /// Give up after this long (120s, 5m; like every role change)
    #[arg(long, value_parser = super::parse_duration_ms, default_value = "120s", value_name = "DURATION")]
    timeout: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct OnlineArgs {
    group: String,
    /// Run it on this node instead of here
    #[arg(long, value_name = "NODE")]
    to: Option<String>,
    /// Take over although acknowledged writes may be missing here
    #[arg(long)]
    accept_data_loss: bool,
    /// A copy cut mid-resync comes up on its safety snapshot's data
    #[arg(long)]
    use_inconsistent: bool,
    /// Give up after this long (120s, 5m; like every role change)
    #[arg(long, value_parser = super::parse_duration_ms, default_value = "120s", value_name = "DURATION")]
    timeout: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ToArgs {
    group: String,
    /// The replica to hand production to
    #[arg(long, value_name = "NODE")]
    to: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    group: String,
    #[arg(long, value_parser = ["online", "offline", "in-sync", "consistent"])]
    state: String,
    /// Give up after this long (10m, 30s); without it, wait as long as it takes
    #[arg(long, value_parser = super::parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum FenceArg {
    Eio,
    Block,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportsArg {
    ReadOnly,
    Remove,
    Keep,
}

#[derive(Args)]
pub struct PolicyArgs {
    group: String,
    /// Nodes that should run the group, best first
    #[arg(long, value_delimiter = ',')]
    preferred: Option<Vec<String>>,
    /// Most acknowledged data a takeover may lose (e.g. 0, 64K, 1M)
    #[arg(long, value_parser = parse_size)]
    max_lag_on_failover: Option<u64>,
    #[arg(long, value_enum)]
    auto_failover: Option<OnOff>,
    #[arg(long, value_enum)]
    auto_accept_data_loss: Option<OnOff>,
    /// What `group offline` does to the exports
    #[arg(long, value_enum)]
    offline_exports: Option<ExportsArg>,
    /// A fenced production node (lease not renewed): fail writes with EIO,
    /// or hold them until the lease is back (or the node steps down)
    #[arg(long, value_enum)]
    fence: Option<FenceArg>,
    #[arg(long)]
    json: bool,
}

fn on(v: Option<OnOff>) -> Option<bool> {
    v.map(|x| matches!(x, OnOff::On))
}

fn print_status(v: &Value) {
    println!(
        "group {}: production {}{}",
        s(&v["group"]),
        s(&v["production"]),
        if v["production_reachable"] == true {
            ""
        } else {
            " (not answering)"
        }
    );
    println!("this node: {} ({})", s(&v["node"]), s(&v["role"]));
    let rows = v["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                s(&r["node"]),
                s(&r["state"]),
                human_bytes(r["lag_bytes"].as_u64().unwrap_or(0)),
                format!("{} ms", s(&r["lag_ms"])),
                human_bytes(r["out_of_sync_bytes"].as_u64().unwrap_or(0)),
            ]
        })
        .collect::<Vec<_>>();
    if !rows.is_empty() {
        table(
            &["REPLICA", "STATE", "LAG", "LAG TIME", "OUT-OF-SYNC"],
            rows,
        );
    }
    let plan = &v["online_here"];
    let next = match plan["action"].as_str().unwrap_or_default() {
        "nothing" => "nothing (production here)".to_owned(),
        "swap" => format!("a planned swap from {}", s(&plan["from"])),
        "takeover" => format!(
            "a takeover from {} (at risk: {} bytes, {} ms)",
            s(&plan["from"]),
            s(&plan["at_risk_bytes"]),
            s(&plan["at_risk_ms"])
        ),
        "recover_then_takeover" => format!(
            "bring the volumes back to {} and take over",
            s(&plan["snapshots"])
        ),
        _ => format!("refused: {}", s(&plan["reason"])),
    };
    println!("`group online` here would do: {next}");
}

/// Run one blocking group operation; on a terminal (and without --json) a
/// spinner says what it waits for meanwhile.
fn driving(json: bool, what: &str, f: impl FnOnce() -> Result<Value>) -> Result<Value> {
    use std::io::IsTerminal;
    let bar = (!json && std::io::stdout().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(what.to_owned());
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    });
    let r = f();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    r
}

fn done(v: &Value, json: bool, what: &str) {
    if json {
        print_json(v);
    } else {
        println!("{what}");
    }
}

pub fn run(socket: &Path, cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::Status(a) => {
            let v = call(socket, "group.status", json!({"group": a.group}))?;
            if a.json {
                print_json(&v);
            } else {
                print_status(&v);
            }
        }
        GroupCommand::Online(a) | GroupCommand::Failover(a) => {
            let v = driving(a.json, &format!("group {}: going online", a.group), || {
                call(
                    socket,
                    "group.online",
                    json!({
                        "group": a.group, "to": a.to, "accept_data_loss": a.accept_data_loss,
                        "use_inconsistent": a.use_inconsistent, "timeout_ms": a.timeout,
                    }),
                )
            })?;
            done(
                &v,
                a.json,
                &format!("group {}: production on {}", a.group, s(&v["production"])),
            );
        }
        GroupCommand::Offline(a) => {
            let v = driving(
                a.json,
                &format!("group {}: stopping writes, draining replicas", a.group),
                || {
                    call(
                        socket,
                        "group.offline",
                        json!({"group": a.group, "timeout_ms": a.timeout}),
                    )
                },
            )?;
            done(
                &v,
                a.json,
                &format!("group {}: offline here, replicas in sync", a.group),
            );
        }
        GroupCommand::Swap(a) => {
            let v = driving(a.json, &format!("group {}: swapping", a.group), || {
                call(socket, "group.swap", json!({"group": a.group, "to": a.to}))
            })?;
            done(
                &v,
                a.json,
                &format!("group {}: production on {}", a.group, s(&v["production"])),
            );
        }
        GroupCommand::Failback(a) => {
            let v = driving(a.json, &format!("group {}: failing back", a.group), || {
                call(socket, "group.failback", json!({"group": a.group}))
            })?;
            done(
                &v,
                a.json,
                &format!("group {}: production on {}", a.group, s(&v["production"])),
            );
        }
        GroupCommand::Join(a) => {
            let v = driving(
                a.json,
                &format!("group {}: joining, resyncing", a.group),
                || {
                    call(
                        socket,
                        "group.join",
                        json!({"group": a.group, "timeout_ms": a.timeout}),
                    )
                },
            )?;
            done(
                &v,
                a.json,
                &format!(
                    "group {}: this node is a replica of {}, in sync",
                    a.group,
                    s(&v["production"])
                ),
            );
        }
        GroupCommand::Wait(a) => {
            let deadline = super::deadline(a.timeout);
            loop {
                let left = super::time_left(deadline, std::time::Duration::from_secs(60));
                let v = call(
                    socket,
                    "group.wait",
                    json!({"group": a.group, "state": a.state, "timeout_ms": left.as_millis() as u64}),
                )?;
                if v["reached"] == true {
                    done(&v, a.json, &format!("group {}: {}", a.group, a.state));
                    break;
                }
                if let (Some(ms), true) = (a.timeout, left.is_zero()) {
                    bail!(
                        "group {} is not {} after {}",
                        a.group,
                        a.state,
                        super::duration_text(ms)
                    );
                }
            }
        }
        GroupCommand::Verify(a) => {
            let v = call(socket, "group.verify", json!({"group": a.group}))?;
            if a.json {
                print_json(&v);
            } else if v["consistent"] == true {
                println!("group {}: the same on every member", a.group);
            } else {
                for p in v["problems"].as_array().cloned().unwrap_or_default() {
                    println!("{}", s(&p));
                }
            }
            if v["consistent"] != true {
                bail!("group {}: members disagree", a.group);
            }
        }
        GroupCommand::Policy(a) => {
            let v = call(
                socket,
                "group.policy",
                json!({
                    "group": a.group, "preferred": a.preferred,
                    "max_lag_on_failover_bytes": a.max_lag_on_failover,
                    "auto_failover": on(a.auto_failover),
                    "auto_accept_data_loss": on(a.auto_accept_data_loss),
                    "offline_exports": a.offline_exports.map(|e| match e {
                        ExportsArg::ReadOnly => "read-only",
                        ExportsArg::Remove => "remove",
                        ExportsArg::Keep => "keep",
                    }),
                    "fence": a.fence.map(|f| match f {
                        FenceArg::Eio => "eio",
                        FenceArg::Block => "block",
                    }),
                }),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("group {}: {}", a.group, v["policy"]);
                if let Some(n) = v["note"].as_str().filter(|n| !n.is_empty()) {
                    println!("note: {n}");
                }
            }
        }
    }
    Ok(())
}
