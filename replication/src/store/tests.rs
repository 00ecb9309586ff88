use core::net::Ipv4Addr;
use core::time::Duration;

use mip::binding::{Binding, Encapsulation, TunnelEndpoint};
use mip::roles::{BindingChange, BindingChangeKind, Now};
use mip::time::{Instant, NtpTimestamp};
use proptest::prelude::*;

use super::*;

const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const COA1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const COA2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn now(ms: u64) -> Now {
    Now::new(
        Instant::from_millis(ms),
        NtpTimestamp::from_unix(Duration::from_millis(1_700_000_000_000 + ms)),
    )
}

fn binding(coa: Ipv4Addr, ident: u64, lifetime: u16, at: u64) -> Binding {
    Binding::new(
        coa,
        TunnelEndpoint {
            addr: coa,
            port: 0,
            encapsulation: Encapsulation::IpInIp,
        },
        HA,
        ident,
        lifetime,
        Instant::from_millis(at),
    )
}

fn change(kind: BindingChangeKind, hoa: Ipv4Addr, b: Binding) -> BindingChange {
    BindingChange {
        kind,
        home_address: hoa,
        nai: None,
        binding: b,
    }
}

#[test]
fn local_changes_produce_deltas_and_tombstones() {
    let mut s = ReplicaStore::new(1);
    let b1 = binding(COA1, 10, 600, 0);
    let d1 = s
        .apply_local(
            &change(BindingChangeKind::Created, HOA, b1),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    assert_eq!(d1.version().identification, 10);
    assert_eq!(d1.version().replica, 1);
    assert_eq!(s.len(), 1);
    // Refresh 100 s later with a newer Identification.
    let b2 = binding(COA1, 11, 600, 100_000);
    let d2 = s
        .apply_local(
            &change(BindingChangeKind::Refreshed, HOA, b2),
            IdentOrder::Timestamp,
            now(100_000),
        )
        .unwrap();
    assert!(d2.version() > d1.version());
    let Delta::Binding(r) = &d2 else { panic!() };
    let BindingState::Live(list) = &r.state else { panic!() };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].remaining_ms, 600_000);
    // Removing a binding the store does not hold (old Identification) publishes nothing.
    assert!(
        s.apply_local(
            &change(BindingChangeKind::Removed, HOA, b1),
            IdentOrder::Timestamp,
            now(100_001)
        )
        .is_none()
    );
    // Deregistration: tombstone kept for the binding's remaining lifetime.
    let d3 = s
        .apply_local(
            &change(BindingChangeKind::Removed, HOA, b2),
            IdentOrder::Timestamp,
            now(200_000),
        )
        .unwrap();
    let Delta::Binding(r) = &d3 else { panic!() };
    assert_eq!(r.state, BindingState::Tombstone { remaining_ms: 500_000 });
    assert_eq!((s.len(), s.tombstones()), (0, 1));
    // The refused removal queued the key for the daemon; GC keeps it until taken.
    assert_eq!(s.gc(Instant::from_millis(700_000)), 0);
    let mut out = Vec::new();
    assert_eq!(s.take_remote_changes(Instant::from_millis(200_000), 10, &mut out), 1);
    assert!(matches!(out[0], RemoteChange::Removed { .. }));
    assert_eq!(s.gc(Instant::from_millis(699_999)), 0);
    assert_eq!(s.gc(Instant::from_millis(700_000)), 1);
    assert_eq!((s.len(), s.tombstones(), s.records()), (0, 0, 0));
    assert_eq!(s.digest(), Digest::default());
}

