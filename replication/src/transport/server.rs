//! The publishing side: `Replication.Sync` streams this replica's snapshot, deltas and repairs to a subscriber.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mip_proto as pb;
use pb::peer_message::Body;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::tls::{Conn, ConnInfo};
use super::{Shared, SubQueue, Subscriber, lock};
use crate::store::{BucketSet, Cursor};
use crate::wire::{delta_from_pb, delta_to_pb, digest_from_pb};

/// Longest wait for a subscriber's hello or a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message accepted (a chunk of records is ~100 kB).
const MAX_MESSAGE: usize = 64 << 20;

type Out = mpsc::Sender<Result<pb::PeerMessage, Status>>;

fn msg(body: Body) -> Result<pb::PeerMessage, Status> {
    Ok(pb::PeerMessage { body: Some(body) })
}

/// Accepts connections (with a TLS handshake each, when configured) and serves them until shutdown; returns once
/// every subscriber stream has been flushed and closed.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let (conn_tx, conn_rx) = mpsc::channel::<Result<Conn, std::io::Error>>(64);
    let mut shutdown = shared.shutdown.subscribe();
    let accept_shared = shared.clone();
    let accept = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("replication accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("replication: TCP_NODELAY on {remote}: {e}");
            }
            let tx = conn_tx.clone();
            match &accept_shared.tls {
                None => {
                    if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                        break;
                    }
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                    let sh = accept_shared.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(Ok(Conn::Server(Box::new(s)))).await;
                            }
                            Ok(Err(e)) => {
                                sh.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("replication: TLS handshake with {remote} failed: {e}");
                            }
                            Err(_) => {
                                sh.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("replication: TLS handshake with {remote} timed out");
                            }
                        }
                    });
                }
            }
        }
    });

    let streams_done = Arc::new(Notify::new());
    let svc = Service {
        shared: shared.clone(),
        active: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        done: streams_done.clone(),
    };
    let active = svc.active.clone();
    let hard_shutdown = shared.shutdown.clone();
    let flush_ms = shared.config.flush_timeout_ms;
    let mut shutdown = shared.shutdown.subscribe();
    let signal = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        // Let every subscriber stream flush and end before the server stops.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(shared.config.flush_timeout_ms)
            + Duration::from_secs(1);
        while active.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, streams_done.notified()).await;
        }
    };
    let service = pb::replication_server::ReplicationServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal);
    // tonic's graceful shutdown waits for every connection to close; a peer that keeps one open must not hold
    // this replica's exit: after the flush deadline plus 2 s the remaining connections are dropped.
    let mut hard = hard_shutdown.subscribe();
    let hard_deadline = async move {
        while !*hard.borrow() {
            if hard.changed().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(flush_ms) + Duration::from_secs(2)).await;
    };
    tokio::select! {
        result = serve => {
            if let Err(e) = result {
                tracing::error!("replication server: {e}");
            }
        }
        () = hard_deadline => tracing::warn!("replication server: connections still open at shutdown, dropped"),
    }
    accept.abort();
}

struct Service {
    shared: Arc<Shared>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<Notify>,
}

#[tonic::async_trait]
impl pb::replication_server::Replication for Service {
    type SyncStream = ReceiverStream<Result<pb::PeerMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<pb::PeerMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        if *self.shared.shutdown.borrow() {
            return Err(Status::unavailable("replica shutting down"));
        }
        let remote = request.extensions().get::<ConnInfo>().and_then(|c| c.remote);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let shared = self.shared.clone();
        let active = self.active.clone();
        let done = self.done.clone();
        active.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(e) = subscriber(shared, inbound, tx, remote).await {
                tracing::debug!("replication subscriber {remote:?}: {e}");
            }
            active.fetch_sub(1, Ordering::AcqRel);
            done.notify_waiters();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn health(&self, _request: Request<pb::HealthRequest>) -> Result<Response<pb::PeerHealth>, Status> {
        let s = &self.shared;
        s.update_caught_up();
        let (bindings, tombstones, replay) = {
            let st = lock(&s.store);
            (st.len(), st.tombstones(), st.replay_len())
        };
        let peers_connected = lock(&s.peers).values().filter(|p| p.status.connected).count();
        Ok(Response::new(pb::PeerHealth {
            replica_id: s.replica_id(),
            caught_up: s.caught_up.load(Ordering::Acquire),
            bindings: bindings as u64,
            tombstones: tombstones as u64,
            replay_records: replay as u64,
            peers_connected: u32::try_from(peers_connected).unwrap_or(u32::MAX),
            subscribers: u32::try_from(lock(&s.subscribers).len()).unwrap_or(u32::MAX),
            snapshots_sent: s.snapshots_sent.load(Ordering::Relaxed),
            overflows: s.overflows.load(Ordering::Relaxed),
        }))
    }
}

