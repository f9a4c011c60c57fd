//! A function's stdout/stderr, kept per attempt so that it outlives the
//! runtime that ran it (README, "The life of an invocation"): the shapes
//! the runtime hands over, the stores keep and the gateway serves, and
//! the bounds every store applies. IO-free.
//!
//! Bounds (the same in local mode and on NATS):
//! - per attempt: [`DEFAULT_ATTEMPT_LOG_BYTES`] (64 KiB) per stream, each
//!   line counting [`LINE_OVERHEAD`] bytes besides its text; past it the
//!   rest of that stream is dropped and the attempt's `dropped` says how
//!   many bytes were;
//! - per function: the last [`DEFAULT_ATTEMPTS_PER_FUNCTION`] (1000)
//!   attempts that wrote anything, so at most that many times the
//!   per-attempt bound;
//! - all functions: [`DEFAULT_LOGS_MAX_BYTES`] (256 MiB) and
//!   [`DEFAULT_LOGS_MAX_AGE`] (24 h); the oldest go first.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::invocation::InvocationId;
use crate::names::FunctionRef;

/// Default bytes of one stream (stdout or stderr) kept per attempt.
pub const DEFAULT_ATTEMPT_LOG_BYTES: usize = 64 << 10;
/// What each kept line costs of the per-attempt bound besides its text:
/// its timestamp, its framing when stored and its share of memory
/// while captured, so that a guest printing empty lines is
/// bounded as well as one printing long ones.
pub const LINE_OVERHEAD: usize = 64;
/// Default of [`LogBounds::attempts_per_function`].
pub const DEFAULT_ATTEMPTS_PER_FUNCTION: usize = 1000;
/// Default of [`LogBounds::max_bytes`]: 256 MiB.
pub const DEFAULT_LOGS_MAX_BYTES: u64 = 256 << 20;
/// Default of [`LogBounds::max_age`]: 24 hours.
pub const DEFAULT_LOGS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How much log a store keeps, beyond the per-attempt bound the runtime
/// applies while capturing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Attempts kept per function, the newest. Default: 1000.
    pub attempts_per_function: usize,
    /// Bytes kept across all functions; past it the oldest attempts go.
    /// Default: 256 MiB.
    pub max_bytes: u64,
    /// How long an attempt's log is kept. Default: 24 h.
    pub max_age: Duration,
}

impl Default for LogBounds {
    fn default() -> Self {
        Self {
            attempts_per_function: DEFAULT_ATTEMPTS_PER_FUNCTION,
            max_bytes: DEFAULT_LOGS_MAX_BYTES,
            max_age: DEFAULT_LOGS_MAX_AGE,
        }
    }
}

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line a guest wrote, without its newline (invalid UTF-8 replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the line was complete (its newline written, or the attempt
    /// ended), RFC 3339 with milliseconds, UTC.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub stream: LogStream,
    pub line: String,
}

/// What the runtime captured of one attempt's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// In the order they were complete, both streams together.
    pub lines: Vec<LogLine>,
    /// Bytes of stdout and stderr left out: over the per-attempt bound.
    pub dropped: Dropped,
}

impl Captured {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped.is_empty()
    }
}

/// Bytes of each stream dropped over the per-attempt bound (a line
/// dropped whole counts its newline too, so that dropped empty lines
/// show).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stdout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stderr: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.stdout == 0 && self.stderr == 0
    }

    pub fn add(&mut self, stream: LogStream, bytes: u64) {
        let field = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        *field = field.saturating_add(bytes);
    }
}

/// The log of one attempt of one invocation, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    pub invocation: InvocationId,
    pub function: FunctionRef,
    /// Which attempt (1 for the first).
    pub attempt: u32,
    /// When the attempt's log was kept (its end).
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub lines: Vec<LogLine>,
    /// Bytes left out, per stream: over the per-attempt bound (see the
    /// module docs), or over what one stored message may hold.
    #[serde(default, skip_serializing_if = "Dropped::is_empty")]
    pub dropped: Dropped,
}

impl AttemptLog {
    pub fn new(
        invocation: InvocationId,
        function: FunctionRef,
        attempt: u32,
        captured: Captured,
    ) -> Self {
        Self {
            invocation,
            function,
            attempt,
            time: SystemTime::now(),
            lines: captured.lines,
            dropped: captured.dropped,
        }
    }

