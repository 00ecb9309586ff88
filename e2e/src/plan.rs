//! The address plan of docs/lab.md, as constants, so tests and daemons' hooks never repeat literals.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::error::Error;

/// The MN's home address (HoA, MN-Perm), on the MN's TUN `mip0` or its FA-link interface.
pub const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
/// The home network, owned by the HA.
pub const HOME_NET: &str = "10.10.1.0/24";
/// The HA's address on the home network.
pub const HA_HOME: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
/// The HA's address on the intranet LAN (`home_agent`).
pub const HA_LAN: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// `proxy_public` (MIPP-Pub), on the DMZ.
pub const PROXY_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// `proxy_private` (MIPP-Priv), on the intranet LAN.
pub const PROXY_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
/// `vpn_gateway` public address (VPNGW-Pub), on the DMZ.
pub const VPNGW_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// VPN gateway private address (VPNGW-Priv), on the intranet LAN.
pub const VPNGW_PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 20);
/// The correspondent node on the intranet LAN.
pub const CN: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 100);
/// The intranet LAN.
pub const INTRANET: &str = "10.10.0.0/24";
/// The corporate side as the VPN's traffic selector (intranet LAN and home network).
pub const INTRANET_TS: &str = "10.10.0.0/16";
/// The DMZ.
pub const DMZ: &str = "198.51.100.0/24";
/// The Internet router's address on the DMZ.
pub const INET_DMZ: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// NAT 1's public address.
pub const NAT1_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// NAT 2's public address.
pub const NAT2_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// NAT 3's public address (in front of FA 2).
pub const NAT3_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// FA 1's visited-network address (access B).
pub const FA1_VISITED: Ipv4Addr = Ipv4Addr::new(192, 0, 3, 1);
/// FA 1's routed address = its care-of address.
pub const FA1_COA: Ipv4Addr = Ipv4Addr::new(198, 51, 101, 2);
/// FA 2's visited-network address (access D).
pub const FA2_VISITED: Ipv4Addr = Ipv4Addr::new(192, 0, 4, 1);
/// FA 2's routed address, behind NAT 3.
pub const FA2_ROUTED: Ipv4Addr = Ipv4Addr::new(192, 168, 3, 2);
/// The virtual-IP pool of the strongSwan-only baseline (road warrior).
pub const RW_POOL: &str = "10.99.0.0/24";
/// Replicas mode (issue 5, scale-out): the replicas' namespaces, in order (index 0 = `px1`).
pub const REPLICA_NS: [&str; 3] = ["px1", "px2", "px3"];
/// Replicas mode: each replica's own node address on the DMZ (`proxy_public` is shared, on its `lo`).
pub const REPLICA_DMZ: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 11),
    Ipv4Addr::new(198, 51, 100, 12),
    Ipv4Addr::new(198, 51, 100, 13),
];
/// Replicas mode: each replica's own node address on the intranet LAN (`proxy_private` is shared, on its `lo`).
pub const REPLICA_LAN: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 10, 0, 11),
    Ipv4Addr::new(10, 10, 0, 12),
    Ipv4Addr::new(10, 10, 0, 13),
];
/// Replicas mode: the ECMP router's address on the DMZ (next hop of inet and the VPN gateway for
/// `proxy_public` and the home network).
pub const ECMP_DMZ: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Replicas mode: the ECMP router's address on the intranet LAN (next hop of the HA and the VPN gateway for
/// `proxy_private`).
pub const ECMP_LAN: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
/// A second home network of the HA, for the synthetic nodes of registration storms (`SystemOptions::storm_nodes`,
/// [`storm_hoa`]): registrations only, no data plane.
pub const STORM_NET: &str = "10.20.0.0/16";
/// The most synthetic nodes [`STORM_NET`] holds.
pub const STORM_MAX: u32 = 65_000;

/// The home address of synthetic node `i` (0-based, `i < STORM_MAX`): 10.20.0.1, 10.20.0.2, ...
pub fn storm_hoa(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 20, 0, 1)).saturating_add(i.min(STORM_MAX - 1)))
}
/// UDP port of the probe's echo server on the CN.
pub const ECHO_PORT: u16 = 9000;

/// An access network the MN can attach to. Only one MN link is up at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Access {
    /// Routable, co-located care-of address: MN 192.0.2.10/24, gateway 192.0.2.1 (inet).
    A,
    /// Behind NAT 1: MN 192.168.1.10/24, gateway 192.168.1.1 (nat1), public 203.0.113.2.
    C1,
    /// Behind NAT 2, same inside subnet and addresses as NAT 1: public 198.18.2.2.
    C2,
    /// Via FA 1 (192.0.3.1); the MN's address there is its HoA, set by the MN daemon.
    B,
    /// Via FA 2 (192.0.4.1) behind NAT 3.
    D,
}

impl Access {
    /// Every access network.
    pub const ALL: [Access; 5] = [Access::A, Access::C1, Access::C2, Access::B, Access::D];

    /// The MN's interface for this access network.
    pub fn iface(self) -> &'static str {
        match self {
            Access::A => "a0",
            Access::C1 => "c1",
            Access::C2 => "c2",
            Access::B => "b0",
            Access::D => "d0",
        }
    }

    /// The namespace and interface at the other end of the MN's link.
    pub fn peer(self) -> (&'static str, &'static str) {
        match self {
            Access::A => ("inet", "mn-a"),
            Access::C1 => ("nat1", "mn"),
            Access::C2 => ("nat2", "mn"),
            Access::B => ("fa1", "mn"),
            Access::D => ("fa2", "mn"),
        }
    }

    /// The MN's address (with prefix length) on that link; `None` for the FA links, where the MN daemon puts
    /// the HoA.
    pub fn mn_addr(self) -> Option<&'static str> {
        match self {
            Access::A => Some("192.0.2.10/24"),
            Access::C1 | Access::C2 => Some("192.168.1.10/24"),
            Access::B | Access::D => None,
        }
    }

    /// The default gateway on that link.
    pub fn gateway(self) -> Ipv4Addr {
        match self {
            Access::A => Ipv4Addr::new(192, 0, 2, 1),
            Access::C1 | Access::C2 => Ipv4Addr::new(192, 168, 1, 1),
            Access::B => FA1_VISITED,
            Access::D => FA2_VISITED,
        }
    }

    /// The public address the MN's traffic shows on the Internet side (before the FA cases' tunnels).
    pub fn public_addr(self) -> Ipv4Addr {
        match self {
            Access::A => Ipv4Addr::new(192, 0, 2, 10),
            Access::C1 => NAT1_PUBLIC,
            Access::C2 => NAT2_PUBLIC,
            Access::B => FA1_COA,
            Access::D => NAT3_PUBLIC,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::A => "A",
            Access::C1 => "C1",
            Access::C2 => "C2",
            Access::B => "B",
            Access::D => "D",
        })
    }
}

impl FromStr for Access {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Access::ALL
            .into_iter()
            .find(|a| a.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Usage(format!("unknown access network `{s}` (A, C1, C2, B, D)")))
    }
}

/// A Registration Request for [`HOA`] to [`PROXY_PUBLIC`] with a wrong MN-HA authenticator (SPI 256): bad input
/// every listener must drop without a reply, and count.
pub fn forged_request() -> Vec<u8> {
    let mut m = vec![1u8, 0x02, 0x02, 0x58];
    m.extend(HOA.octets());
    m.extend(PROXY_PUBLIC.octets());
    m.extend([203, 0, 113, 99]);
    m.extend([0xee; 8]);
    m.extend([32, 20, 0, 0, 1, 0]);
    m.extend([0x5a; 16]);
    m
}
