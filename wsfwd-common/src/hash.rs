//! The seeded flow hash, computed identically by the datapath and by userspace.
//!
//! Bob Jenkins' lookup3 final mix over at most three 32-bit words: a handful of
//! adds, xors and rotates, no loops and no tables, so it is cheap and easy on the
//! eBPF verifier, and it mixes every input bit into every output bit. Every node
//! that runs with the same seed computes the same hash, so with the same
//! endpoints every node picks the same endpoint for a client.
//!
//! Addresses are taken as the host-order value of their network-order octets
//! (`u32::from_be_bytes(octets)`), ports as host-order numbers.

/// Default seed. Every node of a deployment must use the same one.
pub const DEFAULT_HASH_SEED: u32 = 0x5753_4657; // "WSFW"

const GOLDEN: u32 = 0xdead_beef;

#[inline(always)]
const fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Hash of up to three words with a seed (lookup3's `hashword` for length 3).
#[inline(always)]
pub const fn hash3(a: u32, b: u32, c: u32, seed: u32) -> u32 {
    let init = GOLDEN.wrapping_add(3 << 2).wrapping_add(seed);
    final_mix(a.wrapping_add(init), b.wrapping_add(init), c.wrapping_add(init))
}

/// Client-address hash: used by `sh` (source hashing) and `sessionAffinity: ClientIP`.
#[inline(always)]
pub const fn hash_client(client: u32, seed: u32) -> u32 {
    hash3(client, 0, 0, seed)
}

/// 5-tuple hash: used by every other scheduler.
#[inline(always)]
pub const fn hash_flow(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, seed: u32) -> u32 {
    let ports = ((sport as u32) << 16) | dport as u32;
    hash3(saddr, daddr, ports, seed.wrapping_add(proto as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: every node, whatever its version, must compute these.
    /// A change breaks affinity across a mixed-version cluster (see the README,
    /// "Upgrades and affinity") and must be deliberate.
    #[test]
    fn golden_values() {
        assert_eq!(
            [
                hash3(0, 0, 0, 0),
                hash3(1, 2, 3, 0),
                hash3(u32::MAX, u32::MAX, u32::MAX, u32::MAX),
                hash3(0x0a00_0102, 0xc0a8_0096, 0x9c40_2378, DEFAULT_HASH_SEED),
            ],
            [459859287, 2757843189, 3275992843, 2281974416]
        );
        assert_eq!(
            [
                hash_client(0x0a00_0102, DEFAULT_HASH_SEED),
                hash_client(0x0a00_0102, 0x1234_5678),
                hash_client(0, 0),
                hash_client(0xc0a8_0001, 1),
            ],
            [2551298647, 584815448, 459859287, 748742851]
        );
        assert_eq!(
            [
                hash_flow(0x0a00_0102, 0xc0a8_0096, 40000, 9080, 6, DEFAULT_HASH_SEED),
                hash_flow(0x0a00_0102, 0xc0a8_0096, 40000, 9080, 17, DEFAULT_HASH_SEED),
                hash_flow(0x0a00_0102, 0x0a00_0101, 65535, 30100, 6, 0x1234_5678),
                hash_flow(0, 0, 0, 0, 0, 0),
            ],
            [1771361833, 1788589724, 3929944778, 459859287]
        );
        assert_eq!(DEFAULT_HASH_SEED, 0x5753_4657);
    }

    #[test]
    fn seed_changes_the_hash() {
        let ip = u32::from_be_bytes([10, 0, 0, 1]);
        assert_ne!(hash_client(ip, 1), hash_client(ip, 2));
        assert_eq!(hash_client(ip, 7), hash_client(ip, 7));
    }

    #[test]
    fn every_tuple_field_matters() {
        let (s, d) = (0x0a00_0001, 0xc0a8_0096);
        let base = hash_flow(s, d, 40000, 9080, 6, DEFAULT_HASH_SEED);
        assert_ne!(base, hash_flow(s + 1, d, 40000, 9080, 6, DEFAULT_HASH_SEED));
        assert_ne!(base, hash_flow(s, d + 1, 40000, 9080, 6, DEFAULT_HASH_SEED));
        assert_ne!(base, hash_flow(s, d, 40001, 9080, 6, DEFAULT_HASH_SEED));
        assert_ne!(base, hash_flow(s, d, 40000, 9081, 6, DEFAULT_HASH_SEED));
        assert_ne!(base, hash_flow(s, d, 40000, 9080, 17, DEFAULT_HASH_SEED));
    }

    #[test]
    fn consecutive_clients_spread_evenly() {
        // 4096 consecutive addresses into 16 buckets: each should get close to 256.
        let mut buckets = [0u32; 16];
        for i in 0..4096u32 {
            buckets[(hash_client(0x0a00_0000 + i, DEFAULT_HASH_SEED) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((192..=320).contains(&b), "uneven buckets: {buckets:?}");
        }
    }
}
