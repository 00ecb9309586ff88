//! Leader election with a `coordination.k8s.io/v1` Lease (docs/operator.md "Leader election").
//!
//! Every operator replica runs [`LeaderElector`] on the Lease `--lease-name` in its own namespace
//! (`POD_NAMESPACE`), with its pod name (`POD_NAME`) as `holderIdentity`. The holder renews `renewTime` every
//! [`RENEW_INTERVAL`]; the others poll every [`RETRY_INTERVAL`] and take the Lease over once its record has not
//! changed for `leaseDurationSeconds` ([`LEASE_DURATION`]) **as measured by their own clock** since they first saw
//! that record (client-go's rule: no comparison of clocks across nodes). Every write carries the
//! `resourceVersion` read just before (a merge patch with `metadata.resourceVersion` is refused with 409 Conflict
//! when the Lease changed meanwhile), so two replicas cannot both win one round.
//!
//! Only the holder runs the controllers. A holder that cannot renew for [`RENEW_DEADLINE`] (less than the lease
//! duration, so it stops before anyone may take over), or finds the Lease taken, has lost: `mip-operator` then
//! stops its controllers and **exits non-zero**, and the kubelet restarts the container as a fresh standby. That
//! is the simplest behaviour that is obviously correct: no controller state (watch caches, backoff, in-flight
//! reconciles) survives into a later term. On SIGTERM the holder releases the Lease (clears `holderIdentity`)
//! so a standby takes over at its next poll instead of after the lease duration.
//!
//! [`Observer::decide`] is the pure decision (no I/O, time passed in); [`LeaderElector`] does the API calls.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::metrics::Metrics;

/// `leaseDurationSeconds` written to the Lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// The holder gives up when it could not renew for this long (less than [`LEASE_DURATION`]).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a standby (or a holder whose renewal failed) tries again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// What to do with the Lease in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, holding it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Another replica holds it and it has not expired.
    Standby {
        /// The holder.
        holder: String,
        /// Time left before it may be taken over, if its record stays unchanged.
        expires_in: Duration,
    },
}

/// The parts of a Lease record whose change proves the holder alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    acquire_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            acquire_time: spec.acquire_time.clone(),
            transitions: spec.lease_transitions,
            duration: spec.lease_duration_seconds,
        }
    }
}

/// This replica's view of the Lease: who it is, the record last seen and when (its own clock) that record last
/// changed. Pure: the caller reads the Lease and passes the time.
#[derive(Debug, Clone)]
pub struct Observer {
    identity: String,
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// A replica called `identity` (its pod name) that has seen nothing yet.
    pub fn new(identity: impl Into<String>) -> Observer {
        Observer {
            identity: identity.into(),
            seen: None,
        }
    }

    /// The `holderIdentity` this replica writes.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Decides from the Lease's spec as just read (`None`: no Lease) at `now`, and remembers the record.
    pub fn decide(&mut self, lease: Option<&LeaseSpec>, now: Instant) -> Decision {
        let Some(spec) = lease else {
            self.seen = None;
            return Decision::Create;
        };
        let record = Record::of(spec);
        let changed_at = match &self.seen {
            Some((last, at)) if *last == record => *at,
            _ => now,
        };
        self.seen = Some((record, changed_at));
        match spec.holder_identity.as_deref() {
            Some(h) if h == self.identity => Decision::Renew,
            None | Some("") => Decision::TakeOver,
            Some(holder) => {
                let duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map_or(LEASE_DURATION, Duration::from_secs);
                let age = now.saturating_duration_since(changed_at);
                if age >= duration {
                    Decision::TakeOver
                } else {
                    Decision::Standby {
                        holder: holder.to_string(),
                        expires_in: duration.saturating_sub(age),
                    }
                }
            }
        }
    }
}

/// Why a holder stopped holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// Another replica holds the Lease now.
    #[error("the lease is held by another replica")]
    TakenOver,
    /// Renewal kept failing for [`RENEW_DEADLINE`].
    #[error("could not renew the lease for {0:?}")]
    RenewDeadline(Duration),
}

