//! The egress guard's decision: may Sluice open a connection to this
//! address on a caller's behalf? Callback URLs (`X-Callback-Url`) and
//! functions' outbound HTTP are chosen by callers, so without it a caller
//! could make the gateway or a runtime reach the cluster's API server, a
//! cloud metadata endpoint (169.254.169.254) or a private pod (server-side
//! request forgery).
//!
//! Only public addresses pass by default; an operator opens exceptions
//! with an allow-list of CIDRs ([`EgressPolicy::allow`]) and closes more
//! with a deny-list ([`EgressPolicy::deny`], e.g. the cluster's service
//! network when it is public address space). The address ranges are those
//! of the IANA special-purpose registries, RFC 6890.
//!
//! This is pure: resolving names, and checking every resolved address
//! before connecting to it, is the callers' part.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What kind of address an IP address is, as far as egress is concerned.
/// Every class but [`AddressClass::Public`] is refused unless allow-listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable unicast.
    Public,
    /// 0.0.0.0/8 ("this network", RFC 1122 §3.2.1.3) and `::` (RFC 4291
    /// §2.5.2): connecting to 0.0.0.0 reaches the local host on Linux.
    Unspecified,
    /// 127.0.0.0/8 (RFC 1122 §3.2.1.3) and `::1` (RFC 4291 §2.5.3).
    Loopback,
    /// 169.254.0.0/16 (RFC 3927), where cloud metadata services answer,
    /// and fe80::/10 (RFC 4291 §2.5.6).
    LinkLocal,
    /// 10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16 (RFC 1918), unique
    /// local fc00::/7 (RFC 4193) and the deprecated site-local fec0::/10
    /// (RFC 3879): where pods, Services and nodes usually live.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT's shared address space (RFC 6598),
    /// which some clusters use for pods.
    SharedAddressSpace,
    /// 224.0.0.0/4 (RFC 5771) and ff00::/8 (RFC 4291 §2.7).
    Multicast,
    /// 255.255.255.255 (RFC 919, RFC 6890).
    Broadcast,
    /// 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24 (RFC 5737),
    /// 2001:db8::/32 (RFC 3849) and 3fff::/20 (RFC 9637).
    Documentation,
    /// Everything else set aside: 192.0.0.0/24 and 2001::/23 (IETF protocol
    /// assignments, RFC 6890, Teredo included), 198.18.0.0/15 and
    /// 2001:2::/48 (benchmarking, RFC 2544, RFC 5180), 192.88.99.0/24 (6to4
    /// relays, RFC 7526), 240.0.0.0/4 (RFC 1112), 100::/64 (discard, RFC
    /// 6666), 64:ff9b:1::/48 (local NAT64, RFC 8215) and IPv6 outside the
    /// global unicast 2000::/3 (RFC 4291 §2.4).
    Reserved,
}

impl AddressClass {
    /// Whether connections to this class are allowed without an
    /// allow-list entry.
    pub fn is_public(self) -> bool {
        self == Self::Public
    }

    /// The class as a noun phrase, for refusals.
    pub fn description(self) -> &'static str {
        match self {
            Self::Public => "a public address",
            Self::Unspecified => "an unspecified address (RFC 1122, RFC 4291)",
            Self::Loopback => "a loopback address (RFC 1122, RFC 4291)",
            Self::LinkLocal => "a link-local address (RFC 3927, RFC 4291)",
            Self::Private => "a private address (RFC 1918, RFC 4193)",
            Self::SharedAddressSpace => "a carrier-grade NAT address (RFC 6598)",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address (RFC 5737, RFC 3849)",
            Self::Reserved => "a reserved address (RFC 6890)",
        }
    }
}

/// The IPv4 address an IPv6 address stands for, where it embeds one that
/// a connection would end up at: IPv4-mapped `::ffff:a.b.c.d` (what a
/// dual-stack socket uses for IPv4 peers) and the deprecated
/// IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5), the NAT64 well-known
/// prefix 64:ff9b::/96 (RFC 6052) and 6to4 2002::/16 (RFC 3056). Without
/// this, `[::ffff:169.254.169.254]` would pass as "reserved IPv6" only by
/// luck, and a NAT64 address of a private IPv4 one would pass as public.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let octets = ip.octets();
    let last = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(last),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x2002, ..] => Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5])),
        _ => None,
    }
}

