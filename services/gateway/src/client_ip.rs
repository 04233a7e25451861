//! Which IP address a socket comes from, for the per-IP limits.
//!
//! Behind an ingress every peer is the ingress itself, so the per-IP limits
//! would throttle everyone at once. The client's address is taken from the
//! forwarding headers (`CF-Connecting-IP`, else the first `X-Forwarded-For`
//! entry), but only when the peer is a proxy the operator listed in
//! `FILAMENT_TRUSTED_PROXY_CIDRS`: anyone else could write those headers to
//! dodge the limits or to exhaust someone else's.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// Longest `X-Forwarded-For` header considered; longer ones are ignored.
const MAX_FORWARDED_HEADER: usize = 512;
/// Longest single address entry considered.
const MAX_ADDRESS_ENTRY: usize = 64;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is
/// a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("not an IP network in CIDR notation")]
pub struct CidrError;

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match raw.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw, None),
        };
        let network: IpAddr = address.parse().map_err(|_| CidrError)?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| CidrError)?,
            None => max,
        };
        if prefix > max {
            return Err(CidrError);
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if network[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xff_u8 << (8 - rest);
    (network[full] & mask) == (ip[full] & mask)
}

/// The client's address: the peer's, or the forwarded one when the peer is
/// a trusted proxy and says so in a well-formed header.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|cidr| cidr.contains(peer)) {
        return peer;
    }
    forwarded(headers).unwrap_or(peer)
}

fn forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    if let Some(ip) = headers
        .get("cf-connecting-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_entry)
    {
        return Some(ip);
    }
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    if value.len() > MAX_FORWARDED_HEADER {
        return None;
    }
    parse_entry(value.split(',').next()?)
}

fn parse_entry(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    if raw.len() > MAX_ADDRESS_ENTRY {
        return None;
    }
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cidrs(raw: &[&str]) -> Vec<Cidr> {
        raw.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn parses_and_matches_networks() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        // IPv4-mapped IPv6 peers (dual-stack listeners) match IPv4 networks.
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let odd: Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(odd.contains("192.168.7.255".parse().unwrap()));
        assert!(!odd.contains("192.168.8.0".parse().unwrap()));
        let host: Cidr = "fd00::1".parse().unwrap();
        assert_eq!(host.to_string(), "fd00::1/128");
        assert!(host.contains("fd00::1".parse().unwrap()));
        assert!(!host.contains("fd00::2".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains([1, 2, 3, 4].into())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/1",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxy: IpAddr = [10, 0, 0, 2].into();
        let stranger: IpAddr = [203, 0, 113, 9].into();
        let trusted = cidrs(&["10.0.0.0/8"]);
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.3")]);
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            IpAddr::from([198, 51, 100, 7])
        );
        assert_eq!(client_ip(stranger, &xff, &trusted), stranger);
        assert_eq!(client_ip(proxy, &xff, &[]), proxy);

        let cf = headers(&[
            ("cf-connecting-ip", "2001:db8::5"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_ip(proxy, &cf, &trusted),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn malformed_forwarded_headers_fall_back_to_the_peer() {
        let proxy: IpAddr = [10, 0, 0, 2].into();
        let trusted = cidrs(&["10.0.0.0/8"]);
        let long = format!("198.51.100.7,{}", "1".repeat(MAX_FORWARDED_HEADER));
        for value in ["", "not-an-ip", "999.1.1.1", long.as_str()] {
            let map = headers(&[("x-forwarded-for", value)]);
            assert_eq!(client_ip(proxy, &map, &trusted), proxy, "{value:?}");
        }
        let map = headers(&[("x-forwarded-for", "198.51.100.7:4711")]);
        assert_eq!(
            client_ip(proxy, &map, &trusted),
            IpAddr::from([198, 51, 100, 7])
        );
    }
}
