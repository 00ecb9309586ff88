//! Simulation tests (issue 3, item 7): MN ↔ (FA) ↔ proxy ↔ HA entirely in memory, on one simulated clock, over a
//! lossy, reordering, duplicating network with two NATs and an adversary. The simulator (`sim/mod.rs`) checks the
//! safety invariants after every event:
//! 1. every proxy binding matches an accepting reply the HA sent, a request the proxy relayed and a request the
//!    node sent (home address, care-of address, Identification); every HA binding matches a relayed request;
//! 2. an unauthenticated injection draws only `Drop`s (an FA, which cannot check MN-HA, may relay it to the proxy,
//!    which must then drop it);
//! 3. the node never reuses an Identification (timestamps strictly increase; nonce retransmissions are identical);
//! 4. no lifetime grows: replies the node takes, proxy bindings and HA bindings stay within what was requested;
//! 5. the proxy sends only to the configured HA or to a source a request came from (never an open relay);
//! 6. while the node holds a live registration, the proxy binds it at that care-of address.
//!
//! Run with `--nocapture` to see the hand-off figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod sim;

use std::collections::BTreeMap;

use sim::*;

/// Per-hop loss rates the seeded loops cycle through.
const LOSSES: [f64; 5] = [0.0, 0.05, 0.10, 0.15, 0.20];

/// Parameters for loop iteration `seed`: loss 0–20 %, HA Parameter extension or static mapping, timestamps or
/// nonces, with or without an FA-HA SA; the node never gives up (`max_attempts: 0`) so that convergence, not the
/// give-up policy, is what the loops measure.
fn params(seed: u64) -> Params {
    let mut p = Params::new(seed);
    p.loss = LOSSES[(seed % 5) as usize];
    p.nonce = seed % 4 == 3;
    p.fa_ha = seed % 3 == 1;
    p.max_attempts = 0;
    p
}

/// Requests a registration needs with no loss: one, plus the 133 that hands out the first nonce.
fn lossless_requests(p: &Params, first: bool) -> u64 {
    1 + u64::from(p.nonce && first)
}

/// Latest time after which a registration from `net` has converged, except with probability below 1e-9: the
/// retransmission schedule up to the attempt count that makes every round trip fail that unlikely, plus the last
/// round trip and slack for the 1/s rate limit and Identification resyncs.
fn bound_ms(p: &Params, net: Net) -> u64 {
    let k = attempts_for(p.loss, net.round_trip_hops(), 1e-9) + u32::from(p.nonce);
    schedule_ms(k, 1000, 30_000, p.lifetime) + u64::from(net.round_trip_hops()) * p.delay_ms.1 + 5_000
}

/// Runs until the node, the proxy and the HA agree on `net`; fails the run past [`bound_ms`].
fn converge(s: &mut Sim, net: Net) -> u64 {
    let start = s.now();
    let deadline = start + bound_ms(&s.p, net);
    match s.run_until_pred(deadline, |s| s.converged_at(net)) {
        Some(t) => t - start,
        None => {
            let b = deadline - start;
            s.fail(&format!("no convergence at {} within the bound of {b} ms", net.name()))
        }
    }
}

/// Converges, then runs a little longer (every datagram in flight lands) and checks it still holds.
fn converge_and_settle(s: &mut Sim, net: Net) -> u64 {
    let t = converge(s, net);
    s.run_for(2_000);
    if !s.converged_at(net) {
        s.run_until_pred(s.now() + bound_ms(&s.p, net), |s| s.converged_at(net));
        s.assert_converged(net);
    }
    t
}

#[test]
fn first_registration_in_a() {
    for seed in 0..25 {
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        s.attach(Net::A);
        converge_and_settle(&mut s, Net::A);
        let h = s.obs.handoffs[0];
        if p.loss == 0.0 {
            assert_eq!(h.requests, lossless_requests(&p, true), "{}", p.describe());
            assert!(h.ms < 4 * 40 + 10, "{}: {} ms", p.describe(), h.ms);
        }
        // Scenario A: IP-in-IP to the co-located care-of address, the UDP Tunnel Request declined (no NAT).
        assert_eq!(s.obs.keepalives.0, 0);
    }
}

