//! `umbra image ...`: point-in-time copies.

use super::commands::{
    absolute, call, human_bytes, one_or_many, print_json, progress_bar, s, strings, table,
};
use super::parse_size;
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Establish a point-in-time shadow of a master volume
    #[command(
        long_about = "Establish an image set: MASTER's contents at this instant become \
SHADOW's contents. It takes the same few milliseconds for any volume size: nothing is copied \
now. Both volumes stay readable and writable; SHADOW is an ordinary volume you can export.\n\n\
Modes:\n  dependent    copy-on-write only: before a master chunk is first overwritten, its \
point-in-time data is saved to the shadow; unchanged shadow chunks are read from the master.\n  \
independent  also copies every chunk to the shadow in the background (see `image wait`); \
once done the shadow stands alone.\n  \
compact      dependent, with a shadow store smaller than the master (--shadow-size): saved \
chunks are packed into it through an index, then into an --overflow volume.\n\n\
SHADOW is created in the data dir at the master's size when no volume has that name. The \
bitmap volume (one bit per chunk, two bitmaps) goes to DATA_DIR/SET.bitmap unless --bitmap \
names a new file. For a consistent filesystem image, have the filesystem quiesced (fsfreeze) \
or accept a crash-consistent one.\n\n\
Examples:\n  umbra image enable nightly --master db --shadow db-snap --mode dependent\n  \
umbra image enable full --master db --shadow db-copy --mode independent --wait"
    )]
    Enable(EnableArgs),
    /// Take a new point in time (--to shadow) or restore the master (--to master), changed chunks only
    #[command(
        long_about = "Incremental update. --to shadow: the shadow becomes the master's \
contents now (a dependent shadow: instantly; an independent one: only the chunks that changed \
since the last point in time are copied). --to master: restore; the master returns to the \
shadow's contents, copying only the chunks that differ. While a restore runs the master \
already reads as restored. Every other shadow of that master keeps its own point in time.\n\n\
A restore asks for confirmation unless --yes, and is refused while the master is exported \
read-write unless --force (unmount it first).\n\n\
Examples:\n  umbra image update nightly --to shadow\n  umbra image update --group all --to shadow\n  \
umbra image update nightly --to master --yes --wait"
    )]
    Update(UpdateArgs),
    /// Like update, but copy every chunk (a full copy)
    #[command(
        long_about = "Full copy: like `image update`, but every chunk is copied in the \
given direction, not only the changed ones. For a dependent set this is the same as update.\n\n\
Examples:\n  umbra image copy full --to shadow --wait\n  umbra image copy full --to master --yes"
    )]
    Copy(UpdateArgs),
    /// Wait until a set's copy finishes, with a progress bar on a terminal
    #[command(
        long_about = "Block until the set has no copy running (finished, aborted or \
failed). Exits 1 when the set ends failed or chunks remain (an aborted copy).\n\n\
Example:\n  umbra image wait full --timeout 600"
    )]
    Wait(WaitArgs),
    /// Stop a running copy; the target stays dependent on the source for what is left
    #[command(
        long_about = "Stop a set's background copy. Chunks not copied yet keep being \
read from the source side (the target is a dependent copy of them), so nothing is wrong, \
only incomplete. `image update` later finishes the job.\n\nExample:\n  umbra image abort full"
    )]
    Abort(SetArg),
    /// End a set (the bitmap volume is deleted)
    #[command(
        long_about = "End an image set. The layers leave both volumes while they serve; \
the bitmap volume is deleted. An independent shadow stays an ordinary volume with its data; \
a dependent shadow does not hold a whole point in time and is left meaningless. Refused while \
a restore is unfinished, and for an incomplete independent shadow unless --force.\n\n\
Example:\n  umbra image disable nightly"
    )]
    Disable(DisableArgs),
    /// Slow the background copy: sleep DELAY ms after every UNIT chunks
    #[command(
        long_about = "Throttle the set's copy engine so it leaves bandwidth to \
applications: after every UNIT chunks copied it sleeps DELAY milliseconds. UNIT 0 removes \
the throttle. Takes effect at once and persists.\n\nExample:\n  umbra image throttle full --delay-ms 10 --unit 32"
    )]
    Throttle(ThrottleArgs),
    /// List image sets
    #[command(
        long_about = "List image sets: mode, state, direction, chunks differing and \
left to copy, percent done.\n\nExample:\n  umbra image list --json"
    )]
    List(JsonArg),
    /// Show one image set
    #[command(
        long_about = "Show one set: master, shadow, mode, state (idle, copying, \
aborted, failed), copy direction, chunk size, chunks total / differing / left to copy, \
percent, bitmap volume, groups.\n\nExample:\n  umbra image info nightly --json"
    )]
    Info(InfoArgs),
    /// Group sets so that one update takes a single point in time across them
    #[command(subcommand)]
    Group(GroupCommand),
    /// Overflow volumes: shared spill space for compact shadows
    #[command(subcommand)]
    Overflow(OverflowCommand),
}

