//! Preallocated datagram batches for `recvmmsg`/`sendmmsg` (and TUN reads): one contiguous buffer cut into
//! fixed-size slots, allocated once and reused for the life of the daemon. Nothing here allocates after `new`.
//!
//! Sizing: slots are [`BUFFER_SIZE`] (2048) bytes by default. The data plane assumes an MTU of at most 2000 bytes
//! (jumbo frames are not supported); a datagram longer than its slot is cut by the kernel (`MSG_TRUNC`), counted
//! in [`RecvBatch::truncated`] and never handed out. Batches hold at most [`MAX_BATCH`] datagrams; 32 is the
//! default ([`DEFAULT_BATCH`]).

use core::net::{Ipv4Addr, SocketAddrV4};

use mip::roles::{Datagram, Transmit};

/// Most datagrams one batch (and so one `recvmmsg`/`sendmmsg` call) carries.
pub const MAX_BATCH: usize = 64;
/// The batch size the daemons use unless they have a reason not to.
pub const DEFAULT_BATCH: usize = 32;
/// Bytes per slot: room for any packet of an MTU ≤ 2000 path plus encapsulation headers.
pub const BUFFER_SIZE: usize = 2048;
/// Largest slot accepted (a whole IPv4 datagram).
pub const MAX_BUFFER_SIZE: usize = 65_536;

const UNSPECIFIED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

/// What the kernel told us about one received datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMeta {
    pub(crate) len: usize,
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) ttl: Option<u8>,
    pub(crate) ifindex: u32,
    pub(crate) truncated: bool,
}

impl RecvMeta {
    const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        src: UNSPECIFIED,
        dst: UNSPECIFIED,
        ttl: None,
        ifindex: 0,
        truncated: false,
    };
}

/// Buffers for receiving up to `capacity` datagrams in one call.
#[derive(Debug)]
pub struct RecvBatch {
    data: Box<[u8]>,
    slot: usize,
    meta: Box<[RecvMeta]>,
    filled: usize,
    truncated: usize,
}

impl Default for RecvBatch {
    /// [`DEFAULT_BATCH`] slots of [`BUFFER_SIZE`] bytes.
    fn default() -> Self {
        RecvBatch::new(DEFAULT_BATCH, BUFFER_SIZE)
    }
}

impl RecvBatch {
    /// `count` slots (clamped to 1..=[`MAX_BATCH`]) of `size` bytes (clamped to 1..=[`MAX_BUFFER_SIZE`]).
    pub fn new(count: usize, size: usize) -> Self {
        let count = count.clamp(1, MAX_BATCH);
        let slot = size.clamp(1, MAX_BUFFER_SIZE);
        RecvBatch {
            data: vec![0; count * slot].into_boxed_slice(),
            slot,
            meta: vec![RecvMeta::EMPTY; count].into_boxed_slice(),
            filled: 0,
            truncated: 0,
        }
    }

    /// How many datagrams fit.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Bytes per slot (longer datagrams are truncated and dropped).
    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// Datagrams received by the last call, truncated ones included.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether the last call received nothing.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Datagrams of the last call that did not fit their slot (`MSG_TRUNC`); [`iter`](Self::iter) skips them.
    pub fn truncated(&self) -> usize {
        self.truncated
    }

    /// Forgets the last call's datagrams.
    pub fn clear(&mut self) {
        self.filled = 0;
        self.truncated = 0;
    }

