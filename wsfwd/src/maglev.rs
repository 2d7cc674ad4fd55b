//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each service gets a
//! lookup table of prime size whose slots name endpoints; the datapath indexes
//! it with the shared flow hash. Endpoints keep nearly all their slots when
//! others come or go, and every node builds the same table from the same
//! endpoints and seed, whatever order they were listed in.
use std::net::Ipv4Addr;

use wsfwd_common::hash::hash3;

/// Table sizes (primes; Cilium uses the same list). A service uses the
/// smallest one holding at least `SLOTS_PER_ENDPOINT` slots per endpoint, so
/// small services stay small.
pub const TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];
pub const SLOTS_PER_ENDPOINT: usize = 100;

/// Salts that derive the two permutation hashes from the one seed.
const OFFSET_SALT: u32 = 0x6f66_6673; // "offs"
const SKIP_SALT: u32 = 0x736b_6970; // "skip"

/// The table size for a service with `endpoints` endpoints.
pub fn table_size(endpoints: usize) -> u32 {
    let want = endpoints.saturating_mul(SLOTS_PER_ENDPOINT);
    TABLE_SIZES
        .into_iter()
        .find(|&m| m as usize >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// An endpoint as Maglev sees it: its identity is its address and port.
pub type Key = (Ipv4Addr, u16);

/// Builds a table of `size` slots, each holding an index into `endpoints`.
/// Returns `None` when there is nothing to build (no endpoints) or more
/// endpoints than slots. `size` must be prime.
pub fn build(endpoints: &[Key], size: u32, seed: u32) -> Option<Vec<u32>> {
    const EMPTY: u32 = u32::MAX;
    if endpoints.is_empty() || endpoints.len() > size as usize {
        return None;
    }
    let m = u64::from(size);
    // Fill in address order so the result does not depend on input order.
    let mut order: Vec<usize> = (0..endpoints.len()).collect();
    order.sort_by_key(|&i| endpoints[i]);
    // Each endpoint walks its own permutation of the slots: offset, offset+skip, ...
    let mut cursor: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let (ip, port) = endpoints[i];
            let (ip, port) = (u32::from(ip), u32::from(port));
            let offset = u64::from(hash3(ip, port, 0, seed ^ OFFSET_SALT)) % m;
            let skip = u64::from(hash3(ip, port, 0, seed ^ SKIP_SALT)) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0usize;
    loop {
        for (n, &i) in order.iter().enumerate() {
            let (pos, skip) = &mut cursor[n];
            while table[*pos as usize] != EMPTY {
                *pos = (*pos + *skip) % m;
            }
            table[*pos as usize] = i as u32;
            *pos = (*pos + *skip) % m;
            filled += 1;
            if filled == table.len() {
                return Some(table);
            }
        }
    }
}

/// Slots held by each endpoint of a table built from `endpoints`.
pub fn slot_counts(table: &[u32], endpoints: usize) -> Vec<u32> {
    let mut counts = vec![0u32; endpoints];
    for &slot in table {
        counts[slot as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsfwd_common::DEFAULT_HASH_SEED as SEED;

    fn endpoints(n: usize) -> Vec<Key> {
        (0..n).map(|i| (Ipv4Addr::from(0x0af4_0000 + i as u32 * 7), 9080)).collect()
    }

    /// Table as endpoint keys, so tables over different endpoint lists compare.
    fn keyed(eps: &[Key], size: u32) -> Vec<Key> {
        build(eps, size, SEED).unwrap().iter().map(|&i| eps[i as usize]).collect()
    }

    #[test]
    fn table_size_follows_the_rule() {
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(2), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(100), 16381);
        assert_eq!(table_size(655), 65521);
        assert_eq!(table_size(5000), 65521);
        for (n, m) in [(1, 251), (7, 1021), (100, 16381)] {
            assert!(m as usize >= n * SLOTS_PER_ENDPOINT);
        }
    }

    #[test]
    fn slot_counts_differ_by_at_most_one() {
        for n in [1, 2, 3, 7, 10, 33, 100, 300] {
            let m = table_size(n);
            let table = build(&endpoints(n), m, SEED).unwrap();
            let counts = slot_counts(&table, n);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n} m={m}: counts from {lo} to {hi}");
            assert_eq!(counts.iter().sum::<u32>(), m);
        }
    }

    /// The size at which Maglev's disruption bound holds (removing one endpoint moves at most ~2% of the others' slots). At the smaller
    /// per-service sizes the mean is similar but single removals can move up to
    /// ~3-5% of the other slots for small N (a memory trade-off: only new flows
    /// of a service whose endpoints changed are affected).
    const BOUND_SIZE: u32 = 16381;

    #[test]
    fn removing_one_moves_its_slots_and_few_others() {
        for n in [2, 3, 4, 5, 10, 25, 50, 100] {
            let eps = endpoints(n);
            let before = keyed(&eps, BOUND_SIZE);
            for gone in [0, 1, n / 2, n - 1] {
                let mut rest = eps.clone();
                let removed = rest.remove(gone);
                let after = keyed(&rest, BOUND_SIZE);
                assert!(!after.contains(&removed), "n={n}: removed endpoint still in the table");
                let others = before.iter().filter(|&&k| k != removed).count();
                let moved = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
                let share = moved as f64 / others as f64;
                assert!(share <= 0.02, "n={n}: removing #{gone} moved {:.2}% of the others' slots", share * 100.0);
            }
        }
    }

    #[test]
    fn adding_one_moves_at_most_three_over_n_plus_one() {
        for n in [1, 2, 3, 5, 10, 25, 50, 100] {
            let eps = endpoints(n + 1);
            // Both at the per-service size and at the size the bounds are quoted for.
            for m in [table_size(n), BOUND_SIZE] {
                let before = keyed(&eps[..n], m);
                let after = keyed(&eps, m);
                let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
                let bound = 3.0 / (n as f64 + 1.0);
                let share = moved as f64 / m as f64;
                assert!(share <= bound, "n={n} m={m}: adding one moved {:.2}% (bound {:.2}%)", share * 100.0, bound * 100.0);
            }
        }
    }

    #[test]
    fn same_endpoints_and_seed_give_the_same_table() {
        let eps = endpoints(17);
        let mut shuffled = eps.clone();
        shuffled.reverse();
        shuffled.swap(3, 11);
        let m = table_size(17);
        assert_eq!(keyed(&eps, m), keyed(&shuffled, m));
        assert_eq!(build(&eps, m, SEED), build(&eps, m, SEED));
        assert_ne!(build(&eps, m, SEED), build(&eps, m, SEED ^ 1), "the seed must matter");
    }

    #[test]
    fn nothing_to_build() {
        assert_eq!(build(&[], 251, SEED), None);
        assert_eq!(build(&endpoints(252), 251, SEED), None);
    }
}
