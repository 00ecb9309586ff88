//! Change notifications for the Mobile Node daemon: an rtnetlink socket subscribed to link, IPv4 address, IPv4
//! route and neighbour events. Nothing is parsed: any message means "something changed", and the daemon re-reads
//! what it needs with [`crate::net`] (default gateway and its MAC, source address, addresses). A receive-buffer
//! overrun (`ENOBUFS`) also counts as a change, since events were lost.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::Socket;

/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH`.
pub const DEFAULT_GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_NEIGH) as u32;

/// Receives rtnetlink change notifications.
#[derive(Debug)]
pub struct NetWatcher {
    sock: Socket,
    poll: Poll,
    events: Events,
    buf: Box<[u8]>,
    overruns: u64,
}

impl NetWatcher {
    /// Subscribes to [`DEFAULT_GROUPS`] in the calling thread's network namespace.
    pub fn new() -> io::Result<NetWatcher> {
        NetWatcher::with_groups(DEFAULT_GROUPS)
    }

    /// Subscribes to the given RTMGRP_* bits.
    pub fn with_groups(groups: u32) -> io::Result<NetWatcher> {
        let sock = crate::socket::rtnetlink_socket(groups)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&sock.as_raw_fd()), Token(0), Interest::READABLE)?;
        Ok(NetWatcher {
            sock,
            poll,
            events: Events::with_capacity(4),
            buf: vec![0; 32 * 1024].into_boxed_slice(),
            overruns: 0,
        })
    }

    /// Waits up to `timeout` for a change; `true` if something changed (every pending notification is consumed).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.drain()? {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut self.events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.drain()? {
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    }

    /// After a change, keeps consuming notifications until none arrived for `quiet` (or `max` passed): one
    /// hand-off produces a burst (link, addresses, routes, neighbours), and re-reading state once is enough.
    pub fn settle(&mut self, quiet: Duration, max: Duration) -> io::Result<()> {
        let end = Instant::now() + max;
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            if !self.wait(quiet.min(left))? {
                break;
            }
        }
        Ok(())
    }

    /// Consumes every pending notification without waiting; `true` if there was any (for use with an outer
    /// [`mio::Poll`]: register this watcher, call `drain` when it is readable).
    pub fn drain(&mut self) -> io::Result<bool> {
        let mut changed = false;
        loop {
            match (&self.sock).read(&mut self.buf) {
                Ok(0) => return Ok(changed),
                Ok(_) => changed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overruns += 1;
                    changed = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How often the kernel dropped notifications because we read too slowly.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }
}

impl AsRawFd for NetWatcher {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for NetWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

crate::socket::mio_source!(NetWatcher);
