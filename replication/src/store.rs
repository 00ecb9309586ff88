//! The replicated store: the latest version of every record, tombstones, the digest, and the list of keys the
//! daemon still has to mirror.
//!
//! Pure (no I/O, no clock): every call takes `now`. Memory-lean for a million nodes: records live in a slot table
//! (one care-of binding inline, 96 bytes per node) indexed by home address (`u32` slot per `Ipv4Addr`) or by
//! NAI; digests are kept up to date incrementally (256 `u64` sums), so [`ReplicaStore::digest`] is a copy.

use core::cmp::Reverse;
use core::net::Ipv4Addr;
use core::time::Duration;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use mip::binding::{Binding, BindingKey, Encapsulation, TunnelEndpoint};
use mip::roles::{BindingChange, BindingChangeKind, Now};
use mip::time::Instant;

use crate::record::{
    Applied, BindingRecord, BindingState, CareOf, Delta, MnId, RemoteChange, ReplayRecord, ReplayValue, millis,
};
use crate::version::{Hlc, IdentOrder, Version, unix_ms};

/// Number of digest buckets (the top 8 bits of a key's hash).
pub const DIGEST_BUCKETS: usize = 256;

/// Default minimum time a tombstone is kept ([`ReplicaStore::set_tombstone_ttl`]).
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// A set of digest buckets (a 256-bit bitmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BucketSet([u64; 4]);

impl BucketSet {
    /// No bucket.
    pub const fn new() -> Self {
        BucketSet([0; 4])
    }

    /// Every bucket.
    pub const fn all() -> Self {
        BucketSet([u64::MAX; 4])
    }

    /// Adds bucket `b`.
    pub fn insert(&mut self, b: u8) {
        if let Some(w) = self.0.get_mut(usize::from(b >> 6)) {
            *w |= 1 << (b & 63);
        }
    }

    /// Whether bucket `b` is in the set.
    pub fn contains(&self, b: u8) -> bool {
        self.0
            .get(usize::from(b >> 6))
            .is_some_and(|w| w & (1 << (b & 63)) != 0)
    }

    /// Number of buckets in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Buckets in both sets.
    #[must_use]
    pub fn intersection(&self, other: &BucketSet) -> BucketSet {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a &= b;
        }
        out
    }
}

/// A summary of a store: per bucket, the wrapping sum of the hashes of its records' (key, version, tombstone).
/// Two stores with the same records have the same digest whatever order they were built in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    /// Bucket sums.
    pub buckets: Box<[u64; DIGEST_BUCKETS]>,
    /// Number of records (bindings, tombstones and replay records).
    pub records: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buckets: Box::new([0; DIGEST_BUCKETS]),
            records: 0,
        }
    }
}

impl Digest {
    /// Buckets whose sums differ: the records to resend so the other side can catch up.
    pub fn diff(&self, other: &Digest) -> BucketSet {
        let mut set = BucketSet::new();
        for (i, (a, b)) in self.buckets.iter().zip(other.buckets.iter()).enumerate() {
            if a != b {
                set.insert(u8::try_from(i).unwrap_or(u8::MAX));
            }
        }
        set
    }

    fn add(&mut self, key_hash: u64, record_hash: u64) {
        if let Some(b) = self.buckets.get_mut(bucket_of(key_hash)) {
            *b = b.wrapping_add(record_hash);
        }
    }

    fn sub(&mut self, key_hash: u64, record_hash: u64) {
        if let Some(b) = self.buckets.get_mut(bucket_of(key_hash)) {
            *b = b.wrapping_sub(record_hash);
        }
    }
}

fn bucket_of(key_hash: u64) -> usize {
    (key_hash >> 56) as usize
}

/// Where a snapshot or repair scan stands ([`ReplicaStore::scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    table: u8,
    slot: u32,
}

/// A record's key, for comparisons between stores ([`ReplicaStore::summary`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    /// A node's bindings.
    Binding(MnId),
    /// A security association's replay state.
    Replay(MnId, u32),
}

// === hashing (stable across processes and builds: FNV-1a and the splitmix64 finaliser) ===

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn id_hash(tag: u8, id: &MnId) -> u64 {
    match id {
        MnId::Home(a) => fnv(fnv(FNV_OFFSET, &[tag, b'H']), &a.octets()),
        MnId::Nai(n) => fnv(fnv(FNV_OFFSET, &[tag, b'N']), n.as_bytes()),
    }
}

