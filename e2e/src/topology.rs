//! The namespace lab of docs/lab.md: namespaces, veth links, bridges, addresses, routes, sysctls and NAT.
//!
//! Hygiene rules this module enforces:
//! * every namespace is named `<prefix><host>` with a unique prefix `mlab<N>-`;
//! * every veth is created inside one lab namespace with its peer placed straight into another, so the root
//!   namespace never holds a lab interface, not even for a moment;
//! * no namespace gets a route out of the machine (there is no link to the root namespace at all);
//! * every process the lab starts is recorded (PID + start time) under `/tmp/mlab-run/<prefix>/pids`, and
//!   [`Lab`]'s `Drop` kills them and deletes every namespace with the prefix, also while a test unwinds from a
//!   panic. A lab whose owning process died without unwinding (SIGKILL, timeout) is reaped by the next
//!   [`Lab::up`]; `e2e cleanup` ([`cleanup_all`]) removes everything named `mlab*`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, Cmd, PidRecord, ProcessGuard, ip_batch, poll_until, read_pid_records};
use crate::error::{Error, IoContext, Result};
use crate::plan::{self, Access};

/// Where the lab keeps its per-instance files (PID records, charon configs and logs, captures).
pub const RUN_ROOT: &str = "/tmp/mlab-run";
/// Every lab namespace name starts with this.
pub const NS_PREFIX: &str = "mlab";
/// The delay line's TUN device in ns `inet`.
pub const DELAY_DEV: &str = "dly0";
/// Routing table and rule preference the delay line uses in ns `inet`.
pub const DELAY_TABLE: u32 = 100;
/// How long the old link stays up in a make-before-break hand-off.
pub const MBB_OVERLAP: Duration = Duration::from_millis(100);
/// Linux's limit for interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// First interface index given to the lab's veth ends (see `Lab::build`).
pub const LINK_INDEX_BASE: usize = 100;

/// Where the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Proxy in ns `proxy` beside the VPN gateway in ns `vpngw`, on the same DMZ segment.
    #[default]
    TwoBox,
    /// `mip-proxy` in ns `vpngw` next to charon; `proxy_public`/`proxy_private` are extra addresses there.
    OneBox,
    /// Scale-out (issue 5): three replicas in ns `px1`, `px2`, `px3` (instead of `proxy`), each with its own
    /// DMZ and LAN address and the shared `proxy_public`/`proxy_private` on its `lo`; ns `ecmp`, a router on
    /// both segments, spreads the shared addresses (and the home network) over the replicas by ECMP
    /// ([`Lab::set_replica_nexthops`] withdraws a replica, as BFD would).
    Replicas,
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Two-box or one-box.
    pub mode: Mode,
    /// One-way delay added per transit of ns `inet` (RTT across = 2 × this); 0 = no delay line.
    pub delay_ms: u32,
    /// Namespace prefix (`mlab<something>-`); `None` picks a free `mlab<N>-`.
    pub prefix: Option<String>,
    /// The `e2e` binary, for the subprocesses the lab runs (delay line, echo server). `None` = `$MIP_E2E_BIN`,
    /// the running binary if it is `e2e`, or `e2e` next to the running test binary's directory.
    pub e2e_bin: Option<PathBuf>,
    /// The access network the MN is attached to after bring-up (`None` = all MN links down).
    pub initial_access: Option<Access>,
    /// Keep `/tmp/mlab-run/<prefix>` (logs, configs, captures) after teardown; also set by `MLAB_KEEP=1`.
    pub keep_run_dir: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            mode: Mode::TwoBox,
            delay_ms: 0,
            prefix: None,
            e2e_bin: None,
            initial_access: Some(Access::C1),
            keep_run_dir: std::env::var("MLAB_KEEP").is_ok_and(|v| v == "1"),
        }
    }
}

/// Times of a hand-off, from one monotonic clock (the probe's).
#[derive(Debug, Clone, Copy)]
pub struct HandoffMarks {
    /// Just before the old link went down (break-before-make) or the new one came up (make-before-break).
    pub start: Instant,
    /// New link up and default route in place.
    pub switched: Instant,
    /// Old link down (equals `switched` for break-before-make).
    pub old_down: Instant,
}

/// One namespace of the plan.
#[derive(Debug, Clone)]
pub struct NsSpec {
    /// Short name (`mn`, `inet`, ...).
    pub name: &'static str,
    /// Whether it forwards packets (`ip_forward=1`).
    pub forward: bool,
    /// `ip -batch` lines that configure it, after all links exist.
    pub config: Vec<String>,
    /// Interface to masquerade behind (the NAT namespaces).
    pub masquerade_oif: Option<&'static str>,
    /// Extra `sysctl -w` assignments (`key=value`), set with the common ones before any link exists.
    pub sysctls: Vec<&'static str>,
}

/// One veth pair: created in `a` as `a_if`, its peer placed in `b` as `b_if` (`a == b` for a link that stays
/// inside one namespace).
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// Namespace that creates the pair.
    pub a: &'static str,
    /// Interface name there.
    pub a_if: &'static str,
    /// Namespace of the peer.
    pub b: &'static str,
    /// Peer's interface name.
    pub b_if: &'static str,
}

/// Interfaces of ns `inet` whose incoming packets go through the delay line (every public link).
pub const INET_IFACES: [&str; 6] = ["mn-a", "nat1", "nat2", "fa1", "nat3", "dmz"];

fn l(s: &str) -> String {
    s.to_owned()
}

