//! Running a loaded program on one frame with `BPF_PROG_TEST_RUN`: the
//! programs the agent attached, found by id, fed a frame as if it arrived on
//! (or left through) an interface of the calling thread's namespace.
use std::os::fd::{FromRawFd as _, OwnedFd, AsRawFd as _};

use anyhow::{Context as _, bail};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of the size given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A file descriptor for loaded program `id`.
pub fn prog_fd(id: u64) -> anyhow::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, u32::try_from(id)?);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a program did with one frame.
#[derive(Debug)]
pub struct Ran {
    /// Its return value (`TC_ACT_*`, `XDP_*`).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// How long the run took, as the kernel timed it (ns).
    pub duration_ns: u32,
}

/// XDP return values.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// TC return values.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Runs TC program `fd` once on `frame`, as on interface `ifindex` (the
/// `__sk_buff`'s `ifindex` and `ingress_ifindex`). The kernel sets the
/// frame's packet type from its destination MAC and that interface's.
pub fn run_tc(fd: &OwnedFd, frame: &[u8], ifindex: u32) -> anyhow::Result<Ran> {
    // `struct __sk_buff` up to and including `ifindex` (offset 40).
    let mut ctx = [0u8; 44];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    run(fd, frame, &ctx)
}

/// Runs XDP program `fd` once on `frame`, as received on `ifindex`.
pub fn run_xdp(fd: &OwnedFd, frame: &[u8], ifindex: u32) -> anyhow::Result<Ran> {
    // `struct xdp_md`: data 0, data_end = the frame's size, data_meta 0,
    // ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    run(fd, frame, &ctx)
}

fn run(fd: &OwnedFd, frame: &[u8], ctx: &[u8]) -> anyhow::Result<Ran> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u32(&mut attr, 12, out.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
    put_u32(&mut attr, 32, 1);
    put_u32(&mut attr, 40, ctx.len() as u32);
    put_u64(&mut attr, 48, ctx.as_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    let verdict = u32::from_ne_bytes(attr[4..8].try_into()?);
    let size = u32::from_ne_bytes(attr[12..16].try_into()?) as usize;
    if size > out.len() {
        bail!("the program's frame ({size} bytes) outgrew the buffer");
    }
    out.truncate(size);
    let duration_ns = u32::from_ne_bytes(attr[36..40].try_into()?);
    Ok(Ran { verdict, frame: out, duration_ns })
}

const BPF_PROG_LOAD: libc::c_long = 5;

/// Program types.
pub const SCHED_CLS: u32 = 3;
pub const XDP: u32 = 6;

/// Loads a program of type `prog_type` that only returns `verdict`: the
/// floor a hook costs, to measure the real programs against.
pub fn load_verdict_only(prog_type: u32, verdict: u32) -> anyhow::Result<OwnedFd> {
    // r0 = verdict; exit.
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&verdict.to_le_bytes());
    insns[8] = 0x95;
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 9].copy_from_slice(b"pass_only");
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of a verdict-only program")?;
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A reference for the per-packet cost of any flow table: a program that
/// looks up the packet's (source, destination, ports) in an LRU hash map
/// of `max_entries` 16-byte keys and 48-byte values (the shape of
/// `CONNTRACK`) and returns `verdict`. The map is filled with `keys`.
pub struct OneLookup {
    pub prog: OwnedFd,
    _map: OwnedFd,
}

/// The map key `OneLookup` looks up for a frame from `src` to `dst`.
pub fn one_lookup_key(src: (std::net::Ipv4Addr, u16), dst: (std::net::Ipv4Addr, u16)) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&src.0.octets());
    k[4..8].copy_from_slice(&dst.0.octets());
    k[8..10].copy_from_slice(&src.1.to_be_bytes());
    k[10..12].copy_from_slice(&dst.1.to_be_bytes());
    k
}

impl OneLookup {
    pub fn load(prog_type: u32, verdict: u32, max_entries: u32, keys: &[[u8; 16]]) -> anyhow::Result<Self> {
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_LRU_HASH);
        put_u32(&mut attr, 4, 16);
        put_u32(&mut attr, 8, 48);
        put_u32(&mut attr, 12, max_entries);
        let map = bpf(BPF_MAP_CREATE, &mut attr).context("BPF_MAP_CREATE of the reference flow table")?;
        // SAFETY: the kernel just handed us this descriptor.
        let map = unsafe { OwnedFd::from_raw_fd(map as i32) };
        let value = [0u8; 48];
        for k in keys {
            let mut attr = [0u8; 128];
            put_u32(&mut attr, 0, map.as_raw_fd() as u32);
            put_u64(&mut attr, 8, k.as_ptr() as u64);
            put_u64(&mut attr, 16, value.as_ptr() as u64);
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("filling the reference flow table")?;
        }
        // Where the context keeps the packet's start and end.
        let (data, data_end): (i16, i16) = if prog_type == XDP { (0, 4) } else { (76, 80) };
        // (opcode, dst, src, off, imm)
        let code: [(u8, u8, u8, i16, i32); 19] = [
            (0x61, 2, 1, data, 0),     // r2 = data
            (0x61, 3, 1, data_end, 0), // r3 = data_end
            (0xbf, 4, 2, 0, 0),        // r4 = r2
            (0x07, 4, 0, 0, 38),       // r4 += 38 (Ethernet, IPv4, ports)
            (0x2d, 4, 3, 12, 0),       // if r4 > r3 goto out
            (0x61, 5, 2, 26, 0),       // the key: source,
            (0x63, 10, 5, -16, 0),
            (0x61, 5, 2, 30, 0), // destination,
            (0x63, 10, 5, -12, 0),
            (0x61, 5, 2, 34, 0), // ports,
            (0x63, 10, 5, -8, 0),
            (0x62, 10, 0, -4, 0),                      // and zeros
            (0x18, 1, 1, 0, map.as_raw_fd()),          // r1 = the map (two slots)
            (0x00, 0, 0, 0, 0),
            (0xbf, 2, 10, 0, 0),                       // r2 = r10
            (0x07, 2, 0, 0, -16),                      // r2 -= 16
            (0x85, 0, 0, 0, 1),                        // call bpf_map_lookup_elem
            (0xb7, 0, 0, 0, verdict as i32),           // out: r0 = verdict
            (0x95, 0, 0, 0, 0),                        // exit
        ];
        let insns: Vec<u8> = code
            .iter()
            .flat_map(|&(op, dst, src, off, imm)| {
                let mut i = [0u8; 8];
                i[0] = op;
                i[1] = (src << 4) | dst;
                i[2..4].copy_from_slice(&off.to_le_bytes());
                i[4..8].copy_from_slice(&imm.to_le_bytes());
                i
            })
            .collect();
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, prog_type);
        put_u32(&mut attr, 4, code.len() as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        attr[48..48 + 10].copy_from_slice(b"one_lookup");
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the one-lookup reference")?;
        // SAFETY: the kernel just handed us this descriptor.
        Ok(Self { prog: unsafe { OwnedFd::from_raw_fd(fd as i32) }, _map: map })
    }
}
