//! Command-line interface: argument definitions and dispatch.
//!
//! Exit codes: 0 success, 1 the operation failed (a message on stderr names
//! the object and the cause), 2 usage error (clap's own exit code).

mod cluster;
mod commands;
mod docs;
mod group;
mod hook;
mod image;
mod repl;
mod serve;
mod stats;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use umbra::backend::EngineKind;

/// Exit code for a failed operation.
pub const EXIT_FAILED: i32 = 1;

#[derive(Parser)]
#[command(
    name = "umbra",
    version,
    about = "A block-device layer in user space: volumes, data services, NBD exports",
    long_about = "umbra serves volumes (files or raw block devices) as block devices over NBD, \
routing every I/O through a stack of data services, all managed by one daemon.\n\n\
Start the daemon, then drive it with the other commands:\n\n  \
umbra serve &                                   # ./umbra-data, default volume on NBD :10809\n  \
umbra volume create db --size 4G\n  \
umbra export nbd db --listen 127.0.0.1:10810\n  \
nbdinfo nbd://127.0.0.1:10810/db",
    propagate_version = true
)]
pub struct Cli {
    /// Admin socket of the daemon to talk to [default: $UMBRA_DATA_DIR/umbra.sock or ./umbra-data/umbra.sock]
    #[arg(long, global = true, env = "UMBRA_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it cleanly)
    #[command(long_about = "Run the daemon in the foreground.\n\n\
The data directory holds the configuration (umbra.json), the admin socket (umbra.sock) and, \
by default, the volumes' backing files. On a first start with no configuration, umbra creates \
a 1 GiB volume named `default` and exports it over NBD, then prints how to connect. \
Volumes and exports are restored at every later start.\n\n\
Logs go to stderr; set RUST_LOG=debug for more. SIGTERM or SIGINT drain in-flight I/O, \
flush every volume and persist the configuration before exit.\n\n\
Example:\n  umbra serve --data-dir /var/lib/umbra")]
    Serve(serve::ServeArgs),

    /// Create, add, remove and inspect volumes
    #[command(subcommand)]
    Volume(VolumeCommand),

    /// Export volumes over NBD, list and remove exports
    #[command(subcommand)]
    Export(ExportCommand),

    /// Switch a volume's block cache on and off, and read its statistics
    #[command(subcommand)]
    Cache(CacheCommand),

    /// Point-in-time copies: shadows of a master volume, update, restore, groups
    #[command(subcommand)]
    Image(image::ImageCommand),

    /// Remote mirroring: sync, async and hybrid replication sets, managed from the primary
    #[command(subcommand)]
    Repl(repl::ReplCommand),

    /// A group's state and seed 000's operations: online, offline, swap, failover, failback, join
    #[command(subcommand)]
    Group(group::GroupCommand),

    /// Membership of a cluster on etcd: leases, group locks, automatic failover
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),

    /// Write the man pages and shell completions (from these definitions) into DIR
    #[command(hide = true)]
    GenerateDocs(docs::GenerateDocs),

    /// Forward TCP with injected one-way delay (replication benchmarks)
    #[command(hide = true)]
    FaultProxy(repl::FaultProxyArgs),

    /// Run a command on events (notification hooks): add, list, remove
    #[command(subcommand)]
    Hook(hook::HookCommand),

    /// Per-volume I/O: requests, bytes, errors, latency; rates with --interval
    #[command(
        long_about = "Per-volume I/O counted where requests enter the volume (every export's): \
reads, writes, flushes, discards and write-zeroes, bytes, errors, requests in flight, and \
latency quantiles per operation. Without --interval: totals since the volume came online. \
With it: rates over each interval, like `zpool iostat`.\n\n\
Examples:\n  umbra stats\n  umbra stats db --interval 1s\n  umbra stats --json | jq '.volumes[].io.write'"
    )]
    Stats(stats::StatsArgs),

    /// Show the daemon's state
    #[command(
        long_about = "Show the daemon's state: version, data dir, uptime, volume and export counts.\n\n\
Example:\n  umbra status --json"
    )]
    Status(JsonFlag),

    /// Stream state changes (volumes, exports, services) as they happen
    #[command(
        long_about = "Stream state changes as they happen: volumes created and removed, \
exports added and removed, and every data-service state change. Runs until interrupted; \
`--now` alone prints the state of every object and exits.\n\n\
Examples:\n  umbra events --follow --json | jq .\n  umbra events --now --follow --json   # state first, then changes\n  \
umbra events --now --json | jq -c 'select(.kind == \"set.state\")'"
    )]
    Events(EventsArgs),
}

