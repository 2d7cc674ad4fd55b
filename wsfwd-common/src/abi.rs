//! Map keys and values shared by the datapath and the agent. All `#[repr(C)]`
//! with explicit padding, sizes asserted below. Addresses and ports are kept
//! in network byte order, exactly as they sit in the packet, so the datapath
//! never converts them.

use crate::tcp::TcpWindow;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Map names, as the agent finds them in the object and pins them.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const REVNAT: &str = "REVNAT";
    pub const NAT: &str = "NAT";
    pub const SNAT_IPS: &str = "SNAT_IPS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const HANDSHAKES: &str = "HANDSHAKES";
    pub const ENDPOINT_ADDRS: &str = "ENDPOINT_ADDRS";
    pub const META: &str = "META";
    pub const ATTACHED: &str = "ATTACHED";
    pub const FRONTEND_NAMES: &str = "FRONTEND_NAMES";
    pub const AFFINITY: &str = "AFFINITY";
    pub const READY: &str = "READY";
    pub const TRAFFIC: &str = "TRAFFIC";
    pub const TRAFFIC_OWNERS: &str = "TRAFFIC_OWNERS";
    /// Every pinned map: what a restarted agent adopts.
    pub const ALL: [&str; 18] = [
        SERVICES, BACKENDS, MAGLEV, CONNTRACK, REVNAT, NAT, SNAT_IPS, COUNTERS, HALF_OPEN, HANDSHAKES, ENDPOINT_ADDRS, META,
        ATTACHED, FRONTEND_NAMES, AFFINITY, READY, TRAFFIC, TRAFFIC_OWNERS,
    ];
}

/// Globals the agent sets at load time.
pub mod globals {
    /// The flow-hash seed (u32).
    pub const HASH_SEED: &str = "HASH_SEED";
    /// First SNAT port and how many there are (u32 each).
    pub const SNAT_PORT_MIN: &str = "SNAT_PORT_MIN";
    pub const SNAT_PORT_COUNT: &str = "SNAT_PORT_COUNT";
    /// Full-NAT TCP flows one client address may hold before their handshake completes (u32).
    pub const HALF_OPEN_MAX: &str = "HALF_OPEN_MAX";
}

/// The layout of the pinned maps: their keys, values and what they mean. An
/// agent adopts pinned maps only of its own layout; any change to a pinned
/// map's key, value or meaning (counters appended excepted) bumps this.
pub const LAYOUT_VERSION: u32 = 2;

/// `META` value (its one entry): what an agent adopting the pinned maps must
/// know, and what `wsfwd status` shows. Written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub layout: u32,
    /// Where the configuration comes from and how that is going: one of
    /// `SOURCE_*` (0 in datapaths from before this field was used).
    pub source: u32,
    pub hash_seed: u32,
    /// Bumped by every configuration applied (start, reload, re-placement).
    pub generation: u32,
    /// Unix seconds of the last configuration read, and its result.
    pub last_load_unix: u64,
    pub last_load: u32,
    pub reloads_applied: u32,
    pub reloads_rejected: u32,
    /// PID of the agent that wrote this last.
    pub agent_pid: u32,
}

/// `Meta::source`.
pub const SOURCE_FILE: u32 = 0;
pub const SOURCE_API_CONNECTING: u32 = 1;
pub const SOURCE_API_REACHABLE: u32 = 2;
pub const SOURCE_API_UNREACHABLE: u32 = 3;

/// `Meta::last_load`.
pub const LOAD_NONE: u32 = 0;
pub const LOAD_APPLIED: u32 = 1;
pub const LOAD_REJECTED: u32 = 2;

/// `ATTACHED` value, keyed by ifindex: where the programs are attached, so a
/// restarted agent or `wsfwd cleanup` finds them. Written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// The interface name, NUL-padded.
    pub name: [u8; 16],
    /// `ATTACH_TCX` or `ATTACH_CLSACT`, with `ATTACH_F_ENDPOINT_SIDE` on an
    /// endpoint-facing interface (the reply program on its ingress only).
    pub mode: u32,
    /// `XDP_NATIVE`, `XDP_GENERIC`, or 0: TC alone.
    pub xdp: u32,
}