#[test]
fn renewal_keeps_the_binding_alive() {
    let mut report = Vec::new();
    for seed in 0..20 {
        let net = [Net::A, Net::B, Net::C1][(seed % 3) as usize];
        let mut p = params(seed);
        p.lifetime = 1800;
        let mut s = Sim::new(p.clone());
        s.attach(net);
        converge(&mut s, net);
        // Six lifetimes: past 80 % of the lifetime at least five times (NAT bindings are capped at 60 s).
        let granted = if net.nat().is_some() {
            p.nat_max_lifetime
        } else {
            p.lifetime
        };
        s.run_for(6 * u64::from(granted) * 1000 + 500);
        converge_and_settle(&mut s, net);
        let registrations = s.obs.registered.len() as u64;
        let lapses = s.obs.proxy_expired.len();
        // A lapse needs every attempt inside the renewal window to fail: (1 − (1 − loss)^hops)^attempts per
        // renewal. Where that makes a lapse anywhere in the run less likely than 1e-4, none may happen.
        let renew_lead_ms = (u64::from(granted) * 200).max(5_000).min(u64::from(granted) * 500);
        let attempts = (1..64)
            .take_while(|k| schedule_ms(*k, 1000, 30_000, p.lifetime) + 2 * 200 < renew_lead_ms)
            .count() as i32;
        let per_round_trip = 1.0 - (1.0 - p.loss).powi(net.round_trip_hops() as i32);
        let expected_lapses = per_round_trip.powi(attempts) * registrations as f64;
        if expected_lapses < 1e-4 {
            assert!(
                registrations >= 6,
                "{}: only {registrations} registrations",
                p.describe()
            );
            assert_eq!(
                lapses,
                0,
                "{}: binding lapsed at {:?}",
                p.describe(),
                s.obs.proxy_expired
            );
            assert!(s.obs.deregistered.is_empty(), "{}", p.describe());
            assert!(s.obs.ha_expired.is_empty(), "{}", p.describe());
        }
        if p.loss == 0.0 {
            // Every renewal took exactly one request.
            assert_eq!(s.obs.mn_sends, registrations + u64::from(p.nonce), "{}", p.describe());
        }
        report.push(format!(
            "  {:<3} {}: {registrations} registrations, {attempts} attempts per renewal window, {lapses} lapses \
             (expected number {expected_lapses:.2e})",
            net.name(),
            p.describe()
        ));
    }
    println!("renewals:\n{}", report.join("\n"));
}

/// An Eulerian circuit of the complete directed graph on A, B, C1, C2: every ordered pair exactly once.
const CIRCUIT: [Net; 13] = [
    Net::A,
    Net::B,
    Net::A,
    Net::C1,
    Net::A,
    Net::C2,
    Net::B,
    Net::C1,
    Net::B,
    Net::C2,
    Net::C1,
    Net::C2,
    Net::A,
];

#[test]
fn handoff_between_every_pair() {
    let mut figures: BTreeMap<(Net, Net), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let mut lossless: BTreeMap<(Net, Net), Vec<u64>> = BTreeMap::new();
    for seed in 0..20 {
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        s.attach(CIRCUIT[0]);
        converge_and_settle(&mut s, CIRCUIT[0]);
        for w in CIRCUIT.windows(2) {
            let dwell = s.rand_range(5_000, 20_000);
            s.run_for(dwell);
            s.attach(w[1]);
            converge_and_settle(&mut s, w[1]);
            let h = *s.obs.handoffs.last().unwrap();
            assert_eq!((h.from, h.to), (w[0], w[1]));
            if p.loss == 0.0 {
                assert_eq!(h.requests, 1, "{}: {h:?}", p.describe());
                lossless.entry((h.from, h.to)).or_default().push(h.ms);
            }
            let f = figures.entry((h.from, h.to)).or_default();
            f.0.push(h.requests);
            f.1.push(h.ms);
        }
    }
    assert_eq!(figures.len(), 12);
    println!("hand-offs (20 seeds, loss 0-20 %): median requests, median ms; lossless median ms");
    for ((from, to), (mut reqs, mut ms)) in figures {
        let mut l = lossless.remove(&(from, to)).unwrap_or_default();
        println!(
            "  {:>2} -> {:<2}: {} req, {:>5} ms (max {} req, {} ms); lossless {} ms",
            from.name(),
            to.name(),
            median(&mut reqs),
            median(&mut ms),
            reqs.iter().max().unwrap(),
            ms.iter().max().unwrap(),
            median(&mut l),
        );
    }
}