#[derive(Args)]
pub struct JsonFlag {
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EventsArgs {
    /// Keep streaming until interrupted (what `events` does unless only
    /// `--now` is given)
    #[arg(long, short)]
    follow: bool,
    /// Start with the current state of every object (`KIND.state` events:
    /// volumes, exports, image sets, replication sets, hooks), then
    /// `now.done`; without `--follow`, exit there
    #[arg(long)]
    now: bool,
    /// Print each event as one JSON line
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a new volume on a sparse backing file
    #[command(long_about = "Create a new volume backed by a new sparse file, \
DATA_DIR/NAME.img unless --path is given. Refuses to overwrite an existing file \
(use `volume add` to serve one).\n\n\
Examples:\n  umbra volume create db --size 4G\n  umbra volume create scratch --size 512M --path /srv/scratch.img --engine sync")]
    Create(VolumeCreate),
    /// Serve an existing file or raw block device as a volume
    #[command(
        long_about = "Serve an existing regular file or raw block device as a volume; \
its size is the file's or device's size.\n\n\
Examples:\n  umbra volume add data --path /dev/sdb\n  umbra volume add vm1 --path /srv/vm1.raw --direct"
    )]
    Add(VolumeAdd),
    /// Stop serving a volume (its backing file is kept unless --delete-data)
    #[command(
        long_about = "Stop serving a volume and forget it. The backing file or device is \
kept, unless --delete-data deletes the backing file (asked first on a terminal; --yes to \
skip the question, which scripts must pass; a block device is never deleted). A volume that \
is exported is refused unless --force, which removes its exports first.\n\n\
Examples:\n  umbra volume remove scratch --force\n  umbra volume remove scratch --delete-data --yes"
    )]
    Remove(VolumeRemove),
    /// Grow (or shrink) a volume's backing file
    #[command(
        long_about = "Change a volume's size: its backing file grows (sparse) or shrinks to \
--size. NBD clients that connect afterwards see the new size; connected ones keep the size \
they negotiated. Shrinking is refused while the volume is exported (clients may use the \
end); any resize is refused while services (a cache, an image set, replication) or a ublk \
export use the volume, and for a raw block device (resize the device itself).\n\n\
Example:\n  umbra volume resize db --size 20G"
    )]
    Resize(VolumeResize),
    /// List volumes
    #[command(
        long_about = "List volumes with their state, size, exports and backing path.\n\n\
Example:\n  umbra volume list --json"
    )]
    List(JsonFlag),
    /// Show one volume in detail
    #[command(
        long_about = "Show one volume: state, size, backend and engine, service stack, exports.\n\n\
Example:\n  umbra volume info db --json"
    )]
    Info(NameJson),
    /// Reopen a volume whose backend failed (or that could not be opened); alias: reset
    #[command(
        long_about = "Reopen a volume whose backend failed: after a failed flush or FUA write the file backend refuses writes and flushes (the kernel may have dropped the data it could not write, and a later flush would report success for it; reads go on), and `volume info` says `failed`. Once the cause is fixed (space freed, the device back), reopen gives the volume a fresh backend on the same file and its NBD exports serve from it; what the failed backend had not made durable is lost. Refused while the storage plainly still fails (the first block is written back and flushed first; a device that fails only for new allocations passes and fails again at its next flush). Also opens a volume that was offline since start-up. A healthy volume is left alone. Volumes with services (cache, image, replication) or a ublk export are refused: restart the daemon for those.\n\nExample:\n  umbra volume reopen db"
    )]
    #[command(alias = "reset")]
    Reopen(NameJson),
}

