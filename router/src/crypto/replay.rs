//! Replay filter for one stream of sleeve datagrams: an RFC 6479 sliding bitmap.
//!
//! The window covers the highest sequence number seen and the [`REPLAY_WINDOW`] below it,
//! `REPLAY_WINDOW + 1` numbers in all: a number exactly `REPLAY_WINDOW` behind the highest
//! is still judged by its bit, one further is [`Replay::TooOld`].
//!
//! The bitmap has one 64-bit block more than the window needs, as RFC 6479 lays it out:
//! moving the highest number forward clears whole blocks that fall out of the window (at
//! most the whole bitmap, however far it jumps) and never shifts bits.

use std::fmt;

/// Sequence numbers a datagram may lag the highest one seen and still be accepted.
pub const REPLAY_WINDOW: u64 = 8192;

/// Bits per bitmap block.
const BLOCK_BITS: u64 = 64;
/// Blocks in the bitmap: the window's, and one to clear while the window slides through it.
const BLOCKS: usize = (REPLAY_WINDOW / BLOCK_BITS) as usize + 1;

// The RFC 6479 bookkeeping assumes the window is whole blocks.
const _: () = assert!(REPLAY_WINDOW % BLOCK_BITS == 0);

/// Why a sequence number was refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before within the window.
    #[error("sequence number seen before")]
    Duplicate,
    /// More than [`REPLAY_WINDOW`] behind the highest seen.
    #[error("sequence number more than {REPLAY_WINDOW} behind the highest seen")]
    TooOld,
}

/// Sequence numbers seen on one stream (DF or non-DF) of one sleeve connection.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Bit `seq % 64` of block `(seq / 64) % BLOCKS` is set once `seq` has been recorded.
    bitmap: [u64; BLOCKS],
    highest: Option<u64>,
}

impl ReplayWindow {
    /// A window that has seen nothing.
    pub fn new() -> Self {
        Self {
            bitmap: [0; BLOCKS],
            highest: None,
        }
    }

    /// Checks `seq` and, when fresh, records it. Call only for datagrams that opened, so a
    /// forged sequence number never moves the window.
    pub fn check_and_record(&mut self, seq: u64) -> Result<(), Replay> {
        match self.highest {
            Some(highest) if seq <= highest => {
                if highest - seq > REPLAY_WINDOW {
                    return Err(Replay::TooOld);
                }
                let (block, bit) = position(seq);
                if self.bitmap[block] & bit != 0 {
                    return Err(Replay::Duplicate);
                }
                self.bitmap[block] |= bit;
            }
            Some(highest) => {
                self.clear_blocks_after(highest, seq);
                self.set(seq);
            }
            None => self.set(seq),
        }
        Ok(())
    }

    /// The highest sequence number recorded, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Clears the blocks after `highest`'s up to and including `seq`'s: whatever they hold
    /// is from numbers a whole bitmap or more behind `seq`.
    fn clear_blocks_after(&mut self, highest: u64, seq: u64) {
        let from = highest / BLOCK_BITS;
        let to = seq / BLOCK_BITS;
        if to - from >= BLOCKS as u64 {
            self.bitmap = [0; BLOCKS];
            return;
        }
        for block in from + 1..=to {
            self.bitmap[block_index(block)] = 0;
        }
    }

