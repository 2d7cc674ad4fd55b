//! Writing a plan into the maps. `BACKENDS`, `MAGLEV` and `SNAT_IPS` hold
//! two plans, each in its own half: the live one, and room for the next. A
//! new plan is written whole into the idle half, then each frontend switches
//! to it with one `SERVICES` write, so no packet ever sees a half-written
//! table or endpoint.
use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap},
};
use wsfwd_common::abi::{Backend, FrontendName, ReadyKey, RevNatEntry, RevNatKey, ServiceEntry, ServiceKey, map_names as names};

use super::contents::{self, Capacity, Contents};

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing"))
}

/// Writes plan `c` into half `half` of the plan maps, then points the
/// frontends at it and removes what `previous` had that `c` has not.
pub fn write(ebpf: &mut Ebpf, c: &Contents, previous: &Contents, half: u32, cap: Capacity) -> anyhow::Result<()> {
    anyhow::ensure!(
        c.backends.len() <= cap.backends as usize && c.maglev.len() <= cap.maglev as usize,
        "the plan needs {} endpoints and {} Maglev slots, more than the pinned maps hold ({} and {}); they are \
         sized when first created, so a larger configuration needs `wsfwd cleanup` and a fresh start",
        c.backends.len(),
        c.maglev.len(),
        cap.backends,
        cap.maglev
    );
    anyhow::ensure!(
        c.ready.len() <= cap.ready as usize,
        "the plan has {} endpoints of services with affinity, more than the {} the pinned READY map holds",
        c.ready.len(),
        cap.ready
    );
    let (backend_base, maglev_base, snat_base) = (half * cap.backends, half * cap.maglev, half * contents::SNAT_IPS_PER_PLAN);
    // The idle half first: nothing refers to it yet.
    let mut snat_ips: Array<_, [u8; 4]> = Array::try_from(map(ebpf, names::SNAT_IPS)?)?;
    for (i, ip) in c.snat_ips.iter().enumerate() {
        snat_ips.set(snat_base + i as u32, ip.octets(), 0).context("writing SNAT_IPS")?;
    }
    let mut backends: Array<_, Backend> = Array::try_from(map(ebpf, names::BACKENDS)?)?;
    for (i, b) in c.backends.iter().enumerate() {
        let b = Backend { snat_first: b.snat_first + snat_base as u8, ..*b };
        backends.set(backend_base + i as u32, b, 0).context("writing BACKENDS")?;
    }
    let mut maglev: Array<_, u32> = Array::try_from(map(ebpf, names::MAGLEV)?)?;
    for (i, id) in c.maglev.iter().enumerate() {
        maglev.set(maglev_base + i as u32, backend_base + id, 0).context("writing MAGLEV")?;
    }
    // Replies of endpoints that may now be behind the node.
    let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    for (k, v) in &c.revnat {
        revnat.insert(k, v, 0).context("writing REVNAT")?;
    }
    let (addrs, old_addrs) = (endpoint_addrs(c), endpoint_addrs(previous));
    let mut endpoints: HashMap<_, [u8; 4], u8> = HashMap::try_from(map(ebpf, names::ENDPOINT_ADDRS)?)?;
    for a in &addrs {
        endpoints.insert(a, 1, 0).context("writing ENDPOINT_ADDRS")?;
    }
    for a in old_addrs.difference(&addrs) {
        let _ = endpoints.remove(a);
    }
    let mut names_map: HashMap<_, ServiceKey, FrontendName> = HashMap::try_from(map(ebpf, names::FRONTEND_NAMES)?)?;
    for (k, name) in &c.frontend_names {
        let mut v = FrontendName::default();
        for (o, b) in v.0.iter_mut().zip(name.bytes().take(159)) {
            *o = b;
        }
        names_map.insert(k, v, 0).context("writing FRONTEND_NAMES")?;
    }
    // Endpoints an affinity may send to, at their ids in this half.
    let mut ready: HashMap<_, ReadyKey, u32> = HashMap::try_from(map(ebpf, names::READY)?)?;
    for (k, id) in &c.ready {
        ready.insert(k, backend_base + id, 0).context("writing READY")?;
    }
    // The switch: one write per frontend.
    let mut services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map(ebpf, names::SERVICES)?)?;
    for (k, v) in &c.services {
        let v = ServiceEntry { table_offset: maglev_base + v.table_offset, ..*v };
        services.insert(k, v, 0).context("writing SERVICES")?;
    }
    // What the new plan no longer has.
    let gone: Vec<ServiceKey> =
        previous.services.iter().filter(|(k, _)| !c.services.iter().any(|(n, _)| n == k)).map(|(k, _)| *k).collect();
    for k in &gone {
        let _ = services.remove(k);
    }
    let mut names_map: HashMap<_, ServiceKey, FrontendName> = HashMap::try_from(map(ebpf, names::FRONTEND_NAMES)?)?;
    for k in &gone {
        let _ = names_map.remove(k);
    }
    let mut ready: HashMap<_, ReadyKey, u32> = HashMap::try_from(map(ebpf, names::READY)?)?;
    for (k, _) in previous.ready.iter().filter(|(k, _)| !c.ready.iter().any(|(n, _)| n == k)) {
        let _ = ready.remove(k);
    }
    let mut revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    for (k, _) in previous.revnat.iter().filter(|(k, _)| !c.revnat.iter().any(|(n, _)| n == k)) {
        let _ = revnat.remove(k);
    }
    Ok(())
}

/// The addresses of a plan's endpoints behind the node.
fn endpoint_addrs(c: &Contents) -> std::collections::BTreeSet<[u8; 4]> {
    c.revnat.iter().map(|(k, _)| k.addr).collect()
}

/// What the maps say is live, as far as a new plan must know to replace it:
/// the frontends (with their services' names and ids), the endpoints whose
/// replies are translated, and those affinities may send to. Read when
/// adopting a running datapath.
pub fn read_live(ebpf: &mut Ebpf) -> anyhow::Result<Contents> {
    let services: HashMap<_, ServiceKey, ServiceEntry> = HashMap::try_from(map(ebpf, names::SERVICES)?)?;
    let services = services.iter().collect::<Result<Vec<_>, _>>().context("reading SERVICES")?;
    let revnat: HashMap<_, RevNatKey, RevNatEntry> = HashMap::try_from(map(ebpf, names::REVNAT)?)?;
    let revnat = revnat.iter().collect::<Result<Vec<_>, _>>().context("reading REVNAT")?;
    let names_map: HashMap<_, ServiceKey, FrontendName> = HashMap::try_from(map(ebpf, names::FRONTEND_NAMES)?)?;
    let frontend_names = names_map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            let end = v.0.iter().position(|&b| b == 0).unwrap_or(v.0.len());
            (k, String::from_utf8_lossy(&v.0[..end]).into_owned())
        })
        .collect();
    let ready: HashMap<_, ReadyKey, u32> = HashMap::try_from(map(ebpf, names::READY)?)?;
    let ready = ready.iter().collect::<Result<Vec<_>, _>>().context("reading READY")?;
    Ok(Contents { services, revnat, frontend_names, ready, ..Contents::default() })
}
