//! S3-FIFO (Yang et al., SOSP 2023): a scan-resistant eviction policy made of
//! three FIFO queues.
//!
//! * **small** (10% of the capacity): every new block enters here;
//! * **main** (90%): blocks that were read again while in small, and blocks
//!   that come back soon after eviction;
//! * **ghost**: keys (no data) of blocks evicted from small, as many as main
//!   holds; a miss on a ghost key goes straight to main.
//!
//! Each block has a 2-bit frequency, bumped on a hit. Evicting from small
//! moves a block that was hit to main, and drops the rest (one-hit wonders,
//! such as a backup's sequential scan, leave without disturbing main).
//! Evicting from main gives blocks with a frequency another lap (decrement)
//! and drops the first one at zero: CLOCK on the main queue.
//!
//! Why S3-FIFO over ARC or CLOCK-Pro: the same scan resistance in the
//! published traces, no list moves on a hit (a hit is a counter increment
//! under the shard lock), and simple enough to check by reading.
//!
//! Queues hold `(key, generation)`; an entry removed out of order (a write
//! invalidates it) leaves a stale queue item that is skipped when it reaches
//! the front, and queues are compacted when stale items pile up.

use std::collections::{HashMap, VecDeque};

/// Frequency saturates here (two bits, as in the paper).
const MAX_FREQ: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Small,
    Main,
}

struct Entry {
    data: Box<[u8]>,
    freq: u8,
    queue: Queue,
    generation: u64,
    /// Brought in by read-ahead and not read yet.
    prefetched: bool,
}

/// What a lookup found.
pub enum Lookup {
    Miss,
    Hit { was_prefetched: bool },
}

pub struct S3Fifo {
    capacity: usize,
    small_capacity: usize,
    entries: HashMap<u64, Entry>,
    small: VecDeque<(u64, u64)>,
    main: VecDeque<(u64, u64)>,
    small_len: usize,
    ghost: VecDeque<(u64, u64)>,
    ghost_keys: HashMap<u64, u64>,
    next_generation: u64,
    /// Buffers of evicted blocks, reused by the next insert.
    free: Vec<Box<[u8]>>,
    block_bytes: usize,
}

impl S3Fifo {
    pub fn new(capacity_blocks: usize, block_bytes: usize) -> Self {
        let capacity = capacity_blocks.max(2);
        S3Fifo {
            capacity,
            small_capacity: (capacity / 10).max(1),
            entries: HashMap::with_capacity(capacity),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_len: 0,
            ghost: VecDeque::new(),
            ghost_keys: HashMap::new(),
            next_generation: 0,
            free: Vec::new(),
            block_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copy a cached block into `out` (a whole block), counting the hit.
    pub fn get(&mut self, key: u64, out: &mut [u8]) -> Lookup {
        match self.entries.get_mut(&key) {
            Some(e) => {
                out.copy_from_slice(&e.data);
                e.freq = (e.freq + 1).min(MAX_FREQ);
                let was_prefetched = std::mem::replace(&mut e.prefetched, false);
                Lookup::Hit { was_prefetched }
            }
            None => Lookup::Miss,
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        self.entries.contains_key(&key)
    }

    /// Insert a block read from below (replacing any cached copy).
    pub fn insert(&mut self, key: u64, data: &[u8], prefetched: bool) {
        debug_assert_eq!(data.len(), self.block_bytes);
        if let Some(e) = self.entries.get_mut(&key) {
            e.data.copy_from_slice(data);
            return;
        }
        while self.entries.len() >= self.capacity {
            self.evict();
        }
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.block_bytes].into_boxed_slice());
        buf.copy_from_slice(data);
        let generation = self.next_generation;
        self.next_generation += 1;
        let queue = if self.ghost_keys.remove(&key).is_some() {
            self.main.push_back((key, generation));
            Queue::Main
        } else {
            self.small.push_back((key, generation));
            self.small_len += 1;
            Queue::Small
        };
        self.entries.insert(
            key,
            Entry {
                data: buf,
                freq: 0,
                queue,
                generation,
                prefetched,
            },
        );
    }

    /// Drop a block (a write made it stale).
    pub fn remove(&mut self, key: u64) -> bool {
        match self.entries.remove(&key) {
            Some(e) => {
                if e.queue == Queue::Small {
                    self.small_len -= 1;
                }
                self.free.push(e.data);
                self.compact_if_stale();
                true
            }
            None => false,
        }
    }

    /// Drop every block with a key in `[start, end)`; returns how many.
    pub fn remove_range(&mut self, start: u64, end: u64) -> usize {
        if end.saturating_sub(start) <= self.entries.len() as u64 {
            (start..end).filter(|&k| self.remove(k)).count()
        } else {
            let keys: Vec<u64> = self
                .entries
                .keys()
                .copied()
                .filter(|k| (start..end).contains(k))
                .collect();
            keys.iter().filter(|&&k| self.remove(k)).count()
        }
    }

    fn is_live(&self, key: u64, generation: u64, queue: Queue) -> bool {
        matches!(self.entries.get(&key), Some(e) if e.generation == generation && e.queue == queue)
    }

    fn main_len(&self) -> usize {
        self.entries.len() - self.small_len
    }

    /// Free exactly one entry (the caller loops while full).
    fn evict(&mut self) {
        if self.small_len >= self.small_capacity || self.main_len() == 0 {
            self.evict_small();
        } else {
            self.evict_main();
        }
    }

    /// Pop small's tail until one block leaves the cache: blocks read while
    /// on probation move to main (evicting from main only when main is over
    /// its share), the first one that was not leaves for the ghost queue.
    fn evict_small(&mut self) {
        while let Some((key, generation)) = self.small.pop_front() {
            if !self.is_live(key, generation, Queue::Small) {
                continue;
            }
            self.small_len -= 1;
            let e = self.entries.get_mut(&key).expect("live");
            if e.freq > 0 {
                e.queue = Queue::Main;
                self.main.push_back((key, generation));
                if self.main_len() > self.capacity - self.small_capacity {
                    self.evict_main();
                    return;
                }
                continue;
            }
            let e = self.entries.remove(&key).expect("live");
            self.free.push(e.data);
            self.remember_ghost(key);
            return;
        }
        // Small held nothing evictable: take from main instead.
        self.evict_main();
    }

    /// CLOCK over main: blocks with a frequency get another lap (and lose
    /// one), the first at zero leaves. Ends within MAX_FREQ + 1 laps.
    fn evict_main(&mut self) {
        while let Some((key, generation)) = self.main.pop_front() {
            if !self.is_live(key, generation, Queue::Main) {
                continue;
            }
            let e = self.entries.get_mut(&key).expect("live");
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((key, generation));
                continue;
            }
            let e = self.entries.remove(&key).expect("live");
            self.free.push(e.data);
            return;
        }
    }

