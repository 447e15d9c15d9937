//! The client's address: the socket peer, unless the peer is a trusted proxy, in
//! which case `X-Forwarded-For` is walked from the right and the first address
//! that is not itself a trusted proxy is the client. Anyone else's
//! `X-Forwarded-For` is ignored, so spoofing it changes nothing.

use std::net::IpAddr;

use ipnet::IpNet;

pub fn client_ip(peer: Option<IpAddr>, forwarded_for: &[&str], trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops =
        forwarded_for.iter().flat_map(|h| h.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    return Some(ip);
                }
            }
            // An unparsable hop: stop at the last address we could trust.
            None => return Some(client),
        }
    }
    Some(client)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    hop.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses are their IPv4 selves.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(ip("203.0.113.9"), &["1.1.1.1"], &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("203.0.113.9"), &[], &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxy_chain_yields_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // client spoofs 6.6.6.6, real client 198.51.100.7, then an inner proxy 10.0.0.2
        assert_eq!(client_ip(ip("10.0.0.1"), &["6.6.6.6, 198.51.100.7", "10.0.0.2"], &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &trusted), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &["garbage"], &trusted), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &["[2001:db8::1]:443"], &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), &["198.51.100.7"], &trusted), ip("198.51.100.7"));
    }
}
