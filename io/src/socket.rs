//! UDP and raw IPv4 sockets with batched, allocation-free receive and send (`recvmmsg`/`sendmmsg`), the local
//! address and TTL of every received datagram (IP_PKTINFO, IP_RECVTTL), and ICMP errors about sent datagrams
//! (IP_RECVERR, `MSG_ERRQUEUE`).
//!
//! Every socket is non-blocking: calls return [`io::ErrorKind::WouldBlock`] instead of waiting; register the
//! socket with a [`mio::Poll`] (each type implements [`mio::event::Source`]) to learn when to call again.
//!
//! # ICMP errors and IP_RECVERR
//! With IP_RECVERR on, an ICMP error about any datagram this socket sent is queued on the socket's error queue
//! (read it with [`UdpSocket::take_icmp_errors`] when the socket polls readable or with an error) and also leaves
//! a one-shot pending error on the socket that the next send or receive would return in place of its own
//! result. [`UdpSocket::recv_batch`] and the send calls absorb that stale error and retry, so a datagram is never
//! dropped because of an error that belongs to an earlier one.
//!
//! # Unsafe
//! This module and `tun.rs` are the only places with `unsafe`: `setsockopt`, `recvmmsg`/`sendmmsg`/`recvmsg`,
//! `bind` on netlink and `sendto` on packet sockets, `if_nametoindex`, and zeroing plain C structs. Every block
//! has a `// SAFETY:` comment; control messages are parsed and built in safe code over byte slices.

use core::ffi::{c_int, c_uint, c_void};
use core::mem::size_of;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::ptr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::batch::{MAX_BATCH, RecvBatch, RecvMeta, SendBatch, SendOutcome, ipv4_header_addresses};

/// Control buffer per message: IP_PKTINFO (32) + IP_TTL (24) on receive; sock_extended_err + offender (48) on the
/// error queue; IP_PKTINFO + IP_TTL on send.
const CMSG_BUF: usize = 128;
/// Error-queue entries read per [`UdpSocket::take_icmp_errors`] call at most (the queue is bounded by the
/// receive buffer anyway; this keeps one call short).
const MAX_ERRQUEUE: usize = 256;
/// `SOL_RAW` / `ICMP_FILTER` from `<linux/icmp.h>` (not in libc).
const SOL_RAW: c_int = 255;
const ICMP_FILTER: c_int = 1;
/// `NETLINK_CAP_ACK` / `NETLINK_EXT_ACK` socket options from `<linux/netlink.h>`.
const NETLINK_CAP_ACK: c_int = 10;
const NETLINK_EXT_ACK: c_int = 11;
/// `IP_MTU` getsockopt / `SO_EE_ORIGIN_LOCAL`.
const SO_EE_ORIGIN_LOCAL: u8 = 1;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_BUF]);

impl CmsgBuf {
    const ZERO: CmsgBuf = CmsgBuf([0; CMSG_BUF]);
}

const SOCKADDR_IN_ZERO: libc::sockaddr_in = libc::sockaddr_in {
    sin_family: 0,
    sin_port: 0,
    sin_addr: libc::in_addr { s_addr: 0 },
    sin_zero: [0; 8],
};

const IOVEC_NULL: libc::iovec = libc::iovec {
    iov_base: ptr::null_mut(),
    iov_len: 0,
};

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr_in(s: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    (i32::from(s.sin_family) == libc::AF_INET).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(s.sin_port),
        )
    })
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers; all-zero bytes (null pointers, zero
    // lengths) is a valid value of every field.
    unsafe { core::mem::zeroed() }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: as for `mmsghdr`: integers and raw pointers, all-zero is valid.
    unsafe { core::mem::zeroed() }
}

// === control messages (safe byte-level parsing and building) ===

const WORD: usize = size_of::<usize>();

const fn cmsg_align(len: usize) -> usize {
    (len + WORD - 1) & !(WORD - 1)
}

/// `CMSG_LEN(0)`: the aligned header size.
const CMSG_HDR: usize = cmsg_align(size_of::<libc::cmsghdr>());

/// Iterates `(level, type, data)` over a received control buffer.
struct Cmsgs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Cmsgs<'a> {
    type Item = (c_int, c_int, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let len = usize::from_ne_bytes(self.buf.get(..WORD)?.try_into().ok()?);
        let level = c_int::from_ne_bytes(self.buf.get(WORD..WORD + 4)?.try_into().ok()?);
        let ty = c_int::from_ne_bytes(self.buf.get(WORD + 4..WORD + 8)?.try_into().ok()?);
        if len < CMSG_HDR {
            return None;
        }
        let data = self.buf.get(CMSG_HDR..len)?;
        self.buf = self.buf.get(cmsg_align(len)..).unwrap_or(&[]);
        Some((level, ty, data))
    }
}

/// Appends one control message at `at`; returns the offset after it, `None` if it does not fit.
fn put_cmsg(buf: &mut [u8], at: usize, level: c_int, ty: c_int, data: &[u8]) -> Option<usize> {
    let len = CMSG_HDR + data.len();
    let end = at.checked_add(cmsg_align(len))?;
    let out = buf.get_mut(at..end)?;
    out.fill(0);
    out.get_mut(..WORD)?.copy_from_slice(&len.to_ne_bytes());
    out.get_mut(WORD..WORD + 4)?.copy_from_slice(&level.to_ne_bytes());
    out.get_mut(WORD + 4..WORD + 8)?.copy_from_slice(&ty.to_ne_bytes());
    out.get_mut(CMSG_HDR..len)?.copy_from_slice(data);
    Some(end)
}