/// The whole topology of docs/lab.md for `mode`: namespaces with their configuration, and links.
pub fn plan(mode: Mode) -> (Vec<NsSpec>, Vec<LinkSpec>) {
    let two_box = mode == Mode::TwoBox;
    let one_box = mode == Mode::OneBox;
    let replicas = mode == Mode::Replicas;
    let link = |a, a_if, b, b_if| LinkSpec { a, a_if, b, b_if };
    let mut links = vec![
        // MN's five access links (only one is up at a time; see Lab::mn_attach).
        link("mn", "a0", "inet", "mn-a"),
        link("mn", "c1", "nat1", "mn"),
        link("mn", "c2", "nat2", "mn"),
        link("mn", "b0", "fa1", "mn"),
        link("mn", "d0", "fa2", "mn"),
        // Public side: every router/NAT/FA uplink ends in inet.
        link("nat1", "wan", "inet", "nat1"),
        link("nat2", "wan", "inet", "nat2"),
        link("fa1", "wan", "inet", "fa1"),
        link("fa2", "wan", "nat3", "fa"),
        link("nat3", "wan", "inet", "nat3"),
        // DMZ bridge ports.
        link("dmz", "p-inet", "inet", "dmz"),
        link("dmz", "p-vpngw", "vpngw", "dmz"),
        // Intranet LAN bridge ports.
        link("intra", "p-vpngw", "vpngw", "lan"),
        link("intra", "p-ha", "ha", "lan"),
        link("intra", "p-cn", "cn", "lan"),
        // The HA's home link. The kernel has no dummy driver, so the home network sits on one end of a veth
        // pair whose other end stays (up, unaddressed) in ns ha.
        link("ha", "home", "ha", "home-p"),
    ];
    if two_box {
        links.push(link("dmz", "p-proxy", "proxy", "dmz"));
        links.push(link("intra", "p-proxy", "proxy", "lan"));
    }
    if replicas {
        // The ECMP router and the replicas, each on both segments.
        links.push(link("dmz", "p-ecmp", "ecmp", "dmz"));
        links.push(link("intra", "p-ecmp", "ecmp", "lan"));
        for (px, port) in plan::REPLICA_NS.into_iter().zip(REPLICA_PORTS) {
            links.push(link("dmz", port, px, "dmz"));
            links.push(link("intra", port, px, "lan"));
        }
    }

    let up = |ifs: &[&str]| -> Vec<String> { ifs.iter().map(|i| format!("link set {i} up")).collect() };
    let mut ns = Vec::new();

    // The MN: addresses on its access links (FA links get the HoA from the MN daemon); links stay down until
    // Lab::mn_attach. No forwarding.
    let mut mn = vec![l("link set lo up")];
    for a in Access::ALL {
        if let Some(addr) = a.mn_addr() {
            mn.push(format!("addr add {addr} dev {}", a.iface()));
        }
    }
    ns.push(NsSpec {
        name: "mn",
        forward: false,
        config: mn,
        masquerade_oif: None,
        sysctls: Vec::new(),
    });

    // Home-router style NATs; NAT 2 reuses NAT 1's inside subnet and gateway so C1 <-> C2 changes only the
    // public address (and the gateway's MAC).
    for (name, inside, inside_if, public, inet_gw) in [
        ("nat1", "192.168.1.1/24", "mn", "203.0.113.2/24", "203.0.113.1"),
        ("nat2", "192.168.1.1/24", "mn", "198.18.2.2/24", "198.18.2.1"),
        ("nat3", "192.168.3.1/24", "fa", "198.18.3.2/24", "198.18.3.1"),
    ] {
        let mut c = vec![
            l("link set lo up"),
            format!("addr add {inside} dev {inside_if}"),
            format!("addr add {public} dev wan"),
        ];
        c.extend(up(&[inside_if, "wan"]));
        c.push(format!("route add default via {inet_gw}"));
        ns.push(NsSpec {
            name,
            forward: true,
            config: c,
            masquerade_oif: Some("wan"),
            sysctls: Vec::new(),
        });
    }

    // Foreign agents: visited network toward the MN, routed address toward inet (FA 2 behind NAT 3). They run
    // nothing yet; the FA daemon comes later.
    for (name, visited, routed, gw) in [
        ("fa1", "192.0.3.1/24", "198.51.101.2/24", "198.51.101.1"),
        ("fa2", "192.0.4.1/24", "192.168.3.2/24", "192.168.3.1"),
    ] {
        let mut c = vec![
            l("link set lo up"),
            format!("addr add {visited} dev mn"),
            format!("addr add {routed} dev wan"),
        ];
        c.extend(up(&["mn", "wan"]));
        c.push(format!("route add default via {gw}"));
        ns.push(NsSpec {
            name,
            forward: true,
            config: c,
            masquerade_oif: None,
            sysctls: Vec::new(),
        });
    }

    // The Internet router: .1 on every public link, and only the connected public prefixes. No default route
    // and nothing for 10/8 or 192.168/16, so no inner address crosses the Internet side unencapsulated.
    let mut inet = vec![l("link set lo up")];
    for (dev, addr) in [
        ("mn-a", "192.0.2.1/24"),
        ("nat1", "203.0.113.1/24"),
        ("nat2", "198.18.2.1/24"),
        ("fa1", "198.51.101.1/24"),
        ("nat3", "198.18.3.1/24"),
        ("dmz", "198.51.100.1/24"),
    ] {
        inet.push(format!("addr add {addr} dev {dev}"));
        inet.push(format!("link set {dev} up"));
    }
    if replicas {
        // proxy_public lives behind the ECMP router (a public /32, so inet still knows nothing inner).
        inet.push(format!(
            "route add {}/32 via {} dev dmz",
            plan::PROXY_PUBLIC,
            plan::ECMP_DMZ
        ));
    }
    ns.push(NsSpec {
        name: "inet",
        forward: true,
        config: inet,
        masquerade_oif: None,
        sysctls: Vec::new(),
    });

    // The two L2 segments are bridges in their own namespaces.
    let mut dmz_ports = vec!["p-inet", "p-vpngw"];
    let mut lan_ports = vec!["p-vpngw", "p-ha", "p-cn"];
    if two_box {
        dmz_ports.push("p-proxy");
        lan_ports.push("p-proxy");
    }
    if replicas {
        for port in std::iter::once("p-ecmp").chain(REPLICA_PORTS) {
            dmz_ports.push(port);
            lan_ports.push(port);
        }
    }
    for (name, ports) in [("dmz", dmz_ports), ("intra", lan_ports)] {
        let mut c = vec![l("link set lo up"), l("link add br0 type bridge")];
        c.extend(ports.iter().map(|p| format!("link set {p} master br0")));
        c.extend(up(&ports));
        c.push(l("link set br0 up"));
        ns.push(NsSpec {
            name,
            forward: false,
            config: c,
            masquerade_oif: None,
            sysctls: Vec::new(),
        });
    }

    if two_box {
        ns.push(NsSpec {
            name: "proxy",
            forward: true,
            config: vec![
                l("link set lo up"),
                format!("addr add {}/24 dev dmz", plan::PROXY_PUBLIC),
                format!("addr add {}/24 dev lan", plan::PROXY_PRIVATE),
                l("link set dmz up"),
                l("link set lan up"),
                format!("route add default via {}", plan::INET_DMZ),
                // The HA's home-network address is reached over the intranet LAN (mip-proxy routes the rest of
                // the home network into its own TUN).
                format!("route add {}/32 via {} dev lan", plan::HA_HOME, plan::HA_LAN),
            ],
            masquerade_oif: None,
            sysctls: Vec::new(),
        });
    }

    if replicas {
        ns.extend(replica_specs());
    }

    let mut gw = vec![
        l("link set lo up"),
        format!("addr add {}/24 dev dmz", plan::VPNGW_PUBLIC),
        format!("addr add {}/24 dev lan", plan::VPNGW_PRIVATE),
    ];
    if one_box {
        // One-box: the proxy's addresses live here too.
        gw.push(format!("addr add {}/24 dev dmz", plan::PROXY_PUBLIC));
        gw.push(format!("addr add {}/24 dev lan", plan::PROXY_PRIVATE));
    }
    gw.extend(up(&["dmz", "lan"]));
    gw.push(format!("route add default via {}", plan::INET_DMZ));
    if one_box {
        gw.push(format!("route add {}/32 via {} dev lan", plan::HA_HOME, plan::HA_LAN));
    }
    if two_box {
        // The home network toward proxy_public, for charon's own (fwmarked) IKE/ESP to the HoA (FINDINGS
        // "configuration"). In one-box mode mip-proxy routes the home network into its own TUN instead.
        gw.push(format!(
            "route add {} via {} dev dmz",
            plan::HOME_NET,
            plan::PROXY_PUBLIC
        ));
    }
    if replicas {
        // The shared addresses and (for charon's own fwmarked IKE/ESP to the HoA, as in two-box mode) the home
        // network go to the ECMP router, which spreads them over the replicas. "via proxy_public" cannot be
        // written here: no one answers ARP for it on the DMZ any more.
        gw.push(format!(
            "route add {}/32 via {} dev dmz",
            plan::PROXY_PUBLIC,
            plan::ECMP_DMZ
        ));
        gw.push(format!(
            "route add {}/32 via {} dev lan",
            plan::PROXY_PRIVATE,
            plan::ECMP_LAN
        ));
        gw.push(format!("route add {} via {} dev dmz", plan::HOME_NET, plan::ECMP_DMZ));
    }
    ns.push(NsSpec {
        name: "vpngw",
        forward: true,
        config: gw,
        masquerade_oif: None,
        sysctls: Vec::new(),
    });

    let mut ha = vec![
        l("link set lo up"),
        format!("addr add {}/24 dev lan", plan::HA_LAN),
        format!("addr add {}/24 dev home", plan::HA_HOME),
        l("link set lan up"),
        l("link set home up"),
        l("link set home-p up"),
        format!("route add default via {}", plan::VPNGW_PRIVATE),
    ];
    if replicas {
        // The HA's tunnels to proxy_private (its care-of address for bound MNs) are spread by the ECMP router.
        ha.push(format!(
            "route add {}/32 via {} dev lan",
            plan::PROXY_PRIVATE,
            plan::ECMP_LAN
        ));
    }
    ns.push(NsSpec {
        name: "ha",
        forward: true,
        config: ha,
        masquerade_oif: None,
        sysctls: Vec::new(),
    });

    // The CN: the home network via the HA (which intercepts bound home addresses), the rest via VPNGW-Priv.
    ns.push(NsSpec {
        name: "cn",
        forward: false,
        config: vec![
            l("link set lo up"),
            format!("addr add {}/24 dev lan", plan::CN),
            l("link set lan up"),
            format!("route add {} via {}", plan::HOME_NET, plan::HA_LAN),
            format!("route add default via {}", plan::VPNGW_PRIVATE),
        ],
        masquerade_oif: None,
        sysctls: Vec::new(),
    });

    (ns, links)
}

