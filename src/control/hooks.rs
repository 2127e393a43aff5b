//! Notification hooks (seed 002's notification service; DRBD's handlers,
//! ZFS's ZED): `umbra hook add NAME --on PATTERNS --run CMD` runs CMD for
//! every event whose kind matches, with the event as JSON on stdin and in
//! `UMBRA_EVENT_*` environment variables.
//!
//! Nothing here runs on a data-path thread or holds a daemon lock: one
//! dispatcher thread reads the event bus like any subscriber and offers
//! each event to the matching hooks' bounded queues (a hook that falls
//! [`HOOK_QUEUE_EVENTS`] behind loses events, counted as `dropped`); each
//! hook has one runner thread that runs its command once per event, kills
//! it at its timeout, and records the outcome, which `hook list` shows.

use super::events::{Event, EventBus};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events queued per hook: a burst of state changes fits while its command
/// runs; a hook stuck longer loses the oldest of what follows, not memory.
pub const HOOK_QUEUE_EVENTS: usize = 256;

/// A hook's command may run this long by default before it is killed.
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 10_000;

/// How much of a failed command's stderr `hook list` keeps.
const STDERR_TAIL_BYTES: usize = 1024;

/// A hook as `umbra.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub name: String,
    /// Event kinds: exact (`image.failed`), a prefix with `*`
    /// (`repl.*`), or `*` for every event.
    pub on: Vec<String>,
    /// The command (an absolute path; run without a shell).
    pub run: PathBuf,
    pub timeout_ms: u64,
}

impl HookConfig {
    /// Whether `kind` is one of the events this hook wants.
    pub fn wants(&self, kind: &str) -> bool {
        self.on.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => p == kind,
        })
    }

    /// Check a hook before it is stored: names the hook and the problem.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "hook {n:?}: a name is 1-64 characters of letters, digits, '-', '_' and '.'"
            ));
        }
        if self.on.is_empty() || self.on.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "hook {n}: --on needs event kinds, e.g. 'repl.*,image.failed'"
            ));
        }
        if let Some(p) = self
            .on
            .iter()
            .find(|p| p.trim_end_matches('*').contains('*') || p.contains(char::is_whitespace))
        {
            return Err(format!(
                "hook {n}: pattern {p:?}: only a trailing '*' is a wildcard"
            ));
        }
        if !self.run.is_absolute() {
            return Err(format!(
                "hook {n}: the command {} must be an absolute path",
                self.run.display()
            ));
        }
        if self.timeout_ms == 0 {
            return Err(format!("hook {n}: the timeout must be positive"));
        }
        Ok(())
    }
}

/// What a hook did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HookStatus {
    pub runs: u64,
    pub failures: u64,
    /// Events the hook's queue had no room for.
    pub dropped: u64,
    pub running: bool,
    pub last_event_seq: Option<u64>,
    pub last_run_unix_ms: Option<u64>,
    pub last_duration_ms: Option<u64>,
    /// Why the last failed run failed (exit status, timeout, spawn error,
    /// and the end of its stderr); null after a success.
    pub last_error: Option<String>,
}

struct Running {
    cfg: HookConfig,
    tx: Sender<Event>,
    status: Arc<Mutex<HookStatus>>,
}

/// The daemon's hooks and their threads.
pub struct Hooks {
    hooks: Arc<Mutex<BTreeMap<String, Running>>>,
    stop: Arc<AtomicBool>,
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Hooks {
    /// Start the dispatcher on `bus`.
    pub fn start(bus: Arc<EventBus>) -> Hooks {
        let hooks: Arc<Mutex<BTreeMap<String, Running>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let dispatcher = {
            let (hooks, stop) = (hooks.clone(), stop.clone());
            std::thread::Builder::new()
                .name("hook-dispatch".into())
                .spawn(move || dispatch(&bus, &hooks, &stop))
                .expect("spawn the hook dispatcher")
        };
        Hooks {
            hooks,
            stop,
            dispatcher: Mutex::new(Some(dispatcher)),
        }
    }

    /// Run `cfg` from now on (replacing a hook of the same name).
    pub fn add(&self, cfg: HookConfig) {
        let (tx, rx) = bounded(HOOK_QUEUE_EVENTS);
        let status = Arc::new(Mutex::new(HookStatus::default()));
        {
            let (c, status) = (cfg.clone(), status.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("hook-{}", cfg.name))
                .spawn(move || runner(&c, &rx, &status));
            if let Err(e) = spawned {
                log::error!("hook {}: cannot start its thread: {e}", cfg.name);
            }
        }
        // The old runner (if any) ends when its queue's sender drops.
        self.hooks
            .lock()
            .insert(cfg.name.clone(), Running { cfg, tx, status });
    }

    /// Stop running hook `name`; a run in progress finishes (or times out).
    pub fn remove(&self, name: &str) -> bool {
        self.hooks.lock().remove(name).is_some()
    }

    /// Every hook with what it did, as `hook list` shows them.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.hooks
            .lock()
            .values()
            .map(|r| {
                let mut v = serde_json::to_value(&r.cfg).expect("serialisable");
                v["status"] = serde_json::to_value(&*r.status.lock()).expect("serialisable");
                v
            })
            .collect()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hooks.lock().clear();
        if let Some(t) = self.dispatcher.lock().take() {
            let _ = t.join();
        }
    }
}

