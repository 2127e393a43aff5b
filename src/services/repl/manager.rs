//! The link manager: one thread per daemon looks after every primary link
//! (autosync after an outage, generation adoption, release rounds, lazy
//! scoreboard cleaning). It replaced a thread per link, so a daemon with
//! a thousand idle links runs one manager, not a thousand.
//!
//! Every tick the manager walks the runtime's links (the registry is the
//! list of what it manages: a link the runtime dropped, or one stopped on
//! purpose, is skipped and forgotten). What it decides itself is cheap
//! and never blocks: reachability probes are non-blocking connects whose
//! outcome a later tick reads. What needs the network or the disk (an
//! adopt or release round with the secondary, cleaning a scoreboard) runs
//! as a job on a small pool of round threads, at most one job per link at
//! a time, so a slow or dead peer delays only its own link's rounds. A
//! sync runs on a thread of its own (`start_sync`), as before.
//!
//! An idle link costs no round at all: cleaning runs only while a
//! scoreboard holds a bit, and a release round is skipped while nothing
//! was sent since a round that found nothing to release.

use super::link::Link;
use super::pool::LazyPool;
use super::runtime::Replication;
use super::SetState;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the link manager looks at its links.
const MANAGER_TICK: Duration = Duration::from_millis(250);
/// How often it looks at a probe of a peer that did not answer while a
/// sync waits for it: a sync starts within this (plus a connect and the
/// handshake) of the peer answering again.
const PROBE_TICK: Duration = Duration::from_millis(50);
/// A probe's connect that has not completed by then counts as no answer
/// (the next probe starts a new one).
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Autosync retries back off from the first to the last delay.
const AUTOSYNC_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const AUTOSYNC_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Idle in-sync chunks lose their scoreboard bit about this often.
const CLEAN_INTERVAL: Duration = Duration::from_secs(1);
/// A replicating secondary is told which of its marked chunks every
/// member holds (a release round) about this often: its bitmap then
/// covers about the last second of writes, which a re-attach after a
/// promotion compares.
const RELEASE_INTERVAL: Duration = Duration::from_secs(1);
/// Round threads: a round is a request or two to a peer (bounded by the
/// peer timeout) or one scoreboard commit. Four keep a thousand links'
/// rounds (one a second each when they all replicate) moving while one
/// or two wait for dead peers; idle links need none.
const ROUND_WORKERS: usize = 4;
/// A round thread ends after this long without a round.
const ROUND_IDLE: Duration = Duration::from_secs(10);
/// `Care::release_quiet` when no round found the secondary quiet.
const NOT_QUIET: u64 = u64::MAX;

type Round = Box<dyn FnOnce() + Send>;

/// What the manager remembers about one link.
struct Care {
    link: Arc<Link>,
    backoff: Duration,
    next_try: Instant,
    last_release: Instant,
    last_clean: Instant,
    /// A round job of this link is queued or running.
    busy: Arc<AtomicBool>,
    /// The link's `sent_writes` when a release round last found nothing
    /// marked on the secondary and nothing queued ([`NOT_QUIET`]: not
    /// since the last write). Until more is sent, rounds are skipped.
    release_quiet: Arc<AtomicU64>,
    probe: Option<Probe>,
}

impl Care {
    fn new(link: Arc<Link>, busy: Arc<AtomicBool>) -> Care {
        let now = Instant::now();
        Care {
            link,
            backoff: AUTOSYNC_BACKOFF_FIRST,
            next_try: now,
            last_release: now,
            last_clean: now,
            busy,
            release_quiet: Arc::new(AtomicU64::new(NOT_QUIET)),
            probe: None,
        }
    }
}

/// A connect to the peer's listener in progress (the peer closes a
/// connection that says nothing, quietly).
struct Probe {
    sock: socket2::Socket,
    started: Instant,
}