/// Bridge port names (in ns `dmz` and ns `intra`) of the replicas, in [`plan::REPLICA_NS`] order.
const REPLICA_PORTS: [&str; 3] = ["p-px1", "p-px2", "p-px3"];

/// Replicas mode: the namespaces `px1`..`px3` and `ecmp` (see [`Mode::Replicas`] and docs/lab.md).
fn replica_specs() -> Vec<NsSpec> {
    let mut v = Vec::new();
    for ((name, dmz), lan) in plan::REPLICA_NS
        .into_iter()
        .zip(plan::REPLICA_DMZ)
        .zip(plan::REPLICA_LAN)
    {
        v.push(NsSpec {
            name,
            forward: true,
            config: vec![
                l("link set lo up"),
                // The shared addresses as /32 on lo: the replica accepts packets for them, but (arp_ignore=1)
                // never answers ARP for them on dmz/lan, and (arp_announce=2) never uses them as the source of
                // its own ARP requests, so no neighbour cache on the segments ever points them at one replica.
                format!("addr add {}/32 dev lo", plan::PROXY_PUBLIC),
                format!("addr add {}/32 dev lo", plan::PROXY_PRIVATE),
                format!("addr add {dmz}/24 dev dmz"),
                format!("addr add {lan}/24 dev lan"),
                l("link set dmz up"),
                l("link set lan up"),
                format!("route add default via {}", plan::INET_DMZ),
                format!("route add {}/32 via {} dev lan", plan::HA_HOME, plan::HA_LAN),
            ],
            masquerade_oif: None,
            sysctls: vec![
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.default.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.default.arp_announce=2",
            ],
        });
    }
    let mut ecmp = vec![
        l("link set lo up"),
        format!("addr add {}/24 dev dmz", plan::ECMP_DMZ),
        format!("addr add {}/24 dev lan", plan::ECMP_LAN),
        l("link set dmz up"),
        l("link set lan up"),
    ];
    ecmp.extend(replica_routes(&[0, 1, 2]));
    v.push(NsSpec {
        name: "ecmp",
        forward: true,
        config: ecmp,
        masquerade_oif: None,
        sysctls: vec![
            // Hash on the 5-tuple, so flows between the same two addresses spread over the replicas.
            "net.ipv4.fib_multipath_hash_policy=1",
            // A one-armed router: every packet leaves by the segment it came from, and an ICMP redirect would
            // make the sender bypass the router (and the multipath route) for that destination.
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ],
    });
    v
}