#[derive(Subcommand)]
pub enum OverflowCommand {
    /// Create an overflow volume
    #[command(
        long_about = "Create an overflow volume: space that compact shadows spill saved \
chunks into once their own store is full. Several sets can share one. A set whose shadow and \
overflow are both full goes to the failed state (its shadow offline) with an event; the \
master keeps working.\n\nExamples:\n  umbra image overflow create spill --size 4G\n  \
umbra image enable s1 --master db --shadow db-c --mode compact --shadow-size 1G --overflow spill"
    )]
    Create(OverflowCreate),
    /// Let a compact set spill into an overflow volume
    #[command(
        long_about = "Attach an overflow volume to a compact set.\n\nExample:\n  umbra image overflow attach s1 spill"
    )]
    Attach(OverflowAttach),
    /// Stop a compact set spilling (refused while its chunks live there)
    #[command(
        long_about = "Detach a compact set's overflow volume. Refused while chunks of the \
set live there: refresh the shadow or disable the set first. When the last set leaves an \
overflow volume, its space is free again.\n\nExample:\n  umbra image overflow detach s1"
    )]
    Detach(SetArg),
    /// Capacity, use and sets of overflow volumes
    #[command(
        long_about = "Show overflow volumes: capacity and used chunks, attached sets.\n\nExample:\n  umbra image overflow info --json"
    )]
    Info(OverflowInfo),
    /// Delete an overflow volume no set uses
    #[command(
        long_about = "Delete an overflow volume (and its file); refused while a set uses it.\n\nExample:\n  umbra image overflow remove spill"
    )]
    Remove(SetArg),
}

#[derive(Args)]
pub struct OverflowCreate {
    name: String,
    /// Space for chunks, e.g. 4G
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Chunk size of the sets that will use it
    #[arg(long, value_parser = parse_size, default_value = "32K")]
    chunk_size: u64,
    /// File to create [default: DATA_DIR/NAME.overflow]
    #[arg(long)]
    path: Option<PathBuf>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct OverflowAttach {
    set: String,
    overflow: String,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct OverflowInfo {
    name: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a group of sets
    #[command(
        long_about = "Create a group. `image update --group G` quiesces every master \
and shadow of the group together, then takes the new point in time of all sets at once: \
a database on several volumes gets one consistent image.\n\n\
Example:\n  umbra image group create db-all data-snap log-snap"
    )]
    Create(GroupCreate),
    /// Remove a group (its sets stay)
    #[command(
        long_about = "Remove a group; its sets are not touched.\n\nExample:\n  umbra image group remove db-all"
    )]
    Remove(SetArg),
    /// List groups
    #[command(
        long_about = "List groups and their sets.\n\nExample:\n  umbra image group list --json"
    )]
    List(JsonArg),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    Independent,
    Dependent,
    /// Dependent, with a shadow smaller than the master (needs --shadow-size)
    Compact,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Target {
    Shadow,
    Master,
}

