//! Route changes over rtnetlink: one RTM_NEWROUTE / RTM_DELROUTE request and the kernel's acknowledgement, built
//! the way iproute2's `ip route replace|del` builds them, without spawning `ip` (a process costs ~2 ms on a busy
//! 2-core machine; a request costs microseconds).
//!
//! Messages are built and parsed in safe code over byte buffers; the socket (and `if_nametoindex`) come from
//! [`crate::socket`]. A request acts in the network namespace of the calling thread, like the `ip` it replaces.

use core::sync::atomic::{AtomicU32, Ordering};
use std::io::{self, Read as _};
use std::time::{Duration, Instant};

use crate::net::Route;

// <linux/netlink.h>
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// In an NLMSG_ERROR: the echoed request is only its header (NETLINK_CAP_ACK).
const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended-ack attributes follow (NETLINK_EXT_ACK).
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

// <linux/rtnetlink.h>
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RT_TABLE_UNSPEC: u8 = 0;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_UNSPEC: u8 = 0;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNSPEC: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;

/// How long to wait for the kernel's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Sequence numbers of requests (per process; each request has a socket of its own anyway).
static SEQ: AtomicU32 = AtomicU32::new(1);

/// What to do with a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteOp {
    /// `ip route replace`: create or replace.
    Replace,
    /// `ip route del`: delete the route matching every attribute given.
    Delete,
}

/// Why a request failed; its `Display` is the text `ip` would have printed (the helpers of
/// [`crate::net::NetError`] match on it).
#[derive(Debug)]
pub(crate) enum RtnlError {
    /// The output device does not exist in this namespace.
    NoDevice(String),
    /// The kernel refused the request: a positive errno and the kernel's extended-ack message, if any.
    Refused(i32, Option<String>),
    /// No acknowledgement within the timeout.
    Timeout,
    /// The socket could not be created, written or read.
    Io(io::Error),
}

impl core::fmt::Display for RtnlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RtnlError::NoDevice(d) => write!(f, "Cannot find device \"{d}\""),
            RtnlError::Refused(errno, msg) => {
                write!(f, "RTNETLINK answers: {}", io::Error::from_raw_os_error(*errno))?;
                match msg {
                    Some(m) => write!(f, ": {m}"),
                    None => Ok(()),
                }
            }
            RtnlError::Timeout => write!(
                f,
                "no RTNETLINK acknowledgement within {} ms (the change may or may not have been made)",
                ACK_TIMEOUT.as_millis()
            ),
            RtnlError::Io(e) => write!(f, "RTNETLINK socket: {e}"),
        }
    }
}

/// Adds or replaces (`RouteOp::Replace`) or deletes a route, and waits for the kernel's acknowledgement.
pub(crate) fn route(op: RouteOp, r: &Route) -> Result<(), RtnlError> {
    let oif = match &r.dev {
        Some(d) => Some(crate::socket::if_index(d).ok_or_else(|| RtnlError::NoDevice(d.clone()))?),
        None => None,
    };
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let msg = route_message(op, seq, r, oif);
    request(&msg, seq)
}