    /// The complete datagrams of the last call, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Received<'_>> + '_ {
        (0..self.filled).filter_map(|i| self.get(i))
    }

    /// Datagram `i` of the last call; `None` past the end or if it was truncated.
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.filled {
            return None;
        }
        let m = self.meta.get(i)?;
        if m.truncated {
            return None;
        }
        let start = i.checked_mul(self.slot)?;
        let payload = self.data.get(start..start.checked_add(m.len.min(self.slot))?)?;
        Some(Received {
            payload,
            src: m.src,
            dst: m.dst,
            ttl: m.ttl,
            ifindex: m.ifindex,
        })
    }

    /// The slot buffers (one chunk per slot, `capacity` of them) and their metadata, for the syscall layer.
    pub(crate) fn parts_mut(&mut self) -> (&mut [u8], usize, &mut [RecvMeta]) {
        (&mut self.data, self.slot, &mut self.meta)
    }

    /// Records how many slots the syscall layer filled.
    pub(crate) fn set_filled(&mut self, filled: usize) {
        self.filled = filled.min(self.meta.len());
        self.truncated = self.meta.iter().take(self.filled).filter(|m| m.truncated).count();
    }
}

/// One received datagram, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The UDP payload; for raw sockets and TUN devices the whole IPv4 packet, header included.
    pub payload: &'a [u8],
    /// Source address and port (port 0 for raw sockets and TUN devices).
    pub src: SocketAddrV4,
    /// The local address it was sent to (IP_PKTINFO) and the socket's port; the socket's bound address when
    /// IP_PKTINFO is off. For raw sockets and TUN devices: the IPv4 header's destination, port 0.
    pub dst: SocketAddrV4,
    /// IP TTL it arrived with (IP_RECVTTL; the header's TTL for raw sockets and TUN devices), when known.
    pub ttl: Option<u8>,
    /// Interface index it arrived on (IP_PKTINFO), 0 when unknown.
    pub ifindex: u32,
}

impl<'a> Received<'a> {
    /// The datagram as the `mip` roles take it; an unknown TTL is passed as 0.
    pub fn datagram(&self) -> Datagram<'a> {
        Datagram {
            src: self.src,
            dst: self.dst,
            ttl: self.ttl.unwrap_or(0),
            payload: self.payload,
        }
    }
}

/// Why a datagram could not be queued in a [`SendBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Every slot is in use: send the batch first.
    #[error("send batch is full")]
    Full,
    /// The datagram is longer than a slot.
    #[error("datagram longer than the batch slot size")]
    TooLong,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SendMeta {
    pub(crate) len: usize,
    pub(crate) dst: SocketAddrV4,
    pub(crate) src: Option<Ipv4Addr>,
    pub(crate) ttl: Option<u8>,
}

impl SendMeta {
    const EMPTY: SendMeta = SendMeta {
        len: 0,
        dst: UNSPECIFIED,
        src: None,
        ttl: None,
    };
}

/// Datagrams queued for one `sendmmsg` call, copied into preallocated slots (or written there in place with
/// [`push_with`](Self::push_with)).
#[derive(Debug)]
pub struct SendBatch {
    data: Box<[u8]>,
    slot: usize,
    meta: Box<[SendMeta]>,
    len: usize,
}

impl Default for SendBatch {
    /// [`DEFAULT_BATCH`] slots of [`BUFFER_SIZE`] bytes.
    fn default() -> Self {
        SendBatch::new(DEFAULT_BATCH, BUFFER_SIZE)
    }
}

impl SendBatch {
    /// `count` slots (clamped to 1..=[`MAX_BATCH`]) of `size` bytes (clamped to 1..=[`MAX_BUFFER_SIZE`]).
    pub fn new(count: usize, size: usize) -> Self {
        let count = count.clamp(1, MAX_BATCH);
        let slot = size.clamp(1, MAX_BUFFER_SIZE);
        SendBatch {
            data: vec![0; count * slot].into_boxed_slice(),
            slot,
            meta: vec![SendMeta::EMPTY; count].into_boxed_slice(),
            len: 0,
        }
    }

    /// How many datagrams fit.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every slot is in use.
    pub fn is_full(&self) -> bool {
        self.len >= self.meta.len()
    }

    /// Forgets every queued datagram.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues a copy of `payload` for `dst` (source address and TTL chosen by the kernel).
    pub fn push(&mut self, payload: &[u8], dst: SocketAddrV4) -> Result<(), PushError> {
        self.push_from(payload, None, dst, None)
    }