/// Builds the IP_PKTINFO (source address) and IP_TTL control messages of one outgoing datagram; returns the
/// length used.
fn send_cmsgs(buf: &mut CmsgBuf, src: Option<Ipv4Addr>, ttl: Option<u8>) -> usize {
    let mut at = 0;
    if let Some(src) = src {
        // struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
        let mut info = [0u8; 12];
        if let Some(d) = info.get_mut(4..8) {
            d.copy_from_slice(&src.octets());
        }
        at = put_cmsg(&mut buf.0, at, libc::IPPROTO_IP, libc::IP_PKTINFO, &info).unwrap_or(at);
    }
    if let Some(ttl) = ttl.filter(|t| *t > 0) {
        at = put_cmsg(
            &mut buf.0,
            at,
            libc::IPPROTO_IP,
            libc::IP_TTL,
            &c_int::from(ttl).to_ne_bytes(),
        )
        .unwrap_or(at);
    }
    at
}

// === small syscall wrappers ===

fn setsockopt_bytes(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `value` is a live byte slice of `len` bytes for the duration of the call; the kernel only reads it
    // and copies what it needs. `fd` is a valid descriptor borrowed for the call.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &value.to_ne_bytes())
}

/// Errors the kernel leaves pending on a socket after an ICMP error (IP_RECVERR) or a failed earlier send; a
/// receive or send that returns one of them is retried once it has been consumed.
fn is_stale_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EPROTO
            | libc::EMSGSIZE
            | libc::ENOPROTOOPT
            | libc::EACCES
            | libc::EPERM
            | libc::ETIMEDOUT
    )
}

/// Errors that say the descriptor itself is unusable (not about one datagram).
fn is_fatal(errno: i32) -> bool {
    matches!(errno, libc::EBADF | libc::ENOTSOCK | libc::EFAULT)
}

#[derive(Clone, Copy)]
enum AddrMode {
    /// UDP: source from `msg_name`, local address from IP_PKTINFO (else `local`), TTL from IP_TTL.
    Udp { local: SocketAddrV4 },
    /// Raw IPv4: addresses and TTL from the packet's own header.
    Ip,
}

fn recv_mmsg(fd: BorrowedFd<'_>, batch: &mut RecvBatch, mode: AddrMode) -> io::Result<usize> {
    batch.clear();
    let (data, slot, meta) = batch.parts_mut();
    let n = meta.len().min(MAX_BATCH);
    let mut iovs = [IOVEC_NULL; MAX_BATCH];
    let mut names = [SOCKADDR_IN_ZERO; MAX_BATCH];
    let mut ctrl = [CmsgBuf::ZERO; MAX_BATCH];
    let mut hdrs = [zeroed_mmsghdr(); MAX_BATCH];
    for ((((chunk, iov), name), c), h) in data
        .chunks_mut(slot)
        .zip(iovs.iter_mut())
        .zip(names.iter_mut())
        .zip(ctrl.iter_mut())
        .zip(hdrs.iter_mut())
        .take(n)
    {
        iov.iov_base = chunk.as_mut_ptr().cast::<c_void>();
        iov.iov_len = chunk.len();
        h.msg_hdr.msg_name = ptr::from_mut(name).cast::<c_void>();
        h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_hdr.msg_iov = ptr::from_mut(iov);
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = c.0.as_mut_ptr().cast::<c_void>();
        h.msg_hdr.msg_controllen = CMSG_BUF as _;
    }
    let mut stale = 0;
    let got = loop {
        // SAFETY: `hdrs[..n]` are initialised headers whose name, iovec and control pointers point into
        // `names`, `iovs`, `ctrl` (stack arrays alive until the end of this function) and into `data` (the
        // batch's buffer, exclusively borrowed here), each with the length given beside it; `n` ≤ MAX_BATCH =
        // the array length. The timeout pointer is null (allowed: no timeout; MSG_DONTWAIT makes it
        // non-blocking).
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if let Ok(r) = usize::try_from(r) {
            break r.min(n);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(x) if is_stale_error(x) && stale < 8 => stale += 1,
            _ => return Err(e),
        }
    };
    for (i, (((h, name), c), chunk)) in hdrs
        .iter()
        .zip(names.iter())
        .zip(ctrl.iter())
        .zip(data.chunks(slot))
        .take(got)
        .enumerate()
    {
        let Some(m) = meta.get_mut(i) else { break };
        let len = (h.msg_len as usize).min(slot);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *m = RecvMeta {
            len,
            src: from_sockaddr_in(name).unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            dst: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            ttl: None,
            ifindex: 0,
            truncated,
        };
        match mode {
            AddrMode::Udp { local } => {
                m.dst = local;
                #[allow(clippy::unnecessary_cast)] // socklen_t (u32) on musl
                let clen = (h.msg_hdr.msg_controllen as usize).min(CMSG_BUF);
                let cmsgs = Cmsgs {
                    buf: c.0.get(..clen).unwrap_or(&[]),
                };
                for (level, ty, d) in cmsgs {
                    match (level, ty) {
                        (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                            if let (Some(ifi), Some(addr)) = (d.get(0..4), d.get(8..12)) {
                                let ifi: [u8; 4] = ifi.try_into().unwrap_or([0; 4]);
                                m.ifindex = u32::from_ne_bytes(ifi);
                                let addr: [u8; 4] = addr.try_into().unwrap_or([0; 4]);
                                m.dst = SocketAddrV4::new(Ipv4Addr::from(addr), local.port());
                            }
                        }
                        (libc::IPPROTO_IP, libc::IP_TTL) => {
                            if let Some(v) = d.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                                m.ttl = u8::try_from(c_int::from_ne_bytes(v)).ok();
                            }
                        }
                        _ => {}
                    }
                }
            }
            AddrMode::Ip => {
                if let Some((src, dst, ttl)) = chunk.get(..len).and_then(ipv4_header_addresses) {
                    m.src = SocketAddrV4::new(src, 0);
                    m.dst = SocketAddrV4::new(dst, 0);
                    m.ttl = Some(ttl);
                }
            }
        }
    }
    batch.set_filled(got);
    Ok(got)
}

