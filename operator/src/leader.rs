//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager),
//! so that of several operator replicas exactly one reconciles. A standby
//! waits; when the leader stops it releases the Lease and a standby takes
//! over at once; when it dies, a standby takes over once the Lease expires
//! (its duration).
//!
//! A leader that learns it lost its Lease stops at once, reconciles in
//! flight aborted, with an error: another replica may already be leading,
//! and the process is restarted as a standby. (kube-lease-manager learns of
//! a loss only from the API server: while that is unreachable a leader
//! cannot tell, and neither can it write to Kubernetes.)

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::oneshot;

use crate::context::Context;
use crate::error::OperatorError;

/// Where and how replicas elect their leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease. Default: `sluice-operator`.
    pub lease_name: String,
    /// How long a Lease holds without renewal; a leader renews it a third
    /// of this before it ends. Default: [`crate::DEFAULT_LEASE_DURATION`]
    /// (15 s). At least 2 s.
    pub duration: Duration,
}

/// Waits to lead, then reconciles and scales ([`crate::lead`]) until `shutdown` (releasing the
/// Lease) or until the leadership is lost (an error).
pub async fn run_as_leader(
    client: Client,
    election: &LeaderElection,
    identity: &str,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), OperatorError> {
    let seconds = election.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        // One field manager per replica: the lock is server-side apply
        // without force, so a second replica taking the Lease meanwhile is
        // refused as a conflict between managers. Under one shared manager
        // both applies succeeded and both replicas led until the next
        // renewal (seen in CI: two operators started together, one
        // reconciled, then stopped on losing a Lease it never held alone).
        .with_field_manager(format!("sluice-operator-lease-{identity}"))
        .build()
        .await
        .map_err(|source| OperatorError::Lease {
            namespace: election.namespace.clone(),
            name: election.lease_name.clone(),
            source,
        })?;
    let (mut leading, lease_task) = manager.watch().await;
    let lost = || OperatorError::LostLeadership {
        namespace: election.namespace.clone(),
        name: election.lease_name.clone(),
    };
    tokio::pin!(shutdown);
    tracing::info!(lease = %format!("{}/{}", election.namespace, election.lease_name), %identity, "waiting to lead");
    while !*leading.borrow_and_update() {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                return Err(lost());
            },
            () = &mut shutdown => {
                drop(leading);
                let _ = lease_task.await;
                return Ok(());
            }
        }
    }
    tracing::info!(%identity, "leading: reconciling");
    let (stop, stopped) = oneshot::channel::<()>();
    let mut reconciling = tokio::spawn(crate::lead(ctx, async {
        let _ = stopped.await;
    }));
    let mut lost_it = false;
    let joined = tokio::select! {
        () = &mut shutdown => None,
        () = until_lost(&mut leading) => {
            // Another replica may lead already: no reconcile may go on
            // writing.
            reconciling.abort();
            lost_it = true;
            None
        }
        joined = &mut reconciling => Some(joined),
    };
    let _ = stop.send(());
    // A handle that gave its result is not awaited again.
    let joined = match joined {
        Some(joined) => joined,
        None => reconciling.await,
    };
    // Closing the channel releases the Lease, so a standby leads at once.
    drop(leading);
    let _ = lease_task.await;
    if lost_it {
        return Err(lost());
    }
    led(joined)
}

/// What the task running [`crate::lead`] came to: a panic in it (a
/// reconcile, the autoscaler) is an error carrying the panic's message, so
/// the process exits non-zero saying why instead of 0 as if stopped; a
/// task aborted (the leadership lost, the runtime stopping) is not.
pub(crate) fn led(joined: Result<(), tokio::task::JoinError>) -> Result<(), OperatorError> {
    match joined {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(OperatorError::LeadPanicked(message))
        }
        Err(_) => Ok(()),
    }
}

async fn until_lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    while *leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_leading_is_an_error_with_its_message() {
        let panicked = tokio::spawn(async { panic!("the autoscaler broke: {}", 42) }).await;
        let error = led(panicked).expect_err("a panic is an error");
        assert_eq!(
            error.to_string(),
            "the leader's work panicked: the autoscaler broke: 42"
        );
        let literal = tokio::spawn(async { panic!("plain") }).await;
        assert!(led(literal).unwrap_err().to_string().ends_with(": plain"));
        assert!(led(tokio::spawn(async {}).await).is_ok());
        let aborted = tokio::spawn(std::future::pending::<()>());
        aborted.abort();
        assert!(
            led(aborted.await).is_ok(),
            "an abort is ours, not a failure"
        );
    }
}