/// `FRONTEND_NAMES` value, keyed like `SERVICES`: the service port a
/// frontend belongs to (`namespace/name:port`, NUL-padded), for `wsfwd
/// services` and `conntrack --service`. Written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendName(pub [u8; 160]);

impl Default for FrontendName {
    fn default() -> Self {
        Self([0; 160])
    }
}

pub const ATTACH_TCX: u32 = 1;
pub const ATTACH_CLSACT: u32 = 2;
/// In `Attachment::mode`: an endpoint-facing interface, not an external one.
pub const ATTACH_F_ENDPOINT_SIDE: u32 = 0x100;

impl Attachment {
    /// `ATTACH_TCX` or `ATTACH_CLSACT`.
    pub fn tc_mode(&self) -> u32 {
        self.mode & !ATTACH_F_ENDPOINT_SIDE
    }

    pub fn endpoint_side(&self) -> bool {
        self.mode & ATTACH_F_ENDPOINT_SIDE != 0
    }
}
pub const XDP_NATIVE: u32 = 1;
pub const XDP_GENERIC: u32 = 2;

/// `IFACES` value, by ifindex: what the programs know of an interface of
/// the node. Written by the agent only; all-zero says nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The interface's MAC, valid with `IFACE_F_XDP`.
    pub mac: [u8; 6],
    pub flags: u8,
    pub _pad: u8,
}

/// XDP runs here: frames addressed to `mac` are for this host.
pub const IFACE_F_XDP: u8 = 1;
/// One end of a veth pair whose other end is in another network namespace
/// (a pod's): a packet redirected here at TC ingress can be handed straight
/// to the other end's ingress (`bpf_redirect_peer`), skipping a trip
/// through this end's transmit and the other end's backlog queue.
pub const IFACE_F_PEER: u8 = 2;

/// Capacity of `SNAT_IPS`.
pub const MAX_SNAT_IPS: u32 = 64;

/// `SERVICES` key: a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// Hash the client address only (`sh`, `sessionAffinity: ClientIP`); else the 5-tuple.
pub const SVC_F_HASH_CLIENT: u32 = 1;

/// `SERVICES` value: where the service's Maglev table lives in `MAGLEV`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Stable for as long as the service exists (reloads and restarts
    /// included): `AFFINITY` and `READY` entries are keyed by it.
    pub service_id: u32,
    pub flags: u32,
    pub table_offset: u32,
    /// 0 when no endpoint takes new flows.
    pub table_size: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: no affinity table.
    pub affinity_timeout_s: u32,
}

/// `AFFINITY` key: a client address of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: [u8; 4],
}

/// `AFFINITY` value: the endpoint the client was given, and when the client
/// was last seen (a new flow, or a packet of one of its flows, as the
/// collector refreshes it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub last_seen_ns: u64,
}

/// `READY` key: an endpoint that takes new flows of a service with
/// affinity; the value is its id in `BACKENDS` (live plan).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadyKey {
    pub service_id: u32,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// The endpoint is not behind the node: its flows are full-NATed (DNAT and
/// SNAT), so its replies come back through the node.
pub const BACKEND_F_SNAT: u8 = 1;
/// Not ready but serving while terminating: in the table only because its
/// service has no ready endpoint (for `wsfwd services`; the datapath ignores it).
pub const BACKEND_F_TERMINATING: u8 = 2;

/// `BACKENDS` value (an array indexed by backend id): an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub flags: u8,
    /// Its SNAT addresses: `SNAT_IPS[snat_first .. snat_first + snat_count]`.
    pub snat_first: u8,
    pub snat_count: u8,
    pub _pad: [u8; 3],
    /// Its `TRAFFIC` slot: this endpoint as an endpoint of this service, so
    /// a `Backend` belongs to one service.
    pub traffic: u32,
}