/// One datagram to send.
#[derive(Clone, Copy)]
struct OutMsg<'a> {
    payload: &'a [u8],
    dst: SocketAddrV4,
    src: Option<Ipv4Addr>,
    ttl: Option<u8>,
}

const OUT_EMPTY: OutMsg<'static> = OutMsg {
    payload: &[],
    dst: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    src: None,
    ttl: None,
};

/// Sends `msgs` with as few `sendmmsg` calls as possible. A datagram that fails is retried once (the error may
/// have been a stale one, see the module doc), then counted as failed and skipped.
fn send_mmsg(fd: BorrowedFd<'_>, msgs: &[OutMsg<'_>]) -> io::Result<SendOutcome> {
    let total = msgs.len();
    let mut out = SendOutcome::default();
    let mut start = 0;
    let mut retried = false;
    while start < total {
        let chunk = msgs.get(start..total.min(start + MAX_BATCH)).unwrap_or(&[]);
        let n = chunk.len();
        let mut iovs = [IOVEC_NULL; MAX_BATCH];
        let mut names = [SOCKADDR_IN_ZERO; MAX_BATCH];
        let mut ctrl = [CmsgBuf::ZERO; MAX_BATCH];
        let mut hdrs = [zeroed_mmsghdr(); MAX_BATCH];
        for ((((m, iov), name), c), h) in chunk
            .iter()
            .zip(iovs.iter_mut())
            .zip(names.iter_mut())
            .zip(ctrl.iter_mut())
            .zip(hdrs.iter_mut())
        {
            iov.iov_base = m.payload.as_ptr().cast_mut().cast::<c_void>();
            iov.iov_len = m.payload.len();
            *name = sockaddr_in(m.dst);
            h.msg_hdr.msg_name = ptr::from_mut(name).cast::<c_void>();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = ptr::from_mut(iov);
            h.msg_hdr.msg_iovlen = 1;
            let clen = send_cmsgs(c, m.src, m.ttl);
            if clen > 0 {
                h.msg_hdr.msg_control = c.0.as_mut_ptr().cast::<c_void>();
                h.msg_hdr.msg_controllen = clen as _;
            }
        }
        // SAFETY: `hdrs[..n]` are initialised headers whose pointers refer to `names`, `iovs`, `ctrl` (stack
        // arrays alive until the end of this iteration) and to the payload slices in `chunk` (borrowed for the
        // call), each with its length; the kernel only reads the iovec buffers (the `*mut` cast is what the C
        // type demands). `n` ≤ MAX_BATCH = the array length.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(r) {
            Ok(0) => {
                out.unsent = total - start;
                break;
            }
            Ok(sent) => {
                let sent = sent.min(n);
                out.sent += sent;
                start += sent;
                retried = false;
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                let errno = e.raw_os_error().unwrap_or(0);
                if errno == libc::EINTR {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    out.unsent = total - start;
                    break;
                }
                if is_fatal(errno) {
                    return Err(e);
                }
                if !retried {
                    retried = true;
                    continue;
                }
                retried = false;
                out.failed += 1;
                out.last_errno = Some(errno);
                start += 1;
            }
        }
    }
    Ok(out)
}

/// The outcome of sending exactly one datagram as a plain result.
fn single(outcome: SendOutcome) -> io::Result<()> {
    if outcome.sent == 1 {
        Ok(())
    } else if outcome.unsent > 0 {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Err(outcome
            .last_error()
            .unwrap_or_else(|| io::Error::other("datagram not sent")))
    }
}

/// Implements [`mio::event::Source`] for a type with `AsRawFd` by delegating to `mio::unix::SourceFd`.
macro_rules! mio_source {
    ($t:ty) => {
        impl ::mio::event::Source for $t {
            fn register(
                &mut self,
                registry: &::mio::Registry,
                token: ::mio::Token,
                interests: ::mio::Interest,
            ) -> ::std::io::Result<()> {
                let fd = ::std::os::fd::AsRawFd::as_raw_fd(self);
                ::mio::event::Source::register(&mut ::mio::unix::SourceFd(&fd), registry, token, interests)
            }
            fn reregister(
                &mut self,
                registry: &::mio::Registry,
                token: ::mio::Token,
                interests: ::mio::Interest,
            ) -> ::std::io::Result<()> {
                let fd = ::std::os::fd::AsRawFd::as_raw_fd(self);
                ::mio::event::Source::reregister(&mut ::mio::unix::SourceFd(&fd), registry, token, interests)
            }
            fn deregister(&mut self, registry: &::mio::Registry) -> ::std::io::Result<()> {
                let fd = ::std::os::fd::AsRawFd::as_raw_fd(self);
                ::mio::event::Source::deregister(&mut ::mio::unix::SourceFd(&fd), registry)
            }
        }
    };
}
pub(crate) use mio_source;

