//! Egress policy: where the platform may connect on a tenant's behalf (MCP upstream URLs and
//! model provider base URLs, both written by tenants in their contracts).
//!
//! Contract:
//! * A destination URL must be `http`/`https` with a host, and carry no userinfo, query or
//!   fragment ([`check_url`]): a base URL has no place for them, and they are the classic ways
//!   to smuggle a credential or confuse a parser.
//! * The host must be on the administrator's allow-list for the project (rules for the project
//!   or for every project): an exact DNS name, `*.suffix` (sub-domains only), or an IP network
//!   in CIDR notation (the only way to allow an IP literal).
//! * Every address the name resolves to, on **every new connection**, must be public, unless a
//!   CIDR rule of the project covers it explicitly: loopback, link-local (cloud metadata),
//!   private, carrier-grade NAT, unique-local, multicast, reserved and documentation ranges are
//!   refused ([`is_special`]). The check runs inside the HTTP client's DNS resolver
//!   ([`GuardedResolver`]), so a name that re-resolves to 127.0.0.1 later (DNS rebinding) is
//!   refused at that connection, not only at publish.
//! * The clients built here follow no redirects and use no proxy (a proxy would resolve the
//!   name itself, out of the policy's sight).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().ok()?
            }
            Some(_) => return None,
            None => max,
        };
        if prefix > max {
            return None;
        }
        // An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`, n >= 96) is the IPv4 network it maps.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
                IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
                prefix - 96,
            ),
            a => (a, prefix),
        };
        Some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, normalize(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address they carry.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Loopback, link-local (cloud metadata 169.254.169.254), private, shared (CGNAT, Alibaba's
/// 100.100.100.200), unique-local (fd00:ec2::254), multicast, unspecified, reserved,
/// benchmarking, documentation, NAT64 and 6to4/Teredo (they embed an IPv4 address) ranges.
pub fn is_special(ip: IpAddr) -> bool {
    match normalize(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> bool {
    const NETS: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
        (0x0A00_0000, 8),  // 10.0.0.0/8
        (0x6440_0000, 10), // 100.64.0.0/10 shared address space (CGNAT)
        (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
        (0xA9FE_0000, 16), // 169.254.0.0/16 link-local, cloud metadata
        (0xAC10_0000, 12), // 172.16.0.0/12
        (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
        (0xC000_0200, 24), // 192.0.2.0/24 TEST-NET-1
        (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast
        (0xC0A8_0000, 16), // 192.168.0.0/16
        (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
        (0xC633_6400, 24), // 198.51.100.0/24 TEST-NET-2
        (0xCB00_7100, 24), // 203.0.113.0/24 TEST-NET-3
        (0xE000_0000, 4),  // 224.0.0.0/4 multicast
        (0xF000_0000, 4),  // 240.0.0.0/4 reserved, broadcast
    ];
    let a = u32::from(ip);
    NETS.iter().any(|(n, p)| {
        let mask = u32::MAX << (32 - u32::from(*p));
        a & mask == *n
    })
}

fn special_v6(ip: Ipv6Addr) -> bool {
    const NETS: &[(u128, u8)] = &[
        (0, 96), // ::/96 unspecified, loopback, IPv4-compatible
        (0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96), // 64:ff9b::/96 NAT64
        (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48), // 64:ff9b:1::/48 local NAT64
        (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // 100::/64 discard
        (0x2001_0000_0000_0000_0000_0000_0000_0000, 23), // 2001::/23 IETF (Teredo, ORCHID, ...)
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32 documentation
        (0x2002_0000_0000_0000_0000_0000_0000_0000, 16), // 2002::/16 6to4
        (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7), // fc00::/7 unique local
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // fe80::/10 link-local
        (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // fec0::/10 site-local (deprecated)
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8), // ff00::/8 multicast
    ];
    let a = u128::from(ip);
    NETS.iter().any(|(n, p)| {
        let mask = u128::MAX << (128 - u32::from(*p));
        a & mask == *n
    })
}

/// The host part of an allow-list rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An exact DNS name (lower case, no trailing dot).
    Name(String),
    /// `*.example.com`: any sub-domain of `example.com` (not `example.com` itself).
    Suffix(String),
    /// An IP network: allows IP literals inside it, and resolved addresses inside it even when
    /// they are special (loopback, private, ...).
    Net(IpNet),
}

impl HostPattern {
    /// Parse a rule's host: `name`, `*.suffix` or `a.b.c.d/n` / `x::/n` / a bare IP.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(net) = IpNet::parse(s) {
            return Ok(Self::Net(net));
        }
        if s.contains('/') || s.contains(':') {
            return Err(format!("{s:?} is not a valid IP network (CIDR)"));
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "{s:?} is not a DNS name, *.suffix or IP network (CIDR)"
            ));
        }
        if wild && !name.contains('.') {
            return Err(format!("{s:?}: a wildcard needs at least two labels"));
        }
        Ok(if wild {
            Self::Suffix(name)
        } else {
            Self::Name(name)
        })
    }

    fn matches_name(&self, host: &str) -> bool {
        match self {
            Self::Name(n) => n == host,
            Self::Suffix(s) => {
                host.len() > s.len() + 1 && host.ends_with(s.as_str()) && {
                    host.as_bytes()[host.len() - s.len() - 1] == b'.'
                }
            }
            Self::Net(_) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Suffix(s) => write!(f, "*.{s}"),
            Self::Net(n) => write!(f, "{n}"),
        }
    }
}

/// One allow-list rule as stored (`platform_egress_rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressRule {
    pub rule_id: uuid::Uuid,
    /// `None`: every project.
    pub project: Option<String>,
    pub host: String,
    #[serde(default)]
    pub note: String,
}

/// Every refusal's message names the policy (see [`refused_by_policy`]).
const POLICY_MARKER: &str = "egress policy";

/// Why a destination was refused. The message names only the tenant's own URL's host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("egress policy: {0}")]
    BadUrl(String),
    #[error("the egress policy does not allow host {0:?} for this project")]
    HostNotAllowed(String),
    #[error(
        "host {0:?} resolves only to loopback, link-local, private or reserved addresses, which the egress policy does not allow for this project"
    )]
    AddressNotAllowed(String),
    #[error("{0}")]
    Refused(String),
}