#[derive(Args)]
pub struct VolumeCreate {
    /// Volume name (letters, digits, '.', '_', '-')
    name: String,
    /// Size, e.g. 1G, 512M, 4096 (binary units; a multiple of 512 bytes)
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Backing file to create [default: DATA_DIR/NAME.img]
    #[arg(long)]
    path: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VolumeAdd {
    /// Volume name (letters, digits, '.', '_', '-')
    name: String,
    /// Existing regular file or block device
    #[arg(long)]
    path: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BackendArgs {
    /// I/O engine: auto = io_uring for O_DIRECT and raw devices, pread/pwrite for buffered files
    #[arg(long, value_enum, default_value_t = EngineKind::Auto)]
    engine: EngineKind,
    /// Open the backing file with O_DIRECT (bypass the page cache)
    #[arg(long)]
    direct: bool,
    /// Add this delay to every request (`2ms`, `500us`): a slow device for
    /// tests and benchmarks, like dm-delay
    #[arg(long, value_parser = parse_latency_ms, value_name = "DURATION")]
    latency: Option<f64>,
}

/// `2ms`, `500us`, `0.5ms`, `1s` as milliseconds.
fn parse_latency_ms(s: &str) -> Result<f64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return Err(format!("{s:?}: give a unit, such as 2ms or 500us"));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 2ms or 500us"))?;
    if !(0.0..=10_000.0).contains(&(v * scale)) {
        return Err(format!("{s:?}: give 0 to 10s"));
    }
    Ok(v * scale)
}

#[derive(Args)]
pub struct VolumeRemove {
    /// Volume name
    name: String,
    /// Remove the volume's exports first (their clients are disconnected)
    #[arg(long)]
    force: bool,
    /// Delete the backing file too (a block device is never deleted)
    #[arg(long)]
    delete_data: bool,
    /// Do not ask before deleting data
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VolumeResize {
    /// Volume name
    name: String,
    /// New size, e.g. 20G (binary units; a multiple of 512 bytes)
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Print the volume as JSON after the change
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NameJson {
    /// Name of the object
    name: String,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Export a volume over NBD (export name = volume name)
    #[command(
        long_about = "Export a volume over NBD. The NBD export name is the volume name. \
Several volumes can share one listen address. Listens on 127.0.0.1:10809 unless --listen \
gives HOST:PORT or unix:PATH.\n\n\
Examples:\n  umbra export nbd db\n  umbra export nbd db --listen unix:/run/umbra-db.sock\n\n\
Then, for instance:\n  nbdinfo nbd://127.0.0.1:10809/db\n  \
qemu-img convert -O raw disk.qcow2 nbd://127.0.0.1:10809/db"
    )]
    Nbd(ExportNbd),
    /// Export a volume as a Linux block device /dev/ublkbN (needs ublk_drv)
    #[command(
        long_about = "Export a volume as a Linux block device through the kernel's ublk \
driver (`modprobe ublk_drv`; Linux 6.x, run as root). Prints the device path. Flush and FUA \
reach the volume's services, discard and write-zeroes are supported. The device survives a \
crash of the daemon (user recovery): the restarted daemon re-attaches to the same \
/dev/ublkbN, and mounted filesystems keep working. `export remove` stops and deletes it.\n\n\
Examples:\n  umbra export ublk db\n  umbra export ublk db --queues 2 --depth 128\n  \
mkfs.ext4 /dev/ublkb0 && mount /dev/ublkb0 /mnt"
    )]
    Ublk(ExportUblk),
    /// List exports
    #[command(
        long_about = "List exports with their address, URI, state and connected clients.\n\n\
Example:\n  umbra export list --json"
    )]
    List(JsonFlag),
    /// Stop exporting a volume (its clients are disconnected)
    #[command(
        long_about = "Stop exporting a volume; connected clients are disconnected after \
their in-flight requests complete.\n\nExample:\n  umbra export remove db"
    )]
    Remove(ExportRemove),
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Put a read cache at the bottom of a volume's stack, while it serves
    #[command(
        long_about = "Put a block read cache at the bottom of the volume's service stack, \
while the volume stays exported. Write-through: a write reaches the volume's storage before \
it is acknowledged, and drops the cached blocks it touches, so the cache never holds stale \
data. The policy (S3-FIFO) keeps a hot set through one-pass scans; sequential reads trigger \
read-ahead.\n\n\
--mode write-back acknowledges a write once it is durable in the safe store (an append log \
with checksums, in FILE) and destages it to the volume in the background, merging adjacent \
small writes into large ones. Flush and FUA keep their meaning (every acknowledged write is \
already durable). After a crash the safe store is replayed at start; a corrupt one keeps the \
volume offline rather than serve stale data. A full safe store slows writers down; a destage \
error puts the cache in a failed state (writes fail, `cache stats` says why).\n\n\
Examples:\n  umbra cache enable db\n  umbra cache enable db --size 1G\n  \
umbra cache enable db --mode write-back --safe-store /fast/db.safe --safe-store-size 256M"
    )]
    Enable(CacheEnable),
    /// Remove a volume's cache, while it serves
    #[command(
        long_about = "Remove the volume's cache while it stays exported. A write-back cache \
first destages every dirty block to the volume, then its safe store file is deleted.\n\n\
Example:\n  umbra cache disable db"
    )]
    Disable(CacheVolume),
    /// Hits, misses, hit ratio, read-ahead and invalidations
    #[command(
        long_about = "Show cache statistics: block read hits and misses, hit ratio, \
read-ahead blocks and hits, blocks invalidated by writes, cached and capacity bytes; in \
write-back mode also dirty and destaged bytes, writes coalesced, write cancellations \
(rewrites of dirty blocks), throttled writes and safe-store use. \
Without a volume, every cached volume.\n\nExamples:\n  umbra cache stats\n  umbra cache stats db --json"
    )]
    Stats(CacheStats),
}