// === UDP ===

/// Options of a [`UdpSocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    /// SO_REUSEADDR (default on).
    pub reuse_address: bool,
    /// SO_REUSEPORT (default off).
    pub reuse_port: bool,
    /// IP_PKTINFO: learn the local address each datagram was sent to, and allow choosing the source address per
    /// datagram (default on).
    pub pktinfo: bool,
    /// IP_RECVTTL: learn each datagram's TTL (default on).
    pub recv_ttl: bool,
    /// IP_RECVERR: queue ICMP errors about sent datagrams for [`UdpSocket::take_icmp_errors`] (default on).
    pub recv_err: bool,
    /// IP_FREEBIND: bind to an address not (yet) configured (default off).
    pub freebind: bool,
    /// SO_MARK for policy routing (needs CAP_NET_ADMIN).
    pub mark: Option<u32>,
    /// SO_BINDTODEVICE.
    pub device: Option<String>,
    /// IP_MTU_DISCOVER: `Some(true)` = always set DF (PMTU discovery), `Some(false)` = never, `None` = system
    /// default.
    pub dont_fragment: Option<bool>,
    /// SO_RCVBUF in bytes (the kernel doubles it and caps it at `net.core.rmem_max`).
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF in bytes.
    pub send_buffer: Option<usize>,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            reuse_address: true,
            reuse_port: false,
            pktinfo: true,
            recv_ttl: true,
            recv_err: true,
            freebind: false,
            mark: None,
            device: None,
            dont_fragment: None,
            recv_buffer: None,
            send_buffer: None,
        }
    }
}

/// A non-blocking IPv4 UDP socket with batched I/O.
#[derive(Debug)]
pub struct UdpSocket {
    sock: Socket,
    local: SocketAddrV4,
}

impl UdpSocket {
    /// Binds with the default [`UdpOptions`] (SO_REUSEADDR, IP_PKTINFO, IP_RECVTTL, IP_RECVERR).
    pub fn bind(addr: SocketAddrV4) -> io::Result<UdpSocket> {
        UdpSocket::bind_with(addr, &UdpOptions::default())
    }

