//! `IFACES`: what the programs know of the node's interfaces — the MAC of
//! each interface XDP runs on, and which interfaces are veths to another
//! namespace (where a redirect can go straight to the peer's ingress).
use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use wsfwd_common::abi::{IFACE_F_PEER, IFACE_F_XDP, IfaceInfo};

/// `IFACES` is an array indexed by ifindex: higher indexes are left out
/// (their packets take the plain paths).
pub const MAX_INDEX: u32 = 65_536;

pub struct Ifaces {
    map: Array<MapData, IfaceInfo>,
    xdp: BTreeMap<u32, [u8; 6]>,
    peers: Vec<u32>,
    /// What the map holds now, by index.
    written: BTreeMap<u32, IfaceInfo>,
}

impl Ifaces {
    pub fn new(map: Array<MapData, IfaceInfo>) -> Self {
        Self { map, xdp: BTreeMap::new(), peers: Vec::new(), written: BTreeMap::new() }
    }

    /// XDP is about to run on `index` (below `MAX_INDEX`), whose MAC is `mac`.
    pub fn set_xdp(&mut self, index: u32, mac: [u8; 6]) -> anyhow::Result<()> {
        anyhow::ensure!(index < MAX_INDEX, "interface index {index} is past IFACES");
        self.xdp.insert(index, mac);
        self.write()
    }

    /// Reads which interfaces are veths to other namespaces again (on
    /// every link change) and writes what changed.
    /// When they cannot be read, every peer flag is cleared: a stale one
    /// would send packets where the kernel drops them, the plain path never.
    pub fn refresh_peers(&mut self) -> anyhow::Result<()> {
        let mut peers = match crate::netif::veths_to_other_namespaces() {
            Ok(p) => p,
            Err(e) => {
                self.peers.clear();
                self.write()?;
                return Err(anyhow::Error::new(e).context("listing the node's links (rtnetlink)"));
            }
        };
        peers.sort_unstable();
        if peers != self.peers {
            // One line per change, not per link: a node's pods come and go.
            log::info!("{} veths lead to other namespaces: packets redirected to them go straight to the other end", peers.len());
            log::debug!("veths to other namespaces, by index: {peers:?}");
            self.peers = peers;
            self.write()?;
        }
        Ok(())
    }

    fn wanted(&self) -> BTreeMap<u32, IfaceInfo> {
        let mut out = BTreeMap::new();
        for (&index, &mac) in &self.xdp {
            out.insert(index, IfaceInfo { mac, flags: IFACE_F_XDP, _pad: 0 });
        }
        for &index in self.peers.iter().filter(|&&i| i < MAX_INDEX) {
            out.entry(index).or_insert_with(IfaceInfo::default).flags |= IFACE_F_PEER;
        }
        out
    }

    /// Entries no longer wanted are cleared first: a stale peer flag on an
    /// index would send packets where the kernel drops them.
    fn write(&mut self) -> anyhow::Result<()> {
        let wanted = self.wanted();
        for index in self.written.keys().filter(|i| !wanted.contains_key(i)).copied().collect::<Vec<_>>() {
            self.map.set(index, IfaceInfo::default(), 0).context("writing IFACES")?;
            self.written.remove(&index);
        }
        for (index, info) in wanted {
            if self.written.get(&index) != Some(&info) {
                self.map.set(index, info, 0).context("writing IFACES")?;
                self.written.insert(index, info);
            }
        }
        Ok(())
    }
}
