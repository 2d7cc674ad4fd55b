//! Attaching the programs so that they outlive the agent, and replacing them
//! in place when an agent starts over a running datapath.
//!
//! TCX (Linux 6.6+): each attachment is a link pinned under the pin
//! directory; a new agent swaps its program into the same link with one
//! `BPF_LINK_UPDATE`, so there is no moment without a program. Older kernels:
//! a filter on the clsact qdisc at wsfwd's own priority and handle, replaced
//! in place with one netlink request.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya::programs::{
    Link as _, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    xdp::XdpLink,
};
use wsfwd_common::abi::{ATTACH_CLSACT, ATTACH_TCX, XDP_GENERIC, XDP_NATIVE};

use crate::bpffs::{self, PinDir};

/// wsfwd's clsact filters: a fixed priority and handle, so a new agent (and
/// `wsfwd cleanup`) finds them without any state.
const CLSACT_PRIORITY: u16 = 0x5753;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0x5753);

/// How to attach: `Auto` tries TCX, then clsact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Tcx,
    Clsact,
}

/// Where frontend traffic is taken first: `Auto` uses native XDP where the
/// driver has it (not on virtual interfaces), else TC alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Hook {
    Auto,
    Xdp,
    Tc,
}

/// The XDP mode for `iface` under `hook`, or `None` for TC alone, and why.
pub fn xdp_choice(hook: Hook, driver: Option<&str>) -> (Option<XdpMode>, String) {
    let virtual_if = matches!(driver, Some("veth" | "bridge" | "tun" | "macvlan" | "ipvlan" | "vxlan" | "geneve") | None);
    let name = driver.unwrap_or("unknown driver");
    match (hook, virtual_if) {
        (Hook::Tc, _) => (None, "TC (--attach tc)".into()),
        (Hook::Auto, true) => (
            None,
            format!(
                "TC ({name}: native XDP on a virtual interface needs GSO off on its peer and NAPI on every \
                 redirect target; --attach xdp forces generic XDP)"
            ),
        ),
        (Hook::Auto, false) => (Some(XdpMode::Driver), format!("native XDP ({name}), TC behind it")),
        // Generic XDP sees skbs whose checksums a local sender may have left
        // to offload (CHECKSUM_PARTIAL), which XDP's software updates do not
        // handle: a test mode, said so.
        (Hook::Xdp, true) => (
            Some(XdpMode::Skb),
            format!(
                "generic XDP ({name}: --attach xdp on a virtual interface, for testing: XDP assumes complete \
                 checksums, which a sender on this host with tx offload does not give), TC behind it"
            ),
        ),
        (Hook::Xdp, false) => (Some(XdpMode::Driver), format!("native XDP ({name}), TC behind it")),
    }
}

pub fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

/// The pinned TCX link of the reply program on an endpoint-facing interface.
pub const ENDPOINT_SIDE_PIN: &str = "from-endpoints";

/// Attaches `p` to `iface`'s `hook`, or swaps it in for the program already
/// there (`previous`: the mode found in `ATTACHED`). A TCX link is pinned as
/// `<iface>-<pin_as>`. Returns the mode used.
pub fn attach_or_replace(
    p: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    pin_as: &str,
    pins: &PinDir,
    previous: Option<u32>,
    mode: Mode,
) -> anyhow::Result<u32> {
    let what = || format!("{iface} {pin_as}");
    let pin = pins.link(iface, pin_as);
    let swapped = swap_into_pinned(&pin, &what(), |fd| Ok(p.attach_to_link(SchedClassifierLink::try_from(fd)?)?))?;
    if let Some(id) = swapped {
        // The pin keeps the link (now running `p`) after this handle goes.
        drop(p.take_link(id)?);
        return Ok(ATTACH_TCX);
    }
    if previous == Some(ATTACH_CLSACT) {
        let link = SchedClassifierLink::attached(iface, hook, CLSACT_PRIORITY, CLSACT_HANDLE, None)?;
        let id = p.attach_to_link(link).with_context(|| format!("replacing the clsact filter on {}", what()))?;
        keep_attached(p.take_link(id)?);
        return Ok(ATTACH_CLSACT);
    }
    if mode != Mode::Clsact {
        match p.attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default())) {
            Ok(id) => {
                let link = FdLink::try_from(p.take_link(id)?).map_err(|e| anyhow!("{e}"))?;
                link.pin(&pin).with_context(|| format!("pinning the {} link at {}", what(), pin.display()))?;
                return Ok(ATTACH_TCX);
            }
            Err(e) if mode == Mode::Tcx => return Err(anyhow!(e)).with_context(|| format!("attaching to {} (TCX)", what())),
            // Kernels before 6.6 have no TCX.
            Err(e) => log::debug!("TCX attach on {}: {e}; trying clsact", what()),
        }
    }
    match tc::qdisc_add_clsact(iface) {
        Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(anyhow!(e)).with_context(|| format!("adding the clsact qdisc to {iface}")),
    }
    let opts = NlOptions { priority: CLSACT_PRIORITY, handle: CLSACT_HANDLE, ..NlOptions::default() };
    let id = p
        .attach_with_options(iface, hook, TcAttachOptions::Netlink(opts))
        .with_context(|| format!("attaching to {} (clsact)", what()))?;
    keep_attached(p.take_link(id)?);
    Ok(ATTACH_CLSACT)
}

