//! Fair share of a runtime between the functions it serves (README, "Fair
//! share in a pool"): when instances or memory free up and several
//! functions' invocations wait for them, which one starts next.
//!
//! The rule, two levels deep so that a tenant cannot buy itself a larger
//! share by deploying more functions or raising their weights:
//!
//! 1. the namespace with the fewest instances running now goes first
//!    (every namespace has an equal share);
//! 2. within it, the function with the fewest running per unit of its
//!    `spec.scaling.weight` (a weight-2 function gets twice the instances
//!    of a weight-1 one while both wait);
//! 3. between equals, the invocation that has waited longest.
//!
//! Only invocations whose resources fit now are candidates: a large
//! reservation does not hold back smaller ones that fit (as before fair
//! share). So a function with nothing running, in a namespace with nothing
//! running, starts at the first release that frees enough for it, however
//! many invocations of other functions wait.

use std::cmp::Ordering;

/// One function's oldest waiting invocation, as [`next`] weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Instances its namespace runs now.
    pub namespace_running: u32,
    /// Instances the function runs now.
    pub running: u32,
    /// Its `spec.scaling.weight` (at least 1; 0 counts as 1).
    pub weight: u32,
    /// When it started waiting, in arrival order (smaller: earlier).
    pub arrived: u64,
    /// Whether what it needs is free now.
    pub fits: bool,
}

impl Candidate {
    /// Orders `self` before `other` when it has the better claim.
    fn claim(&self, other: &Self) -> Ordering {
        self.namespace_running
            .cmp(&other.namespace_running)
            .then_with(|| {
                // running / weight, compared without division.
                let mine = u64::from(self.running) * u64::from(other.weight.max(1));
                let theirs = u64::from(other.running) * u64::from(self.weight.max(1));
                mine.cmp(&theirs)
            })
            .then_with(|| self.arrived.cmp(&other.arrived))
    }
}

/// The index of the candidate that starts next: the one that fits with
/// the best claim (the module's rule); `None` when none fits.
pub fn next(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.fits)
        .min_by(|(_, a), (_, b)| a.claim(b))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(namespace_running: u32, running: u32, weight: u32, arrived: u64) -> Candidate {
        Candidate {
            namespace_running,
            running,
            weight,
            arrived,
            fits: true,
        }
    }

    #[test]
    fn the_best_claim_that_fits_starts_next() {
        let table: [(&str, Vec<Candidate>, Option<usize>); 8] = [
            ("nothing waits", vec![], None),
            (
                "a quiet function before a flooding one that waited longer",
                vec![c(8, 8, 1, 0), c(0, 0, 1, 9)],
                Some(1),
            ),
            (
                "the namespace with fewer running, whatever the weights",
                vec![c(2, 2, 100, 0), c(1, 1, 1, 5)],
                Some(1),
            ),
            (
                "within a namespace, running per weight: 3/2 before 2/1",
                vec![c(5, 2, 1, 0), c(5, 3, 2, 1)],
                Some(1),
            ),
            (
                "equal claims: the oldest",
                vec![c(1, 1, 1, 7), c(1, 1, 1, 3)],
                Some(1),
            ),
            (
                "weight 0 counts as 1",
                vec![c(1, 1, 0, 0), c(1, 1, 1, 1)],
                Some(0),
            ),
            (
                "the best claim does not fit: the next that does",
                vec![
                    Candidate {
                        fits: false,
                        ..c(0, 0, 1, 0)
                    },
                    c(4, 4, 1, 1),
                ],
                Some(1),
            ),
            (
                "none fits",
                vec![Candidate {
                    fits: false,
                    ..c(0, 0, 1, 0)
                }],
                None,
            ),
        ];
        for (case, candidates, expected) in table {
            assert_eq!(next(&candidates), expected, "{case}");
        }
    }

    #[test]
    fn weights_share_the_grants_while_both_wait() {
        // Two functions of one namespace, weights 1 and 3, always waiting:
        // of 40 grants (none ending), the weight-3 one gets 30.
        let mut running = [0_u32; 2];
        let weights = [1, 3];
        for arrived in 0..40 {
            let candidates: Vec<Candidate> = (0..2)
                .map(|i| c(running.iter().sum(), running[i], weights[i], arrived))
                .collect();
            running[next(&candidates).unwrap()] += 1;
        }
        assert_eq!(running, [10, 30]);
    }
}
