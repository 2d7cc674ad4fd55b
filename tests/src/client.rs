//! Clients that run inside the client namespace: raw TCP, WebSocket
//! (tokio-tungstenite) and UDP.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_tungstenite::{WebSocketStream, client_async, tungstenite::Message};

use crate::netns::Netns;

pub type Ws = WebSocketStream<TcpStream>;

/// What an echo server says first: who it is and whom it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub backend: String,
    pub client: String,
}

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub async fn tcp_connect(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4) -> anyhow::Result<TcpStream> {
    tcp_connect_from(ns, SocketAddrV4::new(src, 0), dst).await
}

/// `tcp_connect` from a given source port (0: any), reusable at once after
/// a RST close (`SO_REUSEADDR`).
pub async fn tcp_connect_from(ns: &Netns, src: SocketAddrV4, dst: SocketAddrV4) -> anyhow::Result<TcpStream> {
    let sock = ns.socket(socket2::Type::STREAM, socket2::Protocol::TCP)?;
    sock.set_nonblocking(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::from(src).into())?;
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    tokio::time::timeout(TIMEOUT, sock.connect(dst.into()))
        .await
        .with_context(|| format!("connecting {src} -> {dst}: timed out"))?
        .with_context(|| format!("connecting {src} -> {dst}"))
}

/// Connects, completes the WebSocket handshake and reads the greeting.
pub async fn ws_connect(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4) -> anyhow::Result<(Ws, Hello)> {
    ws_connect_from(ns, SocketAddrV4::new(src, 0), dst).await
}

/// `ws_connect` from a given source port (0: any).
pub async fn ws_connect_from(ns: &Netns, src: SocketAddrV4, dst: SocketAddrV4) -> anyhow::Result<(Ws, Hello)> {
    let tcp = tcp_connect_from(ns, src, dst).await?;
    let (mut ws, _resp) = tokio::time::timeout(TIMEOUT, client_async(format!("ws://{dst}/"), tcp))
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
    let hello = match next(&mut ws).await? {
        Message::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(t.as_str())?;
            let field = |name: &str| v[name].as_str().map(str::to_owned).with_context(|| format!("greeting without {name}: {t}"));
            Hello { backend: field("backend")?, client: field("client")? }
        }
        other => bail!("expected a greeting, got {other:?}"),
    };
    Ok((ws, hello))
}

/// The next data frame (pongs are returned too; pings are answered by the library).
pub async fn next(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next()).await.context("no frame within 5 s")?;
        match msg {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(m)) => return Ok(m),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Sends one frame; a peer that stops reading cannot hang the test.
pub async fn send(ws: &mut Ws, msg: Message) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), ws.send(msg)).await.context("frame not sent within 10 s")??;
    Ok(())
}

/// Sends one frame and returns what comes back.
pub async fn echo(ws: &mut Ws, msg: Message) -> anyhow::Result<Message> {
    send(ws, msg).await?;
    next(ws).await
}

/// Sends a datagram from `src` and returns the reply as text.
pub async fn udp_exchange(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) -> anyhow::Result<String> {
    udp_exchange_with(ns, src, dst, payload, None).await
}

/// As `udp_exchange`, with Don't Fragment forced on or off (`IP_MTU_DISCOVER`).
pub async fn udp_exchange_with(
    ns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    payload: &[u8],
    df: Option<bool>,
) -> anyhow::Result<String> {
    let sock = ns.socket(socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    if let Some(df) = df {
        let mode: libc::c_int = if df { libc::IP_PMTUDISC_PROBE } else { libc::IP_PMTUDISC_DONT };
        // SAFETY: a valid socket and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&mode as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
        }
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    let mut buf = vec![0u8; 65536];
    // Datagrams may be lost (e.g. to ARP resolution): retry a few times.
    for _ in 0..5 {
        sock.send_to(payload, dst).await?;
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
            let (n, from) = r?;
            if from != SocketAddr::V4(dst) {
                bail!("reply came from {from}, not {dst}");
            }
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    bail!("no UDP reply from {dst} to {src}")
}

/// Sends a datagram from a socket connected to `dst` and expects the kernel
/// to report an ICMP port unreachable for it (ECONNREFUSED on receive).
pub async fn udp_expect_refused(ns: &Netns, src: Ipv4Addr, dst: SocketAddrV4) -> anyhow::Result<()> {
    let sock = ns.socket(socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    sock.connect(dst).await?;
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        let _ = sock.send(b"anyone there?").await;
        match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            Ok(Err(e)) => bail!("expected ECONNREFUSED, got {e}"),
            Ok(Ok(n)) => bail!("expected ECONNREFUSED, got a {n}-byte reply"),
            Err(_) => continue,
        }
    }
    bail!("no ICMP port unreachable reached {src} for {dst}")
}

/// `GET path` over HTTP/1.1 to `dst`, from inside `ns`: the status line and
/// the body.
pub async fn http_get(ns: &Netns, dst: SocketAddrV4, path: &str) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tcp_connect(ns, *dst.ip(), dst).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_string(&mut response)).await.context("no HTTP response within 20 s")??;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    Ok((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
}

/// The samples of Prometheus text: `name{labels}` → value.
pub fn prometheus_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}
