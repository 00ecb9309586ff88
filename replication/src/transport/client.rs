//! The subscribing side: one task per peer address receives that peer's snapshot, deltas and repairs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mip_proto as pb;
use pb::peer_message::Body;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Uri};

use super::server::decode;
use super::tls::Conn;
use super::{LAG_SAMPLES, Shared, lock};
use crate::config::PeerSource;
use crate::record::Delta;
use crate::version::{Hlc, unix_ms};
use crate::wire::digest_to_pb;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps one task per current peer address: the static list once, or the DNS name's A records re-resolved
/// every `refresh_ms` (tasks of addresses that disappeared are stopped). Returns at shutdown, after the tasks.
pub(super) async fn manage(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    let (refresh, dns) = match shared.config.peers.source() {
        PeerSource::Static(list) => {
            for a in list {
                shared.peer(a, |_| ());
                tasks.entry(a).or_insert_with(|| tokio::spawn(peer(shared.clone(), a)));
            }
            shared.peers_known.store(true, std::sync::atomic::Ordering::Release);
            (None, None)
        }
        PeerSource::Dns(d) => (Some(Duration::from_millis(d.refresh_ms)), Some((d.name, d.port))),
    };
    let mut tick = tokio::time::interval(refresh.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some((name, port)) = &dns {
                    match tokio::net::lookup_host((name.as_str(), *port)).await {
                        Ok(addrs) => {
                            let addrs: Vec<SocketAddr> = addrs.filter(SocketAddr::is_ipv4).collect();
                            tasks.retain(|a, t| {
                                let keep = addrs.contains(a);
                                if !keep {
                                    t.abort();
                                    lock(&shared.peers).remove(a);
                                }
                                keep
                            });
                            for a in addrs {
                                shared.peer(a, |_| ());
                                tasks.entry(a).or_insert_with(|| tokio::spawn(peer(shared.clone(), a)));
                            }
                            shared.peers_known.store(true, std::sync::atomic::Ordering::Release);
                        }
                        Err(e) => tracing::warn!("replication: resolving {name}: {e}"),
                    }
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    for (_, t) in tasks {
        let _ = t.await;
    }
}

/// Dials `addr` (TCP, then TLS when configured).
async fn connect(shared: Arc<Shared>, addr: SocketAddr) -> Result<tonic::transport::Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let connector = tower::service_fn(move |_: Uri| {
        let shared = shared.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let conn = match &shared.tls {
                None => Conn::Plain(tcp),
                Some(tls) => {
                    let name = tls.server_name(addr).map_err(std::io::Error::other)?;
                    let c = tokio_rustls::TlsConnector::from(tls.client_config());
                    Conn::Client(Box::new(c.connect(name, tcp).await?))
                }
            };
            Ok::<_, std::io::Error>(TokioIo::new(conn))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e}: {}", source_chain(&e)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

enum Ended {
    /// The address is this replica: stop.
    IsSelf,
    /// Shutdown.
    Shutdown,
    /// Reconnect later (error text, if any).
    Retry(Option<String>),
}

/// The task of one peer address: connect, subscribe, apply, reconnect with backoff until shutdown.
async fn peer(shared: Arc<Shared>, addr: SocketAddr) {
    shared.peer(addr, |_| ());
    let mut shutdown = shared.shutdown.subscribe();
    let base = Duration::from_millis(shared.config.reconnect_ms);
    let mut backoff = base;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Every step (dial, handshake, stream) gives way to shutdown.
        let attempt = async {
            match connect(shared.clone(), addr).await {
                Ok(ch) => {
                    backoff = base;
                    subscribe(&shared, addr, ch).await
                }
                Err(e) => Ended::Retry(Some(e)),
            }
        };
        let ended = tokio::select! {
            e = attempt => e,
            () = shut_down(&mut shutdown) => Ended::Shutdown,
        };
        shared.peer(addr, |p| p.status.connected = false);
        match ended {
            Ended::IsSelf | Ended::Shutdown => return,
            Ended::Retry(err) => {
                if let Some(e) = err {
                    tracing::debug!("replication peer {addr}: {e}");
                    shared.peer(addr, |p| p.status.last_error = Some(e));
                }
            }
        }
        shared.update_caught_up();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(base * 8);
    }
}

/// Resolves once shutdown has been signalled.
async fn shut_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn subscribe(shared: &Arc<Shared>, addr: SocketAddr, channel: tonic::transport::Channel) -> Ended {
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (req_tx, req_rx) = mpsc::channel::<pb::PeerMessage>(16);
    let hello = pb::PeerMessage {
        body: Some(Body::Hello(pb::Hello {
            replica_id: shared.replica_id(),
            protocol: pb::PROTOCOL_VERSION,
        })),
    };
    if req_tx.send(hello).await.is_err() {
        return Ended::Retry(None);
    }
    let mut inbound = match client.sync(ReceiverStream::new(req_rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return Ended::Retry(Some(format!("sync: {}", e.message()))),
    };
    let peer_id = match tokio::time::timeout(CONNECT_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(pb::PeerMessage {
            body: Some(Body::Hello(h)),
        }))) => h.replica_id,
        Ok(Some(Err(e))) => return Ended::Retry(Some(format!("hello: {}", e.message()))),
        _ => return Ended::Retry(Some("no hello".into())),
    };
    if peer_id == shared.replica_id() {
        shared.peer(addr, |p| {
            p.status.is_self = true;
            p.status.replica_id = Some(peer_id);
        });
        shared.update_caught_up();
        return Ended::IsSelf;
    }
    shared.peer(addr, |p| {
        p.status.replica_id = Some(peer_id);
        p.status.connected = true;
        p.status.connects += 1;
        p.status.last_error = None;
    });
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(shared.config.digest_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut received = 0u64;
    loop {
        tokio::select! {
            m = inbound.next() => {
                let m = match m {
                    None => return Ended::Retry(Some("stream closed by peer".into())),
                    Some(Err(e)) => return Ended::Retry(Some(format!("stream: {}", e.message()))),
                    Some(Ok(m)) => m,
                };
                match m.body {
                    Some(Body::SnapshotBegin(_)) => {}
                    Some(Body::Snapshot(r)) => received += apply(shared, addr, &r, Kind::Snapshot, peer_id),
                    Some(Body::SnapshotEnd(_)) => {
                        shared.peer(addr, |p| {
                            p.status.snapshot_received = true;
                            p.status.snapshots_received += 1;
                        });
                        shared.update_caught_up();
                    }
                    Some(Body::Deltas(r)) => received += apply(shared, addr, &r, Kind::Delta, peer_id),
                    Some(Body::Repair(r)) => received += apply(shared, addr, &r, Kind::Repair, peer_id),
                    Some(Body::Goodbye(_)) => {
                        // Everything before the goodbye is applied (apply is synchronous).
                        let ack = pb::PeerMessage {
                            body: Some(Body::Ack(pb::Ack { received, goodbye: true })),
                        };
                        let _ = req_tx.send(ack).await;
                        // Give the ack a moment to leave before the stream is dropped.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Ended::Retry(Some("peer said goodbye".into()));
                    }
                    _ => return Ended::Retry(Some("unexpected message from publisher".into())),
                }
            }
            _ = tick.tick() => {
                let digest = digest_to_pb(&lock(&shared.store).digest());
                for body in [Body::Digest(digest), Body::Ack(pb::Ack { received, goodbye: false })] {
                    if req_tx.send(pb::PeerMessage { body: Some(body) }).await.is_err() {
                        return Ended::Retry(Some("request stream closed".into()));
                    }
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return Ended::Shutdown;
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Snapshot,
    Delta,
    Repair,
}

/// Decodes and applies a batch of records under one store lock; wakes the daemon if anything changed. Returns
/// the number of records received.
fn apply(shared: &Shared, addr: SocketAddr, records: &pb::Records, kind: Kind, peer_id: u32) -> u64 {
    let (deltas, bad) = decode(records);
    let now = (shared.now)();
    let mut applied = 0u64;
    {
        let mut store = lock(&shared.store);
        for (d, traceparent) in &deltas {
            // Only a delta belongs to the trace of the change it carries.
            let traceparent = traceparent.filter(|_| kind == Kind::Delta);
            if store.apply_remote_traced(d, now, traceparent).is_some() {
                applied += 1;
            }
        }
    }
    if applied > 0 {
        (shared.wake)();
    }
    let wall = unix_ms(now);
    shared.peer(addr, |p| {
        p.status.records_received += deltas.len() as u64 + bad as u64;
        p.status.records_applied += applied;
        if kind == Kind::Repair {
            p.status.repairs_received += deltas.len() as u64;
        }
        if kind == Kind::Delta {
            for (d, _) in &deltas {
                let v = match d {
                    Delta::Binding(r) => r.version,
                    Delta::Replay(r) => r.version,
                };
                if v.replica == peer_id {
                    if p.lags.len() >= LAG_SAMPLES {
                        p.lags.pop_front();
                    }
                    p.lags.push_back(wall.saturating_sub(Hlc::wall_ms(v.hlc)));
                }
            }
        }
    });
    (deltas.len() + bad) as u64
}