#[derive(Args)]
pub struct CacheEnable {
    /// Volume to cache
    volume: String,
    /// Memory for cached blocks, e.g. 256M, 1G (at least 1M)
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    size: u64,
    #[arg(long, value_enum, default_value = "write-through")]
    mode: CacheMode,
    /// Write-back: the safe store file to create (on fast storage)
    #[arg(long, required_if_eq("mode", "write-back"))]
    safe_store: Option<PathBuf>,
    /// Write-back: size of the safe store; dirty data is bounded by it
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    safe_store_size: u64,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum CacheMode {
    WriteThrough,
    WriteBack,
}

#[derive(Args)]
pub struct CacheVolume {
    /// Volume whose cache to remove
    volume: String,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CacheStats {
    /// Only this volume
    volume: Option<String>,
    /// Print machine-readable JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportNbd {
    /// Volume to export
    volume: String,
    /// HOST:PORT or unix:PATH [default: 127.0.0.1:10809]
    #[arg(long)]
    listen: Option<String>,
    /// Refuse writes from clients
    #[arg(long)]
    read_only: bool,
    /// unix:PATH only: the socket's permission bits, octal [default: 0600,
    /// only the daemon's user may connect]
    #[arg(long, value_parser = parse_mode)]
    mode: Option<u32>,
    /// Serve TLS (NBD_OPT_STARTTLS; clients must use it) with the
    /// certificate and key in DIR: server-cert.pem (the chain) and
    /// server-key.pem, as qemu-nbd and nbdkit lay them out (clients use
    /// the ca-cert.pem beside them). Applies to the whole TCP listener.
    #[arg(long, value_name = "DIR")]
    tls_certificates: Option<std::path::PathBuf>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

/// An octal permission mode such as `0660` or `660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if m > 0o777 {
        return Err(format!(
            "{s:?}: a mode has permission bits only (at most 0777)"
        ));
    }
    Ok(m)
}

#[derive(Args)]
pub struct ExportRemove {
    /// Volume whose export to remove
    volume: String,
    /// nbd or ublk, when the volume has both
    #[arg(long)]
    kind: Option<String>,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExportUblk {
    /// Volume to export
    volume: String,
    /// Queues (one thread and one io_uring each)
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Requests in flight per queue
    #[arg(long, default_value_t = 64)]
    depth: u16,
    /// Refuse writes
    #[arg(long)]
    read_only: bool,
    /// Print the result as JSON (the object as it is after the change)
    #[arg(long)]
    json: bool,
}

/// Parse a size with an optional binary unit: 4096, 64K, 512M, 1G, 2T,
/// also KiB/MiB/GiB/TiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 512M or 1G"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration as every option takes it: `500ms`, `10s`, `5m`, `2h`, or
/// bare seconds; in milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("{s:?} is not a duration like 500ms, 10s, 5m or 2h"))
}

/// A duration in whole seconds (`10s`, `1m`; not `1500ms`).
pub(crate) fn parse_duration_s(s: &str) -> Result<u64, String> {
    let ms = parse_duration_ms(s)?;
    if ms == 0 || ms % 1000 != 0 {
        return Err(format!(
            "{s:?}: give a whole number of seconds, at least 1s"
        ));
    }
    Ok(ms / 1000)
}

/// `ms` as a duration is written on the command line (`120s`, `1500ms`).
pub(crate) fn duration_text(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// When a wait with `--timeout` (milliseconds; none: no limit) gives up.
pub(crate) fn deadline(timeout_ms: Option<u64>) -> Option<std::time::Instant> {
    timeout_ms.map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms))
}