    /// Binds with explicit options.
    pub fn bind_with(addr: SocketAddrV4, opts: &UdpOptions) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        sock.set_reuse_address(opts.reuse_address)?;
        if opts.reuse_port {
            sock.set_reuse_port(true)?;
        }
        if opts.freebind {
            sock.set_freebind_v4(true)?;
        }
        if let Some(mark) = opts.mark {
            sock.set_mark(mark)?;
        }
        if let Some(dev) = &opts.device {
            sock.bind_device(Some(dev.as_bytes()))?;
        }
        if let Some(n) = opts.recv_buffer {
            sock.set_recv_buffer_size(n)?;
        }
        if let Some(n) = opts.send_buffer {
            sock.set_send_buffer_size(n)?;
        }
        let fd = sock.as_fd();
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, c_int::from(opts.pktinfo))?;
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, c_int::from(opts.recv_ttl))?;
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, c_int::from(opts.recv_err))?;
        if let Some(df) = opts.dont_fragment {
            let mode = if df {
                libc::IP_PMTUDISC_DO
            } else {
                libc::IP_PMTUDISC_DONT
            };
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, mode)?;
        }
        sock.bind(&SockAddr::from(addr))?;
        let local = sock.local_addr()?.as_socket_ipv4().unwrap_or(addr);
        Ok(UdpSocket { sock, local })
    }

    /// The bound address (with the port the kernel chose when bound to port 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Receives up to `batch.capacity()` datagrams in one `recvmmsg` call (the batch's previous contents are
    /// forgotten). Returns how many arrived, truncated ones included (see [`RecvBatch::truncated`]);
    /// `WouldBlock` when none is waiting.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        recv_mmsg(self.sock.as_fd(), batch, AddrMode::Udp { local: self.local })
    }

    /// Sends one datagram (source address and TTL chosen by the kernel).
    pub fn send_to(&self, payload: &[u8], dst: SocketAddrV4) -> io::Result<()> {
        self.send_from(payload, None, dst, None)
    }

    /// Sends one datagram from local address `src` (IP_PKTINFO; the socket must be bound to 0.0.0.0 or to
    /// `src`) with IP TTL `ttl`.
    pub fn send_from(
        &self,
        payload: &[u8],
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        ttl: Option<u8>,
    ) -> io::Result<()> {
        let msg = OutMsg { payload, dst, src, ttl };
        single(send_mmsg(self.sock.as_fd(), &[msg])?)
    }

    /// Sends a role's [`mip::roles::Transmit`] (its source address picks the local address when not
    /// 0.0.0.0).
    pub fn send_transmit(&self, t: &mip::roles::Transmit) -> io::Result<()> {
        let src = (!t.src.ip().is_unspecified()).then_some(*t.src.ip());
        self.send_from(&t.payload, src, t.dst, t.ttl)
    }

    /// Sends every datagram of `batch` (`sendmmsg`, up to 64 per call). The batch is not changed: clear it,
    /// or drop the consumed front with [`SendBatch::remove_front`] when some stayed `unsent`.
    pub fn send_batch(&self, batch: &SendBatch) -> io::Result<SendOutcome> {
        let mut msgs = [OUT_EMPTY; MAX_BATCH];
        let mut n = 0;
        for (i, slot) in msgs.iter_mut().enumerate().take(batch.len()) {
            let Some((payload, m)) = batch.entry(i) else { break };
            *slot = OutMsg {
                payload,
                dst: m.dst,
                src: m.src,
                ttl: m.ttl,
            };
            n += 1;
        }
        send_mmsg(self.sock.as_fd(), msgs.get(..n).unwrap_or(&[]))
    }

    /// Reads the error queue (IP_RECVERR): one report per ICMP error (or local error) about a datagram this
    /// socket sent, appended to `out`. Returns how many were appended (0 when the queue is empty).
    pub fn take_icmp_errors(&self, out: &mut Vec<IcmpErrorReport>) -> io::Result<usize> {
        let mut count = 0;
        for _ in 0..MAX_ERRQUEUE {
            match recv_errqueue(self.sock.as_fd()) {
                Ok(Some(r)) => {
                    out.push(r);
                    count += 1;
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if count == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(count)
    }

    /// SO_MARK for policy routing of what this socket sends.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        self.sock.set_mark(mark)
    }

    /// Default IP TTL of what this socket sends.
    pub fn set_ttl(&self, ttl: u8) -> io::Result<()> {
        self.sock.set_ttl_v4(u32::from(ttl))
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

mio_source!(UdpSocket);

/// Where an error-queue entry came from (`ee_origin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// An ICMP error from the network (or from this host's own stack for local destinations).
    Icmp,
    /// A local error (e.g. `EMSGSIZE` against a known path MTU).
    Local,
    /// Another origin (the raw `ee_origin`).
    Other(u8),
}

/// One ICMP (or local) error about a datagram this socket sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpErrorReport {
    /// Where the failed datagram was going.
    pub dst: SocketAddrV4,
    /// Who reported the error (the ICMP error's source); `None` for local errors.
    pub offender: Option<Ipv4Addr>,
    /// Where the error came from.
    pub origin: ErrorOrigin,
    /// ICMP type (3 = destination unreachable, 11 = time exceeded, 12 = parameter problem); 0 for local errors.
    pub icmp_type: u8,
    /// ICMP code (for type 3: 0 net, 1 host, 3 port unreachable, 4 fragmentation needed, …).
    pub icmp_code: u8,
    /// The errno the kernel maps it to (e.g. `ECONNREFUSED` for port unreachable).
    pub errno: i32,
    /// `ee_info`: the next-hop MTU for "fragmentation needed" and local `EMSGSIZE`.
    pub info: u32,
}

impl IcmpErrorReport {
    /// Whether this is an ICMP Destination Unreachable (type 3).
    pub fn is_unreachable(&self) -> bool {
        self.origin == ErrorOrigin::Icmp && self.icmp_type == 3
    }

    /// The errno as an [`io::Error`].
    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// Parses an IP_RECVERR control message: `struct sock_extended_err` (16 bytes) followed by the offender's
/// `sockaddr_in` (SO_EE_OFFENDER).
fn parse_extended_err(dst: SocketAddrV4, d: &[u8]) -> Option<IcmpErrorReport> {
    let errno = u32::from_ne_bytes(d.get(0..4)?.try_into().ok()?);
    let origin = *d.get(4)?;
    let icmp_type = *d.get(5)?;
    let icmp_code = *d.get(6)?;
    let info = u32::from_ne_bytes(d.get(8..12)?.try_into().ok()?);
    let offender = d.get(16..24).and_then(|o| {
        let family = u16::from_ne_bytes(o.get(0..2)?.try_into().ok()?);
        let addr: [u8; 4] = o.get(4..8)?.try_into().ok()?;
        (i32::from(family) == libc::AF_INET).then(|| Ipv4Addr::from(addr))
    });
    let origin = match origin {
        libc::SO_EE_ORIGIN_ICMP => ErrorOrigin::Icmp,
        SO_EE_ORIGIN_LOCAL => ErrorOrigin::Local,
        o => ErrorOrigin::Other(o),
    };
    Some(IcmpErrorReport {
        dst,
        offender,
        origin,
        icmp_type,
        icmp_code,
        errno: i32::try_from(errno).unwrap_or(i32::MAX),
        info,
    })
}

/// Reads one entry of the error queue; `Ok(None)` for an entry without an IP_RECVERR message.
fn recv_errqueue(fd: BorrowedFd<'_>) -> io::Result<Option<IcmpErrorReport>> {
    let mut payload = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast::<c_void>(),
        iov_len: payload.len(),
    };
    let mut name = SOCKADDR_IN_ZERO;
    let mut ctrl = CmsgBuf::ZERO;
    let mut msg = zeroed_msghdr();
    msg.msg_name = ptr::from_mut(&mut name).cast::<c_void>();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = ptr::from_mut(&mut iov);
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.0.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = CMSG_BUF as _;
    // SAFETY: `msg` points to `name`, `iov` (→ `payload`) and `ctrl`, locals alive for the call, with their true
    // lengths; MSG_DONTWAIT keeps it from blocking.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let dst = from_sockaddr_in(&name).unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    #[allow(clippy::unnecessary_cast)] // socklen_t (u32) on musl
    let clen = (msg.msg_controllen as usize).min(CMSG_BUF);
    let cmsgs = Cmsgs {
        buf: ctrl.0.get(..clen).unwrap_or(&[]),
    };
    for (level, ty, d) in cmsgs {
        if level == libc::IPPROTO_IP && ty == libc::IP_RECVERR {
            return Ok(parse_extended_err(dst, d));
        }
    }
    Ok(None)
}

// === raw IPv4 ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    Receiver,
    Sender,
}

