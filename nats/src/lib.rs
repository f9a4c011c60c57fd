//! Sluice on NATS, for every part that talks to it (gateway, runtime,
//! operator): connecting, the JetStream layout of streams, buckets and
//! consumers ([`layout`]), filling the registry and module store
//! ([`publish`]), following the registry ([`registry`]) and the
//! components runtimes compiled ([`artifacts`]), the reply to a
//! synchronous invocation ([`reply`]), dead letters ([`dead_letter`]) and
//! queue depth ([`depth`]), publishing through a cluster's failover
//! ([`failover`]), the credentials and TLS of a connection
//! ([`security`]), and waiting for a server that is not there yet
//! ([`patience`]). It links neither wasmtime nor an HTTP server.

pub mod artifacts;
pub mod dead_letter;
pub mod depth;
pub mod failover;
pub mod layout;
pub mod load;
pub mod logs;
pub mod patience;
pub mod publish;
pub mod registry;
pub mod reply;
pub mod security;

use std::time::Duration;

pub use layout::{Layout, LayoutArgs, LayoutConfig};
pub use patience::{patiently, redacted};
pub use security::{NatsSecurity, NatsSecurityArgs, SecurityError};

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
    /// The server turned the connection away for its credentials (wrong,
    /// missing, or an NKey/JWT it does not know).
    #[error("NATS at {url} refused the credentials: {source}")]
    Refused {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The NKey seed or `.creds` file could not sign the server's
    /// challenge (not a seed, say).
    #[error("cannot authenticate to NATS at {url} with the given NKey or creds: {source}")]
    Sign {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// No TLS session could be set up: the server's certificate is not
    /// trusted, it does not speak TLS, or it wants a client certificate.
    #[error("TLS with NATS at {url} failed: {source}")]
    Tls {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("the NATS security settings cannot be used: {0}")]
    Security(#[from] SecurityError),
    /// A stream or bucket of the layout does not exist (yet): its owner
    /// (the operator on a cluster, the gateway without one) creates it.
    #[error(
        "{what} does not exist yet: waiting for the layout's owner (the operator on a cluster, the gateway without one) to create it"
    )]
    Missing { what: String },
    /// The URL carries a user or password (`nats://user:pass@host`), which
    /// would show in process listings and logs.
    #[error(
        "the NATS URL {url} carries credentials: give them with --nats-user and --nats-password-file (or a token, NKey or creds file) instead"
    )]
    CredentialsInUrl { url: String },
    #[error("cannot set up {what}: {source}")]
    Layout {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Connects to `url` (one server, or several of a cluster
/// comma-separated: `nats://a:4222,nats://b:4222`) with `security`,
/// naming the process to the server. A first connection that fails (unreachable, credentials refused, TLS)
/// is an error at once (a long-running part waits with [`connect_patiently`]
/// instead); once connected it keeps reconnecting for as long as the
/// process lives. Errors and logs name the server without credentials
/// ([`redacted`]). Refusals the server reports later, such as a subject this user
/// may not use, are logged as errors naming the subject.
pub async fn connect(
    url: &str,
    name: &str,
    security: &NatsSecurity,
) -> Result<async_nats::Client, NatsError> {
    connect_with(url, name, security, async_nats::ConnectOptions::new(), None).await
}

/// Default of [`SubscriptionBound::capacity`]: 1,024 messages, a
/// sixty-fourth of async-nats' own default; at a typical event of a few
/// KiB, a few MiB per trigger.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;

/// How many messages each subscription of a connection holds before the
/// client drops what arrives (async-nats' own default is 65,536, which at
/// 1 MiB each is far more memory than a gateway has), and the counter of
/// what it dropped. A JetStream consumer's messages are pulled in batches
/// that fit ([`pull_batch`]), so only core NATS messages are ever dropped.
#[derive(Debug, Clone)]
pub struct SubscriptionBound {
    /// Messages per subscription, at least 2. Default:
    /// [`DEFAULT_SUBSCRIPTION_CAPACITY`].
    pub capacity: usize,
    /// Counts each message the client dropped at `capacity`, as async-nats
    /// reports them (one slow-consumer event per message, through a
    /// channel that itself drops events when they come faster than they
    /// are counted: a lower bound).
    pub dropped: prometheus_client::metrics::counter::Counter,
}

impl SubscriptionBound {
    fn apply(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        options.subscription_capacity(self.capacity.max(2))
    }
}

/// The most messages to pull at once from a JetStream consumer on a
/// connection whose subscriptions hold `capacity`: half of it (at most
/// async-nats' default 200), leaving room for the consumer's status
/// messages, so that a pull never overflows its subscription (what
/// overflowed would wait out the consumer's `ack_wait`).
pub fn pull_batch(capacity: usize) -> usize {
    (capacity / 2).clamp(1, 200)
}

/// The inbox prefix of the gateway's event-bridge connection
/// ([`connect_events`]). Its first token starts with `_INBOX`, so a trigger
/// subject can never name it (the `reserved-inbox` rule).
pub const EVENTS_INBOX_PREFIX: &str = "_INBOX_sluice_events";

/// [`connect`] for the gateway's event bridge, its subscriptions bounded
/// by `bound`. With `own_user` the bridge subscribes to subjects Function
/// authors name as a user of its own, which may not subscribe to
/// `_INBOX.>` (where every other part's replies travel), so its request
/// replies come back under [`EVENTS_INBOX_PREFIX`] instead; without, it
/// connects as the gateway.
pub async fn connect_events(
    url: &str,
    security: &NatsSecurity,
    own_user: bool,
    bound: &SubscriptionBound,
) -> Result<async_nats::Client, NatsError> {
    let mut options = bound.apply(async_nats::ConnectOptions::new());
    if own_user {
        options = options.custom_inbox_prefix(EVENTS_INBOX_PREFIX);
    }
    connect_with(
        url,
        "sluice-gateway-events",
        security,
        options,
        Some(bound.dropped.clone()),
    )
    .await
}

async fn connect_with(
    url: &str,
    name: &str,
    security: &NatsSecurity,
    options: async_nats::ConnectOptions,
    dropped: Option<prometheus_client::metrics::counter::Counter>,
) -> Result<async_nats::Client, NatsError> {
    let logged_url = redacted(url);
    if logged_url != url {
        return Err(NatsError::CredentialsInUrl { url: logged_url });
    }
    let options = options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(move |event| {
            if let (async_nats::Event::SlowConsumer(_), Some(dropped)) = (&event, &dropped) {
                dropped.inc();
            }
            security::log_event(&logged_url, event);
            std::future::ready(())
        });
    let options = security.apply(options).await?;
    // A cluster's servers, comma-separated: the client tries them in
    // random order, and reconnects to whichever survives (also to servers
    // it learns of from the cluster itself).
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    options.connect(servers).await.map_err(|source| {
        let url = redacted(url);
        match source.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation => {
                NatsError::Refused { url, source }
            }
            async_nats::ConnectErrorKind::Authentication => NatsError::Sign { url, source },
            async_nats::ConnectErrorKind::Tls => NatsError::Tls { url, source },
            _ if tls_failure(&source) => NatsError::Tls { url, source },
            _ => NatsError::Connect { url, source },
        }
    })
}

/// [`connect`], tried again with backoff while the server is unreachable
/// ([`patiently`]); only what a retry cannot fix is an error.
pub async fn connect_patiently(
    url: &str,
    name: &str,
    security: &NatsSecurity,
) -> Result<async_nats::Client, NatsError> {
    patiently("connecting", url, || connect(url, name, security)).await
}

/// Whether a connect error is a failed TLS handshake: async-nats reports
/// one (an untrusted certificate, a client certificate refused) as an IO
/// error carrying rustls' error, and keeps its `Tls` kind for bad local
/// TLS settings.
fn tls_failure(error: &async_nats::ConnectError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Name (under the `sluice_` prefix) and help of the gauge every part
/// reports from [`is_connected`]: the `NatsUnreachable` alert and the
/// Platform dashboard read it.
pub const CONNECTED_METRIC: (&str, &str) = (
    "nats_connected",
    "1 while this process's NATS connection is up, 0 while it reconnects",
);

/// 1 while `client` is connected, 0 while it is disconnected or
/// reconnecting (the client retries for ever: see [`connect`]).
pub fn is_connected(client: &async_nats::Client) -> i64 {
    i64::from(client.connection_state() == async_nats::connection::State::Connected)
}

/// Why a [`round_trip`] did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("cannot subscribe to an inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot publish to an inbox: {0}")]
    Publish(#[source] async_nats::PublishError),
    #[error("the connection closed")]
    Closed,
    #[error("no answer from the server within {0:?}")]
    TimedOut(Duration),
}

/// Waits until the server has processed everything this client sent so
/// far, and this client has received everything the server routed to it
/// before that: a message to a fresh inbox of its own comes back after
/// both. (`Client::flush` only writes the socket.)
pub async fn round_trip(
    client: &async_nats::Client,
    limit: Duration,
) -> Result<(), RoundTripError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(RoundTripError::Subscribe)?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(RoundTripError::Publish)?;
    match tokio::time::timeout(limit, futures::StreamExt::next(&mut echo)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(RoundTripError::Closed),
        Err(_) => Err(RoundTripError::TimedOut(limit)),
    }
}

/// Which limit a message broke, when NATS refused it for its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Its header block is longer than JetStream stores
    /// ([`sluice_api::invocation::MAX_HEADER_BLOCK`]).
    Headers,
    /// Headers and payload together are larger than the server's
    /// `max_payload` (or the stream's largest message).
    Message,
}