/// Sends one request and waits for the NLMSG_ERROR acknowledging sequence number `seq`.
fn request(msg: &[u8], seq: u32) -> Result<(), RtnlError> {
    let sock = crate::socket::rtnetlink_request_socket(ACK_TIMEOUT).map_err(RtnlError::Io)?;
    loop {
        match sock.send(msg) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(RtnlError::Timeout),
            Err(e) => return Err(RtnlError::Io(e)),
        }
    }
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut buf = [0u8; 8192];
    let mut first = true;
    loop {
        if !first {
            // A retry (EINTR, someone else's message): wait only for what is left of the timeout.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RtnlError::Timeout);
            }
            sock.set_read_timeout(Some(left)).map_err(RtnlError::Io)?;
        }
        first = false;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(RtnlError::Timeout),
            Err(e) => return Err(RtnlError::Io(e)),
        };
        if let Some(answer) = find_ack(buf.get(..n).unwrap_or(&[]), seq) {
            return answer.map_err(|(errno, text)| RtnlError::Refused(errno, text));
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one route attribute (`struct rtattr` + payload, padded to 4 bytes).
fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// The complete request (`nlmsghdr` + `rtmsg` + attributes) for `op` on `r`, `oif` its resolved device, as
/// iproute2 builds it: on replace protocol `boot`, type unicast, scope link without a gateway (universe with
/// one); on delete protocol, type and scope unspecified (RT_SCOPE_NOWHERE) so that only what `r` sets has to
/// match. Attributes only for what is set; the table in `rtm_table` when it fits a byte and in RTA_TABLE always.
fn route_message(op: RouteOp, seq: u32, r: &Route, oif: Option<u32>) -> Vec<u8> {
    let (ty, flags, protocol, scope, rtn) = match op {
        RouteOp::Replace => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            RTPROT_BOOT,
            if r.via.is_some() {
                RT_SCOPE_UNIVERSE
            } else {
                RT_SCOPE_LINK
            },
            RTN_UNICAST,
        ),
        RouteOp::Delete => (
            RTM_DELROUTE,
            NLM_F_REQUEST | NLM_F_ACK,
            RTPROT_UNSPEC,
            RT_SCOPE_NOWHERE,
            RTN_UNSPEC,
        ),
    };
    let table = match r.table {
        None => RT_TABLE_MAIN,
        Some(t) => u8::try_from(t).unwrap_or(RT_TABLE_UNSPEC),
    };
    let dst_len = r.dest.len();
    let mut m = Vec::with_capacity(128);
    // struct nlmsghdr; the length is patched in at the end.
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills in ours
    // struct rtmsg
    m.extend_from_slice(&[
        libc::AF_INET as u8,
        dst_len,
        0, // rtm_src_len
        0, // rtm_tos
        table,
        protocol,
        scope,
        rtn,
    ]);
    let rtm_flags = if r.onlink { RTNH_F_ONLINK } else { 0 };
    m.extend_from_slice(&rtm_flags.to_ne_bytes());
    if dst_len > 0 {
        put_attr(&mut m, RTA_DST, &r.dest.addr().octets());
    }
    if let Some(gw) = r.via {
        put_attr(&mut m, RTA_GATEWAY, &gw.octets());
    }
    if let Some(i) = oif {
        put_attr(&mut m, RTA_OIF, &i.to_ne_bytes());
    }
    if let Some(s) = r.src {
        put_attr(&mut m, RTA_PREFSRC, &s.octets());
    }
    if let Some(t) = r.table {
        put_attr(&mut m, RTA_TABLE, &t.to_ne_bytes());
    }
    if let Some(metric) = r.metric {
        put_attr(&mut m, RTA_PRIORITY, &metric.to_ne_bytes());
    }
    if let Some(mtu) = r.mtu {
        let mut nested = Vec::with_capacity(8);
        put_attr(&mut nested, RTAX_MTU, &u32::from(mtu).to_ne_bytes());
        put_attr(&mut m, RTA_METRICS, &nested);
    }
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX).to_ne_bytes();
    if let Some(l) = m.get_mut(..4) {
        l.copy_from_slice(&len);
    }
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The answer to request `seq` among the netlink messages of one datagram: `Ok` for an acknowledgement,
/// `Err((errno, extended-ack message))` for a refusal, `None` if the datagram holds neither (another request's
/// answer, garbage).
fn find_ack(mut buf: &[u8], seq: u32) -> Option<Result<(), (i32, Option<String>)>> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = usize::try_from(u32_at(buf, 0)?).ok()?;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let msg = buf.get(..len)?;
        if u16_at(msg, 4)? == NLMSG_ERROR && u32_at(msg, 8)? == seq {
            let flags = u16_at(msg, 6)?;
            let error = i32::from_ne_bytes(msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)?.try_into().ok()?);
            if error == 0 {
                return Some(Ok(()));
            }
            return Some(Err((error.saturating_abs(), ext_ack_message(msg, flags))));
        }
        buf = buf.get(align4(len)..).unwrap_or(&[]);
    }
    None
}