/// Why a subscriber stream ended early.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("subscriber went away")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Grpc(#[from] Status),
}

async fn send(tx: &Out, body: Body) -> Result<(), StreamEnd> {
    tx.send(msg(body)).await.map_err(|_| StreamEnd::Closed)
}

/// Sends the records matching `filter` (all without) in chunks, taking the store lock once per chunk.
async fn send_scan(shared: &Shared, tx: &Out, filter: Option<&BucketSet>, repair: bool) -> Result<u64, StreamEnd> {
    let mut cursor = Cursor::default();
    let mut buf = Vec::with_capacity(shared.chunk());
    let mut sent = 0u64;
    loop {
        let now = (shared.now)().instant;
        let done = lock(&shared.store).scan(&mut cursor, shared.chunk(), filter, now, &mut buf);
        if !buf.is_empty() {
            let records = pb::Records {
                records: buf.drain(..).map(|d| delta_to_pb(&d)).collect(),
            };
            sent += records.records.len() as u64;
            send(
                tx,
                if repair {
                    Body::Repair(records)
                } else {
                    Body::Snapshot(records)
                },
            )
            .await?;
        }
        if done {
            return Ok(sent);
        }
    }
}

async fn send_snapshot(shared: &Shared, sub: &Subscriber, tx: &Out) -> Result<(), StreamEnd> {
    let records = lock(&shared.store).records() as u64;
    send(tx, Body::SnapshotBegin(pb::SnapshotBegin { records })).await?;
    let sent = send_scan(shared, tx, None, false).await?;
    send(tx, Body::SnapshotEnd(pb::SnapshotEnd { records: sent })).await?;
    sub.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    shared.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Sends queued deltas (or a fresh snapshot after an overflow) until the queue is empty.
async fn drain(shared: &Shared, sub: &Subscriber, tx: &Out) -> Result<(), StreamEnd> {
    loop {
        let (batch, resnapshot): (Vec<super::Outgoing>, bool) = {
            let mut q = lock(&sub.queue);
            if q.overflow {
                *q = SubQueue::default();
                (Vec::new(), true)
            } else {
                let n = q.deltas.len().min(shared.chunk());
                (q.deltas.drain(..n).collect(), false)
            }
        };
        if resnapshot {
            // Changes published from now on are queued again; the snapshot covers everything before.
            send_snapshot(shared, sub, tx).await?;
            continue;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let records = pb::Records {
            records: batch
                .iter()
                .map(|d| {
                    let mut r = delta_to_pb(&d.0);
                    if let Some(tp) = &d.1 {
                        r.traceparent = tp.to_string();
                    }
                    r
                })
                .collect(),
        };
        sub.deltas_sent
            .fetch_add(records.records.len() as u64, Ordering::Relaxed);
        send(tx, Body::Deltas(records)).await?;
    }
}

async fn subscriber(
    shared: Arc<Shared>,
    mut inbound: Streaming<pb::PeerMessage>,
    tx: Out,
    remote: Option<std::net::SocketAddr>,
) -> Result<(), StreamEnd> {
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.next()).await {
        Ok(Some(Ok(pb::PeerMessage {
            body: Some(Body::Hello(h)),
        }))) => h,
        _ => return Err(StreamEnd::Protocol("expected hello")),
    };
    send(
        &tx,
        Body::Hello(pb::Hello {
            replica_id: shared.replica_id(),
            protocol: pb::PROTOCOL_VERSION,
        }),
    )
    .await?;
    if hello.replica_id == shared.replica_id() {
        return Ok(()); // our own address: the client notices from the hello
    }
    let sub = Arc::new(Subscriber {
        id: shared.next_sub.fetch_add(1, Ordering::Relaxed),
        replica_id: hello.replica_id,
        remote,
        queue: std::sync::Mutex::new(SubQueue {
            deltas: VecDeque::new(),
            overflow: false,
        }),
        notify: Notify::new(),
        deltas_sent: Default::default(),
        snapshots_sent: Default::default(),
        overflows: Default::default(),
        repairs_sent: Default::default(),
        acked: Default::default(),
    });
    // Registered before the snapshot is read: every change is either in the snapshot or queued (or both).
    lock(&shared.subscribers).push(sub.clone());
    let result = stream(&shared, &sub, &mut inbound, &tx).await;
    lock(&shared.subscribers).retain(|s| s.id != sub.id);
    result
}

async fn stream(
    shared: &Shared,
    sub: &Subscriber,
    inbound: &mut Streaming<pb::PeerMessage>,
    tx: &Out,
) -> Result<(), StreamEnd> {
    send_snapshot(shared, sub, tx).await?;
    let mut shutdown = shared.shutdown.subscribe();
    let mut last_diff = BucketSet::new();
    loop {
        if *shutdown.borrow() {
            // Bounded: a subscriber that stopped reading cannot hold the shutdown.
            let limit = Duration::from_millis(shared.config.flush_timeout_ms);
            return match tokio::time::timeout(limit, flush(shared, sub, inbound, tx)).await {
                Ok(r) => r,
                Err(_) => Err(StreamEnd::Protocol("flush deadline passed")),
            };
        }
        tokio::select! {
            _ = sub.notify.notified() => drain(shared, sub, tx).await?,
            m = inbound.next() => match m {
                None => return Err(StreamEnd::Closed),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => match m.body {
                    Some(Body::Digest(d)) => {
                        let theirs = digest_from_pb(&d).map_err(|_| StreamEnd::Protocol("bad digest"))?;
                        let diff = lock(&shared.store).digest().diff(&theirs);
                        // A bucket differing once is usually a delta in flight; twice in a row, a gap.
                        let persistent = diff.intersection(&last_diff);
                        last_diff = diff;
                        if !persistent.is_empty() {
                            let n = send_scan(shared, tx, Some(&persistent), true).await?;
                            sub.repairs_sent.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    Some(Body::Ack(a)) => sub.acked.store(a.received, Ordering::Relaxed),
                    _ => return Err(StreamEnd::Protocol("unexpected message from subscriber")),
                },
            },
            _ = shutdown.changed() => {}
            _ = tx.closed() => return Err(StreamEnd::Closed),
        }
    }
}

/// Shutdown: send what is queued, say goodbye, wait for the subscriber's final acknowledgement.
async fn flush(
    shared: &Shared,
    sub: &Subscriber,
    inbound: &mut Streaming<pb::PeerMessage>,
    tx: &Out,
) -> Result<(), StreamEnd> {
    drain(shared, sub, tx).await?;
    send(
        tx,
        Body::Goodbye(pb::Goodbye {
            reason: "shutting down".into(),
        }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(shared.config.flush_timeout_ms);
    loop {
        match tokio::time::timeout_at(deadline, inbound.next()).await {
            Ok(Some(Ok(pb::PeerMessage {
                body: Some(Body::Ack(a)),
            }))) => {
                sub.acked.store(a.received, Ordering::Relaxed);
                if a.goodbye {
                    shared.flushed.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err(StreamEnd::Closed),
            Err(_) => return Err(StreamEnd::Protocol("no acknowledgement before the flush deadline")),
        }
    }
}

/// Records of a `Records` message, decoded with their `traceparent` if they carry a plausible one (invalid
/// records are skipped and counted in the returned error count).
pub(super) fn decode(records: &pb::Records) -> (Vec<(crate::record::Delta, Option<&str>)>, usize) {
    let mut out = Vec::with_capacity(records.records.len());
    let mut bad = 0;
    for r in &records.records {
        match delta_from_pb(r) {
            Ok(d) => out.push((d, crate::wire::traceparent_of(r))),
            Err(e) => {
                bad += 1;
                tracing::debug!("replication: invalid record: {e}");
            }
        }
    }
    (out, bad)
}
