//! `umbra hook`: run a command on events.

use super::commands::{absolute, call, print_json, s, table};
use super::parse_duration_ms;
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum HookCommand {
    /// Run a command for every event of the given kinds
    #[command(
        long_about = "Run a command for every event whose kind matches one of --on's \
patterns: an exact kind (image.failed), a prefix ending in '*' (repl.*), or '*' for all. \
The command runs without a shell, once per event, outside the daemon's data path: the event \
is on its stdin as one JSON line and in the environment (UMBRA_HOOK, UMBRA_EVENT_SEQ, \
UMBRA_EVENT_TIME_MS, UMBRA_EVENT_KIND, UMBRA_EVENT_OBJECT_KIND, UMBRA_EVENT_OBJECT, \
UMBRA_EVENT_DETAIL, UMBRA_EVENT_JSON, and each of the event's fields as UMBRA_FIELD_<NAME>, \
e.g. UMBRA_FIELD_SIZE_BYTES). A command still running at --timeout is killed. Failures are logged and \
shown in `hook list`; they never block the daemon. Hooks persist across restarts; adding the \
same hook again changes nothing.\n\n\
Example:\n  umbra hook add page-me --on 'repl.*,image.failed,volume.failed,cluster.*' \
--run /usr/local/bin/page-oncall --timeout 30s"
    )]
    Add(HookAdd),
    /// List hooks with how their runs went
    List(HookList),
    /// Stop running a hook and forget it
    Remove(HookName),
}

#[derive(Args)]
pub struct HookAdd {
    name: String,
    /// Comma-separated event kinds: exact, prefix*, or *
    #[arg(long, value_delimiter = ',', required = true)]
    on: Vec<String>,
    /// The command to run (made absolute; no shell, no arguments)
    #[arg(long)]
    run: PathBuf,
    /// Kill the command after this long (10s, 500ms)
    #[arg(long, value_parser = parse_duration_ms, default_value = "10s", value_name = "DURATION")]
    timeout: u64,
    /// Print the hook as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct HookList {
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct HookName {
    name: String,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, cmd: HookCommand) -> Result<()> {
    match cmd {
        HookCommand::Add(a) => {
            let v = call(
                socket,
                "hook.add",
                json!({
                    "name": a.name,
                    "on": a.on,
                    "run": absolute(&a.run)?,
                    "timeout_ms": a.timeout,
                }),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "hook {} runs {} on {}",
                    s(&v["name"]),
                    s(&v["run"]),
                    v["on"]
                        .as_array()
                        .map(|p| p.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                );
            }
        }
        HookCommand::List(a) => {
            let v = call(socket, "hook.list", json!({}))?;
            if a.json {
                print_json(&v);
                return Ok(());
            }
            let rows = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    let st = &h["status"];
                    vec![
                        s(&h["name"]),
                        h["on"]
                            .as_array()
                            .map(|p| p.iter().map(s).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        s(&h["run"]),
                        s(&st["runs"]),
                        s(&st["failures"]),
                        s(&st["dropped"]),
                        s(&st["last_error"]),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "ON",
                    "RUN",
                    "RUNS",
                    "FAILED",
                    "DROPPED",
                    "LAST ERROR",
                ],
                rows,
            );
        }
        HookCommand::Remove(a) => {
            let v = call(socket, "hook.remove", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("hook {} removed", a.name);
            }
        }
    }
    Ok(())
}