/// Time left before `deadline`, at most `cap`.
pub(crate) fn time_left(
    deadline: Option<std::time::Instant>,
    cap: std::time::Duration,
) -> std::time::Duration {
    deadline
        .map(|d| d.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or(cap)
        .min(cap)
}

/// A client command whose output goes to a pipe that closes early
/// (`umbra events --follow | head`) should end quietly, as Unix tools do,
/// not panic in `println!`: restore SIGPIPE's default action (Rust ignores
/// it). The daemon keeps ignoring it: a client that hangs up must never
/// kill `serve`.
fn quiet_on_closed_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it runs
    // before any thread is started, so nothing races on the disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::FaultProxy(_)) {
        quiet_on_closed_pipe();
    }
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| umbra::control::default_data_dir().join(umbra::control::SOCKET_FILE));
    let result = match cli.command {
        Command::Serve(args) => return serve::run(args),
        Command::Volume(c) => commands::volume(&socket, c),
        Command::Export(c) => commands::export(&socket, c),
        Command::Cache(c) => commands::cache(&socket, c),
        Command::Image(c) => image::run(&socket, c),
        Command::Repl(c) => repl::run(&socket, c),
        Command::Group(c) => group::run(&socket, c),
        Command::Cluster(c) => cluster::run(&socket, c),
        Command::FaultProxy(a) => repl::fault_proxy(a),
        Command::GenerateDocs(a) => docs::run(a),
        Command::Stats(a) => stats::run(&socket, a),
        Command::Hook(c) => hook::run(&socket, c),
        Command::Status(j) => commands::status(&socket, j.json),
        Command::Events(a) => commands::events(&socket, a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("umbra: {e:#}");
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("30").unwrap(), 30_000);
        assert!(parse_duration_ms("10x").is_err());
        assert!(parse_duration_ms("ms").is_err());
        assert!(parse_duration_ms("99999999999999999h").is_err());
        assert_eq!(parse_duration_s("1m").unwrap(), 60);
        assert!(parse_duration_s("1500ms").is_err());
        assert!(parse_duration_s("0s").is_err());
        assert_eq!(duration_text(120_000), "120s");
        assert_eq!(duration_text(1500), "1500ms");
    }

    /// Every command scripts run has `--json`, those that change state
    /// too; only the daemon itself, the doc generator and help do not.
    /// And every option that is a time takes the one duration syntax.
    #[test]
    fn every_command_has_json_and_every_time_is_a_duration() {
        use clap::CommandFactory;
        fn walk(
            c: &clap::Command,
            path: String,
            missing: &mut Vec<String>,
            times: &mut Vec<String>,
        ) {
            let leaf = c.get_subcommands().next().is_none();
            if leaf {
                let exempt = ["umbra serve", "umbra generate-docs", "umbra fault-proxy"];
                if !exempt.contains(&path.as_str())
                    && !c.get_arguments().any(|a| a.get_long() == Some("json"))
                {
                    missing.push(path.clone());
                }
                for a in c.get_arguments() {
                    let long = a.get_long().unwrap_or_default();
                    let is_time = ["timeout", "interval", "ttl"].contains(&long);
                    let name = a.get_value_names().map(|v| v[0].to_string());
                    if is_time && name.as_deref() != Some("DURATION") {
                        times.push(format!("{path} --{long}"));
                    }
                }
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, format!("{path} {}", s.get_name()), missing, times);
            }
        }
        let (mut missing, mut times) = (Vec::new(), Vec::new());
        walk(&Cli::command(), "umbra".into(), &mut missing, &mut times);
        assert!(missing.is_empty(), "commands without --json: {missing:?}");
        assert!(times.is_empty(), "times that are not a DURATION: {times:?}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