#[derive(Args)]
pub struct EnableArgs {
    /// Name of the new set
    set: String,
    /// Volume to take the point in time of
    #[arg(long)]
    master: String,
    /// Volume that shows the point in time (created at the master's size if missing)
    #[arg(long)]
    shadow: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Bitmap volume file to create [default: DATA_DIR/SET.bitmap]
    #[arg(long)]
    bitmap: Option<PathBuf>,
    /// Copy and tracking unit: a power of two from 4K to 1M
    #[arg(long, value_parser = parse_size, default_value = "32K")]
    chunk_size: u64,
    /// Keep the bits in memory, written only at a clean shutdown: no bitmap I/O
    /// on writes, but after a crash an idle independent set is recopied in full
    /// (a new point in time) and any other set's shadow goes offline
    #[arg(long)]
    memory_bitmap: bool,
    /// Size of a shadow volume created by this command [default: the master's
    /// size]; for a compact set, the store for saved chunks
    #[arg(long, value_parser = parse_size)]
    shadow_size: Option<u64>,
    /// A compact set's overflow volume (see `image overflow create`)
    #[arg(long)]
    overflow: Option<String>,
    /// Throttle the background copy from the start: sleep this many ms…
    #[arg(long, default_value_t = 0, requires = "throttle_unit")]
    throttle_delay_ms: u32,
    /// …after every this many chunks (see `image throttle`)
    #[arg(long, default_value_t = 0)]
    throttle_unit: u32,
    /// Wait for an independent set's copy to finish
    #[arg(long)]
    wait: bool,
    /// Overwrite an existing shadow volume that holds data without asking
    #[arg(long, short = 'y')]
    yes: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// The set (or use --group)
    #[arg(required_unless_present = "group", conflicts_with = "group")]
    set: Option<String>,
    /// Every set of this group, at one point in time
    #[arg(long)]
    group: Option<String>,
    /// shadow: new point in time; master: restore the master
    #[arg(long, value_enum)]
    to: Target,
    /// Do not ask before restoring the master
    #[arg(long, short = 'y')]
    yes: bool,
    /// Restore even though the master is exported read-write
    #[arg(long)]
    force: bool,
    /// Wait for the copy to finish
    #[arg(long)]
    wait: bool,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    set: String,
    /// Give up after this long (exit 1; 30s, 10m); without it, wait as long as it takes
    #[arg(long, value_parser = super::parse_duration_ms, value_name = "DURATION")]
    timeout: Option<u64>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SetArg {
    name: String,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DisableArgs {
    set: String,
    /// Disable even though the independent shadow is incomplete
    #[arg(long)]
    force: bool,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ThrottleArgs {
    set: String,
    /// Milliseconds to sleep
    #[arg(long)]
    delay_ms: u32,
    /// Chunks copied between sleeps (0: no throttle)
    #[arg(long)]
    unit: u32,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct JsonArg {
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    set: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GroupCreate {
    group: String,
    /// Sets to put in the group
    #[arg(required = true)]
    sets: Vec<String>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

pub fn run(socket: &Path, cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Enable(a) => {
            let enable = |overwrite: bool| {
                call(
                    socket,
                    "image.enable",
                    json!({
                        "overwrite": overwrite,
                        "name": a.set,
                        "master": a.master,
                        "shadow": a.shadow,
                        "mode": match a.mode {
                            Mode::Independent => "independent",
                            Mode::Dependent => "dependent",
                            Mode::Compact => "compact",
                        },
                        "overflow": a.overflow,
                        "chunk_bytes": u32::try_from(a.chunk_size).unwrap_or(u32::MAX),
                        "bitmap": a.bitmap.as_deref().map(absolute).transpose()?,
                        "memory_bitmap": a.memory_bitmap,
                        "shadow_size_bytes": a.shadow_size,
                        "throttle_delay_ms": a.throttle_delay_ms,
                        "throttle_unit": a.throttle_unit,
                    }),
                )
            };
            let v = match enable(a.yes) {
                // A shadow that holds data: ask on a terminal.
                Err(e) if e.to_string().contains("holds data") => {
                    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        return Err(e);
                    }
                    eprint!("{e}\noverwrite volume {}? [y/N] ", a.shadow);
                    let mut answer = String::new();
                    std::io::stdin().read_line(&mut answer)?;
                    if !matches!(answer.trim(), "y" | "Y" | "yes") {
                        anyhow::bail!(
                            "image set {}: not enabled; {} left as it is",
                            a.set,
                            a.shadow
                        );
                    }
                    enable(true)?
                }
                other => other?,
            };
            if a.json && a.wait {
                // The set once its copy is done.
                wait_for(socket, &a.set, None, true)?;
                let mut now = call(socket, "image.info", json!({"name": a.set}))?;
                for k in ["establish_us", "shadow_created"] {
                    now[k] = v[k].clone();
                }
                print_json(&now);
                return Ok(());
            }
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "image set {} enabled: {} shadow {} of {} (established in {} µs{})",
                    a.set,
                    s(&v["mode"]),
                    s(&v["shadow"]),
                    s(&v["master"]),
                    s(&v["establish_us"]),
                    if v["shadow_created"] == true {
                        ", shadow volume created"
                    } else {
                        ""
                    }
                );
            }
            if a.wait {
                wait_for(socket, &a.set, None, a.json)?;
            }
        }
        ImageCommand::Update(a) => update(socket, a, false)?,
        ImageCommand::Copy(a) => update(socket, a, true)?,
        ImageCommand::Wait(a) => {
            wait_for(socket, &a.set, a.timeout.map(Duration::from_millis), a.json)?;
            if a.json {
                print_json(&call(socket, "image.info", json!({"name": a.set}))?);
            }
        }
        ImageCommand::Abort(a) => {
            let v = call(socket, "image.abort", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "copy of image set {} aborted with {} chunks left (read from the source until updated)",
                    a.name,
                    s(&v["chunks_to_copy"])
                );
            }
        }
        ImageCommand::Disable(a) => {
            let v = call(
                socket,
                "image.disable",
                json!({"name": a.set, "force": a.force}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!("image set {} disabled: {}", a.set, s(&v["note"]));
            }
        }
        ImageCommand::Throttle(a) => {
            let v = call(
                socket,
                "image.throttle",
                json!({"name": a.set, "delay_ms": a.delay_ms, "unit": a.unit}),
            )?;
            if a.json {
                print_json(&v);
            } else if a.unit == 0 {
                println!("image set {}: copy not throttled", a.set);
            } else {
                println!(
                    "image set {}: copy sleeps {} ms every {} chunks",
                    a.set, a.delay_ms, a.unit
                );
            }
        }
        ImageCommand::List(j) => {
            let v = call(socket, "image.list", json!({}))?;
            if j.json {
                print_json(&v);
            } else {
                let rows = v.as_array().cloned().unwrap_or_default();
                print_sets(&rows);
            }
        }
        ImageCommand::Info(a) => {
            let v = call(socket, "image.info", json!({"name": a.set}))?;
            if a.json {
                print_json(&v);
            } else {
                for key in [
                    "name",
                    "master",
                    "shadow",
                    "mode",
                    "state",
                    "direction",
                    "chunk_bytes",
                    "chunks_total",
                    "chunks_differing",
                    "chunks_to_copy",
                    "percent",
                    "memory_bitmap",
                    "bitmap",
                    "groups",
                    "error",
                ] {
                    println!("{key:<17} {}", s(&v[key]));
                }
                if let Some(t) = v.get("throttle") {
                    println!(
                        "{:<17} {} ms every {} chunks",
                        "throttle",
                        s(&t["delay_ms"]),
                        s(&t["unit"])
                    );
                }
            }
        }
        ImageCommand::Overflow(o) => overflow(socket, o)?,
        ImageCommand::Group(g) => match g {
            GroupCommand::Create(a) => {
                let v = call(
                    socket,
                    "image.group.create",
                    json!({"name": a.group, "sets": a.sets}),
                )?;
                if a.json {
                    print_json(&v);
                } else {
                    println!("image group {} created: {}", a.group, a.sets.join(" "));
                }
            }
            GroupCommand::Remove(a) => {
                let v = call(socket, "image.group.remove", json!({"name": a.name}))?;
                if a.json {
                    print_json(&v);
                } else {
                    println!("image group {} removed", a.name);
                }
            }
            GroupCommand::List(j) => {
                let v = call(socket, "image.group.list", json!({}))?;
                if j.json {
                    print_json(&v);
                } else {
                    let rows = v
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|g| {
                            let sets = strings(&g["sets"]);
                            vec![s(&g["name"]), sets.join(" ")]
                        })
                        .collect();
                    table(&["GROUP", "SETS"], rows);
                }
            }
        },
    }
    Ok(())
}

fn print_sets(rows: &[Value]) {
    let rows = rows
        .iter()
        .map(|v| {
            vec![
                s(&v["name"]),
                s(&v["master"]),
                s(&v["shadow"]),
                s(&v["mode"]),
                s(&v["state"]),
                s(&v["direction"]),
                s(&v["chunks_differing"]),
                s(&v["chunks_to_copy"]),
                format!("{}%", s(&v["percent"])),
                v["chunk_bytes"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or("-".into()),
            ]
        })
        .collect();
    table(
        &[
            "SET",
            "MASTER",
            "SHADOW",
            "MODE",
            "STATE",
            "DIRECTION",
            "DIFFERING",
            "TO-COPY",
            "DONE",
            "CHUNK",
        ],
        rows,
    );
}

fn update(socket: &Path, a: UpdateArgs, full: bool) -> Result<()> {
    let what = match (&a.set, &a.group) {
        (Some(s), _) => format!("image set {s}"),
        (_, Some(g)) => format!("image group {g}"),
        _ => bail!("name a set or --group"),
    };
    if a.to == Target::Master && !a.yes {
        confirm(&format!(
            "Restore the master of {what} from its shadow? Data written to the master since the \
             point in time is overwritten."
        ))?;
    }
    let v = call(
        socket,
        "image.update",
        json!({
            "name": a.set,
            "group": a.group,
            "to": match a.to { Target::Shadow => "shadow", Target::Master => "master" },
            "full": full,
            "force": a.force,
        }),
    )?;
    let sets = v.as_array().cloned().unwrap_or_default();
    for set in sets.iter().filter(|_| !a.json) {
        println!(
            "{} of image set {}: {} chunks to copy",
            match (a.to, full) {
                (Target::Master, _) => "restore",
                (_, true) => "full copy",
                _ => "update",
            },
            s(&set["name"]),
            s(&set["chunks_to_copy"]),
        );
    }
    if a.wait {
        for set in &sets {
            wait_for(socket, &s(&set["name"]), None, a.json)?;
        }
    }
    if a.json {
        // The sets as they are now: after the copy with --wait.
        let now: Vec<Value> = sets
            .iter()
            .map(|set| call(socket, "image.info", json!({"name": set["name"]})))
            .collect::<Result<_>>()?;
        print_json(&Value::Array(now));
    }
    Ok(())
}

fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} Refusing without --yes (stdin is not a terminal)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing changed");
    }
    Ok(())
}