    /// Queues a copy of `payload` for `dst`, sent from local address `src` (IP_PKTINFO) with IP TTL `ttl` when
    /// given. Raw sockets ignore `src`, `ttl` and `dst` (the packet's header has them).
    pub fn push_from(
        &mut self,
        payload: &[u8],
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        ttl: Option<u8>,
    ) -> Result<(), PushError> {
        if payload.len() > self.slot {
            return Err(PushError::TooLong);
        }
        self.push_with(src, dst, ttl, |buf| {
            let n = payload.len().min(buf.len());
            if let (Some(d), Some(s)) = (buf.get_mut(..n), payload.get(..n)) {
                d.copy_from_slice(s);
            }
            n
        })
    }

    /// Queues what `write` puts into the next slot (it gets the whole slot and returns how many bytes it wrote;
    /// a return value above the slot size is clamped, 0 queues an empty datagram).
    pub fn push_with(
        &mut self,
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        ttl: Option<u8>,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), PushError> {
        let i = self.len;
        let start = i.checked_mul(self.slot).ok_or(PushError::Full)?;
        let end = start.checked_add(self.slot).ok_or(PushError::Full)?;
        let (Some(buf), Some(meta)) = (self.data.get_mut(start..end), self.meta.get_mut(i)) else {
            return Err(PushError::Full);
        };
        let len = write(buf).min(self.slot);
        *meta = SendMeta { len, dst, src, ttl };
        self.len += 1;
        Ok(())
    }

    /// Queues a role's [`Transmit`] (its source address is used as the IP_PKTINFO source).
    pub fn push_transmit(&mut self, t: &Transmit) -> Result<(), PushError> {
        let src = (!t.src.ip().is_unspecified()).then_some(*t.src.ip());
        self.push_from(&t.payload, src, t.dst, t.ttl)
    }

    /// Datagram `i`: payload and destination.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddrV4)> {
        let (payload, m) = self.entry(i)?;
        Some((payload, m.dst))
    }

    pub(crate) fn entry(&self, i: usize) -> Option<(&[u8], &SendMeta)> {
        if i >= self.len {
            return None;
        }
        let m = self.meta.get(i)?;
        let start = i.checked_mul(self.slot)?;
        let payload = self.data.get(start..start.checked_add(m.len)?)?;
        Some((payload, m))
    }

    /// Drops the first `n` queued datagrams and moves the rest to the front (after a partial send: the
    /// outcome's `sent + failed` were consumed, `unsent` remain).
    pub fn remove_front(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        let rest = self.len - n;
        let slot = self.slot;
        self.data.copy_within(n * slot..self.len * slot, 0);
        self.meta.copy_within(n..self.len, 0);
        self.len = rest;
    }
}

/// What a batched send did. `sent + failed + unsent` is the batch length; `sent + failed` datagrams from the
/// front were consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams the kernel refused one by one (no route, message too long, refused by a firewall, …); they
    /// are skipped, not retried.
    pub failed: usize,
    /// Datagrams not attempted because the socket's send buffer was full (`EWOULDBLOCK`).
    pub unsent: usize,
    /// The errno of the last failure, if any.
    pub last_errno: Option<i32>,
}

impl SendOutcome {
    /// The last failure as an [`std::io::Error`].
    pub fn last_error(&self) -> Option<std::io::Error> {
        self.last_errno.map(std::io::Error::from_raw_os_error)
    }
}

