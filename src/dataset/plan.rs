//! Grade arithmetic: how many files are unique, how many are copies, and where they go.

use super::rng::{below, rng};

/// Which content every file of a data set gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradePlan {
    /// Number of distinct contents.
    pub uniques: u32,
    /// Number of files that repeat a content already present.
    pub duplicates: u32,
    /// For every file position, the content id (`0..uniques`) it holds.
    pub slots: Vec<u32>,
}

/// `(uniques, duplicates)` for `files` files at `grade` percent: duplicates =
/// round(files·grade/100) (half up), uniques = the rest, and at least one unique.
pub fn split(files: u32, grade: u8) -> (u32, u32) {
    let n = u64::from(files);
    let dups = (n * u64::from(grade) + 50) / 100;
    let uniques = (n - dups).max(1);
    (uniques as u32, (n - uniques) as u32)
}

/// Plans a data set: duplicates are assigned round-robin over the uniques (so copy counts
/// differ by at most one), then all positions are shuffled with `seed` so that copies are
/// spread through the data set rather than bunched at its end.
pub fn plan(files: u32, grade: u8, seed: u64) -> GradePlan {
    let (uniques, duplicates) = split(files, grade);
    let mut slots: Vec<u32> = (0..uniques)
        .chain((0..duplicates).map(|j| j % uniques))
        .collect();
    let mut rng = rng(seed);
    for i in (1..slots.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        slots.swap(i, j);
    }
    GradePlan {
        uniques,
        duplicates,
        slots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rounds_half_up_and_keeps_one_unique() {
        assert_eq!(split(500, 90), (50, 450));
        assert_eq!(split(5, 50), (2, 3));
        assert_eq!(split(10, 99), (1, 9));
        assert_eq!(split(1, 90), (1, 0));
        assert_eq!(split(7, 0), (7, 0));
        assert_eq!(split(3, 33), (2, 1));
    }

    #[test]
    fn copies_are_round_robin_and_shuffled() {
        let p = plan(500, 90, 7);
        let mut counts = vec![0u32; p.uniques as usize];
        for &s in &p.slots {
            counts[s as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 10), "{counts:?}");
        // Shuffled: the first 50 positions are not simply the 50 uniques in order.
        assert_ne!(&p.slots[..50], &(0..50).collect::<Vec<u32>>()[..]);
        assert_eq!(p, plan(500, 90, 7));
        assert_ne!(p, plan(500, 90, 8));
    }

    #[test]
    fn uneven_copies_differ_by_at_most_one() {
        let p = plan(103, 50, 1);
        let mut counts = vec![0u32; p.uniques as usize];
        for &s in &p.slots {
            counts[s as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
        assert_eq!(counts.iter().sum::<u32>(), 103);
    }
}
