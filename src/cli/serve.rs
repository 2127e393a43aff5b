//! `umbra serve`: run the daemon in the foreground until SIGTERM/SIGINT.

use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use umbra::control::admin;
use umbra::control::daemon::{Daemon, DaemonOptions};
use umbra::export::nbd::{ListenAddr, DEFAULT_LISTEN};

#[derive(Args)]
pub struct ServeArgs {
    /// Data directory: configuration, admin socket, default backing files
    #[arg(long, env = "UMBRA_DATA_DIR", default_value = umbra::control::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Where the default volume is exported on a first start (no configuration yet)
    #[arg(long, env = "UMBRA_DEFAULT_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    default_listen: ListenAddr,
    /// On a first start, create no default volume (a second daemon on one
    /// host, a host that scripts set up; `--default-listen` is then unused)
    #[arg(long, env = "UMBRA_NO_DEFAULT", value_parser = clap::builder::FalseyValueParser::new())]
    no_default: bool,
    /// Clients each NBD listener accepts at once; more are closed on
    /// accept (and counted in `export list`)
    #[arg(long, env = "UMBRA_NBD_MAX_CLIENTS", value_name = "N",
          default_value_t = umbra::export::nbd::DEFAULT_MAX_CLIENTS)]
    nbd_max_clients: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given;
    /// `--metrics` alone listens on 127.0.0.1:9633, a bare port on loopback)
    #[arg(long, env = "UMBRA_METRICS", value_name = "ADDR", num_args = 0..=1,
          default_missing_value = umbra::control::metrics::DEFAULT_METRICS,
          value_parser = umbra::control::metrics::parse_addr)]
    metrics: Option<std::net::SocketAddr>,
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    s.parse()
}

/// Tell systemd (`Type=notify`) how the service is doing: one datagram to
/// `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), as
/// sd_notify(3) describes. Without the variable (not under systemd) it
/// does nothing.
fn sd_notify(state: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let r = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = addr.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &a)?;
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&addr))?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        log::warn!("telling systemd {state:?}: {e}");
    }
}

/// A thousand volumes and their clients need more descriptors than the
/// usual soft limit of 1024 (a file backend holds two, an NBD client
/// three): raise the soft limit to the hard one, which the administrator
/// set (`LimitNOFILE=` in the unit, `ulimit -Hn`).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the descriptor limit: {e}"),
    }
}

/// Keep freed I/O buffers in the allocator for the next request. The
/// daemon's buffers are short-lived blocks of 64 KiB to a few MiB (resync
/// chunks, NBD payloads, copy runs) allocated on one thread and freed on
/// another; with glibc's defaults a free above its dynamic mmap threshold
/// goes back to the kernel, or trims the heap, and the next allocation
/// faults every page in and zeroes it again (a profile of a resync showed
/// a quarter of the reader's time there). Allocations up to 8 MiB stay in
/// the heap, which is trimmed only past 256 MiB of free space.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc malloc parameters; called once at
    // start, before the daemon's threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// How often the allocator gives free memory back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The other half of [`tune_allocator`]: what the heap keeps for the next
/// request it keeps for at most [`TRIM_EVERY`]. Without it a burst (a
/// thousand NBD clients connecting, a thousand replication links each
/// sending at once) leaves its buffers resident for good: at a thousand
/// idle links the primary held about 1 MiB per link. A trim every 30 s
/// costs a busy daemon at most one refault of its working set per period.
fn trim_allocator_periodically() {
    #[cfg(target_env = "gnu")]
    {
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only hands the allocator's free
                // pages back to the kernel (madvise); it takes the arenas'
                // own locks and touches no memory in use.
                unsafe {
                    libc::malloc_trim(0);
                }
            });
        if let Err(e) = spawned {
            log::warn!("no allocator trim thread ({e}): freed memory stays resident");
        }
    }
}

