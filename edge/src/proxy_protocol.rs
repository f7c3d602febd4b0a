//! PROXY protocol v1 (text) and v2 (binary) headers, read before TLS on listeners configured for
//! them. Only the source address is used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Read one PROXY header; returns the client's address (None for `LOCAL`/`UNKNOWN`).
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut first = [0u8; 12];
    r.read_exact(&mut first[..5]).await?;
    if &first[..5] == b"PROXY" {
        return read_v1(r).await;
    }
    r.read_exact(&mut first[5..]).await?;
    if first != V2_SIG {
        return Err(ProxyHeaderError::Malformed("neither v1 nor v2 signature"));
    }
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let (ver_cmd, fam, len) = (
        head[0],
        head[1],
        u16::from_be_bytes([head[2], head[3]]) as usize,
    );
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("unsupported v2 version"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if ver_cmd & 0x0F == 0 {
        return Ok(None); // LOCAL: health check from the proxy itself
    }
    match fam >> 4 {
        1 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        2 if len >= 36 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(b)),
                u16::from_be_bytes([body[32], body[33]]),
            )))
        }
        0 => Ok(None),
        _ => Err(ProxyHeaderError::Malformed("unsupported v2 address family")),
    }
}

async fn read_v1<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // At most 107 bytes in all, ending in CRLF; read byte by byte so nothing after it is consumed.
    let mut line = b"PROXY".to_vec();
    loop {
        let b = r.read_u8().await?;
        line.push(b);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() > 107 {
            return Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes",
            ));
        }
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyHeaderError::Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source address"))?;
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyHeaderError::Malformed("v1 fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_and_v2_give_the_source_and_leave_the_rest() {
        let mut v1: &[u8] = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\nGET /";
        assert_eq!(
            read_header(&mut v1).await.unwrap(),
            Some("198.51.100.7:5555".parse().unwrap())
        );
        assert_eq!(v1, b"GET /");
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 5, 10, 0, 0, 1, 0x1f, 0x90, 1, 187,
        ]);
        v2.extend_from_slice(b"rest");
        let mut s: &[u8] = &v2;
        assert_eq!(
            read_header(&mut s).await.unwrap(),
            Some("203.0.113.5:8080".parse().unwrap())
        );
        assert_eq!(s, b"rest");
        let mut bad: &[u8] = b"GARBAGE-GARBAGE";
        assert!(read_header(&mut bad).await.is_err());
    }
}