/// The ECMP router's routes (`ip -batch` lines for ns `ecmp`) for the replicas `which` (indexes into
/// [`plan::REPLICA_NS`]): `proxy_public` and the home network over their DMZ addresses, `proxy_private` over their
/// LAN addresses. No replica left: the destinations become `unreachable` (ICMP errors instead of unanswered ARP).
pub fn replica_routes(which: &[usize]) -> Vec<String> {
    let public = format!("{}/32", plan::PROXY_PUBLIC);
    let private = format!("{}/32", plan::PROXY_PRIVATE);
    [
        (public.as_str(), &plan::REPLICA_DMZ, "dmz"),
        (plan::HOME_NET, &plan::REPLICA_DMZ, "dmz"),
        (private.as_str(), &plan::REPLICA_LAN, "lan"),
    ]
    .into_iter()
    .map(|(dst, addrs, dev)| {
        let hops: Vec<String> = which
            .iter()
            .filter_map(|i| addrs.get(*i))
            .map(|a| format!("nexthop via {a} dev {dev}"))
            .collect();
        if hops.is_empty() {
            format!("route replace unreachable {dst}")
        } else {
            format!("route replace {dst} {}", hops.join(" "))
        }
    })
    .collect()
}

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    opts: LabOptions,
    run_dir: PathBuf,
    names: Vec<&'static str>,
    delay: Option<ProcessGuard>,
    delay_ms: u32,
    attached: Option<Access>,
    last_attach: Option<Instant>,
    replica_nexthops: Vec<usize>,
    torn_down: bool,
}

impl Lab {
    /// Builds the lab: every namespace, link, address, route, sysctl, bridge and NAT of docs/lab.md, then
    /// attaches the MN (`initial_access`) and starts the delay line (`delay_ms`).
    pub fn up(opts: LabOptions) -> Result<Lab> {
        require_root()?;
        cmd::require_tools(&[
            ("ip", "iproute2: namespaces, links, routes"),
            ("nft", "nftables: the NATs' masquerade"),
            ("sysctl", "procps: rp_filter, ip_forward, IPv6 off"),
        ])?;
        reap_stale();
        let (prefix, run_dir) = claim_prefix(opts.prefix.as_deref())?;
        let (specs, links) = plan(opts.mode);
        let replica_nexthops = if opts.mode == Mode::Replicas {
            (0..plan::REPLICA_NS.len()).collect()
        } else {
            Vec::new()
        };
        let mut lab = Lab {
            prefix,
            run_dir,
            names: specs.iter().map(|s| s.name).collect(),
            opts,
            delay: None,
            delay_ms: 0,
            attached: None,
            last_attach: None,
            replica_nexthops,
            torn_down: false,
        };
        // From here on, an error drops `lab`, which deletes whatever was created.
        lab.build(&specs, &links)?;
        if let Some(a) = lab.opts.initial_access {
            lab.mn_attach(a, false)?;
        }
        if lab.opts.delay_ms > 0 {
            lab.set_delay(lab.opts.delay_ms)?;
        }
        Ok(lab)
    }

    fn build(&mut self, specs: &[NsSpec], links: &[LinkSpec]) -> Result<()> {
        let adds: Vec<String> = self.names.iter().map(|n| format!("netns add {}", self.ns(n))).collect();
        ip_batch(None, &adds)?;
        // Sysctls first, so every interface created afterwards inherits rp_filter 0 and IPv6 off from
        // `default`. rp_filter must be 0 on every hop that forwards packets sourced from the HoA (FINDINGS).
        for s in specs {
            let fwd = format!("net.ipv4.ip_forward={}", u8::from(s.forward));
            let mut argv = vec![
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                &fwd,
            ];
            argv.extend(s.sysctls.iter().copied());
            Cmd::in_ns(&self.ns(s.name), argv).run()?;
        }
        // The bridges stand for Ethernet switches: when the host has br_netfilter loaded, bridged frames would
        // also traverse the bridge namespace's iptables hooks (`bridge-nf-call-*`, per namespace), costing
        // host CPU that a switch does not (a third of mip-proxy's samples in the throughput bench).
        if Path::new("/proc/sys/net/bridge").exists() {
            for name in self.names.iter().filter(|n| matches!(**n, "dmz" | "intra")) {
                Cmd::in_ns(
                    &self.ns(name),
                    [
                        "sysctl",
                        "-qw",
                        "net.bridge.bridge-nf-call-iptables=0",
                        "net.bridge.bridge-nf-call-ip6tables=0",
                        "net.bridge.bridge-nf-call-arptables=0",
                    ],
                )
                .run()?;
            }
        }
        // Links, grouped by the namespace that creates them: one `ip -batch` per creator.
        //
        // Every veth end gets an explicit interface index, unique in the lab. Left to the kernel, each
        // namespace numbers from 2, so an MN link and its peer often share an index; the kernel's linkwatch
        // then takes the carrier change for a non-stacked device ("ifindex == iflink") and handles it as
        // non-urgent, up to 1 s later. Until then the device is not RUNNING and the peer transmits through
        // the `noop` qdisc, which drops everything: a hand-off to such a link lost its first packets and
        // ARP, and cost up to a second.
        for creator in &self.names {
            let lines: Vec<String> = links
                .iter()
                .enumerate()
                .filter(|(_, k)| k.a == *creator)
                .map(|(i, k)| {
                    let (ia, ib) = (LINK_INDEX_BASE + 2 * i, LINK_INDEX_BASE + 2 * i + 1);
                    let netns = if k.a == k.b {
                        String::new()
                    } else {
                        format!(" netns {}", self.ns(k.b))
                    };
                    format!(
                        "link add {} index {ia} type veth peer name {} index {ib}{netns}",
                        k.a_if, k.b_if
                    )
                })
                .collect();
            ip_batch(Some(&self.ns(creator)), &lines)?;
        }
        for s in specs {
            ip_batch(Some(&self.ns(s.name)), &s.config)?;
            if let Some(oif) = s.masquerade_oif {
                let rules = format!(
                    "table ip mlabnat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{oif}\" masquerade\n  }}\n}}\n"
                );
                Cmd::in_ns(&self.ns(s.name), ["nft", "-f", "-"]).stdin(rules).run()?;
            }
        }
        Ok(())
    }

