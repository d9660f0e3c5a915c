//! Batches grouped by length, to cut padding.
//!
//! Each epoch the examples are shuffled with the run's seed, cut into pools
//! of `POOL` batches, each pool is sorted by length and cut into batches, and
//! the batches are shuffled again: neighbours in a batch have similar
//! lengths, while the order across batches stays random.

use super::rng::Rng;

/// Batches per pool sorted by length.
pub const POOL: usize = 50;

/// Indices of the examples in each batch of one epoch. `lengths[i]` is
/// example i's token count; the last batch may be smaller.
pub fn length_grouped(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks(batch_size * POOL) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| (lengths[i], i));
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// Indices in file order, in batches (for evaluation).
pub fn in_order(n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// The padded length of a batch whose longest example has `longest` tokens:
/// rounded up to a multiple of 16 (and at most `max`), so that compiled
/// kernels see a few shapes rather than one per batch.
pub fn padded_length(longest: usize, max: usize) -> usize {
    longest.div_ceil(16).max(1).saturating_mul(16).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_appears_once_per_epoch() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 61 + 3).collect();
        let batches = length_grouped(&lengths, 32, 5, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 32));
    }

    #[test]
    fn grouping_cuts_padding() {
        let lengths: Vec<usize> = (0..3200).map(|i| (i * 7919) % 61 + 3).collect();
        let padding = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|b| {
                    b.iter().map(|&i| lengths[i]).max().unwrap_or(0) * b.len()
                        - b.iter().map(|&i| lengths[i]).sum::<usize>()
                })
                .sum()
        };
        let grouped = padding(&length_grouped(&lengths, 32, 1, 0));
        let plain = padding(&in_order(3200, 32));
        assert!(grouped * 5 < plain, "grouped {grouped} vs in order {plain}");
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let lengths = vec![5; 100];
        assert_eq!(
            length_grouped(&lengths, 8, 3, 1),
            length_grouped(&lengths, 8, 3, 1)
        );
        assert_ne!(
            length_grouped(&lengths, 8, 3, 1),
            length_grouped(&lengths, 8, 3, 2)
        );
    }

    #[test]
    fn padded_lengths_are_few() {
        assert_eq!(padded_length(1, 64), 16);
        assert_eq!(padded_length(17, 64), 32);
        assert_eq!(padded_length(64, 64), 64);
        assert_eq!(padded_length(70, 64), 64);
        let shapes: std::collections::BTreeSet<usize> =
            (1..=128).map(|l| padded_length(l, 128)).collect();
        assert_eq!(shapes.len(), 8);
    }
}