/// Reads the addresses and TTL of the IPv4 header at the start of `packet` (raw sockets, TUN): (src, dst, ttl).
pub(crate) fn ipv4_header_addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    if packet.first()? >> 4 != 4 || packet.len() < 20 {
        return None;
    }
    let ttl = *packet.get(8)?;
    let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    Some((Ipv4Addr::from(src), Ipv4Addr::from(dst), ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, last), port)
    }

    #[test]
    fn clamps_sizes() {
        let b = RecvBatch::new(0, 0);
        assert_eq!((b.capacity(), b.slot_size()), (1, 1));
        let b = RecvBatch::new(1000, 1 << 20);
        assert_eq!((b.capacity(), b.slot_size()), (MAX_BATCH, MAX_BUFFER_SIZE));
        let b = SendBatch::default();
        assert_eq!((b.capacity(), b.slot_size()), (DEFAULT_BATCH, BUFFER_SIZE));
    }

    #[test]
    fn recv_bookkeeping() {
        let mut b = RecvBatch::new(4, 16);
        {
            let (data, slot, meta) = b.parts_mut();
            assert_eq!(slot, 16);
            for (i, (chunk, m)) in data.chunks_mut(slot).zip(meta.iter_mut()).enumerate() {
                chunk.fill(i as u8);
                *m = RecvMeta {
                    len: i + 1,
                    src: sa(i as u8, 1000),
                    dst: sa(100, 434),
                    ttl: Some(64),
                    ifindex: 3,
                    truncated: i == 1,
                };
            }
        }
        b.set_filled(3);
        assert_eq!(b.len(), 3);
        assert_eq!(b.truncated(), 1);
        let got: Vec<_> = b.iter().map(|r| (r.payload.to_vec(), r.src)).collect();
        assert_eq!(got, vec![(vec![0], sa(0, 1000)), (vec![2, 2, 2], sa(2, 1000))]);
        assert!(b.get(1).is_none(), "truncated datagrams are not handed out");
        assert!(b.get(3).is_none(), "past the filled count");
        let d = b.get(2).unwrap().datagram();
        assert_eq!((d.ttl, d.dst), (64, sa(100, 434)));
        b.set_filled(99);
        assert_eq!(b.len(), 4);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.iter().count(), 0);
    }

    #[test]
    fn send_bookkeeping() {
        let mut b = SendBatch::new(3, 8);
        assert_eq!(b.push(&[1; 9], sa(1, 1)), Err(PushError::TooLong));
        b.push(&[1, 1], sa(1, 1)).unwrap();
        b.push_from(&[2; 8], Some(Ipv4Addr::LOCALHOST), sa(2, 2), Some(255))
            .unwrap();
        b.push_with(None, sa(3, 3), None, |buf| {
            buf[..3].copy_from_slice(&[3, 3, 3]);
            1000
        })
        .unwrap();
        assert!(b.is_full());
        assert_eq!(b.push(&[4], sa(4, 4)), Err(PushError::Full));
        assert_eq!(b.get(0), Some((&[1u8, 1][..], sa(1, 1))));
        assert_eq!(b.get(2).map(|(p, _)| p.len()), Some(8), "clamped to the slot");
        let (_, m) = b.entry(1).unwrap();
        assert_eq!((m.src, m.ttl), (Some(Ipv4Addr::LOCALHOST), Some(255)));
        b.remove_front(1);
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(0), Some((&[2u8; 8][..], sa(2, 2))));
        assert_eq!(b.get(1).map(|(p, d)| (&p[..3], d)), Some((&[3u8, 3, 3][..], sa(3, 3))));
        assert!(b.get(2).is_none());
        b.remove_front(10);
        assert!(b.is_empty());
        let t = Transmit {
            src: sa(9, 434),
            dst: sa(8, 434),
            ttl: None,
            payload: vec![7; 4],
        };
        b.push_transmit(&t).unwrap();
        let (p, m) = b.entry(0).unwrap();
        assert_eq!((p, m.src, m.dst), (&[7u8; 4][..], Some(*sa(9, 0).ip()), sa(8, 434)));
    }

    #[test]
    fn header_addresses() {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[8] = 17;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            ipv4_header_addresses(&h),
            Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17))
        );
        assert_eq!(ipv4_header_addresses(&h[..19]), None);
        h[0] = 0x65;
        assert_eq!(ipv4_header_addresses(&h), None);
        assert_eq!(ipv4_header_addresses(&[]), None);
    }
}