#[test]
fn nat_change_without_local_address_change() {
    let mut ms = Vec::new();
    for seed in 0..20 {
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        s.attach(Net::C1);
        converge_and_settle(&mut s, Net::C1);
        let before = s.expected_tunnel(Net::C1).unwrap();
        // A keepalive period or two through NAT 1.
        s.run_for(45_000);
        s.nat_change();
        let t = converge_and_settle(&mut s, Net::C1Nat2);
        ms.push(t);
        let after = s.proxy_binding();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].0, PRIV_C1, "same care-of address");
        assert_eq!(
            after[0].1.addr,
            NAT2_PUB,
            "{}: tunnel follows the new NAT",
            p.describe()
        );
        assert_ne!(after[0].1, before);
        if p.loss == 0.0 {
            assert_eq!(s.obs.handoffs.last().unwrap().requests, 1, "{}", p.describe());
        }
        // Keepalives now go through NAT 2 and are answered by the data plane at the new mapping.
        let answered = s.obs.keepalives.1;
        s.run_for(50_000);
        s.assert_converged(Net::C1Nat2);
        if p.loss == 0.0 {
            assert!(s.obs.keepalives.1 > answered, "{}", p.describe());
        }
    }
    println!("NAT change: median {} ms to re-register", median(&mut ms));
}

#[test]
fn deregistration() {
    for seed in 0..20 {
        let net = [Net::A, Net::C1, Net::B][(seed % 3) as usize];
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        s.attach(net);
        converge_and_settle(&mut s, net);
        s.run_for(10_000);
        let lapses = s.obs.proxy_expired.len();
        s.deregister();
        let deadline = s.now() + bound_ms(&p, net);
        let done = s.run_until_pred(deadline, |s| {
            s.mn.state() == mip::roles::mn::MnState::Idle && s.proxy_binding().is_empty() && !s.ha_bound()
        });
        if done.is_none() {
            s.fail(&format!(
                "deregistration from {} incomplete: node {:?}, proxy {:?}, HA bound {}, failures {:?}",
                net.name(),
                s.mn.state(),
                s.proxy_binding(),
                s.ha_bound(),
                s.obs.failed
            ));
        }
        assert!(
            !s.obs.deregistered.is_empty(),
            "{} on {}: the node never reported Deregistered; failures {:?}",
            p.describe(),
            net.name(),
            s.obs.failed
        );
        // Deregistered by the accepted deregistration (a NAT binding's 60 s may run out first when many
        // requests are lost, which is no failure of the deregistration).
        assert_eq!(
            s.obs.mn_outcomes.last(),
            Some(&mip::wire::ReplyCode::Accepted),
            "{}",
            p.describe()
        );
        if p.loss == 0.0 {
            assert_eq!(s.obs.proxy_expired.len(), lapses, "{}: removed by expiry", p.describe());
            assert_eq!(s.obs.mn_sends, s.obs.registered.len() as u64 + 1 + u64::from(p.nonce));
        }
        s.run_for(5_000);
        assert!(s.proxy_binding().is_empty() && !s.ha_bound());
    }
}

#[test]
fn home_agent_restart() {
    for seed in 0..20 {
        let net = [Net::A, Net::C1][(seed % 2) as usize];
        let mut p = params(seed);
        p.lifetime = 120;
        let mut s = Sim::new(p.clone());
        s.attach(net);
        converge_and_settle(&mut s, net);
        let granted = if net.nat().is_some() {
            p.nat_max_lifetime
        } else {
            p.lifetime
        };
        let restart_at = s.rand_range(2_000, u64::from(granted) * 600);
        s.run_for(restart_at);
        // Let any registration in flight finish, then restart the HA.
        s.run_until_pred(s.now() + bound_ms(&p, net), |s| s.converged_at(net));
        let relayed_before = s.obs.relays;
        let restarted_at = s.now();
        s.restart_ha();
        assert!(!s.ha_bound());
        // The proxy keeps its binding; the node notices nothing until its next renewal.
        assert!(!s.proxy_binding().is_empty());
        // Stale acceptance: replaying the old relayed requests (older than the 7 s timestamp tolerance; under
        // nonces the new HA has issued none) must not bind anything at the new HA.
        s.run_for(8_000);
        let codes_before = s.obs.ha_codes.get(&133).copied().unwrap_or(0);
        let replayed = s.replay(|r| r.intranet && r.is_request() && r.at < restarted_at);
        s.run_for(500);
        assert!(replayed > 0);
        assert_eq!(
            s.obs.ha_codes.get(&133).copied().unwrap_or(0) - codes_before,
            replayed as u64,
            "{}: every replay answered 133",
            p.describe()
        );
        assert!(!s.ha_bound(), "{}: a replay bound the node at the new HA", p.describe());
        // The next renewal re-creates the HA binding.
        s.run_until_pred(s.now() + u64::from(granted) * 1000 + bound_ms(&p, net), |s| {
            s.ha_bound()
        });
        converge_and_settle(&mut s, net);
        assert!(s.obs.relays > relayed_before);
        // What the new HA binds is a registration relayed after the restart (a renewal), never a replay.
        let ha_id = s.ha.bindings().get_by_home(HOA).unwrap().bindings()[0].identification;
        assert!(
            s.recorded.iter().any(|r| r.intranet
                && r.is_request()
                && r.at >= restarted_at
                && r.payload[16..24] == ha_id.to_be_bytes()),
            "{}: the new HA binds {ha_id:016x}, which was not relayed after the restart",
            p.describe()
        );
    }
}

