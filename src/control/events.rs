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
    /// The object it happened to, e.g. a volume name.
    pub object: String,
    /// Human-readable detail.
    pub detail: String,
}

#[derive(Default)]
pub struct EventBus {
    seq: AtomicU64,
    subscribers: Mutex<Vec<Sender<Event>>>,
}

impl EventBus {
    pub fn publish(&self, kind: &str, object: &str, detail: impl Into<String>) {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            kind: kind.to_owned(),
            object: object.to_owned(),
            detail: detail.into(),
        };
        log::info!("event {}: {} {}", event.kind, event.object, event.detail);
        self.subscribers
            .lock()
            .retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            });
    }

    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = bounded(SUBSCRIBER_QUEUE_EVENTS);
        self.subscribers.lock().push(tx);
        rx
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
