//! Third-party peers: Debian's Python `websockets` echo server and a UDP echo.
use std::{path::Path, time::Duration};

use crate::{netns::Netns, sys::Proc};

const WS_ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/ws_echo.py");
const UDP_ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/udp_echo.py");
/// Debian's interpreter: the one that sees python3-websockets.
const PYTHON: &str = "/usr/bin/python3";

fn start(ns: &Netns, script: &str, name: &str, port: u16, log: &Path) -> anyhow::Result<Proc> {
    let mut p = Proc::spawn(ns.command(PYTHON).args([script, name, &port.to_string()]), log)?;
    p.wait_for_line("listening", Duration::from_secs(10))?;
    Ok(p)
}

pub fn ws_echo(ns: &Netns, name: &str, port: u16, log: &Path) -> anyhow::Result<Proc> {
    start(ns, WS_ECHO, name, port, log)
}

pub fn udp_echo(ns: &Netns, name: &str, port: u16, log: &Path) -> anyhow::Result<Proc> {
    start(ns, UDP_ECHO, name, port, log)
}

/// The client addresses a WebSocket echo server reported connections from.
pub fn connections_seen(p: &Proc) -> Vec<String> {
    p.output().lines().filter_map(|l| l.strip_prefix("connection ").map(str::to_owned)).collect()
}

/// The client addresses of the connections a WebSocket peer saw end.
pub fn connections_ended(p: &Proc) -> Vec<String> {
    p.output().lines().filter_map(|l| l.strip_prefix("closed ").map(str::to_owned)).collect()
}
