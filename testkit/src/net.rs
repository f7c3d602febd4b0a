//! Addresses for test nodes: loopback ports free for TCP and UDP, and shared public ports on one
//! loopback address per node.

use std::net::{TcpListener, UdpSocket};

/// Public listeners that share two ports, one loopback address per node: what a CA (Pebble)
/// needs, since it validates on fixed ports at whatever address DNS names. Node `i` (1-based)
/// listens on `{prefix}{i + 1}`.
#[derive(Debug, Clone)]
pub struct PublicNet {
    /// For example `127.0.20.`.
    pub prefix: String,
    pub http_port: u16,
    pub https_port: u16,
}

impl PublicNet {
    pub fn ip_of(&self, node_number: usize) -> String {
        format!("{}{}", self.prefix, node_number + 1)
    }
}

/// A loopback port free for both TCP and UDP, handed out once per process.
///
/// Ports come from below the kernel's ephemeral range (32768 and up by default), so neither the
/// outgoing connections of a busy test nor another `bind(:0)` can take one between the moment it
/// is picked here and the moment the node binds it. Each process starts at its own offset and
/// walks forward, so the threads of one test binary never share a port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}