#[test]
fn proxy_pending_timeout_when_ha_is_black_holed() {
    for seed in 0..20 {
        let net = [Net::A, Net::C1][(seed % 2) as usize];
        let mut p = params(seed);
        // The default give-up limit (10 requests) where nothing is lost; lossy runs never give up.
        if p.loss == 0.0 {
            p.max_attempts = 10;
        }
        let mut s = Sim::new(p.clone());
        s.ha_black_holed = true;
        s.attach(net);
        s.run_for(10_000);
        // No reply of any kind was made up for the node, and nothing is registered anywhere.
        assert!(
            s.obs.proxy_codes.is_empty(),
            "{}: {:?}",
            p.describe(),
            s.obs.proxy_codes
        );
        assert!(s.obs.registered.is_empty() && s.proxy_binding().is_empty());
        s.ha_black_holed = false;
        // Requests relayed so far time out at the proxy, silently.
        if p.loss == 0.0 {
            s.run_until(14_500);
            assert_eq!(s.proxy.pending_count(), 0, "{}", p.describe());
            // Four requests relayed and timed out (nonce-style retransmissions are identical and replace their
            // pending entry, so only the last one times out).
            let expected = if p.nonce { 1 } else { 4 };
            assert!(
                s.obs.drops_of("proxy", "pending_timeout") >= expected,
                "{}",
                p.describe()
            );
            assert!(s.obs.proxy_codes.is_empty());
        }
        converge_and_settle(&mut s, net);
        if p.loss == 0.0 {
            // The node kept retransmitting with binary exponential backoff, 1, 2, 4, 8 s, and the fifth request
            // (at 15 s, after the HA came back) went through.
            let t = &s.obs.mn_send_times;
            let gaps: Vec<u64> = t.windows(2).map(|w| (w[1] - w[0] + 500) / 1000).take(4).collect();
            assert_eq!(gaps, vec![1, 2, 4, 8], "{}: sends at {t:?}", p.describe());
            assert_eq!(t.len() as u64, 5 + u64::from(p.nonce), "{}", p.describe());
        }
        assert!(s.obs.drops_of("proxy", "pending_timeout") >= 1);
        s.run_for(8_000);
        assert_eq!(s.proxy.pending_count(), 0);
        assert!(s.obs.failed.is_empty(), "{}: {:?}", p.describe(), s.obs.failed);
    }
}

#[test]
fn replayed_requests_after_a_handoff_do_not_move_the_binding_back() {
    for seed in 0..20 {
        let (old, new) = [
            (Net::A, Net::C1),
            (Net::B, Net::C2),
            (Net::C1, Net::A),
            (Net::C2, Net::B),
        ][(seed % 4) as usize];
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        s.attach(old);
        converge_and_settle(&mut s, old);
        s.run_for(30_000);
        let handoff_at = s.now();
        s.attach(new);
        converge_and_settle(&mut s, new);
        s.pin_proxy_coa = Some(new.care_of_address());
        let relays = s.obs.relays;
        let answered_133 = s.obs.proxy_codes.get(&133).copied().unwrap_or(0);
        let drops: u64 = s
            .obs
            .drops
            .iter()
            .filter(|((r, _), _)| *r == "proxy")
            .map(|(_, n)| *n)
            .sum();
        // Everything recorded before the hand-off, in order, then shuffled by the network delays: requests to
        // the proxy, replies to the node or FA, and the HA's replies to the proxy.
        let replayed = s.replay(|r| r.at < handoff_at);
        s.run_for(3_000);
        let answered = s.obs.proxy_codes.get(&133).copied().unwrap_or(0) - answered_133;
        let dropped = s
            .obs
            .drops
            .iter()
            .filter(|((r, _), _)| *r == "proxy")
            .map(|(_, n)| *n)
            .sum::<u64>()
            - drops;
        let requests = s
            .recorded
            .iter()
            .filter(|r| r.at < handoff_at && r.is_request() && !r.intranet)
            .count();
        assert!(replayed > 0 && requests > 0);
        // Each replayed request was answered 133 or dropped; none was relayed as new.
        assert!(answered + dropped >= requests as u64, "{}", p.describe());
        assert_eq!(s.obs.relays, relays, "{}: a replay was relayed to the HA", p.describe());
        s.assert_converged(new);
        s.pin_proxy_coa = None;
    }
}