    /// The namespace prefix (`mlab<N>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Two-box, one-box or replicas.
    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// Short names of the proxy replicas' namespaces (`px1`, `px2`, `px3`) in [`Mode::Replicas`]; empty in the
    /// other modes. [`Lab::set_replica_nexthops`] takes indexes into this.
    pub fn replicas(&self) -> &'static [&'static str] {
        if self.opts.mode == Mode::Replicas {
            &plan::REPLICA_NS
        } else {
            &[]
        }
    }

    /// The replicas (indexes into [`Lab::replicas`]) currently in the ECMP router's multipath routes.
    pub fn replica_nexthops(&self) -> &[usize] {
        &self.replica_nexthops
    }

    /// Sets which replicas (indexes into [`Lab::replicas`], 0 = `px1`) are next hops of the ECMP router's
    /// multipath routes for `proxy_public`, `proxy_private` and the home network: the harness's BFD, which
    /// withdraws a dead replica's next hop (and restores it). One `ip -batch` of `route replace` in ns `ecmp`,
    /// so each route changes atomically; flows on the remaining replicas may be re-hashed (Linux's
    /// hash-threshold ECMP, no resilient hashing). An empty set makes the destinations `unreachable`.
    /// Duplicates are ignored; an index out of range, or a lab not in [`Mode::Replicas`], is an error.
    pub fn set_replica_nexthops(&mut self, which: &[usize]) -> Result<()> {
        if self.opts.mode != Mode::Replicas {
            return Err(Error::Usage(format!(
                "set_replica_nexthops: lab {} is in {:?} mode, not Replicas",
                self.prefix, self.opts.mode
            )));
        }
        let mut sel: Vec<usize> = which.to_vec();
        sel.sort_unstable();
        sel.dedup();
        if let Some(bad) = sel.iter().find(|i| **i >= plan::REPLICA_NS.len()) {
            return Err(Error::Usage(format!(
                "set_replica_nexthops: no replica {bad} (there are {})",
                plan::REPLICA_NS.len()
            )));
        }
        self.ip_batch("ecmp", &replica_routes(&sel))?;
        self.replica_nexthops = sel;
        Ok(())
    }

    /// Full namespace name of host `name` (`mn` -> `mlab3-mn`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Short names of this lab's namespaces.
    pub fn namespaces(&self) -> &[&'static str] {
        &self.names
    }

    /// This lab's run directory (`/tmp/mlab-run/mlab<N>`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Where PID records live.
    pub fn pid_dir(&self) -> PathBuf {
        self.run_dir.join("pids")
    }

    /// Runs `args` in namespace `ns` (short name) via `ip netns exec`; non-zero exit is an error carrying the
    /// namespace, the command and its stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        Cmd::in_ns(&self.ns(ns), args).run()
    }

    /// Like [`Lab::exec`] but returns the output whatever the exit status.
    pub fn try_exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        Cmd::in_ns(&self.ns(ns), args).output()
    }

    /// Sends one UDP datagram with exactly `payload` from namespace `ns` to `dst` (python3's socket, so the
    /// bytes are the caller's, not a daemon's).
    pub fn send_udp(&self, ns: &str, dst: std::net::SocketAddrV4, payload: &[u8]) -> Result<()> {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(bytes.fromhex('{}'), \
             ('{}', {}))",
            hex::encode(payload),
            dst.ip(),
            dst.port()
        );
        self.exec(ns, &["python3", "-c", &script]).map(drop)
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        let full = self.ns(ns);
        let mut argv = vec!["ip", "-n", full.as_str()];
        argv.extend_from_slice(args);
        Cmd::new(argv).stdout()
    }

    /// Runs several `ip` commands in namespace `ns` in one process.
    pub fn ip_batch(&self, ns: &str, lines: &[String]) -> Result<()> {
        ip_batch(Some(&self.ns(ns)), lines)
    }

    /// Starts a long-running process in namespace `ns`, output to `log_path`, PID recorded. The returned guard
    /// stops it (TERM, then KILL) when dropped; the lab's teardown kills it too if the guard is leaked.
    pub fn spawn(&self, ns: &str, argv: &[&str], log_path: &Path) -> Result<ProcessGuard> {
        self.spawn_cmd(&argv.join(" "), Cmd::in_ns(&self.ns(ns), argv), log_path)
    }

    /// [`Lab::spawn`] for a prepared [`Cmd`] (environment, custom wrapper).
    pub fn spawn_cmd(&self, name: &str, cmd: Cmd, log_path: &Path) -> Result<ProcessGuard> {
        ProcessGuard::spawn(name, &cmd, log_path, Some(&self.pid_dir()))
    }

    /// The `e2e` binary for the lab's subprocesses.
    pub fn e2e_bin(&self) -> Result<PathBuf> {
        if let Some(p) = &self.opts.e2e_bin {
            return Ok(p.clone());
        }
        find_e2e_bin()
    }

    /// Starts the probe's echo server (`e2e echo`) on the CN at [`plan::ECHO_PORT`] and waits until it is ready.
    pub fn spawn_echo(&self) -> Result<ProcessGuard> {
        let port = plan::ECHO_PORT.to_string();
        let mut echo = self.spawn_e2e("cn", &["echo", "--port", &port], &self.run_dir().join("echo.log"))?;
        echo.wait_for_log("echo: ready", Duration::from_secs(5))?;
        Ok(echo)
    }

    /// Starts `e2e <args>` in namespace `ns`.
    pub fn spawn_e2e(&self, ns: &str, args: &[&str], log_path: &Path) -> Result<ProcessGuard> {
        let bin = self.e2e_bin()?;
        let bin = bin.to_string_lossy().into_owned();
        let mut argv = vec![bin.as_str()];
        argv.extend_from_slice(args);
        let name = format!("e2e {}", args.first().copied().unwrap_or_default());
        self.spawn_cmd(&name, Cmd::in_ns(&self.ns(ns), argv), log_path)
    }

    /// Hand-off of the MN: bring `access`'s link up, every other MN link down, default route via that
    /// network's gateway. Break-before-make (old links down first, then the new one up, in one `ip -batch`)
    /// unless `make_before_break`, where the new link comes up first and the others go down
    /// [`MBB_OVERLAP`] later.
    pub fn mn_attach(&mut self, access: Access, make_before_break: bool) -> Result<HandoffMarks> {
        let new = access.iface();
        let others: Vec<&str> = Access::ALL.iter().map(|a| a.iface()).filter(|i| *i != new).collect();
        let downs: Vec<String> = others.iter().map(|i| format!("link set {i} down")).collect();
        // The FA links carry no address of the lab's, so their gateway is declared on-link.
        let onlink = if access.mn_addr().is_none() { " onlink" } else { "" };
        let route = vec![format!(
            "route replace default via {} dev {new}{onlink}",
            access.gateway()
        )];
        let up = format!("link set {new} up");
        let start = Instant::now();
        let marks = if make_before_break {
            self.ip_batch("mn", &[up])?;
            self.wait_link_ready(access)?;
            self.ip_batch("mn", &route)?;
            let switched = Instant::now();
            thread::sleep(MBB_OVERLAP);
            self.ip_batch("mn", &downs)?;
            HandoffMarks {
                start,
                switched,
                old_down: Instant::now(),
            }
        } else {
            let mut lines = downs;
            lines.push(up);
            self.ip_batch("mn", &lines)?;
            self.wait_link_ready(access)?;
            self.ip_batch("mn", &route)?;
            let now = Instant::now();
            HandoffMarks {
                start,
                switched: now,
                old_down: now,
            }
        };
        self.attached = Some(access);
        self.last_attach = Some(marks.switched);
        Ok(marks)
    }

    /// Waits until both ends of `access`'s link are operational (up and RUNNING, i.e. linkwatch has
    /// processed the carrier change). Until then a device transmits through the `noop` qdisc, which drops
    /// everything; an ARP packet lost that way costs the MN a full ARP retransmission (1 s). A real MN also
    /// routes over a link only once it is up, so the route goes in after this. The flags are read with
    /// getifaddrs(3) on a thread inside each namespace: no process per poll, so the wait adds little to the
    /// measured hand-off.
    fn wait_link_ready(&self, access: Access) -> Result<()> {
        let (peer_ns, peer_if) = access.peer();
        let ends = [(self.ns(peer_ns), peer_if), (self.ns("mn"), access.iface())];
        let what = format!("link {} of {} up at both ends", access.iface(), self.ns("mn"));
        poll_until(&what, Duration::from_secs(3), Duration::from_micros(500), || {
            for (ns, dev) in &ends {
                if !link_running(ns, dev)? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
    }

    /// When the MN's last hand-off (or initial attachment) was switched.
    pub fn last_attach(&self) -> Option<Instant> {
        self.last_attach
    }

    /// The access network the MN was last attached to.
    pub fn attached(&self) -> Option<Access> {
        self.attached
    }

    /// Sets the one-way delay per transit of ns `inet` (RTT across = 2 × `ms`); 0 removes the delay line.
    /// Restarts the `e2e delay` subprocess and waits until it reports its TUN and rules ready.
    pub fn set_delay(&mut self, ms: u32) -> Result<()> {
        if let Some(mut g) = self.delay.take() {
            g.stop();
        }
        self.delay_ms = 0;
        // The subprocess removes its rules on SIGTERM; this catches a delay line that had to be SIGKILLed.
        self.clear_delay_rules()?;
        if ms == 0 {
            return Ok(());
        }
        let log = self.run_dir.join("delay.log");
        let ms_s = ms.to_string();
        let table = DELAY_TABLE.to_string();
        let iifs = INET_IFACES.join(",");
        let mut g = self.spawn_e2e(
            "inet",
            &[
                "delay",
                "--dev",
                DELAY_DEV,
                "--delay-ms",
                &ms_s,
                "--iifs",
                &iifs,
                "--table",
                &table,
            ],
            &log,
        )?;
        g.wait_for_log(&format!("delay: ready {ms} ms"), Duration::from_secs(10))?;
        self.delay = Some(g);
        self.delay_ms = ms;
        Ok(())
    }

    /// The one-way delay per transit of ns `inet`.
    pub fn delay_ms(&self) -> u32 {
        self.delay_ms
    }

    fn clear_delay_rules(&self) -> Result<()> {
        let pref = DELAY_TABLE.to_string();
        let rules = self.ip("inet", &["rule", "show", "pref", &pref])?;
        let dels: Vec<String> = rules
            .lines()
            .filter_map(|line| {
                let mut w = line.split_whitespace();
                w.position(|t| t == "iif")?;
                let iif = w.next()?;
                Some(format!("rule del pref {pref} iif {iif} lookup {pref}"))
            })
            .collect();
        self.ip_batch("inet", &dels)
    }

    /// Pings `dst` from namespace `ns`: `count` echoes 200 ms apart, each waited for at most 1 s.
    pub fn ping(&self, ns: &str, dst: Ipv4Addr, count: u32) -> Result<PingStats> {
        let c = count.to_string();
        let d = dst.to_string();
        let out = self.try_exec(ns, &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "1", &d])?;
        PingStats::parse(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| Cmd::in_ns(&self.ns(ns), ["ping", &d]).failed(&out))
    }

    /// Polls single pings from `ns` to `dst` until one is answered.
    pub fn wait_ping(&self, ns: &str, dst: Ipv4Addr, timeout: Duration) -> Result<Duration> {
        let what = format!("a ping reply from {dst} in {}", self.ns(ns));
        poll_until(&what, timeout, Duration::from_millis(50), || {
            let s = self.ping(ns, dst, 1)?;
            Ok((s.received > 0).then(|| Duration::from_secs_f64(s.avg_ms / 1000.0)))
        })
    }

    /// Tears the lab down now, reporting what could not be cleaned (also done by `Drop`).
    pub fn down(mut self) -> Result<()> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "lab teardown incomplete: {}",
                problems.join("; ")
            )))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        if let Some(mut g) = self.delay.take() {
            g.stop();
        }
        let problems = destroy_lab(&self.prefix, &self.run_dir, self.opts.keep_run_dir);
        for p in &problems {
            eprintln!("mip-e2e: teardown of {}: {p}", self.prefix);
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Packet counts and RTTs of a `ping -q` run.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// Smallest RTT (0 without replies).
    pub min_ms: f64,
    /// Mean RTT.
    pub avg_ms: f64,
    /// Largest RTT.
    pub max_ms: f64,
}