/// A flow as seen in one direction.
pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// `CONNTRACK` and `NAT` key: one direction of a flow as it arrives. A flow
/// has two entries: the original direction (client -> frontend) and the
/// reply (endpoint -> client, or endpoint -> SNAT address when full-NATed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The key of the flow's other direction: the reply to a packet
    /// rewritten by `to` travels from its new destination to its new source.
    #[inline(always)]
    pub const fn counterpart(&self, to: &Rewrite) -> FlowKey {
        FlowKey {
            saddr: to.daddr,
            daddr: to.saddr,
            sport: to.dport,
            dport: to.sport,
            proto: self.proto,
            dir: self.dir ^ 1,
            _pad: [0; 2],
        }
    }
}

/// What a packet of one direction becomes: `saddr:sport -> daddr:dport`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// What one direction of a flow has shown. One byte per fact: each is set
/// with a plain store by whichever CPU sees it, never read-modify-write, so
/// two CPUs recording different facts at once cannot undo each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// This side's part of the TCP handshake is done: the responder's SYN-ACK
    /// acknowledged the SYN, or the opener acknowledged the SYN-ACK.
    pub handshake: u8,
    /// A FIN that continues this side's stream.
    pub fin: u8,
    /// A RST at exactly the next sequence number.
    pub rst: u8,
    /// Picked up mid-stream (its entries had been lost): the TCP window is not
    /// known, so segments are not checked against it.
    pub liberal: u8,
}

/// `CONNTRACK` and `NAT` value: what a packet of this direction becomes, and
/// what this direction's sender has shown. Gateway flows change one side
/// (the destination of requests, the source of replies); full-NAT flows
/// change both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet in this direction.
    pub last_seen_ns: u64,
    pub to: Rewrite,
    pub state: FlowState,
    /// TCP only: this direction's sender, as the window tracker sees it.
    pub tcp: TcpWindow,
    /// The flow's `TRAFFIC` slot (its service and endpoint), in both entries.
    pub traffic: u32,
    pub _pad: u32,
}

/// A flow, judged from both of its entries (either may be missing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStatus {
    /// Both sides did their part of the handshake (or the flow was picked up
    /// mid-stream, when nothing is known and it is assumed).
    pub established: bool,
    /// A RST, or a FIN from both sides.
    pub closing: bool,
}

impl FlowStatus {
    pub fn of(a: &FlowState, b: Option<&FlowState>) -> Self {
        let liberal = a.liberal != 0 || b.is_some_and(|b| b.liberal != 0);
        // An entry alone (its pair evicted, or replaced by a new flow on the
        // tuple) is judged by its own side.
        let (a_hs, b_hs) = (a.handshake != 0, b.is_none_or(|b| b.handshake != 0));
        let rst = a.rst != 0 || b.is_some_and(|b| b.rst != 0);
        let fins = a.fin != 0 && b.is_some_and(|b| b.fin != 0);
        FlowStatus { established: liberal || (a_hs && b_hs), closing: rst || fins }
    }
}

impl FlowEntry {
    /// A fresh entry: packets of this direction become `saddr:sport -> daddr:dport`.
    #[inline(always)]
    pub const fn new(saddr: [u8; 4], sport: [u8; 2], daddr: [u8; 4], dport: [u8; 2], now: u64) -> Self {
        FlowEntry {
            last_seen_ns: now,
            to: Rewrite { saddr, daddr, sport, dport },
            state: FlowState { handshake: 0, fin: 0, rst: 0, liberal: 0 },
            tcp: TcpWindow { end: 0, maxend: 0, maxwin: 0, scale: 0, _pad: [0; 3] },
            traffic: NO_TRAFFIC,
            _pad: 0,
        }
    }
}

/// `FRAGMENTS` key: a fragmented datagram as it arrives (addresses, IP
/// identification, protocol). The value is the ports its first fragment
/// carried, so later fragments, which carry none, follow the same flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// `REVNAT` key: an endpoint, as the source of replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNatKey {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// The endpoint serves exactly one frontend, so a reply can be translated
/// without its conntrack entry (which an LRU map may have evicted).
pub const REVNAT_F_UNIQUE: u32 = 1;

/// `REVNAT` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatEntry {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
    pub flags: u32,
    /// With `REVNAT_F_UNIQUE`: the endpoint's `TRAFFIC` slot for its one
    /// service; else `NO_TRAFFIC`.
    pub traffic: u32,
}

