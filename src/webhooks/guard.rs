//! Where webhooks may go. In production a URL must be `https` or `http` to a host whose
//! every address is public: loopback, private, link-local, unique-local, unspecified,
//! shared (CGNAT), documentation, multicast and cloud metadata addresses are refused, at
//! registration and again at delivery. Delivery resolves through `CheckedResolver`, so the
//! connection goes to an address that was checked (no second lookup an attacker's DNS could
//! answer differently). Development and staging allow any address.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the URL is not an absolute http(s) URL")]
    NotHttp,
    #[error("the host cannot be resolved")]
    Unresolvable,
    #[error("the host resolves to a non-public address")]
    NonPublic,
}

/// Whether `ip` is an address a webhook may be sent to in production.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 (metadata)
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64, may reach private v4
}

/// The host and port of an http(s) URL.
fn host_and_port(url: &str) -> Result<(String, u16), Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Refused::NotHttp)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Refused::NotHttp);
    }
    let host = parsed.host_str().ok_or(Refused::NotHttp)?;
    let port = parsed.port_or_known_default().ok_or(Refused::NotHttp)?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// Checks a URL: its shape always; in production (`strict`) also that every address its
/// host resolves to is public.
pub async fn check_url(url: &str, strict: bool) -> Result<(), Refused> {
    let (host, port) = host_and_port(url)?;
    if strict {
        resolve_public(&host, port).await?;
    }
    Ok(())
}

/// Resolves `host` and returns its addresses if every one is public.
async fn resolve_public(host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refused::Unresolvable)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused::Unresolvable);
    }
    if addrs.iter().all(|a| is_public(a.ip())) {
        Ok(addrs)
    } else {
        Err(Refused::NonPublic)
    }
}

/// The delivery client's resolver in production: a name whose addresses are not all public
/// fails to resolve, so the client never connects to one.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver;

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs = resolve_public(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// At delivery: IP-literal hosts never reach a resolver, so they are checked here.
pub fn check_literal(url: &str, strict: bool) -> Result<(), Refused> {
    let (host, _) = host_and_port(url)?;
    match host.parse::<IpAddr>() {
        Ok(ip) if strict && !is_public(ip) => Err(Refused::NonPublic),
        _ => Ok(()),
    }
}

/// Whether a delivery failed because `CheckedResolver` refused its host.
pub fn refused_by_resolver(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<Refused>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback, private, link-local, metadata and mapped forms are refused; public ones pass.
    #[test]
    fn only_public_addresses_pass() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for allowed in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(allowed.parse().unwrap()), "{allowed}");
        }
    }

    /// Literal addresses are checked without DNS; other schemes are refused in any mode.
    #[tokio::test]
    async fn urls_are_checked_in_production_only() {
        assert_eq!(
            check_url("http://127.0.0.1:9/x", true).await,
            Err(Refused::NonPublic)
        );
        assert_eq!(
            check_url("http://[::1]/x", true).await,
            Err(Refused::NonPublic)
        );
        assert_eq!(
            check_url("http://localhost/x", true).await,
            Err(Refused::NonPublic)
        );
        assert_eq!(check_url("http://127.0.0.1:9/x", false).await, Ok(()));
        assert_eq!(
            check_url("ftp://example.com/", false).await,
            Err(Refused::NotHttp)
        );
        assert_eq!(
            check_literal("http://169.254.169.254/", true),
            Err(Refused::NonPublic)
        );
        assert_eq!(check_literal("http://169.254.169.254/", false), Ok(()));
    }
}