/// Attaches XDP program `p` to `iface` in `mode` (falling back from native
/// to generic under `--attach xdp`), or swaps it into the link pinned there
/// (which keeps its mode: `previous`, as `ATTACHED` recorded it). The link is
/// pinned, like TCX's. Returns the mode.
pub fn attach_xdp(p: &mut Xdp, iface: &str, pins: &PinDir, mode: XdpMode, fallback: bool, previous: Option<u32>) -> anyhow::Result<u32> {
    let pin = pins.link(iface, "xdp");
    if let Some(id) = swap_into_pinned(&pin, &format!("{iface} xdp"), |fd| Ok(p.attach_to_link(XdpLink::try_from(fd)?)?))? {
        drop(p.take_link(id)?);
        // The link keeps the mode it was made with.
        return Ok(previous.unwrap_or(if mode == XdpMode::Skb { XDP_GENERIC } else { XDP_NATIVE }));
    }
    let (id, used) = match p.attach(iface, mode) {
        Ok(id) => (id, mode),
        Err(e) if fallback && mode == XdpMode::Driver => {
            log::info!("{iface}: native XDP refused ({e}); generic XDP instead");
            (p.attach(iface, XdpMode::Skb).with_context(|| format!("attaching XDP to {iface} (generic)"))?, XdpMode::Skb)
        }
        Err(e) => return Err(anyhow!(e)).with_context(|| format!("attaching XDP to {iface}")),
    };
    let link = FdLink::try_from(p.take_link(id)?).map_err(|e| anyhow!("{e}"))?;
    link.pin(&pin).with_context(|| format!("pinning the {iface} xdp link at {}", pin.display()))?;
    Ok(if used == XdpMode::Skb { XDP_GENERIC } else { XDP_NATIVE })
}

/// Removes wsfwd's XDP program from `iface` (its pinned link under `dir`).
pub fn detach_xdp(dir: &Path, iface: &str) -> Option<String> {
    std::fs::remove_file(bpffs::link_path(dir, iface, "xdp")).ok().map(|()| format!("{iface} xdp"))
}

/// Swaps a program into the link pinned at `pin` (`swap` does it, given the
/// link); `None` when there is no pin, or when the link is defunct (its
/// interface was deleted, perhaps recreated, while no agent ran), whose pin
/// is then removed so that the caller attaches afresh.
fn swap_into_pinned<I>(pin: &Path, what: &str, swap: impl FnOnce(FdLink) -> anyhow::Result<I>) -> anyhow::Result<Option<I>> {
    if !pin.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(pin).map_err(anyhow::Error::from).and_then(|l| swap(FdLink::from(l))) {
        Ok(id) => Ok(Some(id)),
        Err(e) => {
            log::warn!("{what}: the pinned link is gone ({e:#}); attaching again");
            std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
            Ok(None)
        }
    }
}

/// A clsact filter is not tied to any descriptor: it stays until removed.
/// Dropping aya's handle would remove it, so the handle is forgotten.
fn keep_attached(link: SchedClassifierLink) {
    std::mem::forget(link);
}

/// Removes the reply program from endpoint-facing `iface`: its pinned TCX
/// link, or its clsact filter on ingress.
pub fn detach_endpoint_side(dir: &Path, iface: &str, mode: u32) -> Option<String> {
    if mode == ATTACH_CLSACT {
        let link = SchedClassifierLink::attached(iface, TcAttachType::Ingress, CLSACT_PRIORITY, CLSACT_HANDLE, None).ok()?;
        return link.detach().ok().map(|()| format!("{iface} {ENDPOINT_SIDE_PIN} (clsact)"));
    }
    std::fs::remove_file(bpffs::link_path(dir, iface, ENDPOINT_SIDE_PIN)).ok().map(|()| format!("{iface} {ENDPOINT_SIDE_PIN} (tcx)"))
}

/// Removes wsfwd's programs from `iface`: its pinned TCX links under `dir`
/// and its clsact filters. Returns what was removed.
pub fn detach(dir: &Path, iface: &str, mode: u32) -> Vec<String> {
    let mut done: Vec<String> = detach_xdp(dir, iface).into_iter().collect();
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let name = hook_name(hook);
        match mode {
            ATTACH_CLSACT => {
                let detached = SchedClassifierLink::attached(iface, hook, CLSACT_PRIORITY, CLSACT_HANDLE, None)
                    .map_err(anyhow::Error::from)
                    .and_then(|l| l.detach().map_err(anyhow::Error::from));
                match detached {
                    Ok(()) => done.push(format!("{iface} {name} (clsact)")),
                    Err(e) => log::debug!("{iface} {name}: no clsact filter of ours ({e})"),
                }
            }
            _ => {
                let pin = bpffs::link_path(dir, iface, name);
                if std::fs::remove_file(&pin).is_ok() {
                    done.push(format!("{iface} {name} (tcx)"));
                }
            }
        }
    }
    done
}