/// Poll the set until no copy runs; a progress bar when stdout is a terminal.
fn wait_for(socket: &Path, set: &str, timeout: Option<Duration>, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let bar = if quiet {
        None
    } else {
        progress_bar(
            set,
            "{msg} [{bar:40}] {pos}/{len} chunks ({percent}%) eta {eta}",
        )
    };
    loop {
        let v = call(
            socket,
            "image.wait",
            json!({"name": set, "timeout_ms": 500}),
        )?;
        let left = v["chunks_to_copy"].as_u64().unwrap_or(0);
        if let Some(b) = &bar {
            let total = v["chunks_total"].as_u64().unwrap_or(0);
            let pct = v["percent"].as_f64().unwrap_or(100.0);
            b.set_length(total);
            b.set_position((total as f64 * pct / 100.0) as u64);
        }
        if v["done"] == true {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            match v["state"].as_str() {
                Some("failed") => bail!("image set {set} failed: {}", s(&v["error"])),
                Some("aborted") => bail!("image set {set}: copy stopped with {left} chunks left"),
                _ => {
                    if !quiet {
                        println!(
                            "image set {set}: copy complete ({} chunks differ)",
                            s(&v["chunks_differing"])
                        );
                    }
                    return Ok(());
                }
            }
        }
        if let Some(t) = timeout {
            if start.elapsed() >= t {
                if let Some(b) = &bar {
                    b.abandon();
                }
                bail!(
                    "image set {set}: still copying after {} ({left} chunks left)",
                    super::duration_text(t.as_millis() as u64)
                );
            }
        }
    }
}

