//! Internet checksum arithmetic in software (RFC 1071 sums, RFC 1624
//! incremental updates), for what the kernel's checksum helpers do not
//! cover: XDP, which has none, and ICMP errors, whose quoted headers TC
//! rewrites by hand. Values are in network byte order, as in the packet.
//! Tested on the host against checksums computed from scratch.

/// Ones' complement sum of the big-endian 16-bit words of `b` (an odd last
/// byte padded with zero), added to `acc`, not folded.
#[inline(always)]
pub fn sum<const N: usize>(mut acc: u32, b: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    if N % 2 == 1 {
        acc += (b[N - 1] as u32) << 8;
    }
    acc
}

/// Folds a 32-bit sum to 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over every changed 16-bit word.
#[inline(always)]
pub fn update<const N: usize>(hc: u16, old: [u16; N], new: [u16; N]) -> u16 {
    let mut s = !hc as u32;
    let mut i = 0;
    while i < N {
        s += (!old[i]) as u32 + new[i] as u32;
        i += 1;
    }
    !fold(s)
}

#[inline(always)]
fn words4(b: [u8; 4]) -> [u16; 2] {
    [u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]])]
}

/// The checksum bytes `csum` after a 4-byte field changed from `from` to `to`.
#[inline(always)]
pub fn replace4(csum: [u8; 2], from: [u8; 4], to: [u8; 4]) -> [u8; 2] {
    update(u16::from_be_bytes(csum), words4(from), words4(to)).to_be_bytes()
}

/// The checksum bytes `csum` after a 2-byte field changed from `from` to `to`.
#[inline(always)]
pub fn replace2(csum: [u8; 2], from: [u8; 2], to: [u8; 2]) -> [u8; 2] {
    update(u16::from_be_bytes(csum), [u16::from_be_bytes(from)], [u16::from_be_bytes(to)]).to_be_bytes()
}

/// A UDP checksum after an update: 0 means "no checksum" and stays 0; a
/// computed 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp(before: [u8; 2], after: [u8; 2]) -> [u8; 2] {
    match (before, after) {
        ([0, 0], _) => [0, 0],
        (_, [0, 0]) => [0xff, 0xff],
        _ => after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From scratch, the plain way: RFC 1071 over a byte slice.
    fn full(bytes: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in bytes.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next() as u8)
        }
    }

    #[test]
    fn updates_match_a_sum_from_scratch() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..100_000 {
            // A 20-byte header whose checksum field (bytes 10..12) is right.
            let mut h: [u8; 20] = rng.bytes();
            h[10..12].fill(0);
            let c = full(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(full(&h), 0);
            // Change an address and a port-like field; update incrementally.
            let (at4, at2) = (12 + 4 * (rng.next() as usize % 2), [0usize, 2, 4, 6, 8][rng.next() as usize % 5]);
            let new4: [u8; 4] = rng.bytes();
            let new2: [u8; 2] = rng.bytes();
            let mut csum = [h[10], h[11]];
            csum = replace4(csum, h[at4..at4 + 4].try_into().unwrap(), new4);
            h[at4..at4 + 4].copy_from_slice(&new4);
            csum = replace2(csum, h[at2..at2 + 2].try_into().unwrap(), new2);
            h[at2..at2 + 2].copy_from_slice(&new2);
            h[10..12].copy_from_slice(&csum);
            // Right in ones' complement: the header sums to zero (0x0000 and
            // 0xffff are the same checksum, +0 and -0).
            assert_eq!(full(&h), 0, "{h:02x?}");
        }
    }

    #[test]
    fn sum_and_fold_agree_with_rfc1071() {
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            let b: [u8; 21] = rng.bytes();
            assert_eq!(!fold(sum(0, &b)), full(&b));
        }
        // RFC 1071's example words sum to 0xddf2.
        assert_eq!(fold(sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
    }

    #[test]
    fn udp_zero_stays_zero_and_a_computed_zero_is_sent_as_ffff() {
        assert_eq!(udp([0, 0], [0x12, 0x34]), [0, 0]);
        assert_eq!(udp([0x12, 0x34], [0, 0]), [0xff, 0xff]);
        assert_eq!(udp([0x12, 0x34], [0x56, 0x78]), [0x56, 0x78]);
    }
}
