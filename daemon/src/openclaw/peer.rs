//! Who owns the gateway's end of a loopback connection. Any local user can
//! listen on the gateway's port while it restarts, so the token is sent on a
//! `ws://` connection only when the kernel says the accepting socket belongs to
//! an expected uid (`/proc/net/tcp{,6}`, the `uid` column of the server-side
//! entry of this very connection: no window between check and use).

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Tables searched, IPv4 first.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// Bound on what is read of one table (a line is ~150 bytes).
const MAX_TABLE_BYTES: u64 = 64 * 1024 * 1024;

/// An IPv4-mapped IPv6 address as IPv4, so a dual-stack listener matches.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host
/// byte order as the kernel prints it.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        ip.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

/// The uid of the socket whose local address is `server` and remote address
/// is `client`, in one table's text.
fn find_in(table: impl BufRead, server: SocketAddr, client: SocketAddr) -> Option<u32> {
    table
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .find_map(|line| {
            let mut f = line.split_whitespace();
            // sl local rem st queues timer retrnsmt uid
            let local = parse_addr(f.nth(1)?)?;
            let remote = parse_addr(f.next()?)?;
            let uid = f.nth(4)?.parse().ok()?;
            (local == server && remote == client).then_some(uid)
        })
}

/// The uid owning the server side of the TCP connection `client` → `server`
/// (from this host's point of view), or `None` when no table lists it.
pub(crate) fn server_uid(client: SocketAddr, server: SocketAddr) -> std::io::Result<Option<u32>> {
    let (client, server) = (canonical(client), canonical(server));
    let mut last_err = None;
    for table in TABLES {
        match std::fs::File::open(table) {
            Ok(f) => {
                let reader = BufReader::new(f.take(MAX_TABLE_BYTES));
                if let Some(uid) = find_in(reader, server, client) {
                    return Ok(Some(uid));
                }
            }
            // No IPv6 on this host is fine; not being able to read both is not.
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) if TABLES.iter().all(|t| std::fs::metadata(t).is_err()) => Err(e),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_parsed_in_kernel_byte_order() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 65534        0 123 1 0 20 4 30 10 -1\n";
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(find_in(v4.as_bytes(), server, client), Some(65534));
        assert_eq!(find_in(v4.as_bytes(), client, server), None);
        // A dual-stack listener: ::ffff:127.0.0.1 in tcp6.
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 77 1 0 20 4 30 10 -1\n";
        assert_eq!(find_in(v6.as_bytes(), server, client), Some(1000));
        let loopback6 = "h\n 0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01 0:0 0:0 0 42 0 1\n";
        let s6: SocketAddr = "[::1]:8080".parse().unwrap();
        let c6: SocketAddr = "[::1]:54321".parse().unwrap();
        assert_eq!(find_in(loopback6.as_bytes(), s6, c6), Some(42));
    }
}
