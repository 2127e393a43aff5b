//! `umbra stats`: per-volume I/O rates, like `zpool iostat`.

use super::commands::{call, human_bytes, print_json, table};
use super::parse_duration_ms;
use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

#[derive(Args)]
pub struct StatsArgs {
    /// Volumes to show (all when none is named)
    volumes: Vec<String>,
    /// Print rates over each interval (10s, 500ms), until interrupted or
    /// --count intervals; without it, totals since the volume came online
    #[arg(long, short, value_parser = parse_duration_ms, value_name = "DURATION")]
    interval: Option<u64>,
    /// Stop after this many intervals
    #[arg(long, short)]
    count: Option<u64>,
    /// Print the daemon's counters as JSON (one object per sample)
    #[arg(long)]
    json: bool,
}

const OPS: [&str; 5] = ["read", "write", "flush", "discard", "write_zeroes"];

fn sample(socket: &Path, vols: &[String]) -> Result<Value> {
    call(socket, "stats", json!({"volumes": vols}))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

pub fn run(socket: &Path, a: StatsArgs) -> Result<()> {
    let Some(every) = a.interval else {
        let v = sample(socket, &a.volumes)?;
        if a.json {
            print_json(&v);
        } else {
            totals(&v);
            services(&v);
        }
        return Ok(());
    };
    let every = Duration::from_millis(every.max(1));
    let mut prev = sample(socket, &a.volumes)?;
    let mut done = 0;
    while a.count.is_none_or(|c| done < c) {
        std::thread::sleep(every);
        let cur = sample(socket, &a.volumes)?;
        if a.json {
            println!("{}", serde_json::to_string(&cur)?);
        } else {
            rates(&prev, &cur, done == 0);
        }
        prev = cur;
        done += 1;
    }
    Ok(())
}

/// Totals since each volume came online, one row per volume.
fn totals(v: &Value) {
    let rows = volumes(v)
        .map(|vol| {
            let io = &vol["io"];
            let mut r = vec![vol["volume"].as_str().unwrap_or("?").to_owned()];
            for op in OPS.iter().take(3) {
                r.push(n(&io[op]["ops"]).to_string());
            }
            r.push(human_bytes(n(&io["read"]["bytes"])));
            r.push(human_bytes(n(&io["write"]["bytes"])));
            r.push(
                OPS.iter()
                    .map(|op| n(&io[op]["errors"]))
                    .sum::<u64>()
                    .to_string(),
            );
            r.push(format!(
                "{:.0}",
                io["read"]["latency_us"]["p99"].as_f64().unwrap_or(0.0)
            ));
            r.push(format!(
                "{:.0}",
                io["write"]["latency_us"]["p99"].as_f64().unwrap_or(0.0)
            ));
            r
        })
        .collect();
    table(
        &[
            "VOLUME",
            "READS",
            "WRITES",
            "FLUSHES",
            "READ",
            "WRITTEN",
            "ERRORS",
            "R P99 µs",
            "W P99 µs",
        ],
        rows,
    );
}

/// What each volume's services did, one line per service.
fn services(v: &Value) {
    for vol in volumes(v) {
        let name = vol["volume"].as_str().unwrap_or("?");
        let c = &vol["cache"];
        if c.is_object() {
            println!(
                "{name}: cache {} hits, {} misses (4 KiB blocks), {} of {} held",
                n(&c["read_hit_blocks"]),
                n(&c["read_miss_blocks"]),
                human_bytes(n(&c["cached_bytes"])),
                human_bytes(n(&c["capacity_bytes"]))
            );
        }
        for s in vol["image"].as_array().into_iter().flatten() {
            println!(
                "{name}: image set {} copied {} on write ({} chunks), {} in the background, {} chunks to copy{}",
                s["set"].as_str().unwrap_or("?"),
                human_bytes(n(&s["cow_bytes"])),
                n(&s["cow_chunks"]),
                human_bytes(n(&s["copied_bytes"])),
                n(&s["chunks_to_copy"]),
                match n(&s["cloned_chunks"]) {
                    0 => String::new(),
                    k => format!("; {k} chunks shared by reflink"),
                }
            );
        }
        for l in vol["replication"].as_array().into_iter().flatten() {
            println!(
                "{name}: replication set {} ({}, peer {}) {}: lag {} in {} writes, {} out of sync",
                l["set"].as_str().unwrap_or("?"),
                l["role"].as_str().unwrap_or("?"),
                l["peer_node"].as_str().unwrap_or("?"),
                l["state"].as_str().unwrap_or("?"),
                human_bytes(n(&l["lag_bytes"])),
                n(&l["lag_writes"]),
                human_bytes(n(&l["out_of_sync_bytes"]))
            );
        }
    }
}

fn volumes(v: &Value) -> impl Iterator<Item = &Value> {
    v["volumes"].as_array().into_iter().flatten()
}

/// Rates over the interval between two samples, `zpool iostat` style.
fn rates(prev: &Value, cur: &Value, header: bool) {
    let secs = (n(&cur["unix_ms"]).saturating_sub(n(&prev["unix_ms"])) as f64 / 1000.0).max(1e-3);
    let rate = |a: &Value, b: &Value| (n(b).saturating_sub(n(a))) as f64 / secs;
    if header {
        println!(
            "{:<16} {:>8} {:>8} {:>7} {:>10} {:>10} {:>6} {:>5}",
            "volume", "r/s", "w/s", "f/s", "read/s", "write/s", "err/s", "queue"
        );
    }
    for vol in volumes(cur) {
        let name = vol["volume"].as_str().unwrap_or("?");
        let Some(old) = volumes(prev).find(|p| p["volume"] == name) else {
            continue;
        };
        let (a, b) = (&old["io"], &vol["io"]);
        let errs: f64 = OPS
            .iter()
            .map(|op| rate(&a[op]["errors"], &b[op]["errors"]))
            .sum();
        println!(
            "{:<16} {:>8.0} {:>8.0} {:>7.0} {:>10} {:>10} {:>6.0} {:>5}",
            name,
            rate(&a["read"]["ops"], &b["read"]["ops"]),
            rate(&a["write"]["ops"], &b["write"]["ops"]),
            rate(&a["flush"]["ops"], &b["flush"]["ops"]),
            human_bytes(rate(&a["read"]["bytes"], &b["read"]["bytes"]) as u64),
            human_bytes(rate(&a["write"]["bytes"], &b["write"]["bytes"]) as u64),
            errs,
            n(&b["in_flight"]),
        );
        // The services, indented under their volume, when they moved.
        let (ca, cb) = (&old["cache"], &vol["cache"]);
        if cb.is_object() && ca.is_object() {
            let (h, m) = (
                rate(&ca["read_hit_blocks"], &cb["read_hit_blocks"]),
                rate(&ca["read_miss_blocks"], &cb["read_miss_blocks"]),
            );
            if h + m > 0.0 {
                println!("  cache      {h:.0} hits/s, {m:.0} misses/s (4 KiB blocks)");
            }
        }
        for s in vol["image"].as_array().into_iter().flatten() {
            let Some(o) = old["image"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["set"] == s["set"]))
            else {
                continue;
            };
            let (cow, copy) = (
                rate(&o["cow_bytes"], &s["cow_bytes"]),
                rate(&o["copied_bytes"], &s["copied_bytes"]),
            );
            if cow + copy > 0.0 {
                println!(
                    "  image {:<5} copy-on-write {}/s, background copy {}/s",
                    s["set"].as_str().unwrap_or("?"),
                    human_bytes(cow as u64),
                    human_bytes(copy as u64)
                );
            }
        }
        for l in vol["replication"].as_array().into_iter().flatten() {
            let Some(o) = old["replication"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["set"] == l["set"] && x["peer_node"] == l["peer_node"])
            }) else {
                continue;
            };
            println!(
                "  repl {} -> {}: {} sent/s, {} applied/s, resync {}/s, lag {} ({} writes)",
                l["set"].as_str().unwrap_or("?"),
                l["peer_node"].as_str().unwrap_or("?"),
                human_bytes(rate(&o["sent_bytes"], &l["sent_bytes"]) as u64),
                human_bytes(rate(&o["applied_bytes"], &l["applied_bytes"]) as u64),
                human_bytes(rate(&o["sync_done_bytes"], &l["sync_done_bytes"]) as u64),
                human_bytes(n(&l["lag_bytes"])),
                n(&l["lag_writes"]),
            );
        }
    }
}
