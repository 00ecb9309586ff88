//! Layer-3 TUN devices (`IFF_TUN | IFF_NO_PI`): every read returns one IP packet the kernel routed to the device,
//! every write injects one IP packet as if it arrived on it. The device exists as long as its descriptor is open
//! (it is not made persistent): dropping the [`Tun`] removes it, with its addresses and routes.
//!
//! The descriptor is non-blocking: `read` returns [`io::ErrorKind::WouldBlock`] when no packet is queued. Register
//! the [`Tun`] with a [`mio::Poll`] to wait.
//!
//! `unsafe` here: the `TUNSETIFF` and `SIOCSIFMTU` ioctls (each with a `// SAFETY:` comment).

use core::ffi::c_char;
use core::net::{Ipv4Addr, SocketAddrV4};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use socket2::{Domain, Socket, Type};

use crate::batch::{RecvBatch, RecvMeta, ipv4_header_addresses};
use crate::net::{self, NetError};

/// Path of the TUN clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'/' && *b != b':');
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not a valid interface name (1-15 printable characters, no '/' or ':')"),
        ));
    }
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers, sockaddrs and a pointer);
    // all-zero bytes is a valid value.
    let mut ifr: libc::ifreq = unsafe { core::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as c_char;
    }
    Ok(ifr)
}

fn name_of(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr.ifr_name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tun {
    /// Creates TUN device `name` (a `%d` in the name lets the kernel pick a number) and sets its MTU (0 keeps
    /// the kernel's default of 1500). The device starts down and without addresses: see [`Tun::up`],
    /// [`Tun::add_address`]. Needs CAP_NET_ADMIN.
    pub fn open(name: &str, mtu: u16) -> io::Result<Tun> {
        let mut ifr = ifreq_for(name)?;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(|e| io::Error::new(e.kind(), format!("{TUN_DEVICE}: {e}")))?;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a live, initialised `ifreq` exclusively
        // borrowed for the call, and `file` is an open /dev/net/tun descriptor.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        let tun = Tun {
            file,
            name: name_of(&ifr),
        };
        if mtu > 0 {
            tun.set_mtu(mtu)?;
        }
        Ok(tun)
    }

    /// The device's name (as the kernel assigned it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf` (a packet longer than `buf` is cut to fit). `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one complete IP packet.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }

    /// Reads up to `batch.capacity()` packets (one `read` each; TUN has no batched read), filling `src`, `dst`
    /// and `ttl` from each IPv4 header. Returns how many were read; `WouldBlock` when none was queued.
    pub fn read_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        let (data, slot, meta) = batch.parts_mut();
        let mut n = 0;
        let mut err = None;
        for (chunk, m) in data.chunks_mut(slot).zip(meta.iter_mut()) {
            match self.read(chunk) {
                Ok(len) => {
                    let (src, dst, ttl) = chunk
                        .get(..len)
                        .and_then(ipv4_header_addresses)
                        .map_or((Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None), |(s, d, t)| {
                            (s, d, Some(t))
                        });
                    // A read that fills the slot exactly may have been cut: the IPv4 total length tells.
                    let total = chunk
                        .get(2..4)
                        .and_then(|b| <[u8; 2]>::try_from(b).ok())
                        .map_or(0, |b| usize::from(u16::from_be_bytes(b)));
                    *m = RecvMeta {
                        len,
                        src: SocketAddrV4::new(src, 0),
                        dst: SocketAddrV4::new(dst, 0),
                        ttl,
                        ifindex: 0,
                        truncated: ttl.is_some() && total > len,
                    };
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        batch.set_filled(n);
        match err {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// Sets the device's MTU (SIOCSIFMTU; at least 68 for IPv4).
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        let mut ifr = ifreq_for(&self.name)?;
        ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        // SAFETY: SIOCSIFMTU reads one `struct ifreq` (name and `ifru_mtu`); `ifr` is live and initialised for
        // the call, `sock` an open socket.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as _, &mut ifr) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("SIOCSIFMTU {} {mtu}: {e}", self.name)));
        }
        Ok(())
    }

    /// Sets the device up (`ip link set NAME up`).
    pub fn up(&self) -> Result<(), NetError> {
        net::link_up(&self.name)
    }

    /// Adds (or replaces) an address (`ip addr replace ADDR/LEN dev NAME`).
    pub fn add_address(&self, addr: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
        net::addr_add(&self.name, addr, prefix_len)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

crate::socket::mio_source!(Tun);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in ["", "a/b", "a:b", "0123456789abcdef", "with space", ".", ".."] {
            let e = Tun::open(bad, 1400).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        let ifr = ifreq_for("mip%d").unwrap();
        assert_eq!(name_of(&ifr), "mip%d");
    }
}
