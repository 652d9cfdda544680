//! A TCP proxy that can go silent: it forwards bytes both ways until [`StallProxy::stall`],
//! then stops forwarding in both directions **without closing** any connection, as a
//! client that loses its network (a closed laptop, a dead Wi-Fi) looks to the server. On
//! loopback a client that simply dies is seen at once (the kernel closes its sockets), so a
//! test of "viewers that vanish without a word" needs this in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The proxy; dropping it leaves the stalled connections hanging until the test ends.
pub struct StallProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stalled: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`
    /// (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port is free");
        let addr = listener.local_addr().expect("bound").to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let flag = Arc::clone(&stalled);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, Arc::clone(&flag)));
                tokio::spawn(pump(sr, cw, Arc::clone(&flag)));
            }
        });
        StallProxy {
            addr,
            stalled,
            task,
        }
    }

    /// From now on nothing is forwarded, and nothing is closed.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes; once stalled, holds both open and moves no
/// byte again (the read side is no longer drained, so the peer's writes back up too).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Silent, open: park forever with both halves held.
    Notify::new().notified().await;
    drop((from, to));
}