fn binding_key_hash(id: &MnId) -> u64 {
    mix(id_hash(0, id))
}

fn replay_key_hash(id: &MnId, spi: u32) -> u64 {
    mix(fnv(id_hash(1, id), &spi.to_be_bytes()))
}

fn record_hash(key_hash: u64, v: Version, tombstone: bool) -> u64 {
    let h = mix(key_hash ^ v.identification);
    let h = mix(h ^ v.hlc);
    mix(h ^ u64::from(v.replica) ^ (u64::from(tombstone) << 32))
}

// === compact storage ===

const REVERSE: u8 = 1;
const HALF_BOUND: u8 = 2;

/// One care-of binding as stored (40 bytes): the expiry is a local instant in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    identification: u64,
    /// Local expiry in milliseconds (`u64::MAX` = never).
    expires_at: u64,
    care_of_address: Ipv4Addr,
    tunnel_addr: Ipv4Addr,
    home_agent: Ipv4Addr,
    tunnel_port: u16,
    lifetime: u16,
    keepalive: u16,
    encapsulation: Encapsulation,
    flags: u8,
}

impl Stored {
    fn from_binding(b: &Binding) -> Stored {
        Stored {
            identification: b.identification,
            expires_at: if b.lifetime == mip::binding::INFINITE_LIFETIME {
                u64::MAX
            } else {
                b.expires_at.millis()
            },
            care_of_address: b.care_of_address,
            tunnel_addr: b.tunnel.addr,
            home_agent: b.home_agent,
            tunnel_port: b.tunnel.port,
            lifetime: b.lifetime,
            keepalive: b.keepalive_interval,
            encapsulation: b.tunnel.encapsulation,
            flags: (u8::from(b.reverse_tunnel) * REVERSE) | (u8::from(b.half_bound) * HALF_BOUND),
        }
    }

    fn from_care_of(c: &CareOf, now: Instant) -> Stored {
        Stored {
            identification: c.identification,
            expires_at: crate::record::expires_at(c.lifetime, c.remaining_ms, now),
            care_of_address: c.care_of_address,
            tunnel_addr: c.tunnel.addr,
            home_agent: c.home_agent,
            tunnel_port: c.tunnel.port,
            lifetime: c.lifetime,
            keepalive: c.keepalive_interval,
            encapsulation: c.tunnel.encapsulation,
            flags: (u8::from(c.reverse_tunnel) * REVERSE) | (u8::from(c.half_bound) * HALF_BOUND),
        }
    }

    fn to_care_of(self, now: Instant) -> CareOf {
        CareOf {
            care_of_address: self.care_of_address,
            tunnel: TunnelEndpoint {
                addr: self.tunnel_addr,
                port: self.tunnel_port,
                encapsulation: self.encapsulation,
            },
            home_agent: self.home_agent,
            identification: self.identification,
            lifetime: self.lifetime,
            remaining_ms: crate::record::remaining_ms(self.lifetime, self.expires_at, now),
            keepalive_interval: self.keepalive,
            reverse_tunnel: self.flags & REVERSE != 0,
            half_bound: self.flags & HALF_BOUND != 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    One(Stored),
    Many(Box<[Stored]>),
    Tombstone { gc_at: u64 },
}

impl Content {
    fn list(&self) -> &[Stored] {
        match self {
            Content::One(s) => core::slice::from_ref(s),
            Content::Many(v) => v,
            Content::Tombstone { .. } => &[],
        }
    }

    fn from_list(mut list: Vec<Stored>) -> Option<Content> {
        match list.len() {
            0 => None,
            1 => list.pop().map(Content::One),
            _ => Some(Content::Many(list.into_boxed_slice())),
        }
    }

    fn is_tombstone(&self) -> bool {
        matches!(self, Content::Tombstone { .. })
    }
}

#[derive(Debug, Clone)]
struct BindingEntry {
    version: Version,
    nai: Option<Box<str>>,
    home_address: Ipv4Addr,
    dirty: bool,
    content: Content,
}

impl BindingEntry {
    fn id(&self) -> Option<MnId> {
        MnId::of(self.home_address, self.nai.as_deref())
    }

    fn record(&self, now: Instant) -> BindingRecord {
        let state = match &self.content {
            Content::Tombstone { gc_at } => BindingState::Tombstone {
                remaining_ms: gc_at.saturating_sub(now.millis()),
            },
            c => BindingState::Live(c.list().iter().map(|s| s.to_care_of(now)).collect()),
        };
        BindingRecord {
            home_address: self.home_address,
            nai: self.nai.clone(),
            version: self.version,
            state,
        }
    }
}

#[derive(Debug, Clone)]
struct ReplayEntry {
    version: Version,
    nai: Option<Box<str>>,
    home_address: Ipv4Addr,
    spi: u32,
    dirty: bool,
    value: ReplayValue,
}

impl ReplayEntry {
    fn record(&self) -> ReplayRecord {
        ReplayRecord {
            home_address: self.home_address,
            nai: self.nai.clone(),
            spi: self.spi,
            state: self.value,
            version: self.version,
        }
    }
}

/// A slot table with a free list: stable `u32` indices (snapshot cursors survive inserts).
#[derive(Debug, Clone)]
struct Slots<E> {
    slots: Vec<Option<E>>,
    free: Vec<u32>,
}

impl<E> Slots<E> {
    fn with_capacity(n: usize) -> Self {
        Slots {
            slots: Vec::with_capacity(n),
            free: Vec::new(),
        }
    }

    fn get(&self, i: u32) -> Option<&E> {
        self.slots.get(i as usize).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut E> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }

    fn insert(&mut self, e: E) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(i as usize) {
                *s = Some(e);
                return Some(i);
            }
            return None;
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Some(e));
        Some(i)
    }

