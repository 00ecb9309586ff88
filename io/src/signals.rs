//! SIGTERM/SIGINT (terminate) and SIGHUP (reload) for a single-threaded event loop: the handlers only set flags
//! and write one byte to a self-pipe, whose read end wakes a [`mio::Poll`].
//!
//! A second SIGTERM or SIGINT while termination is already requested exits the process at once (status 1), so
//! a stuck drain can still be interrupted.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::SigId;

/// Installed signal handlers; dropping this uninstalls them (the signals are then ignored, not defaulted).
#[derive(Debug)]
pub struct Signals {
    terminate: Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
    read: UnixStream,
    ids: Vec<SigId>,
}

impl Signals {
    /// Installs the handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> io::Result<Signals> {
        let terminate = Arc::new(AtomicBool::new(false));
        let hangup = Arc::new(AtomicBool::new(false));
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut s = Signals {
            terminate,
            hangup,
            read,
            ids: Vec::new(),
        };
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // Order matters: the conditional exit must run before the flag is set by this same delivery.
            s.ids.push(signal_hook::flag::register_conditional_shutdown(
                sig,
                1,
                Arc::clone(&s.terminate),
            )?);
            s.ids.push(signal_hook::flag::register(sig, Arc::clone(&s.terminate))?);
        }
        s.ids
            .push(signal_hook::flag::register(libc::SIGHUP, Arc::clone(&s.hangup))?);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            s.ids
                .push(signal_hook::low_level::pipe::register(sig, write.try_clone()?)?);
        }
        Ok(s)
    }

    /// Whether SIGTERM or SIGINT arrived (stays true).
    pub fn terminate_requested(&self) -> bool {
        self.terminate.load(Ordering::SeqCst)
    }

    /// Whether SIGTERM or SIGINT arrived since the last call (clears it; [`Signals::terminate_requested`] sees
    /// only later ones). The drain uses it to tell a second signal from the first.
    pub fn take_terminate(&self) -> bool {
        self.terminate.swap(false, Ordering::SeqCst)
    }

    /// Whether SIGHUP arrived since the last call (clears it).
    pub fn take_hangup(&self) -> bool {
        self.hangup.swap(false, Ordering::SeqCst)
    }

    /// Empties the self-pipe after a wake-up (call when the descriptor polls readable).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            match (&self.read).read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

crate::socket::mio_source!(Signals);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hangup_and_terminate_set_flags_and_wake_the_pipe() {
        let _signals = crate::signal_lock();
        let s = Signals::install().unwrap();
        assert!(!s.terminate_requested());
        assert!(!s.take_hangup());
        signal_hook::low_level::raise(libc::SIGHUP).unwrap();
        assert!(s.take_hangup());
        assert!(!s.take_hangup(), "take clears");
        assert!(!s.terminate_requested());

        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let mut s = s;
        poll.registry()
            .register(&mut s, mio::Token(7), mio::Interest::READABLE)
            .unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(2))).unwrap();
        assert!(events.iter().any(|e| e.token() == mio::Token(7)));
        s.drain();

        // One SIGTERM only: a second would exit the test process by design.
        signal_hook::low_level::raise(libc::SIGTERM).unwrap();
        assert!(s.terminate_requested());
    }
}