/// Whether NATS refused a JetStream publish for the message's size: the
/// client checks `max_payload` before sending, the server the header block
/// and the stream's limits after. Such a message fails the same way every
/// time, so it is never retried as it is.
pub fn oversize(e: &async_nats::jetstream::context::PublishError) -> Option<Oversize> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::PublishErrorKind;
    if matches!(e.kind(), PublishErrorKind::MaxPayloadExceeded) {
        return Some(Oversize::Message);
    }
    match jetstream_code(e)? {
        // 10097, JSStreamHeaderExceedsMaximumErr: "header size exceeds
        // maximum allowed of 64k" (nats-server's server/errors.json).
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM => Some(Oversize::Headers),
        // 10054, JSStreamMessageExceedsMaximumErr: "message size exceeds
        // maximum allowed".
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => Some(Oversize::Message),
        _ => None,
    }
}

/// The JetStream error a publish's ack carried, when the server refused
/// the message: its `err_code` (nats-server's `server/errors.json`) and
/// description. `None` for a failure of the client or the connection.
pub fn jetstream_error(
    e: &async_nats::jetstream::context::PublishError,
) -> Option<&async_nats::jetstream::Error> {
    std::error::Error::source(e)?.downcast_ref::<async_nats::jetstream::Error>()
}

/// [`jetstream_error`]'s `err_code`.
pub fn jetstream_code(
    e: &async_nats::jetstream::context::PublishError,
) -> Option<async_nats::jetstream::ErrorCode> {
    jetstream_error(e).map(async_nats::jetstream::Error::error_code)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_with_credentials_is_refused_without_echoing_them() {
        let error = connect(
            "nats://admin:s3cret@127.0.0.1:1",
            "t",
            &NatsSecurity::default(),
        )
        .await
        .unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, NatsError::CredentialsInUrl { .. }),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("admin"),
            "{text}"
        );
    }
}