fn dispatch(bus: &EventBus, hooks: &Mutex<BTreeMap<String, Running>>, stop: &AtomicBool) {
    let mut rx = bus.subscribe();
    while !stop.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => {
                for r in hooks.lock().values().filter(|r| r.cfg.wants(&ev.kind)) {
                    if let Err(TrySendError::Full(_)) = r.tx.try_send(ev.clone()) {
                        r.status.lock().dropped += 1;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The bus cut this subscriber off (it fell behind a burst):
            // the events in between are lost to every hook; go on.
            Err(RecvTimeoutError::Disconnected) => {
                log::warn!("hooks: fell behind the event stream; events were lost");
                for r in hooks.lock().values() {
                    r.status.lock().dropped += 1;
                }
                rx = bus.subscribe();
            }
        }
    }
}

fn runner(cfg: &HookConfig, rx: &Receiver<Event>, status: &Mutex<HookStatus>) {
    for ev in rx {
        status.lock().running = true;
        let t = Instant::now();
        let r = run_once(cfg, &ev);
        let mut s = status.lock();
        s.running = false;
        s.runs += 1;
        s.last_event_seq = Some(ev.seq);
        s.last_run_unix_ms = Some(super::events::now_ms());
        s.last_duration_ms = Some(t.elapsed().as_millis() as u64);
        match r {
            Ok(()) => s.last_error = None,
            Err(e) => {
                log::warn!("hook {}: event {} ({}): {e}", cfg.name, ev.seq, ev.kind);
                s.failures += 1;
                s.last_error = Some(e);
            }
        }
    }
}

/// Run the hook's command for one event: JSON on stdin, the fields in the
/// environment; killed at the timeout.
fn run_once(cfg: &HookConfig, ev: &Event) -> Result<(), String> {
    let json = serde_json::to_string(ev).expect("serialisable");
    let mut child = Command::new(&cfg.run)
        .env("UMBRA_HOOK", &cfg.name)
        .env("UMBRA_EVENT_SEQ", ev.seq.to_string())
        .env("UMBRA_EVENT_TIME_MS", ev.time_ms.to_string())
        .env("UMBRA_EVENT_KIND", &ev.kind)
        .env("UMBRA_EVENT_OBJECT", &ev.object)
        .env("UMBRA_EVENT_OBJECT_KIND", ev.object_kind)
        .env("UMBRA_EVENT_DETAIL", &ev.detail)
        .env("UMBRA_EVENT_JSON", &json)
        // Each field as UMBRA_FIELD_<NAME>: strings as they are, other
        // values as JSON (`42`, `true`, `["a","b"]`).
        .envs(ev.fields.iter().map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (format!("UMBRA_FIELD_{}", k.to_ascii_uppercase()), value)
        }))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cfg.run.display()))?;
    // The event on stdin; a command that does not read it is fine.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(json.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    // Drain stderr on a thread of its own so a chatty command never
    // blocks on a full pipe; keep the end of it.
    let tail = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if all.len() > 2 * STDERR_TAIL_BYTES {
                    all.drain(..all.len() - STDERR_TAIL_BYTES);
                }
            }
            let start = all.len().saturating_sub(STDERR_TAIL_BYTES);
            String::from_utf8_lossy(&all[start..]).trim().to_owned()
        })
    });
    let deadline = Instant::now() + Duration::from_millis(cfg.timeout_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {}: {e}", cfg.run.display())),
        }
    };
    // A killed command's children may hold stderr open: do not wait for
    // them.
    let stderr = match (&status, tail) {
        (Some(_), Some(t)) => t.join().unwrap_or_default(),
        _ => String::new(),
    };
    let with_stderr = |m: String| {
        if stderr.is_empty() {
            m
        } else {
            format!("{m}: {stderr}")
        }
    };
    match status {
        None => Err(format!(
            "timed out after {} ms and was killed",
            cfg.timeout_ms
        )),
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(with_stderr(format!(
            "{} exited with {st}",
            cfg.run.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(on: &[&str]) -> HookConfig {
        HookConfig {
            name: "h".into(),
            on: on.iter().map(|s| s.to_string()).collect(),
            run: "/bin/true".into(),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn patterns_match_exact_kinds_prefixes_and_everything() {
        let h = hook(&["repl.*", "image.failed"]);
        assert!(h.wants("repl.logging"));
        assert!(h.wants("image.failed"));
        assert!(!h.wants("image.enabled"));
        assert!(!h.wants("replx"));
        assert!(hook(&["*"]).wants("volume.created"));
        assert!(hook(&["repl.*"]).validate().is_ok());
        assert!(hook(&["re*pl"]).validate().is_err());
        assert!(hook(&[]).validate().is_err());
        let mut rel = hook(&["*"]);
        rel.run = "true".into();
        assert!(rel.validate().unwrap_err().contains("absolute"));
    }
}