/// The rules in force (every project's, compiled), as one immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    rules: Vec<(Option<String>, HostPattern)>,
}

/// A checked destination: the parsed URL and its host.
#[derive(Debug, Clone)]
pub struct Destination {
    pub url: reqwest::Url,
    pub host: Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

/// Parse and check the shape of a tenant-written URL (no policy yet).
pub fn check_url(raw: &str) -> Result<Destination, EgressError> {
    let bad = |m: &str| EgressError::BadUrl(m.to_string());
    if raw
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
    {
        return Err(bad(
            "the URL contains spaces, backslashes or control characters",
        ));
    }
    let url = reqwest::Url::parse(raw).map_err(|_| bad("the URL is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the URL scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() || raw.contains('@') {
        return Err(bad(
            "the URL must not carry user information (user:password@)",
        ));
    }
    if url.query().is_some() || raw.contains('?') {
        return Err(bad("the URL must not carry a query string"));
    }
    if url.fragment().is_some() || raw.contains('#') {
        return Err(bad("the URL must not carry a fragment"));
    }
    let host = match url.host_str() {
        Some(h) if h.starts_with('[') => {
            let ip: Ipv6Addr = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| bad("the URL host is not a valid IPv6 address"))?;
            Host::Ip(IpAddr::V6(ip))
        }
        Some(h) => match h.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => {
                let d = h.trim_end_matches('.').to_ascii_lowercase();
                if d.is_empty() {
                    return Err(bad("the URL has no host"));
                }
                Host::Name(d)
            }
        },
        None => return Err(bad("the URL has no host")),
    };
    Ok(Destination { url, host })
}

