//! Sluice on NATS: the JetStream layout of DESIGN.md ("NATS layout"), the
//! publisher that fills the registry, and the runtime node that serves
//! functions from it.

pub mod layout;
pub mod node;
pub mod publish;
pub mod reply;
mod worker;

use std::time::Duration;

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