/// A non-blocking raw IPv4 socket: a receiver of one IP protocol (whole packets, outer header included) or a
/// sender of complete packets we built (IP_HDRINCL).
#[derive(Debug)]
pub struct RawSocket {
    sock: Socket,
    kind: RawKind,
}

impl RawSocket {
    fn open(protocol: c_int, kind: RawKind) -> io::Result<RawSocket> {
        let sock = Socket::new(Domain::IPV4, Type::RAW.nonblocking(), Some(Protocol::from(protocol)))?;
        if kind == RawKind::Sender {
            sock.set_header_included_v4(true)?;
        }
        Ok(RawSocket { sock, kind })
    }

    /// Receives every IP-in-IP packet (protocol 4, RFC 2003) addressed to this host, outer header included.
    pub fn ipip() -> io::Result<RawSocket> {
        RawSocket::open(libc::IPPROTO_IPIP, RawKind::Receiver)
    }

    /// Receives ICMP errors addressed to this host (destination unreachable, source quench, redirect, time
    /// exceeded, parameter problem); every other ICMP type is filtered out in the kernel (ICMP_FILTER).
    pub fn icmp() -> io::Result<RawSocket> {
        let s = RawSocket::open(libc::IPPROTO_ICMP, RawKind::Receiver)?;
        let pass: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 11) | (1 << 12);
        setsockopt_bytes(s.sock.as_fd(), SOL_RAW, ICMP_FILTER, &(!pass).to_ne_bytes())?;
        Ok(s)
    }

    /// Receives every packet of IP protocol `protocol` addressed to this host.
    pub fn protocol(protocol: u8) -> io::Result<RawSocket> {
        RawSocket::open(c_int::from(protocol), RawKind::Receiver)
    }

    /// Sends complete IPv4 packets (IPPROTO_RAW, IP_HDRINCL). The kernel fills in the header checksum and total
    /// length, and the Identification and source address when they are zero. Receives nothing.
    pub fn sender() -> io::Result<RawSocket> {
        RawSocket::open(libc::IPPROTO_RAW, RawKind::Sender)
    }

    /// Receive only packets addressed to `local` (must be a local address).
    pub fn bind(&self, local: Ipv4Addr) -> io::Result<()> {
        self.sock.bind(&SockAddr::from(SocketAddrV4::new(local, 0)))
    }

    /// SO_BINDTODEVICE: receive from (and send through) one interface only.
    pub fn bind_device(&self, device: &str) -> io::Result<()> {
        self.sock.bind_device(Some(device.as_bytes()))
    }

    /// SO_MARK for policy routing of what this socket sends.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        self.sock.set_mark(mark)
    }

    /// SO_RCVBUF in bytes.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        self.sock.set_recv_buffer_size(bytes)
    }

    /// SO_SNDBUF in bytes.
    pub fn set_send_buffer_size(&self, bytes: usize) -> io::Result<()> {
        self.sock.set_send_buffer_size(bytes)
    }

    /// Receives up to `batch.capacity()` packets in one `recvmmsg` call. Each payload is the whole IPv4 packet;
    /// `src`/`dst`/`ttl` come from its header. `WouldBlock` when none is waiting.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        recv_mmsg(self.sock.as_fd(), batch, AddrMode::Ip)
    }

    /// Sends one complete IPv4 packet to the destination in its header (sender sockets only).
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let msg = self.out_msg(packet)?;
        single(send_mmsg(self.sock.as_fd(), &[msg])?)
    }

    /// Sends every packet of `batch`, each to the destination in its own header (the queued destination, source
    /// and TTL are ignored). A packet without a valid IPv4 header counts as failed (`EINVAL`).
    pub fn send_batch(&self, batch: &SendBatch) -> io::Result<SendOutcome> {
        if self.kind != RawKind::Sender {
            return Err(not_sender());
        }
        let mut msgs = [OUT_EMPTY; MAX_BATCH];
        let mut n = 0;
        let mut invalid = 0;
        for i in 0..batch.len().min(MAX_BATCH) {
            let Some((payload, _)) = batch.entry(i) else { break };
            match (self.out_msg(payload), msgs.get_mut(n)) {
                (Ok(m), Some(slot)) => {
                    *slot = m;
                    n += 1;
                }
                _ => invalid += 1,
            }
        }
        let mut out = send_mmsg(self.sock.as_fd(), msgs.get(..n).unwrap_or(&[]))?;
        if invalid > 0 {
            out.failed += invalid;
            out.last_errno = out.last_errno.or(Some(libc::EINVAL));
        }
        Ok(out)
    }

    fn out_msg<'a>(&self, packet: &'a [u8]) -> io::Result<OutMsg<'a>> {
        if self.kind != RawKind::Sender {
            return Err(not_sender());
        }
        let (_, dst, _) = ipv4_header_addresses(packet)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 packet"))?;
        Ok(OutMsg {
            payload: packet,
            dst: SocketAddrV4::new(dst, 0),
            src: None,
            ttl: None,
        })
    }
}

fn not_sender() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "only RawSocket::sender() sends complete IPv4 packets",
    )
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

mio_source!(RawSocket);