    /// Its JSON encoding, at most `max` bytes: lines that do not fit are
    /// left out from the end (counted in `dropped`). `None` when not even
    /// the empty log fits.
    pub fn encode_within(mut self, max: usize) -> Option<Vec<u8>> {
        let encoded = serde_json::to_vec(&self).ok()?;
        if encoded.len() <= max {
            return Some(encoded);
        }
        let mut excess = encoded.len() - max;
        while excess > 0 {
            let line = self.lines.pop()?;
            // The line's JSON and the comma before it.
            let size = serde_json::to_vec(&line).map_or(0, |v| v.len()) + 1;
            self.dropped.add(line.stream, line.line.len() as u64);
            excess = excess.saturating_sub(size);
        }
        // The dropped counts may have grown by a few digits.
        let encoded = serde_json::to_vec(&self).ok()?;
        if encoded.len() <= max {
            Some(encoded)
        } else {
            self.lines.pop()?;
            self.encode_within(max)
        }
    }

    /// Its lines, each standing alone as [`FunctionLogLine`]s, followed by
    /// one note per stream that dropped bytes.
    pub fn flatten(&self) -> impl Iterator<Item = FunctionLogLine> + '_ {
        let line = move |time, stream, line, dropped| FunctionLogLine {
            time,
            invocation: self.invocation.clone(),
            attempt: self.attempt,
            stream,
            line,
            dropped,
        };
        let notes = [
            (LogStream::Stdout, self.dropped.stdout),
            (LogStream::Stderr, self.dropped.stderr),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(move |(stream, n)| {
            line(
                self.time,
                stream,
                format!("[sluice: {n} more bytes of {} dropped]", stream.as_str()),
                Some(n),
            )
        });
        self.lines
            .iter()
            .map(move |l| line(l.time, l.stream, l.line.clone(), None))
            .chain(notes)
    }
}

/// One line of a function's log as `GET /logs/<ns>/<fn>` streams it (one
/// JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLogLine {
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    pub invocation: InvocationId,
    pub attempt: u32,
    pub stream: LogStream,
    pub line: String,
    /// Set on the note that stands for bytes dropped over the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

/// Every attempt's log of one invocation, as `GET /invocations/<id>/logs`
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationLogs {
    pub id: InvocationId,
    pub function: FunctionRef,
    /// Oldest attempt first; attempts that wrote nothing are absent.
    pub attempts: Vec<AttemptLog>,
}

/// Parses the `since` of `GET /logs/...`: a duration back from `now`
/// (`90s`, `5m`, `1h`) or an RFC 3339 time.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(d) = text.parse::<crate::Duration>() {
        return Ok(now.checked_sub(d.0).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("{text:?} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time"))
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: usize, width: usize) -> AttemptLog {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        AttemptLog {
            invocation: InvocationId::random(),
            function: "default/hello".parse().unwrap(),
            attempt: 1,
            time: now,
            lines: (0..lines)
                .map(|i| LogLine {
                    time: now,
                    stream: if i % 2 == 0 {
                        LogStream::Stdout
                    } else {
                        LogStream::Stderr
                    },
                    line: "\u{1}".repeat(width),
                })
                .collect(),
            dropped: Dropped::default(),
        }
    }

    #[test]
    fn an_attempt_log_reads_as_it_is_documented() {
        let mut l = log(1, 1);
        l.lines[0].line = "hi".into();
        l.dropped.stderr = 7;
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["lines"][0]["stream"], "stdout");
        assert_eq!(json["lines"][0]["time"], "2027-01-15T08:00:00.000Z");
        assert_eq!(json["dropped"], serde_json::json!({"stderr": 7}));
        let back: AttemptLog = serde_json::from_value(json).unwrap();
        assert_eq!(back, l);
        let flat: Vec<_> = l.flatten().collect();
        assert_eq!(flat.len(), 2);
        assert_eq!(flat[1].dropped, Some(7));
    }

    #[test]
    fn an_encoded_log_fits_its_bound_and_counts_what_it_left_out() {
        // Control characters escape to six bytes each.
        let whole = log(100, 1000);
        let full = serde_json::to_vec(&whole).unwrap().len();
        for max in [full, full - 1, full / 2, 2000, 300] {
            let encoded = whole.clone().encode_within(max).unwrap();
            assert!(encoded.len() <= max, "{max}");
            let back: AttemptLog = serde_json::from_slice(&encoded).unwrap();
            let left_out = (whole.lines.len() - back.lines.len()) as u64 * 1000;
            assert_eq!(back.dropped.stdout + back.dropped.stderr, left_out, "{max}");
        }
        assert_eq!(whole.encode_within(10), None);
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            parse_since("5m", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(700)
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:10Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .contains("yesterday")
        );
    }
}