impl EgressPolicy {
    /// Compile stored rules; a rule that no longer parses is skipped (and logged): it allows
    /// nothing, which fails closed.
    pub fn compile(rules: &[EgressRule]) -> Self {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            match HostPattern::parse(&r.host) {
                Ok(p) => out.push((r.project.clone(), p)),
                Err(e) => tracing::warn!(rule = %r.rule_id, "ignoring egress rule: {e}"),
            }
        }
        Self { rules: out }
    }

    /// Extra rules that are not stored (`awooop up`'s local loopback allowance).
    pub fn with(mut self, project: Option<&str>, host: HostPattern) -> Self {
        self.rules.push((project.map(str::to_string), host));
        self
    }

    /// Loopback (127.0.0.0/8 and ::1) for every project: `awooop up` local mode and tests.
    pub fn allow_loopback(self) -> Self {
        self.with(
            None,
            HostPattern::Net(IpNet::parse("127.0.0.0/8").expect("net")),
        )
        .with(
            None,
            HostPattern::Net(IpNet::parse("::1/128").expect("net")),
        )
        .with(None, HostPattern::Name("localhost".into()))
    }

    fn for_project<'a>(&'a self, project: &'a str) -> impl Iterator<Item = &'a HostPattern> + 'a {
        self.rules
            .iter()
            .filter(move |(p, _)| p.as_deref().is_none_or(|p| p == project))
            .map(|(_, h)| h)
    }

    /// May `project` connect to this host name (before resolution)?
    pub fn name_allowed(&self, project: &str, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.for_project(project).any(|h| h.matches_name(&name))
    }

    /// May `project` connect to this (resolved or literal) address? Public addresses are
    /// allowed once the name was; special ones only through a CIDR rule covering them.
    pub fn address_allowed(&self, project: &str, ip: IpAddr) -> bool {
        let net_allows = self
            .for_project(project)
            .any(|h| matches!(h, HostPattern::Net(n) if n.contains(ip)));
        net_allows || !is_special(ip)
    }

    /// Check a tenant-written URL for `project`: shape, then host against the allow-list. IP
    /// literals need a CIDR rule; names are checked again, with their addresses, by
    /// [`GuardedResolver`] on every connection.
    pub fn check(&self, project: &str, raw: &str) -> Result<Destination, EgressError> {
        let d = check_url(raw)?;
        match &d.host {
            Host::Ip(ip) => {
                let listed = self
                    .for_project(project)
                    .any(|h| matches!(h, HostPattern::Net(n) if n.contains(*ip)));
                if !listed {
                    return Err(EgressError::HostNotAllowed(ip.to_string()));
                }
            }
            Host::Name(n) => {
                if !self.name_allowed(project, n) {
                    return Err(EgressError::HostNotAllowed(n.clone()));
                }
            }
        }
        Ok(d)
    }
}

/// DNS resolver for one project's HTTP client: resolves with the system resolver, then keeps
/// only the addresses the policy allows. Runs on every new connection the client opens.
#[derive(Clone)]
pub struct GuardedResolver {
    project: String,
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(project: &str, policy: Arc<EgressPolicy>) -> Self {
        Self {
            project: project.to_string(),
            policy,
        }
    }
}

