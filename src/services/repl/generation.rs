//! Generation identifiers (DRBD 9's data generation UUIDs, simplified):
//! which copy of a set is newer when two sides meet, and split brain.
//!
//! Each side keeps, with its scoreboard:
//! * `current`: the generation its data belongs to. A primary starts a new
//!   one (random, never 0) when it begins writing without its peer: its
//!   first write while logging, or a forced takeover. The old current goes
//!   to the front of `history`.
//! * `agreed`: the generation both sides last held after a sync (0: none
//!   yet). `current != agreed` means this side wrote on its own since.
//! * `history`: the previous generations, newest first, at most
//!   [`HISTORY_LEN`].
//!
//! `current == 0` marks a copy that holds nothing anyone must keep: a new
//! secondary before its first sync, or a side an administrator discarded
//! (`repl resolve --discard`, a forced demotion). Any primary may sync onto
//! it.
//!
//! When a sync starts, the two sides are compared ([`relation`]): the same
//! generation, or one side's current in the other's history (that side is
//! older: sync from the newer one), or neither, which is split brain: both
//! wrote since they last agreed, and only an administrator picks a side.

use serde::{Deserialize, Serialize};

/// Previous generations kept. Each logging episode or takeover adds one;
/// eight covers a cascade of failovers between syncs.
pub const HISTORY_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Generations {
    pub current: u64,
    pub agreed: u64,
    pub history: Vec<u64>,
}

/// How two sides' data relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Same generation: the scoreboards say what differs.
    Same,
    /// This side's data is newer; the peer's is an ancestor (or discarded).
    PeerOlder,
    /// The peer's data is newer; this side's is an ancestor (or discarded).
    WeAreOlder,
    /// Both wrote since they last agreed.
    SplitBrain,
}

impl Generations {
    /// A fresh, never-synced generation set with `current` new.
    pub fn fresh() -> Generations {
        Generations {
            current: new_id(),
            agreed: 0,
            history: Vec::new(),
        }
    }

    /// This side started writing on its own since the last sync.
    pub fn diverged(&self) -> bool {
        self.current != self.agreed
    }

    /// Start a new generation (writing without the peer).
    pub fn begin_new(&mut self) {
        if self.current != 0 {
            self.history.insert(0, self.current);
            self.history.truncate(HISTORY_LEN);
        }
        self.current = new_id();
    }

    /// This side's data is to be replaced by its peer's.
    pub fn discard(&mut self) {
        if self.current != 0 {
            self.history.insert(0, self.current);
            self.history.truncate(HISTORY_LEN);
        }
        self.current = 0;
        self.agreed = 0;
    }

    /// A sync from `source` completed onto this side.
    pub fn adopt(&mut self, source: &Generations) {
        self.current = source.current;
        self.agreed = source.current;
        self.history = source.history.clone();
    }
}

/// How `mine` relates to `theirs`.
pub fn relation(mine: &Generations, theirs: &Generations) -> Relation {
    match (mine.current, theirs.current) {
        (0, 0) => Relation::Same,
        (_, 0) => Relation::PeerOlder,
        (0, _) => Relation::WeAreOlder,
        (a, b) if a == b => Relation::Same,
        (_, b) if mine.history.contains(&b) => Relation::PeerOlder,
        (a, _) if theirs.history.contains(&a) => Relation::WeAreOlder,
        _ => Relation::SplitBrain,
    }
}

/// A random non-zero identifier from the kernel's random source.
fn new_id() -> u64 {
    loop {
        let n = super::wire::nonce().expect("the kernel's random source");
        let v = u64::from_le_bytes(n[..8].try_into().expect("8 bytes"));
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced() -> (Generations, Generations) {
        let p = Generations::fresh();
        let mut s = Generations::default();
        s.adopt(&p);
        let mut p = p;
        p.agreed = p.current;
        (p, s)
    }

    #[test]
    fn the_usual_cases() {
        let (mut p, mut s) = synced();
        assert_eq!(relation(&p, &s), Relation::Same);
        // The primary logs on its own: it is newer.
        p.begin_new();
        assert_eq!(relation(&p, &s), Relation::PeerOlder);
        assert_eq!(relation(&s, &p), Relation::WeAreOlder);
        // The secondary is promoted meanwhile and writes: split brain.
        s.begin_new();
        assert_eq!(relation(&p, &s), Relation::SplitBrain);
        assert_eq!(relation(&s, &p), Relation::SplitBrain);
        // The administrator discards the old primary's side.
        p.discard();
        assert_eq!(relation(&s, &p), Relation::PeerOlder);
        p.adopt(&s);
        assert_eq!(relation(&s, &p), Relation::Same);
    }

    #[test]
    fn a_takeover_against_a_primary_that_never_wrote_is_no_split_brain() {
        let (p, mut s) = synced();
        s.begin_new(); // forced takeover
        assert_eq!(relation(&s, &p), Relation::PeerOlder);
        assert_eq!(relation(&p, &s), Relation::WeAreOlder);
    }

    #[test]
    fn a_new_secondary_accepts_any_primary() {
        let p = Generations::fresh();
        let s = Generations::default();
        assert_eq!(relation(&p, &s), Relation::PeerOlder);
    }
}