/// A `TRAFFIC` slot that counts nothing (out of the array's range).
pub const NO_TRAFFIC: u32 = u32::MAX;

/// `TRAFFIC` value (a per-CPU array indexed by slot): what went through one
/// endpoint of one service, in IPv4 bytes. In: towards the endpoint; out:
/// its replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// `TRAFFIC_OWNERS` value, keyed by slot: whose traffic it counts (the
/// service port's name, NUL-padded, and the endpoint). Written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficOwner {
    pub service: FrontendName,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Per-CPU counters (`COUNTERS`, an array indexed by this enum), one per
/// verdict and reason. Numbers are explicit and append-only: readers of a
/// running datapath (an older `wsfwd stats`, a restarted agent) rely on them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A frontend packet translated and redirected to its endpoint.
    Redirected = 0,
    /// A reply translated back to its frontend (from conntrack).
    ReplyTranslated = 1,
    /// A reply translated from `REVNAT` because its conntrack entry was gone.
    ReplyFromRevNat = 2,
    /// Flows created (a conntrack miss on a frontend packet).
    FlowCreated = 3,
    /// Not IPv4, or not TCP/UDP/ICMP: passed untouched.
    PassNotIpv4L4 = 4,
    /// An ICMP error about a translated flow, translated and sent on.
    IcmpTranslated = 5,
    /// ICMP that is not an error about a flow of ours: passed untouched.
    PassIcmpNotOurs = 6,
    /// A packet too large for its next link, answered with "fragmentation needed".
    IcmpFragNeededSent = 7,
    /// IPv4 with options, a fragment, or truncated: passed untouched.
    PassUnparsed = 8,
    /// Not addressed to a frontend (ingress) or not from an endpoint (egress).
    PassNotOurs = 9,
    /// TTL would expire: left to the kernel, which answers it.
    PassTtlExpired = 10,
    /// A reply from an endpoint with no conntrack entry and several frontends.
    PassReplyUnknown = 11,
    /// Full NAT: a flow given a SNAT address and port.
    SnatAllocated = 12,
    /// Full NAT: a reply translated back to its client.
    SnatReplyRedirected = 13,
    /// Full NAT: no SNAT port free (TCP: answered with RST; UDP: dropped).
    DropSnatExhausted = 14,
    /// Full NAT: a TCP packet other than a SYN for a flow with no mapping
    /// (e.g. a FIN retransmitted after a restart): no connection it could belong to.
    DropNoNatFlow = 15,
    /// A new TCP connection refused (no endpoint, no SNAT port) with a RST.
    RstSent = 16,
    /// The service has no endpoint taking new flows.
    DropNoEndpoint = 17,
    /// No route to the endpoint.
    DropNoRoute = 18,
    /// Too large for its next link, and the ICMP answer could not be built.
    DropFragNeeded = 19,
    /// A packet rewrite or redirect failed.
    DropError = 20,
    /// Of `IcmpFragNeededSent`: answers to GSO packets, whose segments would
    /// not fit (the kernel's route lookup passes GSO packets of any size).
    IcmpFragNeededGso = 21,
    /// A new gateway flow whose reply tuple (endpoint -> client address and
    /// port) belongs to a live flow through another frontend: dropped, so the
    /// live flow keeps its replies.
    DropTupleClash = 22,
    /// For a frontend, an IPv4 header the kernel rejects: a total length
    /// shorter than the header or longer than the frame.
    DropBadIpHeader = 23,
    /// For a frontend, a wrong IPv4 header checksum.
    DropBadIpChecksum = 24,
    /// For a frontend, a TCP or UDP header cut short of its stated length.
    DropTruncatedL4 = 25,
    /// A frame the link layer did not address to this host (`pkt_type` other
    /// than host: promiscuous mode, a bridge port, flooding): passed untouched.
    PassNotForHost = 26,
    /// A VLAN-tagged frame: passed untouched (the tag is not ours to strip).
    PassVlan = 27,
    /// A TCP segment outside its flow's window (or a RST or FIN that does not
    /// fit the stream): forwarded, but it changed nothing in the flow's state.
    TcpOutOfWindow = 28,
    /// Full NAT: a SYN from a client address that already holds its budget of
    /// flows whose handshake has not completed: refused with a RST, so one
    /// address cannot take an endpoint's SNAT ports.
    DropHalfOpenBudget = 29,
    /// A gateway packet without DF, too large for its endpoint's link:
    /// translated and handed to the kernel, which fragments it as it forwards.
    FragmentedByKernel = 30,
    /// A later fragment whose first fragment was not seen (lost, reordered,
    /// or not ours): passed untouched.
    PassFragmentUnknown = 31,
    /// A fragment of a TCP packet to a frontend: dropped (TCP senders
    /// segment, never fragment; UDP fragments are forwarded).
    DropTcpFragment = 32,
    /// A frontend packet for an endpoint on this node (host network):
    /// translated and handed to the kernel's stack for local delivery.
    DeliveredLocally = 33,
    /// A later fragment from an endpoint behind the node whose first fragment
    /// was not seen: dropped, since it could leak the endpoint's address.
    DropFragmentUnknown = 34,
    /// A full-NAT datagram without DF, too large for the link it leaves by:
    /// handed to the kernel with its destination translated, to be fragmented
    /// as it forwards; egress then writes the new source into each fragment.
    FragmentedByKernelSnat = 35,
    /// A fragment the kernel made of such a datagram, given its new source at egress.
    FragmentSnatTranslated = 36,
    /// XDP handed a packet on untouched to TC on the same interface, which
    /// judges it (and counts its own verdict): not a frontend packet, or one
    /// only TC can finish (ICMP, an unresolved neighbour, local delivery,
    /// fragmenting, a refusal).
    XdpToTc = 37,
    /// A reply of an endpoint behind the node, translated where it entered
    /// the node (the endpoint-facing interface) and redirected straight out.
    ReplyRedirected = 38,
    /// The endpoint-facing program left a packet to the kernel: not a reply
    /// of a flow, or one the kernel must finish (ICMP, fragments, TTL 1,
    /// fragmenting, local delivery). Replies among them are translated at
    /// external egress as before.
    EndpointSidePassed = 39,
}