impl GuardedResolver {
    /// Resolve `host` with the system resolver and keep the addresses the policy allows for
    /// this project: an [`EgressError`] when the name or every address is refused. Shared by
    /// every HTTP client of the platform (reqwest's resolver below, the gateway's upstream
    /// connector), so the check cannot differ between them.
    pub async fn resolve_allowed(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        if !self.policy.name_allowed(&self.project, host) {
            return Err(Box::new(EgressError::HostNotAllowed(host.to_string())));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await?
            .filter(|a| self.policy.address_allowed(&self.project, a.ip()))
            .collect();
        if addrs.is_empty() {
            tracing::warn!(project = %self.project, host = %host, "egress refused: no allowed address");
            return Err(Box::new(EgressError::AddressNotAllowed(host.to_string())));
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve_allowed(name.as_str()).await?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// An HTTP client for one project under `policy`: the guarded resolver, no redirects, no proxy.
pub fn client_builder(project: &str, policy: Arc<EgressPolicy>) -> reqwest::ClientBuilder {
    awooop_core::tls::install_crypto_provider();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(project, policy)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// Whether a client error (reqwest's, or hyper's for the gateway's upstream sessions) was our
/// resolver refusing the destination. The resolver's error travels boxed through hyper's
/// connector; it is found by type, or by its message (which always names the egress policy)
/// when a layer re-wraps it.
pub fn refused_by_policy(e: &(dyn std::error::Error + 'static)) -> Option<EgressError> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(eg) = s.downcast_ref::<EgressError>() {
            return Some(eg.clone());
        }
        let text = s.to_string();
        if text.contains(POLICY_MARKER) {
            return Some(EgressError::Refused(text));
        }
        src = s.source();
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rule for `project` (`None`: every project); also used by the snapshot's tests.
    pub(crate) fn rule(project: Option<&str>, host: &str) -> EgressRule {
        EgressRule {
            rule_id: uuid::Uuid::nil(),
            project: project.map(String::from),
            host: host.into(),
            note: String::new(),
        }
    }

    #[test]
    fn special_addresses_table() {
        let special = [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ];
        for s in special {
            assert!(is_special(s.parse().unwrap()), "{s} should be special");
        }
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ];
        for s in public {
            assert!(!is_special(s.parse().unwrap()), "{s} should be public");
        }
    }

    #[test]
    fn url_shape_tricks_are_refused() {
        let bad = [
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "http://example.com@127.0.0.1/",
            "http://example.com/v1?x=1",
            "http://example.com/v1#frag",
            "http://exa mple.com/",
            "http:\\\\example.com\\",
            "file:///etc/passwd",
            "http://",
            "http://:80/",
        ];
        for u in bad {
            assert!(check_url(u).is_err(), "{u} should be refused");
        }
        assert!(check_url("https://api.openai.com/v1").is_ok());
    }

    #[test]
    fn allow_list_decisions() {
        let p = EgressPolicy::compile(&[
            rule(Some("a"), "api.example.com"),
            rule(Some("a"), "*.corp.example"),
            rule(None, "shared.example.org"),
            rule(Some("a"), "10.0.0.0/8"),
            rule(Some("b"), "127.0.0.1"),
        ]);
        let ok = [
            ("a", "https://api.example.com/v1"),
            ("a", "https://x.corp.example/mcp"),
            ("b", "https://shared.example.org/"),
            ("a", "http://10.2.3.4:8080/mcp"),
            ("b", "http://127.0.0.1:9/mcp"),
        ];
        for (proj, u) in ok {
            assert!(p.check(proj, u).is_ok(), "{proj} {u}");
        }
        let denied = [
            ("b", "https://api.example.com/v1"),
            ("a", "https://corp.example/"),
            ("a", "https://evilcorp.example/"),
            ("a", "http://127.0.0.1:9/mcp"),
            ("a", "http://[::ffff:127.0.0.1]/"),
            ("a", "http://169.254.169.254/latest/meta-data"),
            ("b", "http://127.0.0.2/"),
        ];
        for (proj, u) in denied {
            assert!(p.check(proj, u).is_err(), "{proj} {u}");
        }
        // A name rule never allows a special address behind it (rebinding).
        assert!(!p.address_allowed("b", "127.0.0.2".parse().unwrap()));
        assert!(p.address_allowed("a", "10.9.9.9".parse().unwrap()));
        assert!(!p.address_allowed("a", "169.254.169.254".parse().unwrap()));
        assert!(p.address_allowed("a", "93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn host_patterns_parse_or_fail() {
        for good in [
            "example.com",
            "*.example.com",
            "10.0.0.0/8",
            "::1",
            "fd00::/8",
            "127.0.0.1",
        ] {
            assert!(HostPattern::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "*",
            "*.com",
            "exa mple.com",
            "10.0.0.0/33",
            "1.2.3.4/x",
            "http://x",
            "a..b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
