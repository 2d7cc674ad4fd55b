//! A lean WebSocket echo server for the benchmark's backends (the tests use
//! Python's `websockets`; the benchmark needs backends that are not the
//! bottleneck). Greets like the test peer: {"backend": NAME, "client": ADDR}.
use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::{accept_async, tungstenite::Message};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9080);
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    println!("listening");
    loop {
        let (tcp, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut ws) = accept_async(tcp).await else { return };
            let hello = format!(r#"{{"backend":"{name}","client":"{}"}}"#, peer.ip());
            if ws.send(Message::text(hello)).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
    }
}
