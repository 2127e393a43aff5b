//! The event stream: every state change the daemon makes (volume created or
//! removed, export added or removed, and later every data-service state
//! change) is published here and fanned out to `umbra events --follow`.
//!
//! Each subscriber has a bounded queue; one that falls more than
//! [`SUBSCRIBER_QUEUE_EVENTS`] behind is cut off (its stream ends with a
//! `lagged` event) rather than slowing the daemon or growing without bound.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Events buffered per subscriber: a burst of a few hundred state changes
/// (a group operation over many volumes) fits; a stuck reader does not hold
/// more memory than this.
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened, e.g. `volume.created`, `export.removed`.
    pub kind: String,
    /// What kind of object `object` names (see [`object_kind`]).
    pub object_kind: &'static str,
    /// The object it happened to, e.g. a volume name.
    pub object: String,
    /// For people: what happened, in a sentence or a few words.
    pub detail: String,
    /// For scripts: the facts of `detail` as JSON values, names with
    /// units (`docs/admin-protocol.md` lists each kind's); `{}` if none.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// `events --now` only: the object as its `info` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// The kind of object an event of `kind` names, one spelling per kind:
/// `volume` (volume and cache events), `export` (its volume's name),
/// `image_set`, `image_group`, `overflow`, `set` (replication sets;
/// several comma-separated when a consistency group acted together),
/// `group` (a consistency group, `group.*` and the cluster's per-group
/// events), `cluster`, `hook`, `daemon` (its data dir).
pub fn object_kind(kind: &str) -> &'static str {
    match kind.split('.').next().unwrap_or_default() {
        "volume" | "cache" => "volume",
        "export" => "export",
        "image" if kind.starts_with("image.group_") => "image_group",
        "image" if kind.starts_with("image.overflow_") => "overflow",
        "image" => "image_set",
        "repl" => "set",
        "group" => "group",
        "cluster" => match kind {
            "cluster.joined"
            | "cluster.left"
            | "cluster.etcd_unreachable"
            | "cluster.etcd_reachable" => "cluster",
            _ => "group",
        },
        "hook" => "hook",
        _ => "daemon",
    }
}

#[derive(Default)]
pub struct EventBus {
    seq: AtomicU64,
    subscribers: Mutex<Vec<Sender<Event>>>,
}

impl EventBus {
    pub fn publish(&self, kind: &str, object: &str, note: impl Into<crate::services::Note>) {
        let note = note.into();
        // Numbered under the subscribers' lock, so a subscription sees
        // exactly the events after the number it was told.
        let mut subs = self.subscribers.lock();
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: now_ms(),
            kind: kind.to_owned(),
            object_kind: object_kind(kind),
            object: object.to_owned(),
            detail: note.text,
            fields: note.fields,
            state: None,
        };
        log::info!("event {}: {} {}", event.kind, event.object, event.detail);
        subs.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        });
    }

    pub fn subscribe(&self) -> Receiver<Event> {
        self.subscribe_at().0
    }

    /// Subscribe, and learn the sequence number of the last event before
    /// the subscription (taken together: nothing falls between).
    pub fn subscribe_at(&self) -> (Receiver<Event>, u64) {
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE_EVENTS);
        let mut subs = self.subscribers.lock();
        subs.push(tx);
        (rx, self.seq.load(Ordering::Relaxed))
    }
}

/// Milliseconds since the Unix epoch (event and hook time stamps).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An `events --now` line: `object` of `object_kind` as it is at `seq`
/// (the last event before the stream started).
pub fn state_event(
    seq: u64,
    object_kind: &'static str,
    object: &str,
    state: serde_json::Value,
) -> Event {
    Event {
        seq,
        time_ms: now_ms(),
        kind: format!("{object_kind}.state"),
        object_kind,
        object: object.to_owned(),
        detail: String::new(),
        fields: serde_json::Map::new(),
        state: Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_and_slow_subscribers_are_cut() {
        let bus = EventBus::default();
        let a = bus.subscribe();
        let b = bus.subscribe();
        bus.publish("volume.created", "v", "1 GiB");
        assert_eq!(a.recv().unwrap().kind, "volume.created");
        assert_eq!(b.recv().unwrap().seq, 1);
        for i in 0..SUBSCRIBER_QUEUE_EVENTS + 1 {
            bus.publish("x", &i.to_string(), "");
            let _ = a.try_recv();
        }
        // b never read: it was cut off and its channel is closed.
        assert_eq!(bus.subscribers.lock().len(), 1);
        let drained = b.try_iter().count();
        assert_eq!(drained, SUBSCRIBER_QUEUE_EVENTS);
        assert!(b.recv().is_err());
    }
}
