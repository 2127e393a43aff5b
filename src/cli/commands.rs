//! Client commands: one admin request each, printed as a table or JSON.

use super::{CacheCommand, EventsArgs, ExportCommand, VolumeCommand};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use umbra::control::admin::Client;

fn connect(socket: &Path) -> Result<Client> {
    Client::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "permission denied on the umbra daemon's socket {}: only root or the \
                 daemon's own user may manage it (run as that user, or with sudo)",
                socket.display()
            )
        } else {
            anyhow::Error::new(e).context(format!(
                "cannot reach the umbra daemon at {} (is `umbra serve` running? \
                 pass --socket or set UMBRA_SOCKET)",
                socket.display()
            ))
        }
    })
}

/// Send one request; a failed reply becomes an error carrying its message.
pub(super) fn call(socket: &Path, op: &str, args: Value) -> Result<Value> {
    let reply = connect(socket)?
        .call(op, args)
        .with_context(|| format!("talking to the daemon at {}", socket.display()))?;
    if reply.ok {
        Ok(reply.result.unwrap_or(Value::Null))
    } else {
        let e = reply.error.map(|e| e.message).unwrap_or_default();
        bail!("{e}")
    }
}

pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

pub(super) fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON value serialises")
    );
}

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The strings of a JSON array (empty when it is not one).
pub(super) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// A reply that is one object or an array of them, as a list.
pub(super) fn one_or_many(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        one => vec![one],
    }
}