    fn remove(&mut self, i: u32) -> Option<E> {
        let e = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(e)
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Option<E>>() + self.free.capacity() * 4
    }
}

/// Bytes hashbrown allocates for `capacity` elements of `elem` bytes (buckets are a power of two, 7/8 full).
fn map_bytes(capacity: usize, elem: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity.saturating_mul(8) / 7).next_power_of_two();
    buckets * (elem + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Bindings,
    Replay,
}

/// The replicated binding cache of one replica: the latest [`Version`] of every node's bindings (or its
/// tombstone) and of every security association's replay state.
///
/// * [`apply_local`](Self::apply_local) / [`apply_local_replay`](Self::apply_local_replay): a change this
///   replica made; returns the [`Delta`] to publish (or `None` when the store already holds something newer);
/// * [`apply_remote`](Self::apply_remote): a delta, snapshot or repair record from a peer; kept only if its
///   version is larger (idempotent, commutative); the key is queued for the daemon
///   ([`take_remote_changes`](Self::take_remote_changes));
/// * [`digest`](Self::digest), [`Digest::diff`] and [`scan`](Self::scan) with a bucket filter: anti-entropy;
/// * [`scan`](Self::scan) without filter: snapshots;
/// * [`gc`](Self::gc): forgets expired tombstones.
#[derive(Debug, Clone)]
pub struct ReplicaStore {
    replica_id: u32,
    hlc: Hlc,
    tombstone_ttl_ms: u64,
    bindings: Slots<BindingEntry>,
    b_home: HashMap<Ipv4Addr, u32>,
    b_nai: HashMap<Box<str>, u32>,
    replay: Slots<ReplayEntry>,
    r_home: HashMap<(Ipv4Addr, u32), u32>,
    r_nai: HashMap<(Box<str>, u32), u32>,
    digest: Digest,
    /// Keys changed by peers and not yet taken by the daemon (each at most once: the entry's `dirty` flag).
    dirty: VecDeque<(Table, u32)>,
    /// The `traceparent` of the last remote change of a dirty key, when that change was a traced delta
    /// ([`apply_remote_traced`](Self::apply_remote_traced)); at most one per entry of `dirty`.
    traces: HashMap<(Table, u32), Box<str>>,
    /// Tombstones by forget time (lazy: an entry that changed since is skipped).
    tombstone_heap: BinaryHeap<Reverse<(u64, u32)>>,
    live: usize,
    tombstones: usize,
}

impl ReplicaStore {
    /// An empty store of replica `replica_id`.
    pub fn new(replica_id: u32) -> Self {
        Self::with_capacity(replica_id, 0)
    }

