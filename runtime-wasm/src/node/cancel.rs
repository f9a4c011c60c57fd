//! Interrupting running invocations. A gateway asked to cancel one stores
//! its record as `cancelled`, then publishes its id on
//! `sluice.cancel.<ns>.<fn>` (core NATS): every node listens, and the one
//! running it cancels the attempt's token. A runtime registers an
//! invocation here before it reads the record, so a cancel is seen either
//! in the record or as the message, never lost between the two.

use sluice_serve::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt as _;
use sluice_api::InvocationId;
use sluice_api::names::CANCEL_SUBJECTS;
use tokio_util::sync::CancellationToken;

/// The async invocations this node is about to run or running, by id.
#[derive(Debug, Default)]
pub(crate) struct Running {
    /// A token and how many deliveries of the id hold it (a message may be
    /// redelivered while an earlier delivery still runs).
    tokens: Mutex<HashMap<InvocationId, (CancellationToken, usize)>>,
}

/// An invocation registered in [`Running`] until this is dropped.
pub(crate) struct Registered {
    running: Arc<Running>,
    id: InvocationId,
    pub token: CancellationToken,
}

impl Running {
    pub fn register(self: &Arc<Self>, id: &InvocationId) -> Registered {
        let mut tokens = lock(&self.tokens);
        let (token, holders) = tokens.entry(id.clone()).or_default();
        *holders += 1;
        Registered {
            running: self.clone(),
            id: id.clone(),
            token: token.clone(),
        }
    }

    /// Cancels `id`'s attempt, if this node runs it.
    fn cancel(&self, id: &InvocationId) {
        if let Some((token, _)) = lock(&self.tokens).get(id) {
            token.cancel();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut tokens = lock(&self.running.tokens);
        if let Some((_, holders)) = tokens.get_mut(&self.id) {
            *holders -= 1;
            if *holders == 0 {
                tokens.remove(&self.id);
            }
        }
    }
}

/// Subscribes to every function's cancel subject and cancels what this
/// node runs, until `running` is gone or the subscription ends.
pub(crate) async fn listen(
    client: async_nats::Client,
    running: Weak<Running>,
) -> Result<(), async_nats::SubscribeError> {
    let mut cancels = client.subscribe(CANCEL_SUBJECTS).await?;
    tokio::spawn(async move {
        while let Some(message) = cancels.next().await {
            let Some(running) = running.upgrade() else {
                return;
            };
            let id = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(InvocationId::parse);
            match id {
                Some(id) => running.cancel(&id),
                None => {
                    tracing::debug!(subject = %message.subject, "ignoring a cancel without an invocation id")
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_every_delivery_of_the_id_while_one_holds_it() {
        let running = Arc::new(Running::default());
        let id = InvocationId::random();
        let first = running.register(&id);
        let second = running.register(&id);
        drop(first);
        running.cancel(&id);
        assert!(second.token.is_cancelled());
        drop(second);
        assert!(lock(&running.tokens).is_empty(), "nothing is kept after");
        let later = running.register(&id);
        assert!(
            !later.token.is_cancelled(),
            "a later delivery starts afresh"
        );
        running.cancel(&InvocationId::random());
        assert!(!later.token.is_cancelled());
    }
}