    fn set(&mut self, seq: u64) {
        let (block, bit) = position(seq);
        self.bitmap[block] |= bit;
        self.highest = Some(seq);
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bitmap is a kilobyte of noise in a log line.
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

fn position(seq: u64) -> (usize, u64) {
    (block_index(seq / BLOCK_BITS), 1 << (seq % BLOCK_BITS))
}

fn block_index(block: u64) -> usize {
    // The remainder is below BLOCKS, so it fits in usize.
    (block % BLOCKS as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn memory_is_a_bit_per_number_plus_a_block() {
        assert!(std::mem::size_of::<ReplayWindow>() <= (REPLAY_WINDOW / 8) as usize + 32);
    }

    #[test]
    fn fresh_numbers_are_accepted_and_repeats_are_duplicates() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);

        assert_eq!(w.check_and_record(0), Ok(()));
        assert_eq!(w.check_and_record(0), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(1), Ok(()));
        assert_eq!(w.check_and_record(1), Err(Replay::Duplicate));
        assert_eq!(w.highest(), Some(1));
    }

    #[test]
    fn reordered_numbers_within_the_window_are_accepted_once() {
        let mut w = ReplayWindow::default();
        w.check_and_record(100).unwrap();

        assert_eq!(w.check_and_record(97), Ok(()));
        assert_eq!(w.check_and_record(99), Ok(()));
        assert_eq!(w.check_and_record(97), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(0), Ok(()));
        assert_eq!(w.highest(), Some(100));
    }

    #[test]
    fn first_number_may_be_anywhere() {
        let mut w = ReplayWindow::new();

        assert_eq!(w.check_and_record(1 << 40), Ok(()));
        assert_eq!(w.check_and_record((1 << 40) - 5), Ok(()));
        assert_eq!(w.highest(), Some(1 << 40));
    }

    #[test]
    fn exactly_the_window_behind_is_judged_by_its_bit_one_more_is_too_old() {
        let mut w = ReplayWindow::new();
        let top = 3 * REPLAY_WINDOW + 17;
        w.check_and_record(top).unwrap();

        assert_eq!(w.check_and_record(top - REPLAY_WINDOW), Ok(()));
        assert_eq!(
            w.check_and_record(top - REPLAY_WINDOW),
            Err(Replay::Duplicate)
        );
        assert_eq!(
            w.check_and_record(top - REPLAY_WINDOW - 1),
            Err(Replay::TooOld)
        );
        assert_eq!(w.check_and_record(0), Err(Replay::TooOld));
    }

    #[test]
    fn boundary_at_every_offset_within_a_block() {
        for offset in 0..BLOCK_BITS {
            let mut w = ReplayWindow::new();
            let top = REPLAY_WINDOW * 2 + offset;
            for seq in top - REPLAY_WINDOW - 1..=top {
                w.check_and_record(seq).unwrap();
            }

            assert_eq!(
                w.check_and_record(top - REPLAY_WINDOW),
                Err(Replay::Duplicate)
            );
            assert_eq!(
                w.check_and_record(top - REPLAY_WINDOW - 1),
                Err(Replay::TooOld)
            );
        }
    }

    #[test]
    fn sliding_forgets_nothing_still_inside_the_window() {
        let mut w = ReplayWindow::new();
        for seq in (0..4 * REPLAY_WINDOW).step_by(3) {
            w.check_and_record(seq).unwrap();
        }
        let top = w.highest().unwrap();

        for seq in top - REPLAY_WINDOW..=top {
            let expected = if seq % 3 == 0 {
                Err(Replay::Duplicate)
            } else {
                Ok(())
            };
            assert_eq!(w.check_and_record(seq), expected, "seq {seq}");
        }
    }

    #[test]
    fn huge_jump_makes_everything_before_too_old() {
        let mut w = ReplayWindow::new();
        for seq in 0..100 {
            w.check_and_record(seq).unwrap();
        }

        assert_eq!(w.check_and_record(1_000_000_000_000), Ok(()));
        assert_eq!(w.check_and_record(99), Err(Replay::TooOld));
        assert_eq!(w.check_and_record(50), Err(Replay::TooOld));
        assert_eq!(w.check_and_record(1_000_000_000_000 - 1), Ok(()));
        assert_eq!(
            w.check_and_record(1_000_000_000_000),
            Err(Replay::Duplicate)
        );
        assert_eq!(w.highest(), Some(1_000_000_000_000));
    }

    #[test]
    fn jump_of_one_bitmap_does_not_resurrect_stale_bits() {
        // Block k and block k + BLOCKS share a slot: after the jump the slot must read empty.
        let mut w = ReplayWindow::new();
        w.check_and_record(5).unwrap();
        let far = 5 + BLOCKS as u64 * BLOCK_BITS;

        assert_eq!(w.check_and_record(far + 10), Ok(()));
        assert_eq!(w.check_and_record(far), Ok(()));
    }

    #[test]
    fn largest_63_bit_number_works() {
        let max = (1 << 63) - 1;
        let mut w = ReplayWindow::new();
        w.check_and_record(max - 1).unwrap();

        assert_eq!(w.check_and_record(max), Ok(()));
        assert_eq!(w.check_and_record(max), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(max - 1), Err(Replay::Duplicate));
        assert_eq!(w.check_and_record(max - 2), Ok(()));
    }

    /// The plain reference: every number ever accepted, and the highest.
    #[derive(Default)]
    struct Model {
        seen: HashSet<u64>,
        highest: Option<u64>,
    }

    impl Model {
        fn check_and_record(&mut self, seq: u64) -> Result<(), Replay> {
            if let Some(h) = self.highest {
                if seq < h && h - seq > REPLAY_WINDOW {
                    return Err(Replay::TooOld);
                }
            }
            if !self.seen.insert(seq) {
                return Err(Replay::Duplicate);
            }
            self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
            Ok(())
        }
    }

    fn agrees_with_model(seqs: &[u64]) -> Result<(), TestCaseError> {
        let mut window = ReplayWindow::new();
        let mut model = Model::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let expected = model.check_and_record(seq);
            prop_assert_eq!(
                window.check_and_record(seq),
                expected,
                "step {} seq {}",
                i,
                seq
            );
            prop_assert_eq!(window.highest(), model.highest);
        }
        Ok(())
    }

    /// A random walk: mostly small steps forward, some back, an occasional long leap.
    fn walk() -> impl Strategy<Value = Vec<u64>> {
        let step = prop_oneof![
            8 => -200i64..400,
            2 => -(REPLAY_WINDOW as i64 + 200)..-(REPLAY_WINDOW as i64 - 200),
            1 => 0i64..(3 * REPLAY_WINDOW as i64),
        ];
        (0u64..1 << 40, prop::collection::vec(step, 1..3000)).prop_map(|(start, steps)| {
            let mut seq = start;
            steps
                .into_iter()
                .map(|d| {
                    seq = seq.saturating_add_signed(d);
                    seq
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn matches_reference_on_numbers_spread_over_a_few_windows(
            seqs in prop::collection::vec(0u64..4 * REPLAY_WINDOW, 1..3000)
        ) {
            agrees_with_model(&seqs)?;
        }

        #[test]
        fn matches_reference_on_numbers_packed_near_block_edges(
            seqs in prop::collection::vec(
                (0u64..6, 0u64..4).prop_map(|(k, d)| k * REPLAY_WINDOW / 2 + 62 + d),
                1..200,
            )
        ) {
            agrees_with_model(&seqs)?;
        }

        #[test]
        fn matches_reference_on_random_walks(seqs in walk()) {
            agrees_with_model(&seqs)?;
        }
    }
}