/// Every kind of unauthenticated input at every role, at random moments of a run with hand-offs.
#[test]
fn unauthenticated_injections_draw_only_drops() {
    for seed in 0..20 {
        let p = params(seed);
        let mut s = Sim::new(p.clone());
        for net in [Net::A, Net::B, Net::C1] {
            s.attach(net);
            converge(&mut s, net);
            for _ in 0..6 {
                let wait = s.rand_range(10, 3_000);
                s.run_for(wait);
                attack(&mut s);
            }
            s.run_for(1_000);
            converge_and_settle(&mut s, net);
        }
        assert!(s.obs.injections >= 18 * 10, "{}", p.describe());
    }
}

/// One round of the adversary: random bytes, malformed and bit-flipped copies of what it recorded, and requests
/// and replies forged with the wrong key (or a reserved or unknown SPI), at every role.
fn attack(s: &mut Sim) {
    let now_ntp = ntp_at(s.now()).0;
    let requests: Vec<Vec<u8>> = s
        .recorded
        .iter()
        .filter(|r| r.is_request() && !r.intranet)
        .map(|r| r.payload.clone())
        .collect();
    let relayed: Vec<Vec<u8>> = s
        .recorded
        .iter()
        .filter(|r| r.is_request() && r.intranet)
        .map(|r| r.payload.clone())
        .collect();
    let replies: Vec<Vec<u8>> = s
        .recorded
        .iter()
        .filter(|r| r.intranet && !r.is_request())
        .map(|r| r.payload.clone())
        .collect();
    let pick = |s: &mut Sim, v: &[Vec<u8>]| v[s.rand_range(0, v.len() as u64 - 1) as usize].clone();
    for target in [
        Target::ProxyPublic,
        Target::ProxyFromHa,
        Target::Ha,
        Target::FaVisited,
        Target::FaRouted,
    ] {
        let b = s.random_bytes();
        s.inject_strict(target, b, "random bytes");
    }
    // Requests from nodes, mangled, at the proxy and at the FA (which may relay what it cannot authenticate).
    let r = pick(s, &requests);
    let f = s.flipped(&r);
    s.inject(Target::ProxyPublic, f, "flipped covered bit");
    let f = s.flipped(&r);
    s.inject(Target::FaVisited, f, "flipped covered bit");
    let m = s.malformed(&r);
    s.inject_strict(Target::ProxyPublic, m, "malformed request");
    let m = s.malformed(&r);
    s.inject_strict(Target::FaVisited, m, "malformed request");
    // Relayed requests and HA replies, mangled, at the HA and at the proxy's relay side.
    let r = pick(s, &relayed);
    let f = s.flipped(&r);
    s.inject_strict(Target::Ha, f, "flipped relayed request");
    let m = s.malformed(&r);
    s.inject_strict(Target::Ha, m, "malformed relayed request");
    let r = pick(s, &replies);
    let f = s.flipped(&r);
    s.inject_strict(Target::ProxyFromHa, f, "flipped HA reply");
    // Forgeries: fresh Identification, wrong key / reserved SPI / unknown SPI.
    let fresh = now_ntp + (1 << 32);
    for (key, spi, what) in [
        (WRONG_KEY, SPI, "wrong key"),
        (KEY, 255, "reserved SPI"),
        (KEY, 0x999, "unknown SPI"),
    ] {
        let key = if spi == 0x999 { WRONG_KEY } else { key };
        let fwd = forged_request(PUB, COA_A, 0x22, fresh, key, spi);
        s.inject_strict(Target::ProxyPublic, fwd, &format!("forged request, {what}"));
        let rel = forged_request(HA, PRIV, 0x20, fresh, key, spi);
        s.inject_strict(Target::Ha, rel, &format!("forged relayed request, {what}"));
        let via_fa = forged_request(PUB, FA_COA, 0x02, fresh, key, spi);
        s.inject(Target::FaVisited, via_fa, &format!("forged request via FA, {what}"));
    }
    // Forged replies: to the proxy matching the Identification of the latest relayed request (a pending one if
    // any), and to the FA with an Identification that matches nothing.
    let last_relayed = relayed
        .last()
        .map(|r| u64::from_be_bytes(r[16..24].try_into().unwrap()))
        .unwrap_or(fresh);
    let fr = forged_reply(HA, last_relayed, WRONG_KEY);
    s.inject_strict(Target::ProxyFromHa, fr, "forged HA reply, wrong key");
    let fr = forged_reply(PUB, fresh ^ 0x5555, WRONG_KEY);
    s.inject_strict(Target::FaRouted, fr, "forged reply to the FA");
}

