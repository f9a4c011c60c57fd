//! Sluice on NATS: the JetStream layout of DESIGN.md ("NATS layout"), the
//! publisher that fills the registry, and the runtime node that serves
//! functions from it.

pub mod layout;
pub mod node;
pub mod publish;
pub mod reply;
mod worker;

use std::time::Duration;

/// Room a message needs on top of its body for headers and framing; a body
/// limit is at most the server's `max_payload` less this.
pub const PAYLOAD_HEADROOM: usize = 64 << 10;

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up {what}: {reason}")]
    Layout { what: String, reason: String },
}

/// Connects to `url`, naming the process to the server, and keeps
/// reconnecting for as long as the process lives.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Waits until the server has processed everything this client sent so
/// far, and this client has received everything the server routed to it
/// before that: a message to a fresh inbox of its own comes back after
/// both. (`Client::flush` only writes the socket.)
pub async fn round_trip(client: &async_nats::Client, limit: Duration) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, futures::StreamExt::next(&mut echo)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed".into()),
        Err(_) => Err(format!("no answer from the server within {limit:?}")),
    }
}

/// Header name/value pairs of a NATS message, for the wire decoders.
pub fn header_pairs(headers: Option<&async_nats::HeaderMap>) -> Vec<(&str, &str)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name, v.as_str()))
        })
        .collect()
}