fn v4_class(ip: Ipv4Addr) -> AddressClass {
    const RESERVED: [(Ipv4Addr, u8); 4] = [
        (Ipv4Addr::new(192, 0, 0, 0), 24),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
        (Ipv4Addr::new(192, 88, 99, 0), 24),
        (Ipv4Addr::new(240, 0, 0, 0), 4),
    ];
    let within =
        |(net, len): (Ipv4Addr, u8)| Ipv4Net::new(net, len).is_ok_and(|net| net.contains(&ip));
    if ip.octets()[0] == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() {
        AddressClass::Private
    } else if within((Ipv4Addr::new(100, 64, 0, 0), 10)) {
        AddressClass::SharedAddressSpace
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_documentation() {
        AddressClass::Documentation
    } else if RESERVED.into_iter().any(within) {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn v6_class(ip: Ipv6Addr) -> AddressClass {
    let within = |net: &str| {
        net.parse::<Ipv6Net>()
            .is_ok_and(|net: Ipv6Net| net.contains(&ip))
    };
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if within("fe80::/10") {
        AddressClass::LinkLocal
    } else if within("fc00::/7") || within("fec0::/10") {
        AddressClass::Private
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if within("2001:db8::/32") || within("3fff::/20") {
        AddressClass::Documentation
    } else if within("2000::/3") && !within("2001::/23") {
        AddressClass::Public
    } else {
        // 100::/64, 64:ff9b:1::/48, 2001::/23 (benchmarking 2001:2::/48
        // within it) and all unassigned space.
        AddressClass::Reserved
    }
}

/// Classifies `ip`; an IPv6 address embedding an IPv4 one (see
/// [`embedded_ipv4`]) is judged as the IPv4 address it reaches.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => v4_class(v4),
            None => v6_class(v6),
        },
    }
}

/// One entry of an allow- or deny-list: a CIDR, or a single address
/// (`10.0.0.5` is `10.0.0.5/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

/// An allow- or deny-list entry that is neither a CIDR nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CIDR (such as 10.0.0.0/8 or fd00::/8) nor an IP address")]
pub struct BadCidr {
    pub text: String,
    #[source]
    pub source: ipnet::AddrParseError,
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, BadCidr> {
        let text = text.trim();
        match text.parse::<IpAddr>() {
            Ok(ip) => Ok(Self(IpNet::from(ip))),
            Err(_) => text
                .parse::<IpNet>()
                // `10.1.2.3/8` means 10.0.0.0/8: the prefix is what counts.
                .map(|net| Self(net.trunc()))
                .map_err(|source| BadCidr {
                    text: text.to_owned(),
                    source,
                }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Cidr {
    /// Whether `ip`, or the IPv4 address it embeds, is in this range; so
    /// allowing 127.0.0.1 allows `::ffff:127.0.0.1` too, and denying
    /// 10.96.0.0/12 denies its IPv4-mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.0.contains(&ip) || embedded.is_some_and(|v4| self.0.contains(&v4))
    }
}

/// The operator's egress settings. The default refuses every
/// non-public address and allows every public one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges allowed whatever their class, such as a callback receiver on
    /// a private network. An allowed address is allowed even when the
    /// deny-list covers it: the allow-list is the operator's explicit
    /// exception. Default: empty.
    pub allow: Vec<Cidr>,
    /// Ranges refused besides the non-public classes, such as a cluster's
    /// service network that is public address space. Default: empty.
    pub deny: Vec<Cidr>,
}

impl EgressPolicy {
    /// Parses both lists, naming the first bad entry.
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Self, BadCidr> {
        let parse = |list: &[S]| {
            list.iter()
                .map(|s| s.as_ref().parse())
                .collect::<Result<Vec<Cidr>, _>>()
        };
        Ok(Self {
            allow: parse(allow)?,
            deny: parse(deny)?,
        })
    }

    /// Whether Sluice may connect to `ip` on a caller's behalf; see
    /// [`check`].
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        check(ip, self)
    }
}

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its class is not public.
    Class(AddressClass),
    /// The operator's deny-list covers it.
    Denied(Cidr),
}

/// An address the egress guard refuses, with the reason. Displayed as
/// "169.254.169.254, a link-local address (RFC 3927, RFC 4291)", to follow
/// "resolves to" or "is".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub ip: IpAddr,
    pub reason: RefusalReason,
}

impl Refusal {
    /// The address and why it is refused, without the hint that names the
    /// gateway's and runtime's flag: for a part whose flag is another
    /// (the operator's `--runtime-egress-allow`).
    pub fn finding(&self) -> String {
        let mut text = format!("{}, ", self.ip);
        match self.reason {
            RefusalReason::Class(class) => text.push_str(class.description()),
            RefusalReason::Denied(cidr) => text.push_str(&format!("in the denied range {cidr}")),
        }
        if let IpAddr::V6(v6) = self.ip
            && let Some(v4) = embedded_ipv4(v6)
        {
            text.push_str(&format!(" (it stands for the IPv4 address {v4})"));
        }
        text
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, refused unless the operator allow-lists it (--egress-allow, SLUICE_EGRESS_ALLOW)",
            self.finding()
        )
    }
}