/// The NLMSGERR_ATTR_MSG text of an NLMSG_ERROR message, if the kernel attached one.
fn ext_ack_message(msg: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // struct nlmsgerr { int error; struct nlmsghdr msg; } + the echoed request's payload unless capped.
    let echoed = NLMSG_HDRLEN + 4;
    let mut at = if flags & NLM_F_CAPPED != 0 {
        echoed + NLMSG_HDRLEN
    } else {
        echoed + align4(usize::try_from(u32_at(msg, echoed)?).ok()?)
    };
    while let (Some(len), Some(ty)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let len = usize::from(len);
        if len < 4 {
            return None;
        }
        if ty & 0x3fff == NLMSGERR_ATTR_MSG {
            let text = msg.get(at + 4..at + len)?;
            let text = text.split(|b| *b == 0).next().unwrap_or(&[]);
            let text = String::from_utf8_lossy(text).trim().to_string();
            return (!text.is_empty()).then_some(text);
        }
        at += align4(len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use mip::config::Prefix;

    /// nlmsghdr (len, type, flags, seq), the rtmsg bytes, the attributes as (type, payload).
    type Parsed = ((u32, u16, u16, u32), Vec<u8>, Vec<(u16, Vec<u8>)>);

    /// Splits a request into its parts.
    fn parse(m: &[u8]) -> Parsed {
        let hdr = (
            u32_at(m, 0).unwrap(),
            u16_at(m, 4).unwrap(),
            u16_at(m, 6).unwrap(),
            u32_at(m, 8).unwrap(),
        );
        assert_eq!(hdr.0 as usize, m.len());
        let rtm = m[16..28].to_vec();
        let mut attrs = Vec::new();
        let mut at = 28;
        while at < m.len() {
            let len = usize::from(u16_at(m, at).unwrap());
            attrs.push((u16_at(m, at + 2).unwrap(), m[at + 4..at + len].to_vec()));
            at += align4(len);
        }
        assert_eq!(at, m.len());
        (hdr, rtm, attrs)
    }

    #[test]
    fn replace_message_layout() {
        let p: Prefix = "10.10.1.50/32".parse().unwrap();
        let r = Route {
            via: Some(Ipv4Addr::new(192, 0, 2, 1)),
            dev: Some("a0".into()),
            src: Some(Ipv4Addr::new(192, 0, 2, 10)),
            table: Some(100),
            metric: Some(5),
            mtu: Some(1400),
            onlink: true,
            ..Route::to(p)
        };
        let ((_, ty, flags, seq), rtm, attrs) = parse(&route_message(RouteOp::Replace, 77, &r, Some(9)));
        assert_eq!((ty, flags, seq), (RTM_NEWROUTE, 0x1 | 0x4 | 0x400 | 0x100, 77));
        // family, dst_len, src_len, tos, table, protocol, scope, type, flags
        assert_eq!(
            &rtm[..8],
            &[2, 32, 0, 0, 100, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST]
        );
        assert_eq!(u32_at(&rtm, 8), Some(RTNH_F_ONLINK));
        let want: Vec<(u16, Vec<u8>)> = vec![
            (RTA_DST, vec![10, 10, 1, 50]),
            (RTA_GATEWAY, vec![192, 0, 2, 1]),
            (RTA_OIF, 9u32.to_ne_bytes().to_vec()),
            (RTA_PREFSRC, vec![192, 0, 2, 10]),
            (RTA_TABLE, 100u32.to_ne_bytes().to_vec()),
            (RTA_PRIORITY, 5u32.to_ne_bytes().to_vec()),
            (RTA_METRICS, {
                let mut n = vec![8, 0];
                n[..2].copy_from_slice(&8u16.to_ne_bytes());
                n.extend_from_slice(&RTAX_MTU.to_ne_bytes());
                n.extend_from_slice(&1400u32.to_ne_bytes());
                n
            }),
        ];
        assert_eq!(attrs, want);
    }

    #[test]
    fn plain_and_delete_messages() {
        // No gateway: scope link; main table, no RTA_TABLE.
        let r = Route::to("10.0.0.0/8".parse().unwrap());
        let (_, rtm, attrs) = parse(&route_message(RouteOp::Replace, 1, &r, None));
        assert_eq!(
            &rtm[..8],
            &[2, 8, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_LINK, RTN_UNICAST]
        );
        assert_eq!(attrs, vec![(RTA_DST, vec![10, 0, 0, 0])]);
        // Delete: only the destination; scope nowhere, protocol and type unspecified (match any).
        let ((_, ty, flags, _), rtm, attrs) = parse(&route_message(RouteOp::Delete, 2, &r, None));
        assert_eq!((ty, flags), (RTM_DELROUTE, 0x1 | 0x4));
        assert_eq!(&rtm[..8], &[2, 8, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0]);
        assert_eq!(u32_at(&rtm, 8), Some(0));
        assert_eq!(attrs.len(), 1);
        // The default route has no RTA_DST; a table beyond a byte is RT_TABLE_UNSPEC + RTA_TABLE.
        let r = Route {
            table: Some(1000),
            ..Route::to("0.0.0.0/0".parse().unwrap())
        };
        let (_, rtm, attrs) = parse(&route_message(RouteOp::Delete, 3, &r, None));
        assert_eq!((rtm[1], rtm[4]), (0, RT_TABLE_UNSPEC));
        assert_eq!(attrs, vec![(RTA_TABLE, 1000u32.to_ne_bytes().to_vec())]);
    }

    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn acknowledgements() {
        let echoed = nlmsg(RTM_NEWROUTE, 5, 9, &[]);
        let mut ok = 0i32.to_ne_bytes().to_vec();
        ok.extend_from_slice(&echoed);
        assert_eq!(find_ack(&nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 9, &ok), 9), Some(Ok(())));
        // Another sequence number is not ours; several messages in one datagram.
        assert_eq!(find_ack(&nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 8, &ok), 9), None);
        let mut two = nlmsg(RTM_NEWROUTE, 0, 9, &[1, 2, 3]);
        two.extend(nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 9, &ok));
        assert_eq!(find_ack(&two, 9), Some(Ok(())));

        // A refusal with an extended-ack message, capped.
        let mut err = (-libc::ENETUNREACH).to_ne_bytes().to_vec();
        err.extend_from_slice(&echoed);
        let text = b"Nexthop has invalid gateway\0";
        err.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        err.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        err.extend_from_slice(text);
        let got = find_ack(&nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 9, &err), 9);
        assert_eq!(
            got,
            Some(Err((libc::ENETUNREACH, Some("Nexthop has invalid gateway".into()))))
        );
        // Not capped: the whole request is echoed before the attributes.
        let full = nlmsg(RTM_NEWROUTE, 5, 9, &[7; 13]);
        let mut err = (-libc::EEXIST).to_ne_bytes().to_vec();
        err.extend_from_slice(&full);
        err.extend_from_slice(&8u16.to_ne_bytes());
        err.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        err.extend_from_slice(b"abc\0");
        let got = find_ack(&nlmsg(NLMSG_ERROR, NLM_F_ACK_TLVS, 9, &err), 9);
        assert_eq!(got, Some(Err((libc::EEXIST, Some("abc".into())))));
        // Without TLVs, only the errno.
        let mut err = (-libc::ESRCH).to_ne_bytes().to_vec();
        err.extend_from_slice(&full);
        assert_eq!(
            find_ack(&nlmsg(NLMSG_ERROR, 0, 9, &err), 9),
            Some(Err((libc::ESRCH, None)))
        );

        // Garbage never panics.
        for len in 0..64 {
            let _ = find_ack(&[0xff; 64][..len], 9);
            let _ = find_ack(&[0; 64][..len], 9);
            let mut m = nlmsg(NLMSG_ERROR, NLM_F_ACK_TLVS, 9, &[0xff; 48]);
            m[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
            m.truncate(len.max(20));
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            let _ = find_ack(&m, 9);
        }
    }

    #[test]
    fn error_texts_read_like_iproute2() {
        let e = RtnlError::Refused(libc::EEXIST, None).to_string();
        assert_eq!(e, "RTNETLINK answers: File exists (os error 17)");
        let e = RtnlError::Refused(libc::ENETUNREACH, Some("Nexthop has invalid gateway".into())).to_string();
        assert_eq!(
            e,
            "RTNETLINK answers: Network is unreachable (os error 101): Nexthop has invalid gateway"
        );
        assert_eq!(
            RtnlError::NoDevice("x0".into()).to_string(),
            "Cannot find device \"x0\""
        );
    }
}