/// Whether something accepts TCP connections at `addr`, without waiting:
/// starts a connect when none is in progress, reads its outcome when one
/// is. `None`: not known yet.
fn probe(slot: &mut Option<Probe>, addr: &str) -> Option<bool> {
    if let Some(p) = slot {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(p.sock.as_fd(), PollFlags::POLLOUT)];
        let ready = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1));
        if ready {
            let ok = matches!(p.sock.take_error(), Ok(None)) && p.sock.peer_addr().is_ok();
            *slot = None;
            return Some(ok);
        }
        if p.started.elapsed() > PROBE_TIMEOUT {
            *slot = None;
            return Some(false);
        }
        return None;
    }
    let sa: SocketAddr = addr.to_socket_addrs().ok()?.next()?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        None,
    )
    .ok()?;
    sock.set_nonblocking(true).ok()?;
    match sock.connect(&sa.into()) {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            *slot = Some(Probe {
                sock,
                started: Instant::now(),
            });
            None
        }
        Err(_) => Some(false),
    }
}

impl Replication {
    /// Have the link manager look after `link` from now on, afresh (no
    /// backoff left from before): a new link, or one resumed after a swap
    /// that did not happen. Starts the manager with the first link.
    pub(super) fn manage(&self, link: &Arc<Link>) {
        link.rearm.store(true, Ordering::SeqCst);
        if self.manager_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.me();
        let started = std::thread::Builder::new()
            .name("repl-manager".into())
            .spawn(move || run(weak));
        if let Err(e) = started {
            log::error!("starting the replication link manager: {e}");
            self.manager_started.store(false, Ordering::SeqCst);
        }
    }
}

fn run(weak: Weak<Replication>) {
    let rounds: LazyPool<Round> =
        LazyPool::new("repl-round", ROUND_WORKERS, ROUND_IDLE, |job: Round| job());
    let mut cares: HashMap<usize, Care> = HashMap::new();
    let mut last_full = Instant::now();
    let mut tick = MANAGER_TICK;
    loop {
        std::thread::sleep(tick);
        let Some(r) = weak.upgrade() else { break };
        if r.stopping() {
            r.manager_started.store(false, Ordering::SeqCst);
            break;
        }
        // Between probes only the probes run: the rest keeps its pace.
        let full = last_full.elapsed() >= MANAGER_TICK;
        if full {
            last_full = Instant::now();
        }
        let links: Vec<Arc<Link>> = r.links.lock().values().cloned().collect();
        let live: std::collections::HashSet<usize> =
            links.iter().map(|l| Arc::as_ptr(l) as usize).collect();
        cares.retain(|k, _| live.contains(k));
        let mut probing = false;
        for link in links {
            let key = Arc::as_ptr(&link) as usize;
            if link.stop.load(Ordering::SeqCst) {
                cares.remove(&key);
                continue;
            }
            if link.rearm.swap(false, Ordering::SeqCst) {
                // A round still running keeps its flag: never two at once.
                let busy = cares
                    .remove(&key)
                    .map(|c| c.busy)
                    .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
                cares.insert(key, Care::new(link.clone(), busy));
            }
            let c = cares
                .entry(key)
                .or_insert_with(|| Care::new(link.clone(), Arc::new(AtomicBool::new(false))));
            probing |= r.look_after(c, full, &rounds);
        }
        tick = if probing { PROBE_TICK } else { MANAGER_TICK };
    }
    // Rounds still queued find the service gone and end.
    rounds.close();
}

