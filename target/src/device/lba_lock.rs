//! LBA range locks: a block's data and its PI tuple change together.
//!
//! A backend writes a block's data and its tuple in two steps (data first, then PI;
//! see `backend`). Without a lock, two WRITEs of the same blocks running on two
//! worker threads can leave one command's data beside the other's tuple, and a READ
//! racing a WRITE can pair new data with an old tuple: both read back as a guard
//! check failure that no initiator caused. Commands therefore lock the blocks they
//! touch: shared for reads, exclusive for writes, so I/O to disjoint ranges still
//! runs in parallel.
//!
//! The locks are striped: block `b` belongs to stripe `(b / STRIPE_BLOCKS) % STRIPES`.
//! A range takes every stripe it touches in ascending order, so two ranges can never
//! wait on each other in a cycle.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Blocks per stripe: 64 KiB of 512-byte blocks, 512 KiB of 4096-byte blocks.
const STRIPE_BLOCKS: u64 = 128;
/// Number of stripes per LUN.
const STRIPES: usize = 64;

/// The striped range locks of one LUN.
#[derive(Debug)]
pub(crate) struct LbaLocks {
    stripes: Box<[RwLock<()>]>,
}

/// Held while a command reads a range.
#[derive(Debug)]
#[must_use = "the range is unlocked when the guard is dropped"]
pub(crate) struct SharedRange<'a> {
    _guards: Vec<RwLockReadGuard<'a, ()>>,
}

/// Held while a command writes a range.
#[derive(Debug)]
#[must_use = "the range is unlocked when the guard is dropped"]
pub(crate) struct ExclusiveRange<'a> {
    _guards: Vec<RwLockWriteGuard<'a, ()>>,
}

impl LbaLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Locks `[lba, lba + blocks)` for reading.
    pub(crate) fn read(&self, lba: u64, blocks: u64) -> SharedRange<'_> {
        SharedRange {
            _guards: stripes_of(lba, blocks)
                .map(|s| self.stripes[s].read())
                .collect(),
        }
    }

    /// Locks `[lba, lba + blocks)` for writing.
    pub(crate) fn write(&self, lba: u64, blocks: u64) -> ExclusiveRange<'_> {
        ExclusiveRange {
            _guards: stripes_of(lba, blocks)
                .map(|s| self.stripes[s].write())
                .collect(),
        }
    }
}

/// The stripes a range touches, ascending and without repeats.
fn stripes_of(lba: u64, blocks: u64) -> impl Iterator<Item = usize> {
    let first = lba / STRIPE_BLOCKS;
    let last = lba.saturating_add(blocks.max(1) - 1) / STRIPE_BLOCKS;
    let span = last - first + 1;
    let (start, count) = if span >= STRIPES as u64 {
        (0, STRIPES)
    } else {
        ((first % STRIPES as u64) as usize, span as usize)
    };
    let mut stripes: Vec<usize> = (0..count).map(|i| (start + i) % STRIPES).collect();
    stripes.sort_unstable();
    stripes.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn stripes_are_ascending_unique_and_cover_the_range() {
        let cases = [
            (0, 1),
            (0, 0),
            (127, 2),
            (STRIPE_BLOCKS * 63, STRIPE_BLOCKS * 2),
            (5, STRIPE_BLOCKS * 64),
            (u64::MAX - 1, 1),
        ];
        for (lba, n) in cases {
            let s: Vec<usize> = stripes_of(lba, n).collect();
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{lba}+{n}: {s:?}");
            for b in [lba, lba.saturating_add(n.max(1) - 1)] {
                let want = ((b / STRIPE_BLOCKS) % STRIPES as u64) as usize;
                assert!(
                    s.contains(&want),
                    "{lba}+{n}: block {b} not covered by {s:?}"
                );
            }
        }
        // A range that wraps the stripe ring takes both ends, sorted.
        let wrap: Vec<usize> = stripes_of(STRIPE_BLOCKS * 63, STRIPE_BLOCKS * 2).collect();
        assert_eq!(wrap, vec![0, 63]);
    }

    #[test]
    fn writers_of_overlapping_ranges_exclude_each_other() {
        let locks = Arc::new(LbaLocks::new());
        let inside = Arc::new(AtomicBool::new(false));
        let held = locks.write(100, 8);
        let (l, i) = (locks.clone(), inside.clone());
        let t = std::thread::spawn(move || {
            let _g = l.write(104, 8);
            i.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!inside.load(Ordering::SeqCst), "overlapping writer got in");
        drop(held);
        t.join().expect("writer thread");
        assert!(inside.load(Ordering::SeqCst));
    }

    #[test]
    fn readers_share_and_disjoint_writers_do_not_wait() {
        let locks = LbaLocks::new();
        let r1 = locks.read(0, 16);
        let r2 = locks.read(8, 16);
        // Stripe 1 is free while stripe 0 is read-locked.
        let w = locks.write(STRIPE_BLOCKS, 1);
        drop((r1, r2, w));
    }
}