    /// An empty store with room for `nodes` mobile nodes keyed by home address.
    pub fn with_capacity(replica_id: u32, nodes: usize) -> Self {
        ReplicaStore {
            replica_id,
            hlc: Hlc::new(),
            tombstone_ttl_ms: millis(DEFAULT_TOMBSTONE_TTL),
            bindings: Slots::with_capacity(nodes),
            b_home: HashMap::with_capacity(nodes),
            b_nai: HashMap::new(),
            replay: Slots::with_capacity(0),
            r_home: HashMap::new(),
            r_nai: HashMap::new(),
            digest: Digest::default(),
            dirty: VecDeque::new(),
            traces: HashMap::new(),
            tombstone_heap: BinaryHeap::new(),
            live: 0,
            tombstones: 0,
        }
    }

    /// This replica's id.
    pub fn replica_id(&self) -> u32 {
        self.replica_id
    }

    /// Minimum time a tombstone is kept (default [`DEFAULT_TOMBSTONE_TTL`]); a deleted binding's tombstone is kept
    /// at least as long as the binding had left.
    pub fn set_tombstone_ttl(&mut self, ttl: Duration) {
        self.tombstone_ttl_ms = millis(ttl);
    }

    /// The hybrid logical clock's last value.
    pub fn hlc(&self) -> u64 {
        self.hlc.last()
    }

    /// Nodes with live bindings.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no node has a live binding.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Tombstones kept.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Replay records kept.
    pub fn replay_len(&self) -> usize {
        self.r_home.len() + self.r_nai.len()
    }

    /// Records of every kind (what a snapshot sends).
    pub fn records(&self) -> usize {
        self.live + self.tombstones + self.replay_len()
    }

    /// Keys waiting in [`take_remote_changes`](Self::take_remote_changes).
    pub fn pending_remote_changes(&self) -> usize {
        self.dirty.len()
    }

    fn b_find(&self, id: &MnId) -> Option<u32> {
        match id {
            MnId::Home(a) => self.b_home.get(a).copied(),
            MnId::Nai(n) => self.b_nai.get(&**n).copied(),
        }
    }

    fn r_find(&self, id: &MnId, spi: u32) -> Option<u32> {
        match id {
            MnId::Home(a) => self.r_home.get(&(*a, spi)).copied(),
            MnId::Nai(n) => self.r_nai.get(&(n.clone(), spi)).copied(),
        }
    }

    /// The current record of node `id` (bindings or tombstone).
    pub fn get(&self, id: &MnId, now: Instant) -> Option<BindingRecord> {
        let slot = self.b_find(id)?;
        self.bindings.get(slot).map(|e| e.record(now))
    }