// === netlink and packet sockets (for `watch` and `net`) ===

/// A non-blocking rtnetlink socket subscribed to the multicast `groups` (RTMGRP_* bits).
pub(crate) fn rtnetlink_socket(groups: u32) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW.nonblocking(),
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    // SAFETY: `sockaddr_nl` is a plain C struct of integers; all-zero is valid (pid 0 = let the kernel choose).
    let mut addr: libc::sockaddr_nl = unsafe { core::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a live, initialised `sockaddr_nl` and we pass its exact size; the kernel only reads it.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// A blocking rtnetlink socket for request/acknowledgement exchanges (`net::route_replace_with` and friends):
/// no multicast groups, reads time out after `timeout` (so a lost acknowledgement cannot block the caller
/// forever), acknowledgements capped to the request's header (NETLINK_CAP_ACK) and carrying the kernel's
/// extended error message where it has one (NETLINK_EXT_ACK; both best effort, older kernels lack them).
///
/// Like every socket it belongs to the network namespace of the calling thread at creation.
pub(crate) fn rtnetlink_request_socket(timeout: Duration) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    // Optional niceties: without them the acknowledgement echoes the whole request and carries no text.
    let _ = setsockopt_int(sock.as_fd(), libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
    let _ = setsockopt_int(sock.as_fd(), libc::SOL_NETLINK, NETLINK_EXT_ACK, 1);
    Ok(sock)
}

/// The index of network device `name` in the calling thread's network namespace (`if_nametoindex(3)`, which
/// asks the kernel through a socket of that namespace), or `None` if there is no such device.
pub(crate) fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a live, NUL-terminated C string for the duration of the call; `if_nametoindex` only reads
    // it (and copies at most IFNAMSIZ bytes of it into its own request).
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Sends one complete Ethernet frame (header included) out of interface `ifindex` through an AF_PACKET socket.
pub(crate) fn send_ethernet_frame(ifindex: u32, ethertype: u16, frame: &[u8]) -> io::Result<()> {
    let proto = ethertype.to_be();
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(c_int::from(proto))))?;
    // SAFETY: `sockaddr_ll` is a plain C struct of integers and a byte array; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = c_int::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sll.sll_halen = 6;
    if let (Some(d), Some(s)) = (sll.sll_addr.get_mut(..6), frame.get(..6)) {
        d.copy_from_slice(s);
    }
    // SAFETY: `frame` is a live slice of `frame.len()` bytes the kernel only reads; `sll` is a live, initialised
    // `sockaddr_ll` passed with its exact size.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast::<c_void>(),
            frame.len(),
            0,
            ptr::from_ref(&sll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BUFFER_SIZE, PushError};
    use std::time::{Duration, Instant};

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn udp() -> UdpSocket {
        UdpSocket::bind(SocketAddrV4::new(LO, 0)).unwrap()
    }

    /// Receives until `want` datagrams arrived (loopback delivery is synchronous, but be patient).
    fn recv_all(
        s: &UdpSocket,
        batch: &mut RecvBatch,
        want: usize,
    ) -> Vec<(Vec<u8>, SocketAddrV4, SocketAddrV4, Option<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want && Instant::now() < deadline {
            match s.recv_batch(batch) {
                Ok(_) => got.extend(batch.iter().map(|r| (r.payload.to_vec(), r.src, r.dst, r.ttl))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    #[test]
    fn cmsg_roundtrip() {
        let mut c = CmsgBuf::ZERO;
        let n = send_cmsgs(&mut c, Some(Ipv4Addr::new(10, 0, 0, 1)), Some(7));
        assert_eq!(n, cmsg_align(CMSG_HDR + 12) + cmsg_align(CMSG_HDR + 4));
        let got: Vec<_> = Cmsgs { buf: &c.0[..n] }.map(|(l, t, d)| (l, t, d.to_vec())).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1), (libc::IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&got[0].2[4..8], &[10, 0, 0, 1]);
        assert_eq!(got[1].2, 7i32.to_ne_bytes().to_vec());
        assert_eq!(send_cmsgs(&mut c, None, Some(0)), 0, "TTL 0 means default");
        // Garbage never panics and never loops forever.
        for len in 0..40 {
            let buf = [0xffu8; 40];
            let _ = Cmsgs { buf: &buf[..len] }.count();
            let buf = [0u8; 40];
            assert_eq!(Cmsgs { buf: &buf[..len] }.count(), 0);
        }
        let mut small = [0u8; 10];
        assert_eq!(put_cmsg(&mut small, 0, 0, 0, &[1, 2, 3]), None);
    }

    #[test]
    fn udp_batch_roundtrip_with_addresses() {
        let rx = udp();
        let tx = udp();
        let mut out = SendBatch::new(8, BUFFER_SIZE);
        for i in 0..5u8 {
            out.push_from(&[i; 100], Some(LO), rx.local_addr(), Some(9 + i))
                .unwrap();
        }
        let o = tx.send_batch(&out).unwrap();
        assert_eq!(
            o,
            SendOutcome {
                sent: 5,
                ..SendOutcome::default()
            }
        );
        let mut batch = RecvBatch::new(4, BUFFER_SIZE);
        let got = recv_all(&rx, &mut batch, 5);
        assert_eq!(got.len(), 5);
        for (i, (payload, src, dst, ttl)) in got.iter().enumerate() {
            assert_eq!(payload, &vec![i as u8; 100]);
            assert_eq!(*src, tx.local_addr());
            assert_eq!(*dst, rx.local_addr());
            assert_eq!(*ttl, Some(9 + i as u8));
        }
        assert!(matches!(rx.recv_batch(&mut batch), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[test]
    fn pktinfo_reports_the_local_address_on_a_wildcard_socket() {
        let rx = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = rx.local_addr().port();
        let tx = udp();
        // 127.0.0.2 is a local address too (all of 127/8 is on lo).
        let dst = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), port);
        tx.send_to(b"hello", dst).unwrap();
        let mut batch = RecvBatch::default();
        let got = recv_all(&rx, &mut batch, 1);
        assert_eq!(got[0].2, dst);
        assert_eq!(got[0].1, tx.local_addr());
        assert_eq!(got[0].3, Some(64));
        // And the reply leaves from that address.
        rx.send_from(b"back", Some(*dst.ip()), tx.local_addr(), None).unwrap();
        let got = recv_all(&tx, &mut batch, 1);
        assert_eq!(got[0].1, dst);
    }

    #[test]
    fn truncated_datagrams_are_counted_not_delivered() {
        let rx = udp();
        let tx = udp();
        tx.send_to(&[1; 100], rx.local_addr()).unwrap();
        tx.send_to(&[2; 3000], rx.local_addr()).unwrap();
        tx.send_to(&[3; 64], rx.local_addr()).unwrap();
        let mut batch = RecvBatch::new(8, 128);
        let mut seen = Vec::new();
        let mut truncated = 0;
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while received < 3 && Instant::now() < deadline {
            if let Ok(n) = rx.recv_batch(&mut batch) {
                received += n;
                truncated += batch.truncated();
                seen.extend(batch.iter().map(|r| (r.payload[0], r.payload.len())));
            }
        }
        assert_eq!(received, 3);
        assert_eq!(truncated, 1);
        assert_eq!(seen, vec![(1, 100), (3, 64)]);
    }

    #[test]
    fn icmp_port_unreachable_is_reported_and_does_not_poison_later_sends() {
        let tx = udp();
        // A port nobody listens on: bind, learn the port, close.
        let closed = udp().local_addr();
        tx.send_to(b"anyone?", closed).unwrap();
        let mut reports = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while reports.is_empty() && Instant::now() < deadline {
            tx.take_icmp_errors(&mut reports).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = reports[0];
        assert_eq!(r.dst, closed);
        assert_eq!(r.origin, ErrorOrigin::Icmp);
        assert_eq!((r.icmp_type, r.icmp_code), (3, 3));
        assert_eq!(r.errno, libc::ECONNREFUSED);
        assert_eq!(r.offender, Some(LO));
        assert!(r.is_unreachable());
        assert_eq!(tx.take_icmp_errors(&mut reports).unwrap(), 0);

        // A second error, left unread: the pending socket error must not eat the next good datagram, neither
        // on send nor on receive.
        tx.send_to(b"again", closed).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let rx = udp();
        tx.send_to(b"good", rx.local_addr()).unwrap();
        let mut batch = RecvBatch::default();
        assert_eq!(recv_all(&rx, &mut batch, 1)[0].0, b"good");
        rx.send_to(b"reply", tx.local_addr()).unwrap();
        assert_eq!(recv_all(&tx, &mut batch, 1)[0].0, b"reply");
    }

    #[test]
    fn failed_datagrams_are_skipped() {
        let tx = udp();
        let rx = udp();
        let mut out = SendBatch::new(4, 64);
        out.push(b"one", rx.local_addr()).unwrap();
        // Port 0 is not a valid destination.
        out.push(b"bad", SocketAddrV4::new(LO, 0)).unwrap();
        out.push(b"three", rx.local_addr()).unwrap();
        let o = tx.send_batch(&out).unwrap();
        assert_eq!((o.sent, o.failed, o.unsent), (2, 1, 0), "{o:?}");
        assert!(o.last_error().is_some());
        let mut batch = RecvBatch::default();
        let got: Vec<_> = recv_all(&rx, &mut batch, 2).into_iter().map(|g| g.0).collect();
        assert_eq!(got, vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(out.push(&[0; 65], rx.local_addr()), Err(PushError::TooLong));
    }

    #[test]
    fn raw_sockets_need_a_sender_to_send() {
        // Creating raw sockets needs CAP_NET_RAW; the privileged tests cover real traffic.
        if let Ok(r) = RawSocket::ipip() {
            assert_eq!(r.send(&[0x45; 20]).unwrap_err().kind(), io::ErrorKind::Unsupported);
        }
        if let Ok(s) = RawSocket::sender() {
            assert_eq!(s.send(&[0x60; 40]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
            assert_eq!(s.send(&[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn extended_err_parsing_is_total() {
        let dst = SocketAddrV4::new(LO, 1);
        for len in 0..32 {
            let _ = parse_extended_err(dst, &[0xff; 32][..len]);
        }
        let mut d = [0u8; 32];
        d[0..4].copy_from_slice(&(libc::EMSGSIZE as u32).to_ne_bytes());
        d[4] = SO_EE_ORIGIN_LOCAL;
        d[8..12].copy_from_slice(&1400u32.to_ne_bytes());
        let r = parse_extended_err(dst, &d).unwrap();
        assert_eq!(
            (r.origin, r.info, r.offender, r.errno),
            (ErrorOrigin::Local, 1400, None, libc::EMSGSIZE)
        );
    }
}