#[test]
fn simultaneous_bindings_share_one_record() {
    let mut s = ReplicaStore::new(1);
    let a = binding(COA1, 10, 600, 0);
    let b = binding(COA2, 11, 600, 0);
    s.apply_local(
        &change(BindingChangeKind::Created, HOA, a),
        IdentOrder::Timestamp,
        now(0),
    )
    .unwrap();
    s.apply_local(
        &change(BindingChangeKind::Created, HOA, b),
        IdentOrder::Timestamp,
        now(1),
    )
    .unwrap();
    assert_eq!(s.bindings_of(&HOA.into(), Instant::from_millis(1)).len(), 2);
    let d = s
        .apply_local(
            &change(BindingChangeKind::Expired, HOA, a),
            IdentOrder::Timestamp,
            now(2),
        )
        .unwrap();
    assert_eq!(d.version().identification, 11);
    let got = s.bindings_of(&HOA.into(), Instant::from_millis(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].care_of_address, COA2);
    assert_eq!(s.len(), 1);
}

#[test]
fn remote_newer_wins_and_stale_local_change_is_refused() {
    let mut a = ReplicaStore::new(1);
    let mut b = ReplicaStore::new(2);
    let old = binding(COA1, 10, 600, 0);
    let new = binding(COA2, 20, 600, 0);
    let d_old = a
        .apply_local(
            &change(BindingChangeKind::Created, HOA, old),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    let d_new = b
        .apply_local(
            &change(BindingChangeKind::Created, HOA, new),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    assert_eq!(a.apply_remote(&d_new, now(1)), Some(Applied::Bindings));
    assert_eq!(b.apply_remote(&d_old, now(1)), None, "older Identification loses");
    assert_eq!(a.apply_remote(&d_new, now(2)), None, "duplicate");
    assert_eq!(a.summary(), b.summary());
    // A remote change is queued for the daemon once, as the current state on the local clock.
    let mut out = Vec::new();
    assert_eq!(a.take_remote_changes(Instant::from_millis(5), 10, &mut out), 1);
    let RemoteChange::Bindings { bindings, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(bindings[0].care_of_address, COA2);
    assert_eq!(bindings[0].expires_at, Instant::from_millis(1 + 600_000));
    // A's role, which has not seen it yet, expires the old binding: refused, and the key is queued again.
    assert!(
        a.apply_local(
            &change(BindingChangeKind::Expired, HOA, old),
            IdentOrder::Timestamp,
            now(6)
        )
        .is_none()
    );
    assert_eq!(a.pending_remote_changes(), 1);
}

#[test]
fn tombstone_beats_older_write_but_not_newer_registration() {
    let mut a = ReplicaStore::new(1);
    let mut b = ReplicaStore::new(2);
    let b10 = binding(COA1, 10, 600, 0);
    let d1 = a
        .apply_local(
            &change(BindingChangeKind::Created, HOA, b10),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    b.apply_remote(&d1, now(0));
    let del = a
        .apply_local(
            &change(BindingChangeKind::Removed, HOA, b10),
            IdentOrder::Timestamp,
            now(5),
        )
        .unwrap();
    // B re-delivers the old write after the tombstone: ignored.
    b.apply_remote(&del, now(6));
    assert_eq!(b.apply_remote(&d1, now(7)), None);
    assert_eq!(b.tombstones(), 1);
    // A newer registration at B wins over the tombstone everywhere.
    let d2 = b
        .apply_local(
            &change(BindingChangeKind::Created, HOA, binding(COA2, 11, 600, 8)),
            IdentOrder::Timestamp,
            now(8),
        )
        .unwrap();
    assert_eq!(a.apply_remote(&d2, now(9)), Some(Applied::Bindings));
    assert_eq!(a.summary(), b.summary());
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn replay_state_orders_by_timestamp_or_hlc() {
    let mut a = ReplicaStore::new(1);
    let mut b = ReplicaStore::new(2);
    let v = |x| ReplayValue {
        last_accepted: Some(x),
        nonce_issued: None,
    };
    let da = a
        .apply_local_replay(HOA, None, 256, v(100), IdentOrder::Timestamp, now(50))
        .unwrap();
    let db = b
        .apply_local_replay(HOA, None, 256, v(101), IdentOrder::Timestamp, now(0))
        .unwrap();
    assert!(
        a.apply_local_replay(HOA, None, 256, v(100), IdentOrder::Timestamp, now(51))
            .is_none()
    );
    a.apply_remote(&db, now(60));
    b.apply_remote(&da, now(60));
    let id = MnId::Home(HOA);
    assert_eq!(a.get_replay(&id, 256).unwrap().state, v(101));
    assert_eq!(b.get_replay(&id, 256).unwrap().state, v(101));
    // Nonces: the later write (HLC) wins whatever the Identification.
    let dn = a
        .apply_local_replay(HOA, None, 256, v(5), IdentOrder::Nonce, now(70))
        .unwrap();
    assert_eq!(b.apply_remote(&dn, now(71)), Some(Applied::Replay));
    assert_eq!(b.get_replay(&id, 256).unwrap().state, v(5));
    assert_eq!(a.summary(), b.summary());
    let mut out = Vec::new();
    b.take_remote_changes(Instant::ZERO, 10, &mut out);
    assert_eq!(out.len(), 1, "one queued change per key");
}

#[test]
fn digest_diff_and_bucket_scan_repair_a_gap() {
    let mut a = ReplicaStore::new(1);
    let mut b = ReplicaStore::new(2);
    for i in 0..2000u32 {
        let hoa = Ipv4Addr::from(0x0a00_0000 + i);
        let d = a
            .apply_local(
                &change(BindingChangeKind::Created, hoa, binding(COA1, u64::from(i) + 1, 600, 0)),
                IdentOrder::Timestamp,
                now(0),
            )
            .unwrap();
        // B misses every 100th delta.
        if i % 100 != 0 {
            b.apply_remote(&d, now(0));
        }
    }
    let diff = a.digest().diff(&b.digest());
    assert!(!diff.is_empty() && diff.len() <= 20, "{}", diff.len());
    let mut cursor = Cursor::default();
    let mut repair = Vec::new();
    while !a.scan(&mut cursor, 7, Some(&diff), Instant::ZERO, &mut repair) {}
    assert!(repair.len() < 2000);
    for d in &repair {
        b.apply_remote(d, now(1));
    }
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.summary(), b.summary());
}

#[test]
fn snapshot_scan_copies_everything_in_chunks() {
    let mut a = ReplicaStore::new(1);
    for i in 0..1000u32 {
        let hoa = Ipv4Addr::from(0x0a00_0000 + i);
        let nai = (i % 3 == 0).then(|| format!("mn{i}@example.com").into_boxed_str());
        let ch = BindingChange {
            kind: BindingChangeKind::Created,
            home_address: hoa,
            nai,
            binding: binding(COA1, 1, 600, 0),
        };
        a.apply_local(&ch, IdentOrder::Timestamp, now(0)).unwrap();
        a.apply_local_replay(hoa, None, 300, ReplayValue::default(), IdentOrder::Timestamp, now(0));
        a.apply_local_replay(
            hoa,
            None,
            300,
            ReplayValue {
                last_accepted: Some(1),
                nonce_issued: None,
            },
            IdentOrder::Timestamp,
            now(0),
        );
    }
    let mut b = ReplicaStore::new(2);
    let mut cursor = Cursor::default();
    let mut chunk = Vec::new();
    let mut chunks = 0;
    loop {
        let done = a.scan(&mut cursor, 64, None, Instant::ZERO, &mut chunk);
        for d in chunk.drain(..) {
            assert!(b.apply_remote(&d, now(0)).is_some());
        }
        chunks += 1;
        if done {
            break;
        }
    }
    assert!(chunks >= 2000 / 64);
    assert_eq!(b.records(), 2000);
    assert_eq!(a.summary(), b.summary());
    assert_eq!(a.digest(), b.digest());
}

// === property tests ===

/// One write made at one replica: a binding change of one of a few nodes.
#[derive(Debug, Clone)]
struct Op {
    replica: usize,
    node: u8,
    kind: u8,
    coa: u8,
    ident: u64,
}

fn op() -> impl Strategy<Value = Op> {
    (0usize..3, 0u8..4, 0u8..4, 0u8..3, 1u64..20).prop_map(|(replica, node, kind, coa, ident)| Op {
        replica,
        node,
        kind,
        coa,
        ident,
    })
}

/// Runs `ops` at 3 replicas (each applying its own writes locally, with remote deltas delivered in between
/// according to `deliveries`), returns every delta produced.
fn produce(ops: &[Op], deliveries: &[(usize, usize)]) -> (Vec<ReplicaStore>, Vec<Delta>) {
    let mut stores: Vec<ReplicaStore> = (1..=3).map(ReplicaStore::new).collect();
    let mut deltas: Vec<Delta> = Vec::new();
    for (t, o) in ops.iter().enumerate() {
        let ms = t as u64;
        // Some earlier deltas reach some replicas before this write.
        for &(who, which) in deliveries.iter().filter(|(_, w)| *w < deltas.len()).take(2) {
            let d = deltas[which % deltas.len()].clone();
            stores[who % 3].apply_remote(&d, now(ms));
        }
        let hoa = Ipv4Addr::new(10, 0, 0, o.node);
        let coa = Ipv4Addr::new(192, 0, 2, o.coa);
        let s = &mut stores[o.replica];
        let kind = match o.kind {
            0 => BindingChangeKind::Created,
            1 => BindingChangeKind::Refreshed,
            2 => BindingChangeKind::Removed,
            _ => BindingChangeKind::Expired,
        };
        // Removals name a binding the replica has, when it has one.
        let b = match kind {
            BindingChangeKind::Removed | BindingChangeKind::Expired => s
                .bindings_of(&hoa.into(), Instant::from_millis(ms))
                .first()
                .copied()
                .unwrap_or_else(|| binding(coa, o.ident, 600, ms)),
            _ => binding(coa, o.ident, 600, ms),
        };
        if let Some(d) = s.apply_local(&change(kind, hoa, b), IdentOrder::Timestamp, now(ms)) {
            deltas.push(d);
        }
        let rv = ReplayValue {
            last_accepted: Some(o.ident),
            nonce_issued: None,
        };
        if let Some(d) = s.apply_local_replay(hoa, None, 256, rv, IdentOrder::Timestamp, now(ms)) {
            deltas.push(d);
        }
    }
    (stores, deltas)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever order and duplication the deltas arrive in, every replica ends with the same store.
    #[test]
    fn any_delivery_order_converges(
        ops in prop::collection::vec(op(), 1..40),
        deliveries in prop::collection::vec((0usize..3, 0usize..64), 0..40),
        orders in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..120), 3),
    ) {
        let (mut stores, deltas) = produce(&ops, &deliveries);
        for (i, s) in stores.iter_mut().enumerate() {
            // A random sequence (with duplicates) followed by every delta once: nothing is lost.
            for idx in &orders[i] {
                s.apply_remote(&deltas[idx.index(deltas.len())], now(1000));
            }
            for d in deltas.iter().rev() {
                s.apply_remote(d, now(1000));
            }
        }
        prop_assert_eq!(stores[0].summary(), stores[1].summary());
        prop_assert_eq!(stores[1].summary(), stores[2].summary());
        prop_assert_eq!(stores[0].digest(), stores[1].digest());
        prop_assert_eq!(stores[1].digest(), stores[2].digest());
        // The result is each key's largest version among all deltas.
        let mut best: std::collections::BTreeMap<RecordKey, Version> = Default::default();
        for d in &deltas {
            let k = match d {
                Delta::Binding(r) => RecordKey::Binding(r.id().unwrap()),
                Delta::Replay(r) => RecordKey::Replay(r.id().unwrap(), r.spi),
            };
            let e = best.entry(k).or_default();
            *e = (*e).max(d.version());
        }
        let got: Vec<(RecordKey, Version)> = stores[0].summary().into_iter().map(|(k, v, _)| (k, v)).collect();
        let want: Vec<(RecordKey, Version)> = best.into_iter().collect();
        prop_assert_eq!(got, want);
    }

    /// A delta older than the stored version never changes the store.
    #[test]
    fn stale_delta_never_overrides(ops in prop::collection::vec(op(), 1..30)) {
        let (_, deltas) = produce(&ops, &[]);
        let mut s = ReplicaStore::new(9);
        for d in &deltas {
            s.apply_remote(d, now(0));
        }
        let before = s.summary();
        let digest = s.digest();
        for d in &deltas {
            prop_assert!(s.apply_remote(d, now(1)).is_none());
        }
        prop_assert_eq!(s.summary(), before);
        prop_assert_eq!(s.digest(), digest);
    }
}

// === memory ===

fn fill_count() -> u32 {
    if cfg!(debug_assertions) { 200_000 } else { 1_000_000 }
}

/// Bytes per node with one care-of binding each, keyed by home address: slot table 96 B (version 24, NAI pointer
/// 16, home address, flags, one inline binding 40 + tag) + home index ~19 B (2^21 buckets × 9 B for 10^6).
#[test]
fn heap_bytes_per_record() {
    let n = fill_count();
    let mut s = ReplicaStore::with_capacity(1, n as usize);
    for i in 0..n {
        let hoa = Ipv4Addr::from(0x0a00_0000 + i);
        let mut b = binding(COA1, u64::from(i) + 1, 600, 0);
        b.tunnel.encapsulation = Encapsulation::UdpIpInIp;
        b.tunnel.port = 4500;
        s.apply_local(
            &change(BindingChangeKind::Created, hoa, b),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    }
    let per = s.approx_heap_bytes() / s.len();
    println!(
        "replica store: {per} heap bytes per record for {n} records (slot entry {} B)",
        size_of::<Option<BindingEntry>>()
    );
    assert!(per <= 160, "{per} bytes per record");
    assert_eq!(size_of::<Stored>(), 40);
}

/// A traced delta hands its traceparent out with the key's change, once; an untraced later change of the same
/// key (before the daemon took it) drops it; a refused (older) delta changes nothing.
#[test]
fn traced_remote_changes_carry_their_traceparent() {
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut a = ReplicaStore::new(1);
    let mut b = ReplicaStore::new(2);
    let d1 = a
        .apply_local(
            &change(BindingChangeKind::Created, HOA, binding(COA1, 10, 600, 0)),
            IdentOrder::Timestamp,
            now(0),
        )
        .unwrap();
    assert_eq!(b.apply_remote_traced(&d1, now(1), Some(TP)), Some(Applied::Bindings));
    // The same delta again is not applied and keeps the trace.
    assert_eq!(b.apply_remote_traced(&d1, now(1), None), None);
    let mut out = Vec::new();
    assert_eq!(b.take_remote_changes_traced(now(2).instant, 10, &mut out), 1);
    assert!(
        matches!(&out[..], [(RemoteChange::Bindings { .. }, Some(t))] if &**t == TP),
        "{out:?}"
    );
    // Taken once.
    out.clear();
    assert_eq!(b.take_remote_changes_traced(now(2).instant, 10, &mut out), 0);
    // Traced, then overwritten by an untraced newer change before the daemon looked: no trace.
    let d2 = a
        .apply_local(
            &change(BindingChangeKind::Created, HOA, binding(COA2, 11, 600, 3)),
            IdentOrder::Timestamp,
            now(3),
        )
        .unwrap();
    let d3 = a
        .apply_local(
            &change(BindingChangeKind::Removed, HOA, binding(COA2, 11, 600, 3)),
            IdentOrder::Timestamp,
            now(4),
        )
        .unwrap();
    b.apply_remote_traced(&d2, now(5), Some(TP)).unwrap();
    b.apply_remote(&d3, now(5)).unwrap();
    assert_eq!(b.take_remote_changes_traced(now(6).instant, 10, &mut out), 1);
    assert!(matches!(&out[..], [(_, None)]), "{out:?}");
    assert!(b.traces.is_empty());
}