/// A hand-off right after the first request went out, while it is still in flight: the two registrations race
/// through the proxy and the HA, and their replies may come back in either order.
#[test]
fn handoff_while_a_registration_is_in_flight() {
    for seed in 0..120 {
        let mut p = params(seed);
        p.loss = 0.0;
        let (old, new) = [
            (Net::A, Net::C1),
            (Net::C1, Net::A),
            (Net::A, Net::B),
            (Net::B, Net::C2),
        ][(seed % 4) as usize];
        let mut s = Sim::new(p.clone());
        s.attach(old);
        converge_and_settle(&mut s, old);
        s.run_for(20_000);
        // Force a renewal now by re-attaching, then move while it is in flight.
        s.attach(old);
        let gap = s.rand_range(0, 60);
        s.run_for(gap);
        s.attach(new);
        converge_and_settle(&mut s, new);
    }
}

/// Moves the node from `net` to a random other network, or (from C1) through a NAT change.
fn move_node(s: &mut Sim, net: Net) -> Net {
    if net == Net::C1 && s.rand_range(0, 2) == 0 {
        s.nat_change();
        return Net::C1Nat2;
    }
    let others: Vec<Net> = [Net::A, Net::B, Net::C1, Net::C2]
        .into_iter()
        .filter(|n| *n != net)
        .collect();
    let next = others[s.rand_range(0, others.len() as u64 - 1) as usize];
    s.attach(next);
    next
}

#[test]
fn lossy_channel_stress() {
    let mut worst = 0u64;
    let mut times = Vec::new();
    let (mut resyncs, mut lost, mut duplicated, mut injections, mut lapses) = (0, 0, 0, 0, 0);
    for seed in 0..50 {
        let mut p = params(seed);
        p.loss = 0.20;
        p.dup = 0.10;
        let mut s = Sim::new(p.clone());
        let mut net = [Net::A, Net::B, Net::C1, Net::C2][(seed % 4) as usize];
        s.attach(net);
        times.push(converge_and_settle(&mut s, net));
        for _ in 0..8 {
            let wait = s.rand_range(0, 40_000);
            s.run_for(wait);
            if s.rand_range(0, 3) == 0 {
                attack(&mut s);
            }
            // A move, then, as long as a coin says so, another while the previous registration is still in
            // flight (its request, relay and replies race those of the next one).
            net = move_node(&mut s, net);
            while s.rand_range(0, 1) == 0 {
                let gap = s.rand_range(0, 120);
                s.run_for(gap);
                net = move_node(&mut s, net);
            }
            let t = converge_and_settle(&mut s, net);
            worst = worst.max(t);
            times.push(t);
        }
        // Nothing stays pending: the lists empty once the registrations in flight are over (no leak).
        let drained = s.run_until_pred(s.now() + bound_ms(&p, net), |s| {
            s.proxy.pending_count() == 0 && s.fa.pending_count() == 0
        });
        assert!(drained.is_some(), "{}: pending entries never drained", p.describe());
        s.assert_converged(net);
        resyncs += s.obs.mn_outcomes.iter().filter(|c| c.value() == 133).count();
        lost += s.obs.lost;
        duplicated += s.obs.duplicated;
        injections += s.obs.injections;
        lapses += s.obs.proxy_expired.len();
    }
    let mut p = params(0);
    p.loss = 0.2;
    println!(
        "stress: {} registrations converged, median {} ms, worst {worst} ms (bound {} ms through a NAT or the FA, \
         {} ms in A); {lost} datagrams lost, {duplicated} duplicated, {resyncs} 133 resyncs at the node, \
         {injections} injections, {lapses} lapses",
        times.len(),
        median(&mut times),
        bound_ms(&p, Net::C1),
        bound_ms(&p, Net::A)
    );
}