impl std::error::Error for Refusal {}

/// The decision: an allow-listed address passes; else a denied one, or
/// one whose class is not public, is refused.
pub fn check(ip: IpAddr, policy: &EgressPolicy) -> Result<(), Refusal> {
    if policy.allow.iter().any(|cidr| cidr.contains(ip)) {
        return Ok(());
    }
    if let Some(cidr) = policy.deny.iter().find(|cidr| cidr.contains(ip)) {
        return Err(Refusal {
            ip,
            reason: RefusalReason::Denied(*cidr),
        });
    }
    match classify(ip) {
        AddressClass::Public => Ok(()),
        class => Err(Refusal {
            ip,
            reason: RefusalReason::Class(class),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass::*;

    #[test]
    fn addresses_fall_in_their_class() {
        for (ip, class) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("10.0.0.1", Private),
            ("10.96.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("192.0.0.8", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("192.88.99.1", Reserved),
            ("240.0.0.1", Reserved),
            ("100::1", Reserved),
            ("2001::1", Reserved),
            ("2001:2::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("4000::1", Reserved),
            // IPv6 standing for IPv4 is judged as that IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:100.64.1.1", SharedAddressSpace),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::10.0.0.1", Private),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::1.1.1.1", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:0808:0808::1", Public),
            // Public neighbours of the ranges above.
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("9.255.255.255", Public),
            ("11.0.0.0", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("169.253.255.255", Public),
            ("192.0.3.1", Public),
            ("198.20.0.1", Public),
            ("223.255.255.255", Public),
            ("2606:4700:4700::1111", Public),
            ("2001:4860:4860::8888", Public),
            ("2001:200::1", Public),
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(parsed), class, "{ip}");
        }
    }

    fn policy(allow: &[&str], deny: &[&str]) -> EgressPolicy {
        EgressPolicy::parse(allow, deny).unwrap()
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        let strict = EgressPolicy::default();
        assert_eq!(strict.check("93.184.216.34".parse().unwrap()), Ok(()));
        assert_eq!(strict.check("2606:4700::1".parse().unwrap()), Ok(()));
        for ip in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "10.0.0.1",
            "100.64.0.1",
        ] {
            assert!(strict.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
    }

    #[test]
    fn the_allow_list_admits_and_the_deny_list_refuses() {
        let p = policy(&["127.0.0.1", "10.1.0.0/16"], &["8.8.8.0/24", "10.0.0.0/8"]);
        for (ip, allowed) in [
            ("127.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("127.0.0.2", false),
            ("::1", false),
            ("10.1.200.3", true),
            ("10.2.0.1", false),
            ("8.8.8.8", false),
            ("::ffff:8.8.8.8", false),
            ("8.8.4.4", true),
        ] {
            assert_eq!(p.check(ip.parse().unwrap()).is_ok(), allowed, "{ip}");
        }
    }

    #[test]
    fn refusals_name_the_address_and_the_reason() {
        let strict = EgressPolicy::default();
        let refusal = strict
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::Class(LinkLocal));
        let text = refusal.to_string();
        assert!(
            text.starts_with("169.254.169.254, a link-local address (RFC 3927"),
            "{text}"
        );
        assert!(text.contains("--egress-allow"), "{text}");
        let mapped = strict
            .check("::ffff:10.0.0.1".parse().unwrap())
            .unwrap_err();
        assert!(
            mapped
                .to_string()
                .contains("stands for the IPv4 address 10.0.0.1"),
            "{mapped}"
        );
        let denied = policy(&[], &["203.0.0.0/8"])
            .check("203.1.2.3".parse().unwrap())
            .unwrap_err();
        assert!(
            denied
                .to_string()
                .contains("in the denied range 203.0.0.0/8"),
            "{denied}"
        );
    }

    #[test]
    fn list_entries_are_cidrs_or_addresses() {
        assert_eq!(
            "10.0.0.5".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.5/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!(
            " 10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "10.0.0/8",
            "http://10.0.0.1/",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.to_string().contains("is not a CIDR"), "{bad}: {e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        let e = EgressPolicy::parse(&["10.0.0.0/8", "nope"], &[]).unwrap_err();
        assert_eq!(e.text, "nope");
    }
}
