//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas of the controller
//! never both drive a test. The holder renews the Lease every third of its duration; another
//! replica takes it over only once it has not been renewed for a whole duration. Writes are
//! optimistic (the Lease's resourceVersion): of two replicas racing for an expired Lease one gets
//! 409 Conflict and stays a standby. A leader that cannot renew before its Lease expires stops
//! (the Deployment restarts it as a standby) rather than risk driving a test beside a new leader.
//!
//! [`step`] is the pure decision; [`Elector`] does the reads and writes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "stampede-controller";
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a standby retries).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// What to do with the Lease as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Another replica holds it: wait.
    Wait,
}

/// Decides what to do with `lease` as `me` at `now`.
pub fn step(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(1)) * 1000;
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0.as_millisecond());
            match renewed {
                Some(at) if now.as_millisecond() < at.saturating_add(duration) => Step::Wait,
                _ => Step::TakeOver,
            }
        }
    }
}

/// The Lease spec after `step` by `me` at `now`.
pub fn next_spec(
    current: Option<&LeaseSpec>,
    step: Step,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let now = MicroTime(now);
    if step != Step::Renew {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(
            spec.lease_transitions
                .unwrap_or(0)
                .saturating_add(i32::from(current.is_some())),
        );
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX));
    spec.renew_time = Some(now);
    spec
}

/// This process's identity in the Lease: the pod name, else host name and pid.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "stampede".to_string());
    format!("{host}-{}", std::process::id())
}

/// Holds or waits for the Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// An elector for Lease `namespace/name` as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity,
            duration: LEASE_DURATION,
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Reads the Lease and acquires or renews it if it may. `Ok(true)` when we hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let now = Timestamp::now();
        let s = step(spec, &self.identity, now);
        if s == Step::Wait {
            return Ok(false);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..current
                    .as_ref()
                    .map(|l| l.metadata.clone())
                    .unwrap_or_default()
            },
            spec: Some(next_spec(spec, s, &self.identity, now, self.duration)),
        };
        let result = match s {
            Step::Create => self.api.create(&PostParams::default(), &lease).await,
            _ => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Another replica wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until we hold the Lease.
    pub async fn acquire(&self) {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader Lease");
                    return;
                }
                Ok(false) => {
                    if !waiting_logged {
                        tracing::info!(lease = %self.name, "another replica leads; waiting as a standby");
                        waiting_logged = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "cannot read or write the leader Lease: {e}")
                }
            }
            tokio::time::sleep(RENEW_INTERVAL).await;
        }
    }

    /// Renews until a renewal fails for longer than the Lease lasts, or another replica took
    /// the Lease; returns why leadership was lost.
    pub async fn keep(&self) -> String {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    return format!("lost the leader Lease {} to another replica", self.name);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "cannot renew the leader Lease: {e}");
                    if last_ok.elapsed() + RENEW_INTERVAL >= self.duration {
                        return format!(
                            "could not renew the leader Lease {} before it expired: {e}",
                            self.name
                        );
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::info!(lease = %self.name, "cannot release the leader Lease: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.to_string()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(step(None, "a", at(0)), Step::Create);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        assert_eq!(step(Some(&held_by("a", 0)), "a", at(100)), Step::Renew);
    }

    #[test]
    fn a_standby_waits_while_the_holder_renews_in_time() {
        assert_eq!(step(Some(&held_by("a", 10)), "b", at(24)), Step::Wait);
    }

    #[test]
    fn a_standby_takes_over_a_lease_not_renewed_for_its_duration() {
        assert_eq!(step(Some(&held_by("a", 10)), "b", at(25)), Step::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let mut l = held_by("a", 10);
        l.holder_identity = None;
        assert_eq!(step(Some(&l), "b", at(11)), Step::TakeOver);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let l = held_by("a", 0);
        let took = next_spec(Some(&l), Step::TakeOver, "b", at(30), LEASE_DURATION);
        assert_eq!(took.holder_identity.as_deref(), Some("b"));
        assert_eq!(took.lease_transitions, Some(3));
        assert_eq!(took.acquire_time, Some(MicroTime(at(30))));
        let renewed = next_spec(Some(&l), Step::Renew, "a", at(5), LEASE_DURATION);
        assert_eq!(renewed.lease_transitions, Some(2));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
        let created = next_spec(None, Step::Create, "a", at(0), LEASE_DURATION);
        assert_eq!(created.lease_transitions, Some(0));
    }
}