impl PingStats {
    /// Parses iputils' summary (`5 packets transmitted, 5 received, ...` and `rtt min/avg/max/mdev = ...`).
    pub fn parse(text: &str) -> Option<PingStats> {
        let mut s = PingStats::default();
        let counts = text.lines().find(|l| l.contains("packets transmitted"))?;
        let mut nums = counts
            .split(',')
            .map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()));
        s.transmitted = nums.next()??;
        s.received = nums.next()??;
        if let Some(rtt) = text
            .lines()
            .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        {
            let vals: Vec<f64> = rtt
                .split('=')
                .nth(1)?
                .trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [min, avg, max, ..] = vals.as_slice() {
                (s.min_ms, s.avg_ms, s.max_ms) = (*min, *avg, *max);
            }
        }
        Some(s)
    }
}

/// Whether interface `dev` of namespace `ns` (full name) is up and RUNNING (operationally up).
pub fn link_running(ns: &str, dev: &str) -> Result<bool> {
    use nix::net::if_::InterfaceFlags;
    let dev = dev.to_owned();
    let ns_name = ns.to_owned();
    crate::netns::run_in(ns, move || {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::io(format!("[{ns_name}] getifaddrs"), e.into()))?;
        let want = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING;
        Ok(addrs
            .filter(|a| a.interface_name == dev)
            .any(|a| a.flags.contains(want)))
    })
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Usage(
            "the namespace lab needs root (ip netns, nft, charon)".into(),
        ))
    }
}