pub const COUNTER_COUNT: u32 = Counter::EndpointSidePassed as u32 + 1;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Redirected,
        Counter::ReplyTranslated,
        Counter::ReplyFromRevNat,
        Counter::FlowCreated,
        Counter::PassNotIpv4L4,
        Counter::IcmpTranslated,
        Counter::PassIcmpNotOurs,
        Counter::IcmpFragNeededSent,
        Counter::PassUnparsed,
        Counter::PassNotOurs,
        Counter::PassTtlExpired,
        Counter::PassReplyUnknown,
        Counter::SnatAllocated,
        Counter::SnatReplyRedirected,
        Counter::DropSnatExhausted,
        Counter::DropNoNatFlow,
        Counter::RstSent,
        Counter::DropNoEndpoint,
        Counter::DropNoRoute,
        Counter::DropFragNeeded,
        Counter::DropError,
        Counter::IcmpFragNeededGso,
        Counter::DropTupleClash,
        Counter::DropBadIpHeader,
        Counter::DropBadIpChecksum,
        Counter::DropTruncatedL4,
        Counter::PassNotForHost,
        Counter::PassVlan,
        Counter::TcpOutOfWindow,
        Counter::DropHalfOpenBudget,
        Counter::FragmentedByKernel,
        Counter::PassFragmentUnknown,
        Counter::DropTcpFragment,
        Counter::DeliveredLocally,
        Counter::DropFragmentUnknown,
        Counter::FragmentedByKernelSnat,
        Counter::FragmentSnatTranslated,
        Counter::XdpToTc,
        Counter::ReplyRedirected,
        Counter::EndpointSidePassed,
    ];

    /// Stable names for logs, `wsfwd stats` and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::ReplyTranslated => "reply-translated",
            Counter::ReplyFromRevNat => "reply-from-revnat",
            Counter::FlowCreated => "flow-created",
            Counter::PassNotIpv4L4 => "pass-not-ipv4-tcp-udp-icmp",
            Counter::IcmpTranslated => "icmp-translated",
            Counter::PassIcmpNotOurs => "pass-icmp-not-ours",
            Counter::IcmpFragNeededSent => "icmp-frag-needed-sent",
            Counter::PassUnparsed => "pass-unparsed",
            Counter::PassNotOurs => "pass-not-ours",
            Counter::PassTtlExpired => "pass-ttl-expired",
            Counter::PassReplyUnknown => "pass-reply-unknown",
            Counter::SnatAllocated => "snat-allocated",
            Counter::SnatReplyRedirected => "snat-reply-redirected",
            Counter::DropSnatExhausted => "drop-snat-exhausted",
            Counter::DropNoNatFlow => "drop-no-nat-flow",
            Counter::RstSent => "rst-sent",
            Counter::DropNoEndpoint => "drop-no-endpoint",
            Counter::DropNoRoute => "drop-no-route",
            Counter::DropFragNeeded => "drop-frag-needed",
            Counter::DropError => "drop-error",
            Counter::IcmpFragNeededGso => "icmp-frag-needed-gso",
            Counter::DropTupleClash => "drop-tuple-clash",
            Counter::DropBadIpHeader => "drop-bad-ip-header",
            Counter::DropBadIpChecksum => "drop-bad-ip-checksum",
            Counter::DropTruncatedL4 => "drop-truncated-l4",
            Counter::PassNotForHost => "pass-not-for-host",
            Counter::PassVlan => "pass-vlan",
            Counter::TcpOutOfWindow => "tcp-out-of-window",
            Counter::DropHalfOpenBudget => "drop-half-open-budget",
            Counter::FragmentedByKernel => "fragmented-by-kernel",
            Counter::PassFragmentUnknown => "pass-fragment-unknown",
            Counter::DropTcpFragment => "drop-tcp-fragment",
            Counter::DeliveredLocally => "delivered-locally",
            Counter::DropFragmentUnknown => "drop-fragment-unknown",
            Counter::FragmentedByKernelSnat => "fragmented-by-kernel-snat",
            Counter::FragmentSnatTranslated => "fragment-snat-translated",
            Counter::XdpToTc => "xdp-to-tc",
            Counter::ReplyRedirected => "reply-redirected",
            Counter::EndpointSidePassed => "endpoint-side-passed",
        }
    }
}