/// A progress bar named `name` in `template` (indicatif's syntax) when
/// stdout is a terminal; `None` otherwise (scripts, pipes, `--json`).
pub fn progress_bar(name: &str, template: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_message(name.to_owned());
        b
    })
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// Print rows as aligned columns under `headers`.
pub(super) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// A volume's exports in a few words: `nbd 127.0.0.1:10810`, `ublk /dev/ublkb0`.
fn export_words(v: &Value) -> Vec<String> {
    v["exports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let at = e["device"].as_str().or(e["listen"].as_str()).unwrap_or("-");
                    format!("{} {at}", s(&e["kind"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn volume_row(v: &Value) -> Vec<String> {
    let exports = export_words(v);
    vec![
        s(&v["name"]),
        s(&v["state"]),
        v["size_bytes"]
            .as_u64()
            .map(human_bytes)
            .unwrap_or("-".into()),
        if exports.is_empty() {
            "-".into()
        } else {
            exports.join(", ")
        },
        s(&v["path"]),
    ]
}

/// "created volume db (1.0 GiB) on /path" for a volume reply.
fn print_volume(verb: &str, v: &Value) {
    let size = v["size_bytes"]
        .as_u64()
        .map(human_bytes)
        .unwrap_or_default();
    println!(
        "{verb} volume {} ({size}) on {}",
        s(&v["name"]),
        s(&v["path"])
    );
}

pub fn volume(socket: &Path, cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create(a) => {
            let mut args = json!({
                "name": a.name, "size_bytes": a.size,
                "engine": a.backend.engine, "direct": a.backend.direct, "latency_ms": a.backend.latency,
            });
            if let Some(p) = a.path {
                args["path"] = json!(absolute(&p)?);
            }
            let v = call(socket, "volume.create", args)?;
            if a.json {
                print_json(&v);
            } else {
                print_volume("created", &v);
            }
        }
        VolumeCommand::Add(a) => {
            let args = json!({
                "name": a.name, "path": absolute(&a.path)?,
                "engine": a.backend.engine, "direct": a.backend.direct, "latency_ms": a.backend.latency,
            });
            let v = call(socket, "volume.add", args)?;
            if a.json {
                print_json(&v);
            } else {
                print_volume("added", &v);
            }
        }
        VolumeCommand::Remove(a) => {
            if a.delete_data && !a.yes {
                let info = call(socket, "volume.info", json!({"name": a.name}))?;
                let path = s(&info["path"]);
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    bail!(
                        "volume {}: --delete-data deletes {path}; pass --yes to do it without a question",
                        a.name
                    );
                }
                eprint!(
                    "delete volume {} and its data ({path}, {} bytes)? [y/N] ",
                    a.name,
                    s(&info["size_bytes"])
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    bail!("volume {}: left as it is", a.name);
                }
            }
            let v = call(
                socket,
                "volume.remove",
                json!({"name": a.name, "force": a.force, "delete_data": a.delete_data}),
            )?;
            if a.json {
                print_json(&v);
            } else if v["deleted"].is_string() {
                println!(
                    "removed volume {}; deleted {}",
                    s(&v["name"]),
                    s(&v["deleted"])
                );
            } else {
                println!(
                    "removed volume {}; backing file kept at {}",
                    s(&v["name"]),
                    s(&v["backing_kept"])
                );
            }
        }
        VolumeCommand::Resize(a) => {
            let v = call(
                socket,
                "volume.resize",
                json!({"name": a.name, "size_bytes": a.size}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("volume {} is now {} bytes", a.name, s(&v["size_bytes"]));
            }
        }
        VolumeCommand::List(j) => {
            let v = call(socket, "volume.list", json!({}))?;
            if j.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .map(|a| a.iter().map(volume_row).collect())
                    .unwrap_or_default();
                table(&["NAME", "STATE", "SIZE", "EXPORTS", "PATH"], rows);
            }
        }
        VolumeCommand::Reopen(a) => {
            let v = call(socket, "volume.reopen", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("volume {} is {}", a.name, s(&v["state"]));
            }
        }
        VolumeCommand::Info(a) => {
            let v = call(socket, "volume.info", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                for key in [
                    "name",
                    "state",
                    "error",
                    "size_bytes",
                    "path",
                    "backend",
                    "engine",
                    "direct",
                    "services",
                    "exports",
                ] {
                    let val = match key {
                        "exports" => match export_words(&v).join(", ") {
                            e if e.is_empty() => "-".into(),
                            e => e,
                        },
                        "size_bytes" => v[key]
                            .as_u64()
                            .map(|n| format!("{n} ({})", human_bytes(n)))
                            .unwrap_or("-".into()),
                        _ => s(&v[key]),
                    };
                    println!("{:<10} {val}", format!("{key}:"));
                }
            }
        }
    }
    Ok(())
}

pub fn export(socket: &Path, cmd: ExportCommand) -> Result<()> {
    match cmd {
        ExportCommand::Nbd(a) => {
            let v = call(
                socket,
                "export.nbd",
                json!({
                    "volume": a.volume, "listen": a.listen, "read_only": a.read_only, "mode": a.mode,
                    "tls_certificates": a.tls_certificates.as_deref().map(absolute).transpose()?,
                }),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("exported {} over NBD at {}", s(&v["volume"]), s(&v["uri"]));
            }
        }
        ExportCommand::Ublk(a) => {
            let v = call(
                socket,
                "export.ublk",
                json!({"volume": a.volume, "queues": a.queues, "depth": a.depth, "read_only": a.read_only}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("{}", s(&v["device"]));
            }
        }
        ExportCommand::List(j) => {
            let v = call(socket, "export.list", json!({}))?;
            if j.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| {
                                vec![
                                    s(&e["volume"]),
                                    s(&e["kind"]),
                                    s(&e["state"]),
                                    s(&e["clients"]),
                                    if e["read_only"] == true {
                                        "ro".into()
                                    } else {
                                        "rw".into()
                                    },
                                    s(&e["uri"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["VOLUME", "KIND", "STATE", "CLIENTS", "MODE", "URI"], rows);
            }
        }
        ExportCommand::Remove(a) => {
            let v = call(
                socket,
                "export.remove",
                json!({"volume": a.volume, "kind": a.kind}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "stopped exporting {} ({})",
                    s(&v["volume"]),
                    s(&v["listen"])
                );
            }
        }
    }
    Ok(())
}

pub fn cache(socket: &Path, cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Enable(a) => {
            let write_back = a.mode == super::CacheMode::WriteBack;
            let safe_store = a.safe_store.as_deref().map(absolute).transpose()?;
            let v = call(
                socket,
                "cache.enable",
                json!({
                    "volume": a.volume,
                    "size_bytes": a.size,
                    "mode": if write_back { "write-back" } else { "write-through" },
                    "safe_store": safe_store,
                    "safe_store_bytes": write_back.then_some(a.safe_store_size),
                }),
            )?;
            match safe_store {
                _ if a.json => print_json(&v),
                Some(p) => println!(
                    "cache enabled on {} ({}, write-back, safe store {} of {})",
                    a.volume,
                    human_bytes(a.size),
                    p.display(),
                    human_bytes(a.safe_store_size)
                ),
                None => println!(
                    "cache enabled on {} ({}, write-through)",
                    a.volume,
                    human_bytes(a.size)
                ),
            }
        }
        CacheCommand::Disable(a) => {
            let v = call(socket, "cache.disable", json!({"volume": a.volume}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("cache disabled on {}", a.volume);
            }
        }
        CacheCommand::Stats(a) => {
            let v = call(socket, "cache.stats", json!({"volume": a.volume}))?;
            if a.json {
                print_json(&v);
                return Ok(());
            }
            let all = one_or_many(v);
            let rows = all
                .iter()
                .map(|c| {
                    vec![
                        s(&c["volume"]),
                        s(&c["mode"]),
                        format!(
                            "{} / {}",
                            c["cached_bytes"]
                                .as_u64()
                                .map(human_bytes)
                                .unwrap_or_default(),
                            c["capacity_bytes"]
                                .as_u64()
                                .map(human_bytes)
                                .unwrap_or_default()
                        ),
                        s(&c["read_hits"]),
                        s(&c["read_misses"]),
                        format!("{:.1}%", c["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0),
                        s(&c["readahead_hits"]),
                        s(&c["invalidated_blocks"]),
                        c["dirty_bytes"]
                            .as_u64()
                            .map(human_bytes)
                            .unwrap_or("-".into()),
                        c["destaged_bytes"]
                            .as_u64()
                            .map(human_bytes)
                            .unwrap_or("-".into()),
                        s(&c["writes_coalesced"]),
                        s(&c["write_cancellations"]),
                        match &c["failed"] {
                            Value::String(f) => format!("failed: {f}"),
                            _ => "ok".into(),
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "VOLUME",
                    "MODE",
                    "CACHED",
                    "HITS",
                    "MISSES",
                    "HIT%",
                    "RA-HITS",
                    "INVALIDATED",
                    "DIRTY",
                    "DESTAGED",
                    "COALESCED",
                    "CANCELLED",
                    "STATE",
                ],
                rows,
            );
        }
    }
    Ok(())
}

pub fn status(socket: &Path, json_out: bool) -> Result<()> {
    let v = call(socket, "status", json!({}))?;
    if json_out {
        print_json(&v);
    } else {
        for key in [
            "version",
            "pid",
            "data_dir",
            "socket",
            "uptime_s",
            "volumes",
            "volumes_offline",
            "exports",
        ] {
            println!("{:<16} {}", format!("{key}:"), s(&v[key]));
        }
    }
    Ok(())
}

pub fn events(socket: &Path, a: EventsArgs) -> Result<()> {
    // `--now` alone prints the state of everything and exits; with
    // `--follow`, or with neither, the stream goes on.
    let follow = a.follow || !a.now;
    let mut client = connect(socket)?;
    let reply = client.call("events.follow", json!({"now": a.now}))?;
    if !reply.ok {
        bail!("{}", reply.error.map(|e| e.message).unwrap_or_default());
    }
    if follow {
        eprintln!(
            "umbra: following events from {} (Ctrl-C to stop)",
            socket.display()
        );
    }
    while let Some(v) = client.read_value()? {
        let e = &v["event"];
        if !follow && e["kind"] == "now.done" {
            break;
        }
        if a.json {
            println!("{e}");
        } else {
            println!(
                "{:>6}  {:<18} {:<14} {}",
                s(&e["seq"]),
                s(&e["kind"]),
                s(&e["object"]),
                s(&e["detail"])
            );
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    Ok(())
}