    /// The node's bindings on the local clock (empty for a tombstone or an unknown node).
    pub fn bindings_of(&self, key: &BindingKey, now: Instant) -> Vec<Binding> {
        let id = match key {
            BindingKey::Home(a) => MnId::Home(*a),
            BindingKey::Nai(n) => MnId::Nai(n.clone()),
        };
        self.b_find(&id)
            .and_then(|s| self.bindings.get(s))
            .map(|e| {
                e.content
                    .list()
                    .iter()
                    .map(|s| s.to_care_of(now).to_binding(now))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current replay record of (`id`, `spi`).
    pub fn get_replay(&self, id: &MnId, spi: u32) -> Option<ReplayRecord> {
        let slot = self.r_find(id, spi)?;
        self.replay.get(slot).map(ReplayEntry::record)
    }

    /// The current digest.
    pub fn digest(&self) -> Digest {
        self.digest.clone()
    }

    /// Records a change this replica made (an output of the proxy role) and returns the delta to publish, or
    /// `None` when there is nothing to publish: the change is older than what the store holds (a peer's newer
    /// write got here first; the key is then queued in [`take_remote_changes`](Self::take_remote_changes) so the
    /// daemon re-reads it), removes a binding the store no longer has, or has no key.
    ///
    /// The record of a node is the list of its care-of bindings: `Created`/`Refreshed` set the binding of that
    /// care-of address, `Removed`/`Expired` remove the binding with that care-of address and Identification; a
    /// node left without bindings becomes a tombstone, kept for the larger of the binding's remaining lifetime
    /// and the tombstone TTL. The version is (largest Identification in the record, or the current one with
    /// [`IdentOrder::Nonce`]; a fresh HLC value; this replica).
    pub fn apply_local(&mut self, change: &BindingChange, order: IdentOrder, now: Now) -> Option<Delta> {
        let id = MnId::of(change.home_address, change.nai.as_deref())?;
        let b = Stored::from_binding(&change.binding);
        let slot = self.b_find(&id);
        let current = slot.and_then(|s| self.bindings.get(s));
        let mut list: Vec<Stored> = current.map(|e| e.content.list().to_vec()).unwrap_or_default();
        let current_version = current.map(|e| e.version);
        let mut removed_remaining = 0;
        match change.kind {
            BindingChangeKind::Created | BindingChangeKind::Refreshed => {
                match list.iter_mut().find(|x| x.care_of_address == b.care_of_address) {
                    Some(x) if x.identification > b.identification => return self.stale(slot),
                    Some(x) => *x = b,
                    None => list.push(b),
                }
            }
            BindingChangeKind::Removed | BindingChangeKind::Expired => {
                let pos = list
                    .iter()
                    .position(|x| x.care_of_address == b.care_of_address && x.identification == b.identification);
                let Some(pos) = pos else {
                    return self.stale(slot);
                };
                removed_remaining = b.expires_at.saturating_sub(now.instant.millis());
                list.remove(pos);
            }
        }
        let identification = match order {
            IdentOrder::Timestamp => list.iter().map(|x| x.identification).fold(b.identification, u64::max),
            IdentOrder::Nonce => current_version.map_or(0, |v| v.identification),
        };
        let version = Version {
            identification,
            hlc: self.hlc.tick(unix_ms(now)),
            replica: self.replica_id,
        };
        if current_version.is_some_and(|cv| version <= cv) {
            return self.stale(slot);
        }
        let content = Content::from_list(list).unwrap_or(Content::Tombstone {
            gc_at: now
                .instant
                .millis()
                .saturating_add(removed_remaining.max(self.tombstone_ttl_ms)),
        });
        let slot = self.b_write(
            slot,
            &id,
            change.home_address,
            change.nai.as_deref(),
            version,
            content,
            false,
        )?;
        self.bindings.get(slot).map(|e| Delta::Binding(e.record(now.instant)))
    }

    /// Records a replay-state change this replica made (the proxy accepted a request, or learnt a nonce) and
    /// returns the delta to publish; `None` when the value is unchanged, older than the stored one, or has no
    /// key. With [`IdentOrder::Timestamp`] the version's Identification is `last_accepted`, so of two concurrent
    /// accepts the later timestamp wins; with nonces the HLC decides.
    pub fn apply_local_replay(
        &mut self,
        home_address: Ipv4Addr,
        nai: Option<&str>,
        spi: u32,
        value: ReplayValue,
        order: IdentOrder,
        now: Now,
    ) -> Option<Delta> {
        let id = MnId::of(home_address, nai)?;
        let slot = self.r_find(&id, spi);
        let current = slot.and_then(|s| self.replay.get(s));
        if current.is_some_and(|e| e.value == value) {
            return None;
        }
        let current_version = current.map(|e| e.version);
        let identification = match order {
            IdentOrder::Timestamp => value.last_accepted.unwrap_or(0),
            IdentOrder::Nonce => current_version.map_or(0, |v| v.identification),
        };
        let version = Version {
            identification,
            hlc: self.hlc.tick(unix_ms(now)),
            replica: self.replica_id,
        };
        if current_version.is_some_and(|cv| version <= cv) {
            if let Some(s) = slot {
                self.mark_dirty(Table::Replay, s);
            }
            return None;
        }
        let slot = self.r_write(slot, &id, home_address, nai, spi, version, value, false)?;
        self.replay.get(slot).map(|e| Delta::Replay(e.record()))
    }

    /// A local change lost to a newer stored write: the daemon must re-read the key.
    fn stale(&mut self, slot: Option<u32>) -> Option<Delta> {
        if let Some(s) = slot {
            self.mark_dirty(Table::Bindings, s);
        }
        None
    }

    fn mark_dirty(&mut self, table: Table, slot: u32) {
        let flag = match table {
            Table::Bindings => self.bindings.get_mut(slot).map(|e| &mut e.dirty),
            Table::Replay => self.replay.get_mut(slot).map(|e| &mut e.dirty),
        };
        if let Some(d) = flag
            && !*d
        {
            *d = true;
            self.dirty.push_back((table, slot));
        }
    }

    /// Applies a record received from a peer (delta, snapshot or repair) if its version is larger than the stored
    /// one; `None` when it was not (older, duplicate) or is invalid (no key). The key is then queued for
    /// [`take_remote_changes`](Self::take_remote_changes). The HLC observes the record's version either way.
    pub fn apply_remote(&mut self, delta: &Delta, now: Now) -> Option<Applied> {
        self.apply_remote_traced(delta, now, None)
    }

    /// [`apply_remote`](Self::apply_remote) of a delta published in the trace `traceparent` (W3C): when it is
    /// applied, [`take_remote_changes_traced`](Self::take_remote_changes_traced) hands the traceparent out with the
    /// key's change (a later untraced change of the same key, before the daemon took it, drops it).
    pub fn apply_remote_traced(&mut self, delta: &Delta, now: Now, traceparent: Option<&str>) -> Option<Applied> {
        let (applied, table, slot) = self.apply_remote_at(delta, now)?;
        match traceparent {
            Some(t) => {
                self.traces.insert((table, slot), t.into());
            }
            None => {
                self.traces.remove(&(table, slot));
            }
        }
        Some(applied)
    }

    /// [`apply_remote`](Self::apply_remote), also returning where the record went.
    fn apply_remote_at(&mut self, delta: &Delta, now: Now) -> Option<(Applied, Table, u32)> {
        self.hlc.observe(delta.version().hlc);
        let now = now.instant;
        match delta {
            Delta::Binding(r) => {
                let id = r.id()?;
                let slot = self.b_find(&id);
                if let Some(e) = slot.and_then(|s| self.bindings.get(s))
                    && r.version <= e.version
                {
                    return None;
                }
                let (content, applied) = match &r.state {
                    BindingState::Live(list) => {
                        let list = list.iter().map(|c| Stored::from_care_of(c, now)).collect();
                        match Content::from_list(list) {
                            Some(c) => (c, Applied::Bindings),
                            None => (
                                Content::Tombstone {
                                    gc_at: now.millis().saturating_add(self.tombstone_ttl_ms),
                                },
                                Applied::Removed,
                            ),
                        }
                    }
                    BindingState::Tombstone { remaining_ms } => (
                        Content::Tombstone {
                            gc_at: now.millis().saturating_add(*remaining_ms),
                        },
                        Applied::Removed,
                    ),
                };
                let s = self.b_write(slot, &id, r.home_address, r.nai.as_deref(), r.version, content, true)?;
                Some((applied, Table::Bindings, s))
            }
            Delta::Replay(r) => {
                let id = r.id()?;
                let slot = self.r_find(&id, r.spi);
                if let Some(e) = slot.and_then(|s| self.replay.get(s))
                    && r.version <= e.version
                {
                    return None;
                }
                let s = self.r_write(
                    slot,
                    &id,
                    r.home_address,
                    r.nai.as_deref(),
                    r.spi,
                    r.version,
                    r.state,
                    true,
                )?;
                Some((Applied::Replay, Table::Replay, s))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn b_write(
        &mut self,
        slot: Option<u32>,
        id: &MnId,
        home_address: Ipv4Addr,
        nai: Option<&str>,
        version: Version,
        content: Content,
        dirty: bool,
    ) -> Option<u32> {
        let kh = binding_key_hash(id);
        let tomb = content.is_tombstone();
        let gc_at = match content {
            Content::Tombstone { gc_at } => Some(gc_at),
            _ => None,
        };
        let slot = match slot.and_then(|s| self.bindings.get_mut(s).map(|e| (s, e))) {
            Some((s, e)) => {
                let old = record_hash(kh, e.version, e.content.is_tombstone());
                if e.content.is_tombstone() {
                    self.tombstones -= 1;
                } else {
                    self.live -= 1;
                }
                e.version = version;
                e.content = content;
                if !home_address.is_unspecified() {
                    e.home_address = home_address;
                }
                self.digest.sub(kh, old);
                s
            }
            None => {
                let e = BindingEntry {
                    version,
                    nai: nai.map(Into::into),
                    home_address,
                    dirty: false,
                    content,
                };
                let s = self.bindings.insert(e)?;
                match id {
                    MnId::Home(a) => self.b_home.insert(*a, s),
                    MnId::Nai(n) => self.b_nai.insert(n.clone(), s),
                };
                self.digest.records += 1;
                s
            }
        };
        if tomb {
            self.tombstones += 1;
        } else {
            self.live += 1;
        }
        if let Some(at) = gc_at {
            self.tombstone_heap.push(Reverse((at, slot)));
        }
        self.digest.add(kh, record_hash(kh, version, tomb));
        if dirty {
            self.mark_dirty(Table::Bindings, slot);
        }
        Some(slot)
    }

    #[allow(clippy::too_many_arguments)]
    fn r_write(
        &mut self,
        slot: Option<u32>,
        id: &MnId,
        home_address: Ipv4Addr,
        nai: Option<&str>,
        spi: u32,
        version: Version,
        value: ReplayValue,
        dirty: bool,
    ) -> Option<u32> {
        let kh = replay_key_hash(id, spi);
        let slot = match slot.and_then(|s| self.replay.get_mut(s).map(|e| (s, e))) {
            Some((s, e)) => {
                let old = record_hash(kh, e.version, false);
                e.version = version;
                e.value = value;
                if !home_address.is_unspecified() {
                    e.home_address = home_address;
                }
                self.digest.sub(kh, old);
                s
            }
            None => {
                let e = ReplayEntry {
                    version,
                    nai: nai.map(Into::into),
                    home_address,
                    spi,
                    dirty: false,
                    value,
                };
                let s = self.replay.insert(e)?;
                match id {
                    MnId::Home(a) => self.r_home.insert((*a, spi), s),
                    MnId::Nai(n) => self.r_nai.insert((n.clone(), spi), s),
                };
                self.digest.records += 1;
                s
            }
        };
        self.digest.add(kh, record_hash(kh, version, false));
        if dirty {
            self.mark_dirty(Table::Replay, slot);
        }
        Some(slot)
    }

    /// Moves up to `max` keys changed by peers into `out`, each as its **current** state on the local clock
    /// (a key changed several times appears once). Returns how many were added. The daemon calls it when the
    /// replicator wakes it and mirrors each change into its own binding cache and replay state.
    pub fn take_remote_changes(&mut self, now: Instant, max: usize, out: &mut Vec<RemoteChange>) -> usize {
        self.take_remote(now, max, |c, _| out.push(c))
    }

    /// [`take_remote_changes`](Self::take_remote_changes) with the `traceparent` of each change that came in a
    /// traced delta ([`apply_remote_traced`](Self::apply_remote_traced)).
    pub fn take_remote_changes_traced(
        &mut self,
        now: Instant,
        max: usize,
        out: &mut Vec<(RemoteChange, Option<Box<str>>)>,
    ) -> usize {
        self.take_remote(now, max, |c, t| out.push((c, t)))
    }

    fn take_remote(&mut self, now: Instant, max: usize, mut push: impl FnMut(RemoteChange, Option<Box<str>>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some((table, slot)) = self.dirty.pop_front() else {
                break;
            };
            let change = match table {
                Table::Bindings => self.bindings.get_mut(slot).map(|e| {
                    e.dirty = false;
                    match &e.content {
                        Content::Tombstone { .. } => RemoteChange::Removed {
                            home_address: e.home_address,
                            nai: e.nai.clone(),
                        },
                        c => RemoteChange::Bindings {
                            home_address: e.home_address,
                            nai: e.nai.clone(),
                            bindings: c.list().iter().map(|s| s.to_care_of(now).to_binding(now)).collect(),
                        },
                    }
                }),
                Table::Replay => self.replay.get_mut(slot).map(|e| {
                    e.dirty = false;
                    RemoteChange::Replay {
                        home_address: e.home_address,
                        nai: e.nai.clone(),
                        spi: e.spi,
                        state: e.value,
                    }
                }),
            };
            let trace = self.traces.remove(&(table, slot));
            if let Some(c) = change {
                push(c, trace);
                n += 1;
            }
        }
        n
    }

    /// Forgets tombstones whose time has come (except those the daemon has not taken yet); returns how many.
    pub fn gc(&mut self, now: Instant) -> usize {
        let mut n = 0;
        let mut keep = Vec::new();
        while let Some(Reverse((at, slot))) = self.tombstone_heap.peek().copied() {
            if at > now.millis() {
                break;
            }
            self.tombstone_heap.pop();
            let Some(e) = self.bindings.get(slot) else {
                continue;
            };
            if e.content != (Content::Tombstone { gc_at: at }) {
                continue; // changed since: a stale heap entry
            }
            if e.dirty {
                keep.push(Reverse((at, slot)));
                continue;
            }
            let Some(id) = e.id() else {
                continue;
            };
            let kh = binding_key_hash(&id);
            let h = record_hash(kh, e.version, true);
            match &id {
                MnId::Home(a) => self.b_home.remove(a),
                MnId::Nai(nai) => self.b_nai.remove(&**nai),
            };
            self.bindings.remove(slot);
            self.digest.sub(kh, h);
            self.digest.records -= 1;
            self.tombstones -= 1;
            n += 1;
        }
        self.tombstone_heap.extend(keep);
        n
    }

    /// Appends up to `max` records to `out` starting at `cursor` (bindings and tombstones first, then replay
    /// records), only those in `buckets` if given; returns `true` when the scan is complete. The cursor is a
    /// slot position, so the store may change between calls (a snapshot taken in chunks under a lock): records
    /// changed meanwhile are sent by their deltas anyway.
    pub fn scan(
        &self,
        cursor: &mut Cursor,
        max: usize,
        buckets: Option<&BucketSet>,
        now: Instant,
        out: &mut Vec<Delta>,
    ) -> bool {
        let mut n = 0;
        while cursor.table == 0 {
            if n >= max {
                return false;
            }
            let Some(slot) = self.bindings.slots.get(cursor.slot as usize) else {
                *cursor = Cursor { table: 1, slot: 0 };
                break;
            };
            cursor.slot += 1;
            let Some(e) = slot else { continue };
            if let Some(set) = buckets {
                let Some(id) = e.id() else { continue };
                if !set.contains(bucket_of(binding_key_hash(&id)) as u8) {
                    continue;
                }
            }
            out.push(Delta::Binding(e.record(now)));
            n += 1;
        }
        loop {
            if n >= max {
                return false;
            }
            let Some(slot) = self.replay.slots.get(cursor.slot as usize) else {
                return true;
            };
            cursor.slot += 1;
            let Some(e) = slot else { continue };
            if let Some(set) = buckets {
                let Some(id) = MnId::of(e.home_address, e.nai.as_deref()) else {
                    continue;
                };
                if !set.contains(bucket_of(replay_key_hash(&id, e.spi)) as u8) {
                    continue;
                }
            }
            out.push(Delta::Replay(e.record()));
            n += 1;
        }
    }

    /// Every record's (key, version, tombstone), sorted: two stores hold the same records iff their summaries are
    /// equal (tests, debugging).
    pub fn summary(&self) -> Vec<(RecordKey, Version, bool)> {
        let mut v: Vec<(RecordKey, Version, bool)> = self
            .bindings
            .slots
            .iter()
            .flatten()
            .filter_map(|e| Some((RecordKey::Binding(e.id()?), e.version, e.content.is_tombstone())))
            .chain(self.replay.slots.iter().flatten().filter_map(|e| {
                let id = MnId::of(e.home_address, e.nai.as_deref())?;
                Some((RecordKey::Replay(id, e.spi), e.version, false))
            }))
            .collect();
        v.sort();
        v
    }

    /// Heap bytes held, estimated from capacities and element sizes (allocator overhead not counted): slot
    /// tables, hash indices (hashbrown: power-of-two buckets, one control byte each), NAI strings (entry and
    /// index), simultaneous-binding lists, the queue of changed keys, the tombstone heap and the digest.
    pub fn approx_heap_bytes(&self) -> usize {
        let nai_bytes: usize = self
            .bindings
            .slots
            .iter()
            .flatten()
            .map(|e| {
                e.nai.as_ref().map_or(0, |n| 2 * n.len())
                    + match &e.content {
                        Content::Many(v) => v.len() * size_of::<Stored>(),
                        _ => 0,
                    }
            })
            .sum::<usize>()
            + self
                .replay
                .slots
                .iter()
                .flatten()
                .map(|e| e.nai.as_ref().map_or(0, |n| 2 * n.len()))
                .sum::<usize>();
        self.bindings.heap_bytes()
            + self.replay.heap_bytes()
            + map_bytes(self.b_home.capacity(), size_of::<(Ipv4Addr, u32)>())
            + map_bytes(self.b_nai.capacity(), size_of::<(Box<str>, u32)>())
            + map_bytes(self.r_home.capacity(), size_of::<((Ipv4Addr, u32), u32)>())
            + map_bytes(self.r_nai.capacity(), size_of::<((Box<str>, u32), u32)>())
            + nai_bytes
            + self.dirty.capacity() * size_of::<(Table, u32)>()
            + self.tombstone_heap.capacity() * size_of::<Reverse<(u64, u32)>>()
            + size_of::<[u64; DIGEST_BUCKETS]>()
    }
}

#[cfg(test)]
mod tests;