fn overflow(socket: &Path, cmd: OverflowCommand) -> Result<()> {
    match cmd {
        OverflowCommand::Create(a) => {
            let v = call(
                socket,
                "image.overflow.create",
                json!({
                    "name": a.name,
                    "size_bytes": a.size,
                    "chunk_bytes": u32::try_from(a.chunk_size).unwrap_or(u32::MAX),
                    "path": a.path.as_deref().map(absolute).transpose()?,
                }),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "overflow volume {} created: {} chunks on {}",
                    a.name,
                    s(&v["capacity_chunks"]),
                    s(&v["path"])
                );
            }
        }
        OverflowCommand::Attach(a) => {
            let v = call(
                socket,
                "image.overflow.attach",
                json!({"set": a.set, "overflow": a.overflow}),
            )?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "image set {} spills into overflow volume {}",
                    a.set, a.overflow
                );
            }
        }
        OverflowCommand::Detach(a) => {
            let v = call(socket, "image.overflow.detach", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("image set {} has no overflow volume", a.name);
            }
        }
        OverflowCommand::Info(a) => {
            let v = call(socket, "image.overflow.info", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
                return Ok(());
            }
            let all = one_or_many(v);
            let rows = all
                .iter()
                .map(|o| {
                    let sets = strings(&o["sets"]);
                    vec![
                        s(&o["name"]),
                        s(&o["state"]),
                        format!("{} / {}", s(&o["used_chunks"]), s(&o["capacity_chunks"])),
                        sets.join(" "),
                        s(&o["path"]),
                    ]
                })
                .collect();
            table(&["OVERFLOW", "STATE", "USED", "SETS", "PATH"], rows);
        }
        OverflowCommand::Remove(a) => {
            let v = call(socket, "image.overflow.remove", json!({"name": a.name}))?;
            if a.json {
                print_json(&v);
            } else {
                println!("overflow volume {} removed", a.name);
            }
        }
    }
    Ok(())
}
