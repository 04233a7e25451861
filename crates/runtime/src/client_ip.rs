//! Which address a request comes from, for per-IP limits and IP bans.
//!
//! Behind an ingress every peer is the ingress itself. The client's address
//! is taken from the forwarding headers (`CF-Connecting-IP`, else the first
//! `X-Forwarded-For` entry), but only when the peer is a proxy the operator
//! listed in `FILAMENT_TRUSTED_PROXY_CIDRS`: anyone else could write those
//! headers to dodge a limit or a ban, or to exhaust someone else's. The api
//! and the gateway both use this one implementation.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Longest `X-Forwarded-For` header considered; a longer one is ignored.
const MAX_FORWARDED_HEADER_BYTES: usize = 512;
/// Longest single forwarded address considered.
const MAX_FORWARDED_ENTRY_BYTES: usize = 64;

/// The client's address: the peer's, or the forwarded one when the peer is
/// a trusted proxy and sent a well-formed header. A malformed header from a
/// trusted proxy leaves the proxy's own address, never a guess.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    forwarded(headers).unwrap_or(peer)
}

fn forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ip) = header("cf-connecting-ip").and_then(parse_entry) {
        return Some(ip);
    }
    let chain = header("x-forwarded-for")?;
    if chain.len() > MAX_FORWARDED_HEADER_BYTES {
        return None;
    }
    parse_entry(chain.split(',').next()?)
}

/// One forwarded address: `ip`, `ip:port` or `[ipv6]:port`.
fn parse_entry(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    if raw.len() > MAX_FORWARDED_ENTRY_BYTES {
        return None;
    }
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .map(|ip| ip.to_canonical())
}

/// A trusted proxy network as the operator writes it: CIDR notation, or a
/// bare address for one host (as the gateway accepts the same variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub IpNet);

impl FromStr for TrustedProxy {
    type Err = ipnet::AddrParseError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.parse::<IpAddr>() {
            Ok(host) => Ok(Self(IpNet::from(host.to_canonical()))),
            Err(_) => raw.parse::<IpNet>().map(|net| Self(net.trunc())),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn nets(raw: &[&str]) -> Vec<IpNet> {
        raw.iter()
            .map(|net| net.parse::<TrustedProxy>().expect("network").0)
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("address")
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        assert_eq!(resolve(ip("10.0.0.2"), &xff, &trusted), ip("198.51.100.7"));
        assert_eq!(
            resolve(ip("203.0.113.9"), &xff, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(resolve(ip("10.0.0.2"), &xff, &[]), ip("10.0.0.2"));
        // A dual-stack listener reports IPv4 peers as mapped addresses.
        assert_eq!(
            resolve(ip("::ffff:10.0.0.2"), &xff, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(ip("::ffff:203.0.113.9"), &HeaderMap::new(), &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn cf_connecting_ip_wins_over_x_forwarded_for() {
        let trusted = nets(&["10.0.0.2"]);
        let both = headers(&[
            ("cf-connecting-ip", "2001:db8::5"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(resolve(ip("10.0.0.2"), &both, &trusted), ip("2001:db8::5"));
        let bad_cf = headers(&[
            ("cf-connecting-ip", "garbage"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &bad_cf, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn malformed_or_oversized_headers_leave_the_peer() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let long_header = format!("198.51.100.7,{}", "1".repeat(MAX_FORWARDED_HEADER_BYTES));
        // Parses as an address, but is longer than any entry we accept.
        let long_entry = "[0000:0000:0000:0000:0000:0000:0000:0001]:00000000000000000000000443";
        assert!(long_entry.len() > MAX_FORWARDED_ENTRY_BYTES);
        assert!(long_entry.parse::<SocketAddr>().is_ok());
        for value in ["", "not-an-ip", "999.1.1.1", &long_header, long_entry] {
            let map = headers(&[("x-forwarded-for", value)]);
            assert_eq!(resolve(peer, &map, &trusted), peer, "{value:?}");
        }
        let with_port = headers(&[("x-forwarded-for", "[2001:db8::9]:443, 10.0.0.1")]);
        assert_eq!(resolve(peer, &with_port, &trusted), ip("2001:db8::9"));
    }

    #[test]
    fn trusted_proxies_parse_networks_and_hosts() {
        assert_eq!(
            nets(&["10.1.2.3/8", "192.0.2.1", "fd00::1"]),
            vec![
                "10.0.0.0/8".parse::<IpNet>().expect("net"),
                "192.0.2.1/32".parse::<IpNet>().expect("net"),
                "fd00::1/128".parse::<IpNet>().expect("net"),
            ]
        );
        for bad in ["", "10.0.0.0/33", "x", "10.0.0/8"] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
    }
}