// The layouts are the ABI: a change here must be made on both sides.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<ServiceEntry>() == 20);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityEntry>() == 16);
    assert!(size_of::<ReadyKey>() == 12);
    assert!(size_of::<Backend>() == 16);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<Rewrite>() == 12);
    assert!(size_of::<FlowState>() == 4);
    assert!(size_of::<TcpWindow>() == 16);
    assert!(size_of::<FlowEntry>() == 48);
    assert!(size_of::<RevNatKey>() == 8);
    assert!(size_of::<FragKey>() == 12);
    assert!(size_of::<Meta>() == 40);
    assert!(size_of::<Attachment>() == 24);
    assert!(size_of::<IfaceInfo>() == 8);
    assert!(size_of::<FrontendName>() == 160);
    assert!(size_of::<RevNatEntry>() == 16);
    assert!(size_of::<Traffic>() == 32);
    assert!(size_of::<TrafficOwner>() == 168);
    assert!(Counter::ALL.len() == COUNTER_COUNT as usize);
    // `ALL` lists every counter at its own number.
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// A fixed-width, NUL-padded name (`FrontendName`, `Attachment::name`), as
/// the agent writes and reads it.
#[cfg(feature = "user")]
pub mod names_text {
    extern crate alloc;
    use alloc::string::String;

    /// `text` in `N` bytes, cut to leave at least one NUL.
    pub fn encode<const N: usize>(text: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (o, b) in out.iter_mut().zip(text.bytes().take(N - 1)) {
            *o = b;
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> String {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data: repr(C), no implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for Rewrite {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatEntry {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for Attachment {}
    unsafe impl aya::Pod for FrontendName {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for ReadyKey {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for TrafficOwner {}
}
