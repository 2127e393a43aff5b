//! A fixed-size bitmap of atomic words: one bit per chunk (imaging's
//! shadow and copy bitmaps, replication's scoreboard). Readers test
//! bits without a lock (the I/O fast path); writers set and clear single
//! bits with atomic read-modify-writes. Whole-bitmap rewrites (imaging's
//! `update` and `copy`) happen only while the volumes are quiesced.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: u64,
}

impl AtomicBitmap {
    pub fn new(bits: u64) -> Self {
        AtomicBitmap {
            words: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            bits,
        }
    }

    #[inline]
    pub fn get(&self, bit: u64) -> bool {
        self.words[(bit / 64) as usize].load(Ordering::SeqCst) & (1 << (bit % 64)) != 0
    }

    /// Set `bit`; returns whether it was already set.
    #[inline]
    pub fn set(&self, bit: u64) -> bool {
        let mask = 1 << (bit % 64);
        self.words[(bit / 64) as usize].fetch_or(mask, Ordering::SeqCst) & mask != 0
    }

    /// Clear `bit`; returns whether it was set.
    #[inline]
    pub fn clear(&self, bit: u64) -> bool {
        let mask = 1u64 << (bit % 64);
        self.words[(bit / 64) as usize].fetch_and(!mask, Ordering::SeqCst) & mask != 0
    }

    /// Mask of the valid bits of word `w` (the last word may be partial).
    fn valid_mask(&self, w: usize) -> u64 {
        let first = w as u64 * 64;
        let n = (self.bits - first).min(64);
        if n == 64 {
            !0
        } else {
            (1u64 << n) - 1
        }
    }

    pub fn fill(&self) {
        for (w, word) in self.words.iter().enumerate() {
            word.store(self.valid_mask(w), Ordering::SeqCst);
        }
    }

    pub fn clear_all(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::SeqCst);
        }
    }

    /// `self |= other`.
    pub fn or_from(&self, other: &AtomicBitmap) {
        for (a, b) in self.words.iter().zip(other.words.iter()) {
            a.fetch_or(b.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.bits {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w].load(Ordering::SeqCst) & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                let bit = w as u64 * 64 + word.trailing_zeros() as u64;
                return (bit < self.bits).then_some(bit);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            word = self.words[w].load(Ordering::SeqCst);
        }
    }

    pub fn words(&self) -> usize {
        self.words.len()
    }

    /// Word `w` as stored on disk: inverted when `inverted`, with the bits
    /// past the end always zero.
    pub fn disk_word(&self, w: usize, inverted: bool) -> u64 {
        let v = self.words[w].load(Ordering::SeqCst);
        (if inverted { !v } else { v }) & self.valid_mask(w)
    }

    /// Load word `w` from its on-disk form. Returns false when bits past
    /// the end are set (a corrupt bitmap).
    pub fn load_disk_word(&self, w: usize, disk: u64, inverted: bool) -> bool {
        let mask = self.valid_mask(w);
        if disk & !mask != 0 {
            return false;
        }
        let v = if inverted { !disk & mask } else { disk };
        self.words[w].store(v, Ordering::SeqCst);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_scan_and_disk_form() {
        let b = AtomicBitmap::new(130);
        assert!(!b.set(3));
        assert!(b.set(3));
        b.set(129);
        assert_eq!(b.count(), 2);
        assert_eq!(b.next_set(0), Some(3));
        assert_eq!(b.next_set(4), Some(129));
        assert_eq!(b.next_set(130), None);
        assert!(b.clear(3));
        assert!(!b.clear(3));
        b.fill();
        assert_eq!(b.count(), 130);
        assert_eq!(b.disk_word(2, false), 0b11);
        assert_eq!(b.disk_word(2, true), 0);
        assert!(!b.load_disk_word(2, 0b100, false), "bit past the end");
        assert!(b.load_disk_word(2, 0b01, true));
        assert!(!b.get(128) && b.get(129));
        let other = AtomicBitmap::new(130);
        other.set(128);
        b.or_from(&other);
        assert!(b.get(128));
    }
}