impl Replication {
    /// One tick's look at one link. Returns whether the manager should
    /// come back at the probe tick (a sync waits for the peer to answer).
    fn look_after(&self, c: &mut Care, full: bool, rounds: &LazyPool<Round>) -> bool {
        let link = c.link.clone();
        let sets = link.sets();
        let up = link.is_up();
        let syncing = link.syncing.load(Ordering::SeqCst);
        let want = !up
            && !syncing
            && sets.iter().any(|s| {
                s.peer_lost()
                    && s.autosync
                    && !s.suspended.load(Ordering::SeqCst)
                    && matches!(s.state(), SetState::Logging | SetState::NeedSync)
            });
        if up {
            c.backoff = AUTOSYNC_BACKOFF_FIRST;
            link.unreachable.store(false, Ordering::SeqCst);
        }
        let unreachable = link.unreachable.load(Ordering::SeqCst);
        if !want || !unreachable {
            c.probe = None;
        }
        // Waiting out a retry because the peer did not answer: a connect
        // (no handshake) tells when it is back, so a sync starts within a
        // probe tick of the link returning.
        if want
            && unreachable
            && Instant::now() < c.next_try
            && probe(&mut c.probe, &link.peer_addr) == Some(true)
        {
            c.next_try = Instant::now();
        }
        if want && Instant::now() >= c.next_try {
            c.next_try = Instant::now() + c.backoff;
            c.backoff = (c.backoff * 2).min(AUTOSYNC_BACKOFF_MAX);
            c.probe = None;
            self.start_sync(&link, false, false);
        }
        let probing = want && link.unreachable.load(Ordering::SeqCst);
        if !full || c.busy.load(Ordering::SeqCst) {
            return probing;
        }
        let replicating: Vec<_> = sets
            .iter()
            .filter(|s| s.state() == SetState::Replicating)
            .cloned()
            .collect();
        let talk = up && !syncing && !replicating.is_empty();
        let adopt: Vec<_> = if talk {
            replicating
                .iter()
                .filter(|s| {
                    let g = s.scoreboard.generations();
                    g.agreed != g.current
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let sent = link.stats.sent_writes.load(Ordering::Relaxed);
        let release = talk
            && c.last_release.elapsed() > RELEASE_INTERVAL
            && c.release_quiet.load(Ordering::SeqCst) != sent;
        if talk && c.last_release.elapsed() > RELEASE_INTERVAL {
            c.last_release = Instant::now();
        }
        // Only a scoreboard with a bit set has anything to clean. Which of
        // its bits can go is the round's scan, not the manager's: a big
        // volume out of sync has millions of bits.
        let clean: Vec<_> = if c.last_clean.elapsed() > CLEAN_INTERVAL {
            c.last_clean = Instant::now();
            sets.iter()
                .filter(|s| s.scoreboard.next_disk(0).is_some())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if adopt.is_empty() && !release && clean.is_empty() {
            return probing;
        }
        c.busy.store(true, Ordering::SeqCst);
        let busy = c.busy.clone();
        let quiet = c.release_quiet.clone();
        let weak = self.me();
        let job: Round = Box::new(move || {
            if let Some(r) = weak.upgrade() {
                for s in &adopt {
                    r.adopt_round(&link, s);
                }
                // The link may have dropped since: a sync owns it then.
                let release = release && link.is_up() && !link.syncing.load(Ordering::SeqCst);
                if release {
                    let idle_before = link.lag().0 == 0;
                    let mut nothing_left = idle_before;
                    for s in &replicating {
                        match r.release_round(&link, s) {
                            Ok(done) => nothing_left &= done,
                            Err(e) => {
                                nothing_left = false;
                                log::debug!(
                                    "replication set {}: release round with {}: {e}",
                                    s.name,
                                    s.peer_node
                                );
                            }
                        }
                    }
                    quiet.store(
                        if nothing_left { sent } else { NOT_QUIET },
                        Ordering::SeqCst,
                    );
                }
                for s in &clean {
                    if let Err(e) = s.scoreboard.clean() {
                        log::error!("replication set {}: scoreboard: {e}", s.name);
                        s.set_state(SetState::Failed, &format!("scoreboard: {e}"));
                    }
                }
            }
            busy.store(false, Ordering::SeqCst);
        });
        if let Err(e) = rounds.send(job) {
            // The job (and with it the flag's other owner) is gone.
            log::warn!("replication link {}: {e}", c.link.group);
            c.busy.store(false, Ordering::SeqCst);
        }
        probing
    }
}