pub fn run(args: ServeArgs) -> i32 {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd stderr goes to the journal, which stamps the time
        // itself and reads a syslog priority from a `<N>` prefix.
        logger.format(|buf, rec| {
            use std::io::Write;
            let prio = match rec.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}: {}", rec.target(), rec.args())
        });
    } else {
        logger.format_timestamp_millis();
    }
    logger.init();
    // A panic on any thread stops the daemon. Its threads share state
    // behind locks that do not poison (parking_lot) and counters that a
    // half-done operation leaves wrong (a scoreboard's in-flight counts, a
    // link's queue); running on could acknowledge writes that are not
    // tracked. Stopping is the state every volume already recovers from
    // (kill -9 at any instant is tested), and the service manager restarts
    // the daemon (contrib/umbra.service: Restart=on-failure).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        log::error!(
            "thread {} panicked: {info}; stopping the daemon (a restart recovers every volume)",
            std::thread::current().name().unwrap_or("unnamed")
        );
        std::process::abort();
    }));
    raise_fd_limit();
    tune_allocator();
    trim_allocator_periodically();
    // Register before starting so a signal during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("umbra: cannot install signal handlers: {e}");
            return super::EXIT_FAILED;
        }
    };
    let (daemon, report) = match Daemon::start(DaemonOptions {
        data_dir: args.data_dir,
        default_listen: (!args.no_default).then_some(args.default_listen),
        nbd_max_clients: args.nbd_max_clients,
    }) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("umbra: cannot start: {e}");
            return super::EXIT_FAILED;
        }
    };
    let socket = daemon.socket_path();
    let listener = match admin::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "umbra: cannot bind the admin socket {}: {e}",
                socket.display()
            );
            daemon.shutdown();
            return super::EXIT_FAILED;
        }
    };
    let mut metrics = match args
        .metrics
        .map(|a| umbra::control::metrics::MetricsServer::start(a, Arc::downgrade(&daemon)))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("umbra: {e}");
            daemon.shutdown();
            return super::EXIT_FAILED;
        }
    };
    let listener_fd = listener.as_raw_fd();
    let admin_daemon = Arc::clone(&daemon);
    let admin_thread = std::thread::Builder::new()
        .name("admin-accept".into())
        .spawn(move || admin::accept_loop(listener, admin_daemon))
        .expect("spawn the admin thread");

    if let Some(m) = &metrics {
        daemon.set_metrics_addr(m.addr);
    }
    print_banner(&daemon, &report);
    // Every export serves and the admin socket answers: ready.
    sd_notify(&format!(
        "READY=1\nSTATUS=serving {} volumes, {} exports",
        daemon.volume_stats(&[]).map(|v| v.len()).unwrap_or(0),
        report.exports.len()
    ));

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    log::info!("signal {signal} received: shutting down");
    sd_notify("STOPPING=1\nSTATUS=draining I/O, flushing volumes");
    if let Some(m) = metrics.as_mut() {
        m.stop();
    }
    daemon.shutdown();
    // Wake the admin accept loop; it sees `stopping` and returns.
    let _ = nix::sys::socket::shutdown(listener_fd, nix::sys::socket::Shutdown::Both);
    let _ = admin_thread.join();
    log::info!("umbra stopped cleanly");
    0
}

fn print_banner(daemon: &Daemon, report: &umbra::control::daemon::StartReport) {
    println!(
        "umbra {} serving {}",
        env!("CARGO_PKG_VERSION"),
        daemon.data_dir().display()
    );
    println!("  admin socket: {}", daemon.socket_path().display());
    if report.created_default {
        println!("  first start: created volume `default` (1 GiB) and exported it over NBD");
    }
    for e in &report.exports {
        println!(
            "  export {:<12} {}   ({})",
            e["volume"].as_str().unwrap_or("?"),
            e["uri"]
                .as_str()
                .or(e["device"].as_str())
                .unwrap_or("(not serving)"),
            e["state"].as_str().unwrap_or("?"),
        );
    }
    if let Some(uri) = report.exports.first().and_then(|e| e["uri"].as_str()) {
        println!("connect with, for example:");
        println!("  nbdinfo '{uri}'");
        println!("  qemu-img info '{uri}'");
    }
    if let Some(a) = daemon.metrics_addr() {
        println!("metrics: http://{a}/metrics");
    }
    println!(
        "manage it with: UMBRA_SOCKET={} umbra volume list",
        daemon.socket_path().display()
    );
}
