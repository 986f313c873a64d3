//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! project at once.
//!
//! The decision is pure ([`decide`]); the I/O is a GET and a create or a replace fenced by
//! `resourceVersion` (a concurrent writer gets 409 and loses the round). A leader renews every
//! `renew_every`; when a renewal finds another holder, or it cannot renew within the lease
//! duration, it has lost the lease and [`Elector::hold`] returns: the process then exits (as
//! linkerd's policy controller does) rather than keep projecting next to a new leader.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// What to do with the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder's lease expired: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Wait { holder: String },
}

/// Decide from the lease as it is now.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
    let expired = match &spec.renew_time {
        Some(MicroTime(t)) => t.as_second() + duration < now.as_second(),
        None => true,
    };
    if expired {
        Decision::Acquire
    } else {
        Decision::Wait { holder }
    }
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Defaults: a 15 s lease renewed every 5 s (as client-go's leader election).
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// The lease was lost (another holder, or no renewal within the lease duration).
#[derive(Debug, thiserror::Error)]
#[error("lost the leader lease {name} (holder now: {holder})")]
pub struct LeaseLost {
    pub name: String,
    pub holder: String,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn spec(&self, prev: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(&self.cfg.identity);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs() as i32),
            acquire_time: if ours {
                prev.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                prev.and_then(|p| p.lease_transitions).unwrap_or(0)
                    + i32::from(!ours && prev.is_some()),
            ),
            ..Default::default()
        }
    }

    /// One round: `Ok(Ok(()))` when we hold the lease afterwards, `Ok(Err(holder))` when someone
    /// else does.
    pub async fn try_acquire(&self) -> Result<Result<(), String>, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.cfg.name).await?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Ok(())),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                    Ok(Err("(another replica)".into()))
                }
                Err(e) => Err(e),
            };
        };
        match decide(lease.spec.as_ref(), &self.cfg.identity, now) {
            Decision::Wait { holder } => Ok(Err(holder)),
            Decision::Acquire | Decision::Renew => {
                let next = Lease {
                    metadata: lease.metadata.clone(),
                    spec: Some(self.spec(lease.spec.as_ref(), now)),
                };
                match self
                    .api
                    .replace(&self.cfg.name, &PostParams::default(), &next)
                    .await
                {
                    Ok(_) => Ok(Ok(())),
                    // Someone wrote the lease between our read and our write: they won.
                    Err(kube::Error::Api(s)) if s.is_conflict() => {
                        Ok(Err("(another replica)".into()))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Wait until we hold the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(Ok(())) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(Err(holder)) => tracing::debug!(%holder, "lease held by another replica"),
                Err(e) => tracing::warn!(error = %e, "lease round failed"),
            }
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }

    /// Keep renewing; returns when the lease is lost.
    pub async fn hold(&self) -> LeaseLost {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_acquire().await {
                Ok(Ok(())) => last_renewed = tokio::time::Instant::now(),
                Ok(Err(holder)) => {
                    return LeaseLost {
                        name: self.cfg.name.clone(),
                        holder,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    // Past the lease duration another replica may already lead: stop.
                    if last_renewed.elapsed() >= self.cfg.duration {
                        return LeaseLost {
                            name: self.cfg.name.clone(),
                            holder: "(unknown: renewal failed)".into(),
                        };
                    }
                }
            }
        }
    }

    /// Give the lease up on a graceful shutdown, so a follower takes over at once instead of
    /// waiting for the lease to expire. Only a lease we still hold is touched.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours {
            return Ok(());
        }
        let mut spec = lease.spec.clone().unwrap_or_default();
        spec.holder_identity = None;
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Run `work` only while leading: returns `Err(LeaseLost)` as soon as the lease is lost,
    /// dropping (stopping) `work`.
    pub async fn lead<F: std::future::Future>(&self, work: F) -> Result<F::Output, LeaseLost> {
        tokio::select! {
            out = work => Ok(out),
            lost = self.hold() => Err(lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::from_second(1000).unwrap();
        for (name, s, want) in [
            ("no lease", None, Decision::Acquire),
            ("ours", Some(spec("me", 999, 15)), Decision::Renew),
            (
                "theirs, live",
                Some(spec("other", 990, 15)),
                Decision::Wait {
                    holder: "other".into(),
                },
            ),
            (
                "theirs, expired",
                Some(spec("other", 900, 15)),
                Decision::Acquire,
            ),
            ("released", Some(spec("", 999, 15)), Decision::Acquire),
        ] {
            assert_eq!(decide(s.as_ref(), "me", now), want, "{name}");
        }
    }
}