/// Finds the `e2e` binary: `$MIP_E2E_BIN`, the running binary if it is `e2e`, or `e2e` in the parent of the
/// running binary's directory (where cargo puts it relative to `target/<profile>/deps/<test>`).
pub fn find_e2e_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MIP_E2E_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ctx(|| "locating the running binary".into())?;
    if exe.file_name().is_some_and(|n| n == "e2e") {
        return Ok(exe);
    }
    let candidates = [
        exe.parent().map(|d| d.join("e2e")),
        exe.parent().and_then(Path::parent).map(|d| d.join("e2e")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).ok_or_else(|| {
        Error::Usage("cannot find the `e2e` binary: build it (cargo build -p mip-e2e) or set MIP_E2E_BIN".into())
    })
}

/// Names of existing namespaces that start with `prefix` (from /run/netns, where `ip netns add` puts them).
pub fn list_namespaces(prefix: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn valid_prefix(p: &str) -> bool {
    p.starts_with(NS_PREFIX)
        && p.ends_with('-')
        && p.len() <= 16
        && p.trim_end_matches('-').bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Picks (or checks) a prefix and creates its run directory atomically, so two labs never share one.
fn claim_prefix(wanted: Option<&str>) -> Result<(String, PathBuf)> {
    fs::create_dir_all(RUN_ROOT).ctx(|| format!("creating {RUN_ROOT}"))?;
    let try_claim = |prefix: &str| -> Result<Option<PathBuf>> {
        let dir = Path::new(RUN_ROOT).join(prefix.trim_end_matches('-'));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        if !list_namespaces(prefix).is_empty() {
            // Namespaces without a run directory: leftovers for `e2e cleanup`; do not reuse the prefix.
            let _ = fs::remove_dir(&dir);
            return Ok(None);
        }
        let me = PidRecord {
            pid: std::process::id(),
            starttime: cmd::proc_starttime(std::process::id()).unwrap_or(0),
            ns: cmd::ROOT_NS.to_owned(),
            name: "owner".to_owned(),
        };
        let owner = dir.join("owner");
        fs::write(&owner, me.line()).ctx(|| format!("writing {}", owner.display()))?;
        Ok(Some(dir))
    };
    if let Some(p) = wanted {
        if !valid_prefix(p) {
            return Err(Error::Usage(format!(
                "lab prefix `{p}` must look like `mlab<letters/digits>-` (at most 16 characters)"
            )));
        }
        return try_claim(p)?
            .map(|d| (p.to_owned(), d))
            .ok_or_else(|| Error::Usage(format!("lab prefix `{p}` is in use (run `e2e cleanup`?)")));
    }
    for n in 1..10_000u32 {
        let prefix = format!("{NS_PREFIX}{n}-");
        if let Some(d) = try_claim(&prefix)? {
            return Ok((prefix, d));
        }
    }
    Err(Error::Usage(
        "no free lab prefix mlab1- .. mlab9999- (run `e2e cleanup`)".into(),
    ))
}

/// Kills a lab's recorded processes, deletes its namespaces and (unless `keep`) its run directory. Returns
/// what could not be cleaned.
fn destroy_lab(prefix: &str, run_dir: &Path, keep: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, rec) in read_pid_records(&run_dir.join("pids")) {
        rec.terminate(cmd::STOP_GRACE);
        let _ = fs::remove_file(file);
    }
    let names = list_namespaces(prefix);
    if !names.is_empty() {
        let dels: Vec<String> = names.iter().map(|n| format!("netns del {n}")).collect();
        // -force: keep going past a namespace that vanished meanwhile.
        let mut text = dels.join("\n");
        text.push('\n');
        if let Err(e) = Cmd::new(["ip", "-force", "-batch", "-"]).stdin(text).run() {
            problems.push(e.to_string());
        }
    }
    let left = list_namespaces(prefix);
    if !left.is_empty() {
        problems.push(format!("namespaces left: {}", left.join(" ")));
    }
    if keep {
        // A kept directory has no owner any more, so the stale-lab reaper leaves it for `e2e cleanup`.
        let _ = fs::remove_file(run_dir.join("owner"));
    } else if let Err(e) = fs::remove_dir_all(run_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {e}", run_dir.display()));
    }
    problems
}

/// Reaps labs whose owning process is gone (killed without unwinding): their processes, namespaces and run
/// directories. Labs of live processes are left alone.
fn reap_stale() {
    let Ok(rd) = fs::read_dir(RUN_ROOT) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let dir = e.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        // No owner file: a directory kept for inspection (MLAB_KEEP=1); only `e2e cleanup` removes it.
        let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
            continue;
        };
        let owner_alive = PidRecord::parse(&owner).is_some_and(|r| r.alive());
        if owner_alive || !name.starts_with(NS_PREFIX) {
            continue;
        }
        for p in destroy_lab(&format!("{name}-"), &dir, false) {
            eprintln!("mip-e2e: reaping stale lab {name}: {p}");
        }
    }
}

/// What `e2e cleanup` removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CleanupReport {
    /// Recorded processes that were still running and got killed.
    pub killed: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Run directories removed.
    pub run_dirs: Vec<String>,
    /// What could not be removed.
    pub problems: Vec<String>,
}

