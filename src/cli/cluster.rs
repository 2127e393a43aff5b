//! `umbra cluster ...`: membership of a cluster on etcd (seed 004).

use super::commands::{call, print_json, s, table};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::Path;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Join (or create) cluster NAME kept in etcd
    #[command(
        long_about = "Join cluster --name on the etcd cluster at --etcd (one or more client \
URLs, comma-separated): this node keeps a lease there (TTL --ttl, renewed every TTL/3) with \
its priority key (load average and production groups; lower is picked first), holds the \
lock of every group it is production for, and, for groups whose policy says \
`--auto-failover on`, competes for a failed node's groups. Persisted: the node rejoins \
after a restart.\n\nExample:\n  umbra cluster join --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --name prod"
    )]
    Join(JoinArgs),
    /// Leave the cluster: hand production groups over first, then revoke the lease
    Leave(JsonArg),
    /// Members, leases, priority keys, groups and their owners, as etcd has them
    Status(JsonArg),
    /// Bias this node's priority key (higher: taken later as a failover candidate)
    Priority(PriorityArgs),
}

#[derive(Args)]
pub struct JoinArgs {
    /// etcd client URLs
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The cluster's name (its keys live under /umbra/NAME/)
    #[arg(long)]
    name: String,
    /// Lease time to live, whole seconds (10s, 1m)
    #[arg(long, value_parser = super::parse_duration_s, default_value = "10s", value_name = "DURATION")]
    ttl: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PriorityArgs {
    /// Added to the priority key
    #[arg(long, allow_hyphen_values = true)]
    bias: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct JsonArg {
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, cmd: ClusterCommand) -> Result<()> {
    let (v, json) = match cmd {
        ClusterCommand::Join(a) => (
            call(
                socket,
                "cluster.join",
                json!({"name": a.name, "etcd": a.etcd, "ttl_s": a.ttl}),
            )?,
            a.json,
        ),
        ClusterCommand::Leave(a) => (call(socket, "cluster.leave", json!({}))?, a.json),
        ClusterCommand::Status(a) => (call(socket, "cluster.status", json!({}))?, a.json),
        ClusterCommand::Priority(a) => (
            call(socket, "cluster.priority", json!({"bias": a.bias}))?,
            a.json,
        ),
    };
    if json {
        print_json(&v);
        return Ok(());
    }
    if v["cluster"].is_null() {
        println!("this node is in no cluster");
        return Ok(());
    }
    println!(
        "cluster {} on {} (node {}, lease TTL {} s)",
        s(&v["cluster"]),
        s(&v["etcd"]),
        s(&v["node"]),
        s(&v["ttl_s"])
    );
    if v["etcd_reachable"] != true {
        println!("etcd unreachable: {}", s(&v["etcd_error"]));
    }
    let members = v["members"].as_array().cloned().unwrap_or_default();
    table(
        &["MEMBER", "LISTEN", "PRIORITY", "PRODUCTION GROUPS", "LEASE"],
        members
            .iter()
            .map(|m| {
                vec![
                    s(&m["node"]),
                    s(&m["listen"]),
                    s(&m["load_priority"]),
                    s(&m["primary_groups"]),
                    format!("{:x}", m["lease"].as_i64().unwrap_or(0)),
                ]
            })
            .collect(),
    );
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    table(
        &["GROUP", "OWNER", "SINCE", "LAST OWNER"],
        groups
            .iter()
            .map(|g| {
                vec![
                    s(&g["group"]),
                    s(&g["owner"]["node"]),
                    s(&g["owner"]["since_unix_ms"]),
                    s(&g["last_owner"]),
                ]
            })
            .collect(),
    );
    if let Some(f) = v["fenced_groups"].as_array().filter(|f| !f.is_empty()) {
        println!("fenced here: {}", serde_json::to_string(f)?);
    }
    Ok(())
}