/// Runs the election on one Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    observer: Observer,
    held: bool,
}

fn micro_now() -> serde_json::Value {
    serde_json::to_value(MicroTime(Timestamp::now())).unwrap_or(serde_json::Value::Null)
}

fn lease_seconds() -> i32 {
    i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15)
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422)
}

impl LeaderElector {
    /// The election on Lease `name` in `namespace` as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            observer: Observer::new(identity),
            held: false,
        }
    }

    /// The `holderIdentity` this replica writes.
    pub fn identity(&self) -> &str {
        self.observer.identity()
    }

    /// Whether the last round ended with this replica holding the Lease.
    pub fn is_leader(&self) -> bool {
        self.held
    }

    /// One round: read the Lease, decide, write. `Ok(true)` when this replica holds it afterwards; a lost race
    /// (409 Conflict on a write) is `Ok(false)`.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let version = lease.as_ref().and_then(|l| l.metadata.resource_version.clone());
        let decision = self.observer.decide(spec.as_ref(), Instant::now());
        let me = self.identity().to_string();
        let written = match decision {
            Decision::Standby { .. } => Ok(false),
            Decision::Create => {
                let now = MicroTime(Timestamp::now());
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me),
                        lease_duration_seconds: Some(lease_seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await.map(|_| true)
            }
            Decision::Renew => {
                let patch = json!({
                    "metadata": { "resourceVersion": version },
                    "spec": {
                        "holderIdentity": me,
                        "leaseDurationSeconds": lease_seconds(),
                        "renewTime": micro_now(),
                    },
                });
                self.patch(&patch).await
            }
            Decision::TakeOver => {
                let transitions = spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                let now = micro_now();
                let patch = json!({
                    "metadata": { "resourceVersion": version },
                    "spec": {
                        "holderIdentity": me,
                        "leaseDurationSeconds": lease_seconds(),
                        "acquireTime": now,
                        "renewTime": now,
                        "leaseTransitions": transitions.saturating_add(1),
                    },
                });
                self.patch(&patch).await
            }
        };
        let held = match written {
            Ok(held) => held,
            Err(e) if conflict(&e) => false,
            Err(e) => return Err(e),
        };
        self.held = held;
        Ok(held)
    }

    async fn patch(&self, patch: &serde_json::Value) -> Result<bool, kube::Error> {
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| true)
    }

    /// Polls every [`RETRY_INTERVAL`] until this replica holds the Lease. Sets `/readyz` (a standby that reads
    /// the Lease is healthy; one that cannot reach the API server is not) and `mip_operator_leader`.
    pub async fn acquire(&mut self, metrics: &Metrics) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity(), "leader: acquired the lease");
                    metrics.set_leader(true);
                    metrics.set_ready(true);
                    return;
                }
                Ok(false) => {
                    metrics.set_ready(true);
                    tracing::debug!(lease = %self.name, "leader: standby");
                }
                Err(e) => {
                    metrics.set_ready(false);
                    tracing::warn!(lease = %self.name, error = %e, "leader: cannot read or write the lease");
                }
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// Renews every [`RENEW_INTERVAL`] (retrying every [`RETRY_INTERVAL`] after a failure) and returns when the
    /// lease is lost. Call after [`acquire`](Self::acquire).
    pub async fn hold(&mut self, metrics: &Metrics) -> Lost {
        let mut renewed = Instant::now();
        let mut wait = RENEW_INTERVAL;
        loop {
            tokio::time::sleep(wait).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    renewed = Instant::now();
                    wait = RENEW_INTERVAL;
                }
                Ok(false) => {
                    metrics.set_leader(false);
                    return Lost::TakenOver;
                }
                Err(e) => {
                    let since = renewed.elapsed();
                    tracing::warn!(lease = %self.name, error = %e, "leader: renewal failed");
                    if since >= RENEW_DEADLINE {
                        self.held = false;
                        metrics.set_leader(false);
                        return Lost::RenewDeadline(since);
                    }
                    wait = RETRY_INTERVAL;
                }
            }
        }
    }

    /// Gives the Lease up (clears `holderIdentity`) if this replica holds it, so a standby takes over at once.
    pub async fn release(&mut self, metrics: &Metrics) -> Result<(), kube::Error> {
        metrics.set_leader(false);
        if !self.held {
            return Ok(());
        }
        self.held = false;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mine = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity());
        if !mine {
            return Ok(());
        }
        let patch = json!({
            "metadata": { "resourceVersion": lease.metadata.resource_version },
            "spec": { "holderIdentity": null, "leaseDurationSeconds": 1, "renewTime": micro_now() },
        });
        match self.patch(&patch).await {
            Ok(_) => Ok(()),
            Err(e) if conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(1_700_000_000 + renewed_secs).unwrap())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_is_created() {
        let mut o = Observer::new("op-a");
        assert_eq!(o.decide(None, Instant::now()), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        let mut o = Observer::new("op-a");
        assert_eq!(
            o.decide(Some(&spec(Some("op-a"), 0, 0)), Instant::now()),
            Decision::Renew
        );
    }

    #[test]
    fn a_lease_held_by_another_replica_is_left_alone_while_it_renews() {
        let mut o = Observer::new("op-b");
        let t0 = Instant::now();
        let d = o.decide(Some(&spec(Some("op-a"), 0, 0)), t0);
        assert_eq!(
            d,
            Decision::Standby {
                holder: "op-a".into(),
                expires_in: LEASE_DURATION
            }
        );
        // The holder renews every 5 s: each new record restarts the clock, so it never expires.
        for i in 1..10 {
            let at = t0 + RENEW_INTERVAL * i;
            let d = o.decide(Some(&spec(Some("op-a"), i64::from(i) * 5, 0)), at);
            assert!(
                matches!(d, Decision::Standby { ref holder, expires_in } if holder == "op-a" && expires_in == LEASE_DURATION)
            );
        }
    }

    #[test]
    fn an_expired_lease_is_taken_over() {
        let mut o = Observer::new("op-b");
        let t0 = Instant::now();
        let held = spec(Some("op-a"), 0, 3);
        assert!(matches!(o.decide(Some(&held), t0), Decision::Standby { .. }));
        let d = o.decide(Some(&held), t0 + Duration::from_secs(14));
        assert_eq!(
            d,
            Decision::Standby {
                holder: "op-a".into(),
                expires_in: Duration::from_secs(1)
            }
        );
        assert_eq!(o.decide(Some(&held), t0 + LEASE_DURATION), Decision::TakeOver);
    }

    #[test]
    fn expiry_is_measured_from_the_first_sighting_not_the_holders_clock() {
        // renewTime an hour in the past (skewed clock) is not expiry by itself: the record must stay unchanged
        // for the lease duration on this replica's clock.
        let mut o = Observer::new("op-b");
        let t0 = Instant::now();
        let old = spec(Some("op-a"), -3600, 0);
        assert!(matches!(o.decide(Some(&old), t0), Decision::Standby { .. }));
        assert_eq!(o.decide(Some(&old), t0 + LEASE_DURATION), Decision::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let mut o = Observer::new("op-b");
        assert_eq!(o.decide(Some(&spec(None, 0, 1)), Instant::now()), Decision::TakeOver);
        assert_eq!(
            o.decide(Some(&spec(Some(""), 0, 1)), Instant::now()),
            Decision::TakeOver
        );
    }

    #[test]
    fn the_lease_duration_in_the_record_is_honoured() {
        let mut o = Observer::new("op-b");
        let t0 = Instant::now();
        let mut held = spec(Some("op-a"), 0, 0);
        held.lease_duration_seconds = Some(60);
        assert!(matches!(o.decide(Some(&held), t0), Decision::Standby { .. }));
        assert!(matches!(
            o.decide(Some(&held), t0 + LEASE_DURATION),
            Decision::Standby { .. }
        ));
        assert_eq!(o.decide(Some(&held), t0 + Duration::from_secs(60)), Decision::TakeOver);
    }

    #[test]
    fn renewing_stops_before_anyone_may_take_over() {
        const { assert!(RENEW_INTERVAL.as_secs() < RENEW_DEADLINE.as_secs()) };
        const { assert!(RENEW_DEADLINE.as_secs() < LEASE_DURATION.as_secs()) };
    }

    // === the API calls, against the tower-test mock API server ===

    use http::{Method, Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/mip-operator-leader";

    fn elector(identity: &str) -> (LeaderElector, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "ops");
        (
            LeaderElector::new(client, "ops", "mip-operator-leader", identity),
            handle,
        )
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, code: u16, body: serde_json::Value) {
        let body = serde_json::to_vec(&body).unwrap();
        send.send_response(Response::builder().status(code).body(Body::from(body)).unwrap());
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason})
    }

    fn lease(holder: &str, rv: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "mip-operator-leader", "namespace": "ops", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z",
                     "leaseTransitions": 2},
        })
    }

    async fn body(req: Request<Body>) -> serde_json::Value {
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn creates_the_lease_when_absent() {
        let (mut e, mut h) = elector("op-a");
        let server = tokio::spawn(async move {
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!((req.method(), req.uri().path()), (&Method::GET, PATH));
            respond(send, 404, status(404, "NotFound"));
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.uri().path(), "/apis/coordination.k8s.io/v1/namespaces/ops/leases");
            let b = body(req).await;
            assert_eq!(b["spec"]["holderIdentity"], "op-a");
            assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
            assert_eq!(b["spec"]["leaseTransitions"], 0);
            respond(send, 201, lease("op-a", "1"));
        });
        assert!(e.try_acquire_or_renew().await.unwrap());
        assert!(e.is_leader());
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn renews_with_the_resource_version_read_and_loses_on_conflict() {
        let (mut e, mut h) = elector("op-a");
        let server = tokio::spawn(async move {
            for (rv, answer) in [("7", 200), ("8", 409)] {
                let (req, send) = h.next_request().await.unwrap();
                assert_eq!((req.method(), req.uri().path()), (&Method::GET, PATH));
                respond(send, 200, lease("op-a", rv));
                let (req, send) = h.next_request().await.unwrap();
                assert_eq!((req.method(), req.uri().path()), (&Method::PATCH, PATH));
                assert_eq!(req.headers()["content-type"], "application/merge-patch+json");
                let b = body(req).await;
                assert_eq!(b["metadata"]["resourceVersion"], rv);
                assert_eq!(b["spec"]["holderIdentity"], "op-a");
                assert!(b["spec"]["renewTime"].is_string());
                assert!(b["spec"].get("acquireTime").is_none(), "a renewal keeps acquireTime");
                if answer == 200 {
                    respond(send, 200, lease("op-a", "8"));
                } else {
                    respond(send, 409, status(409, "Conflict"));
                }
            }
        });
        assert!(e.try_acquire_or_renew().await.unwrap());
        assert!(
            !e.try_acquire_or_renew().await.unwrap(),
            "a conflict is a lost round, not an error"
        );
        assert!(!e.is_leader());
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn takes_over_a_released_lease_and_counts_the_transition() {
        let (mut e, mut h) = elector("op-b");
        let server = tokio::spawn(async move {
            let (_, send) = h.next_request().await.unwrap();
            respond(send, 200, lease("", "5"));
            let (req, send) = h.next_request().await.unwrap();
            let b = body(req).await;
            assert_eq!(b["metadata"]["resourceVersion"], "5");
            assert_eq!(b["spec"]["holderIdentity"], "op-b");
            assert_eq!(b["spec"]["leaseTransitions"], 3);
            assert!(b["spec"]["acquireTime"].is_string());
            respond(send, 200, lease("op-b", "6"));
        });
        assert!(e.try_acquire_or_renew().await.unwrap());
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_standby_writes_nothing() {
        let (mut e, mut h) = elector("op-b");
        let server = tokio::spawn(async move {
            let (_, send) = h.next_request().await.unwrap();
            respond(send, 200, lease("op-a", "5"));
            assert!(
                tokio::time::timeout(Duration::from_millis(100), h.next_request())
                    .await
                    .is_err(),
                "no write while another replica holds a fresh lease"
            );
        });
        assert!(!e.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }
}