/// `e2e cleanup`: kills every process recorded under /tmp/mlab-run, deletes every `mlab*` namespace and
/// removes the run directories, whoever created them.
pub fn cleanup_all() -> Result<CleanupReport> {
    require_root()?;
    let mut rep = CleanupReport::default();
    if let Ok(rd) = fs::read_dir(RUN_ROOT) {
        for e in rd.filter_map(|e| e.ok()) {
            let dir = e.path();
            for (file, rec) in read_pid_records(&dir.join("pids")) {
                if rec.terminate(cmd::STOP_GRACE) {
                    rep.killed.push(format!("{} ({} in {})", rec.pid, rec.name, rec.ns));
                }
                let _ = fs::remove_file(file);
            }
        }
    }
    rep.namespaces = list_namespaces(NS_PREFIX);
    if !rep.namespaces.is_empty() {
        let text = rep
            .namespaces
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect::<String>();
        if let Err(e) = Cmd::new(["ip", "-force", "-batch", "-"]).stdin(text).run() {
            rep.problems.push(e.to_string());
        }
    }
    let left = list_namespaces(NS_PREFIX);
    if !left.is_empty() {
        rep.problems.push(format!("namespaces left: {}", left.join(" ")));
    }
    if let Ok(rd) = fs::read_dir(RUN_ROOT) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            match fs::remove_dir_all(&p) {
                Ok(()) => rep.run_dirs.push(p.display().to_string()),
                Err(err) => rep.problems.push(format!("removing {}: {err}", p.display())),
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_links_are_consistent() {
        for mode in [Mode::TwoBox, Mode::OneBox, Mode::Replicas] {
            let (ns, links) = plan(mode);
            let names: Vec<&str> = ns.iter().map(|s| s.name).collect();
            for k in &links {
                assert!(k.a_if.len() <= IFNAME_MAX && k.b_if.len() <= IFNAME_MAX, "{k:?}");
                assert!(names.contains(&k.a) && names.contains(&k.b), "{k:?} in {mode:?}");
            }
            // A namespace never holds two interfaces with the same name.
            for n in &names {
                let mut ifs: Vec<&str> = links
                    .iter()
                    .flat_map(|k| [(k.a, k.a_if), (k.b, k.b_if)])
                    .filter(|(ns, _)| ns == n)
                    .map(|(_, i)| i)
                    .collect();
                let before = ifs.len();
                ifs.sort_unstable();
                ifs.dedup();
                assert_eq!(before, ifs.len(), "duplicate interface in {n}");
            }
            assert_eq!(names.contains(&"proxy"), mode == Mode::TwoBox);
            for n in ["px1", "px2", "px3", "ecmp"] {
                assert_eq!(names.contains(&n), mode == Mode::Replicas, "{n} in {mode:?}");
            }
        }
        assert!(format!("{NS_PREFIX}9999-vpngw").len() < 64);
    }

    #[test]
    fn inet_knows_only_public_prefixes() {
        let (ns, _) = plan(Mode::TwoBox);
        let inet = ns
            .iter()
            .find(|s| s.name == "inet")
            .map(|s| s.config.join("\n"))
            .unwrap_or_default();
        assert!(!inet.contains("route"), "{inet}");
        assert!(!inet.contains(" 10.") && !inet.contains("192.168."), "{inet}");
    }

    #[test]
    fn replicas_mode_routes_the_shared_addresses_via_ecmp() {
        let (ns, _) = plan(Mode::Replicas);
        let cfg = |n: &str| {
            ns.iter()
                .find(|s| s.name == n)
                .map(|s| s.config.join("\n"))
                .unwrap_or_default()
        };
        assert!(
            cfg("inet").contains("route add 198.51.100.10/32 via 198.51.100.2"),
            "{}",
            cfg("inet")
        );
        assert!(!cfg("inet").contains(" 10.") && !cfg("inet").contains("192.168."));
        let gw = cfg("vpngw");
        assert!(gw.contains("route add 10.10.1.0/24 via 198.51.100.2 dev dmz"), "{gw}");
        assert!(gw.contains("route add 10.10.0.10/32 via 10.10.0.2 dev lan"), "{gw}");
        assert!(!gw.contains("addr add 198.51.100.10"), "{gw}");
        assert!(cfg("ha").contains("route add 10.10.0.10/32 via 10.10.0.2 dev lan"));
        for (i, px) in ["px1", "px2", "px3"].into_iter().enumerate() {
            let c = cfg(px);
            assert!(c.contains("addr add 198.51.100.10/32 dev lo") && c.contains("addr add 10.10.0.10/32 dev lo"));
            assert!(c.contains(&format!("addr add 198.51.100.1{}/24 dev dmz", i + 1)), "{c}");
            assert!(c.contains("route add 10.10.1.1/32 via 10.10.0.1 dev lan"), "{c}");
        }
        let e = cfg("ecmp");
        assert!(
            e.contains("route replace 198.51.100.10/32 nexthop via 198.51.100.11 dev dmz nexthop via 198.51.100.12 dev dmz nexthop via 198.51.100.13 dev dmz"),
            "{e}"
        );
        assert_eq!(
            replica_routes(&[0, 2]),
            vec![
                "route replace 198.51.100.10/32 nexthop via 198.51.100.11 dev dmz nexthop via 198.51.100.13 dev dmz",
                "route replace 10.10.1.0/24 nexthop via 198.51.100.11 dev dmz nexthop via 198.51.100.13 dev dmz",
                "route replace 10.10.0.10/32 nexthop via 10.10.0.11 dev lan nexthop via 10.10.0.13 dev lan",
            ]
        );
        assert!(replica_routes(&[]).iter().all(|r| r.contains("unreachable")));
        // The other modes are unchanged: no ECMP routes, the two-box proxy on the segments.
        let (two, _) = plan(Mode::TwoBox);
        assert!(two.iter().all(|s| !s.config.join(" ").contains("198.51.100.2 ")));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(valid_prefix("mlab1-"));
        assert!(valid_prefix("mlabx7-"));
        assert!(!valid_prefix("lab1-"));
        assert!(!valid_prefix("mlab1"));
        assert!(!valid_prefix("mlab-1-x-"));
    }

    #[test]
    fn ping_summary_parses() {
        let t = "--- 10.10.0.100 ping statistics ---\n5 packets transmitted, 4 received, 20% packet loss, time 803ms\nrtt min/avg/max/mdev = 40.112/40.380/40.991/0.330 ms\n";
        let s = PingStats::parse(t).unwrap_or_default();
        assert_eq!((s.transmitted, s.received), (5, 4));
        assert!((s.avg_ms - 40.38).abs() < 1e-9);
        let none = "1 packets transmitted, 0 received, 100% packet loss, time 0ms\n";
        assert_eq!(PingStats::parse(none).map(|s| s.received), Some(0));
    }
}