    fn remember_ghost(&mut self, key: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.ghost.push_back((key, generation));
        self.ghost_keys.insert(key, generation);
        let ghost_capacity = self.capacity - self.small_capacity;
        while self.ghost_keys.len() > ghost_capacity {
            let Some((k, g)) = self.ghost.pop_front() else {
                break;
            };
            if self.ghost_keys.get(&k) == Some(&g) {
                self.ghost_keys.remove(&k);
            }
        }
    }

    /// Keep stale queue items bounded: when the queues hold more than twice
    /// the live entries, drop the stale ones. Amortised O(1) per removal.
    fn compact_if_stale(&mut self) {
        if self.small.len() + self.main.len() > 2 * self.capacity + 64 {
            let entries = &self.entries;
            let live = |q: Queue| move |&(k, g): &(u64, u64)| matches!(entries.get(&k), Some(e) if e.generation == g && e.queue == q);
            self.small.retain(live(Queue::Small));
            self.main.retain(live(Queue::Main));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(v: u8) -> Vec<u8> {
        vec![v; 16]
    }

    #[test]
    fn never_exceeds_capacity_and_returns_what_was_inserted() {
        let mut c = S3Fifo::new(50, 16);
        let mut out = vec![0u8; 16];
        for k in 0..1000u64 {
            c.insert(k, &block(k as u8), false);
            assert!(c.len() <= 50);
            if let Lookup::Hit { .. } = c.get(k / 2, &mut out) {
                assert_eq!(out, block((k / 2) as u8));
            }
        }
    }

    #[test]
    fn a_scan_does_not_evict_the_hot_set() {
        let mut c = S3Fifo::new(100, 16);
        let mut out = vec![0u8; 16];
        // A hot set of 50 blocks, read several times.
        for _ in 0..4 {
            for k in 0..50u64 {
                if let Lookup::Miss = c.get(k, &mut out) {
                    c.insert(k, &block(k as u8), false);
                }
            }
        }
        // A one-pass scan of 10,000 other blocks.
        for k in 1000..11_000u64 {
            if let Lookup::Miss = c.get(k, &mut out) {
                c.insert(k, &block(0), false);
            }
        }
        let survivors = (0..50u64).filter(|&k| c.contains(k)).count();
        assert!(
            survivors >= 45,
            "only {survivors} of 50 hot blocks survived the scan"
        );
    }

    #[test]
    fn removal_and_reinsertion_keep_the_books_straight() {
        let mut c = S3Fifo::new(10, 16);
        let mut out = vec![0u8; 16];
        for round in 0..200u64 {
            for k in 0..10u64 {
                c.insert(k, &block((k + round) as u8), false);
            }
            assert_eq!(c.remove_range(3, 7), 4);
            assert!(!c.contains(5));
            if let Lookup::Hit { .. } = c.get(8, &mut out) {
                assert_eq!(out, block((8 + round) as u8));
            }
            assert!(c.small.len() + c.main.len() <= 2 * 10 + 64 + 10);
        }
        let n = c.len();
        assert_eq!(c.remove_range(0, u64::MAX), n);
        assert!(c.is_empty());
    }
}
