//! Priority classes within a function: the `Sluice-Priority` request
//! header bounded by the Function's `spec.priority`, the lanes an
//! invocation waits in, and the weighted rule that says which lane's head
//! starts next. Pure: local mode's queue and the runtime's workers both
//! ask [`WeightedPick`] (README, "Priorities").
//!
//! The gateway resolves an invocation's class once, when it accepts it
//! ([`PrioritySpec::class_of`]), and writes it into the invocation's
//! headers ([`stamp`]); everything after reads it from there
//! ([`crate::Invocation::priority`]), so a retry, a dead letter redriven
//! and a keyed invocation keep their class without a field of their own.

use http::{HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Request header naming an invocation's priority class: `high`, `normal`
/// or `low` (ASCII case-insensitive).
pub const PRIORITY_HEADER: &str = "Sluice-Priority";
/// [`PRIORITY_HEADER`] as a header map spells it.
const PRIORITY_HEADER_LOWER: &str = "sluice-priority";

/// A priority class, lowest first (so `Ord` says which outranks which).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Priority {
    Low,
    /// The default.
    #[default]
    Normal,
    High,
}

impl Priority {
    /// `low`, `normal` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }

    /// The class named `text` (ASCII case-insensitive), if any.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Low, Self::Normal, Self::High]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Function's priority classes: the one an invocation gets without the
/// header, and the highest a caller may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.max) || !has(self.default) || !((self.max == 'low' && self.default != 'low') || (self.max == 'normal' && self.default == 'high'))",
        "message": "default must not be above max"
    }
]))]
pub struct PrioritySpec {
    /// Class of an invocation that names none (HTTP without
    /// `Sluice-Priority`, NATS events, schedule ticks). Default: `normal`.
    #[serde(default)]
    pub default: Priority,
    /// Highest class a caller may ask for with `Sluice-Priority`; a request
    /// naming a higher one gets 400. Default: `normal` (callers may lower
    /// their invocations, not raise them).
    #[serde(default)]
    pub max: Priority,
}

impl PrioritySpec {
    /// The class of an invocation whose `Sluice-Priority` header is
    /// `header` (`None`: absent): the default without it.
    ///
    /// # Errors
    /// [`BadPriority`] for a value that names no class, or a class above
    /// `max`.
    pub fn class_of(&self, header: Option<&[u8]>) -> Result<Priority, BadPriority> {
        let Some(raw) = header else {
            return Ok(self.default);
        };
        let text = std::str::from_utf8(raw).unwrap_or_default();
        let class = Priority::parse(text).ok_or_else(|| BadPriority::Unknown(text.to_owned()))?;
        if class > self.max {
            return Err(BadPriority::AboveMax {
                asked: class,
                max: self.max,
            });
        }
        Ok(class)
    }

    /// Whether the default is within `max` (the operator reports a spec
    /// where it is not).
    pub fn is_consistent(&self) -> bool {
        self.default <= self.max
    }
}

/// Why a `Sluice-Priority` header was refused (400, naming the header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPriority {
    #[error("{PRIORITY_HEADER}: {0:?} is not a priority class: use high, normal or low")]
    Unknown(String),
    #[error(
        "{PRIORITY_HEADER}: {asked} is above what this function allows (spec.priority.max is {max})"
    )]
    AboveMax { asked: Priority, max: Priority },
    #[error("{PRIORITY_HEADER} is given more than once")]
    Repeated,
}

/// The class a request asks for with [`PRIORITY_HEADER`], bounded by
/// `spec` ([`PrioritySpec::class_of`]); the default without the header.
///
/// # Errors
/// [`BadPriority`] for a header given twice, a value that names no class,
/// or a class above `spec.max`.
pub fn requested(spec: &PrioritySpec, headers: &HeaderMap) -> Result<Priority, BadPriority> {
    let mut values = headers.get_all(PRIORITY_HEADER_LOWER).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(BadPriority::Repeated);
    }
    spec.class_of(first.map(HeaderValue::as_bytes))
}

/// Writes `class` into `headers` as the invocation's class, replacing
/// whatever the caller sent: absent for `normal` (the default every part
/// reads), else `high` or `low`.
pub fn stamp(headers: &mut HeaderMap, class: Priority) {
    headers.remove(PRIORITY_HEADER_LOWER);
    if class != Priority::Normal {
        headers.insert(
            PRIORITY_HEADER_LOWER,
            HeaderValue::from_static(class.as_str()),
        );
    }
}

impl crate::Invocation {
    /// The invocation's class, as the gateway [`stamp`]ed it when it
    /// accepted it: `normal` without the header (or, defensively, with one
    /// that names no class).
    pub fn priority(&self) -> Priority {
        self.headers
            .get(PRIORITY_HEADER_LOWER)
            .and_then(|v| v.to_str().ok())
            .and_then(Priority::parse)
            .unwrap_or_default()
    }
}

/// Where an invocation waits: synchronous calls in their own lane (a
/// caller is waiting), asynchronous ones by class. Highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    Sync,
    High,
    Normal,
    Low,
}

impl Lane {
    /// Every lane, highest first: the index of each is [`Lane::index`].
    pub const ALL: [Self; 4] = [Self::Sync, Self::High, Self::Normal, Self::Low];

    /// The lane of an invocation: a sync call's, whatever its class, or
    /// its class's.
    pub fn of(sync: bool, priority: Priority) -> Self {
        match (sync, priority) {
            (true, _) => Self::Sync,
            (false, Priority::High) => Self::High,
            (false, Priority::Normal) => Self::Normal,
            (false, Priority::Low) => Self::Low,
        }
    }

    /// Its position in [`Lane::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Share of the takes the lane gets while every lane has work:
    /// sync 8, high 4, normal 2, low 1 (of 15). A lane with nothing
    /// waiting gives its share to the others in the same proportions.
    pub fn weight(self) -> i64 {
        match self {
            Self::Sync => 8,
            Self::High => 4,
            Self::Normal => 2,
            Self::Low => 1,
        }
    }

    /// `sync`, `high`, `normal` or `low`: the token that ends the lane's
    /// subject and consumer name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The lane named `token`, if any.
    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|lane| lane.as_str() == token)
    }
}

/// Smooth weighted round robin over the lanes that have work (nginx's
/// rule): each take, every waiting lane gains its weight, the one with
/// the most is taken and pays the sum of the waiting lanes' weights. While
/// lanes `W` all wait, lane `l` gets `weight(l) / Σ weight(W)` of the takes,
/// evenly spread: from a balanced start with every lane waiting, low gets
/// one of every 15. The counters carry over while lanes come and go, so a
/// history of changing waiting sets can leave low further behind: a
/// review's simulation of mixed histories found waits of up to about 20
/// takes. A waiting low gains on every take while the lane taken pays
/// more than it gains, so it keeps its long-run share; no tighter bound
/// is proven here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightedPick {
    current: [i64; 4],
}

impl WeightedPick {
    /// The lane whose head is taken next, among those `waiting` says hold
    /// work; `None` when none does.
    pub fn pick(&mut self, waiting: impl Fn(Lane) -> bool) -> Option<Lane> {
        let mut total = 0;
        let mut best: Option<Lane> = None;
        for lane in Lane::ALL {
            if !waiting(lane) {
                continue;
            }
            total += lane.weight();
            self.current[lane.index()] += lane.weight();
            if best.is_none_or(|b| self.current[lane.index()] > self.current[b.index()]) {
                best = Some(lane);
            }
        }
        let best = best?;
        self.current[best.index()] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_bounded_by_the_function() {
        let spec = PrioritySpec {
            default: Priority::Low,
            max: Priority::Normal,
        };
        let table: [(Option<&str>, Result<Priority, BadPriority>); 6] = [
            (None, Ok(Priority::Low)),
            (Some("normal"), Ok(Priority::Normal)),
            (Some(" LOW "), Ok(Priority::Low)),
            (
                Some("high"),
                Err(BadPriority::AboveMax {
                    asked: Priority::High,
                    max: Priority::Normal,
                }),
            ),
            (Some("urgent"), Err(BadPriority::Unknown("urgent".into()))),
            (Some(""), Err(BadPriority::Unknown(String::new()))),
        ];
        for (header, want) in table {
            assert_eq!(spec.class_of(header.map(str::as_bytes)), want, "{header:?}");
        }
        let message = spec.class_of(Some(b"high")).unwrap_err().to_string();
        assert!(message.starts_with("Sluice-Priority: high"), "{message}");
    }

    #[test]
    fn a_default_above_the_max_is_inconsistent() {
        let table = [
            (Priority::Low, Priority::Low, true),
            (Priority::Normal, Priority::High, true),
            (Priority::High, Priority::Normal, false),
            (Priority::Normal, Priority::Low, false),
        ];
        for (default, max, ok) in table {
            assert_eq!(PrioritySpec { default, max }.is_consistent(), ok);
        }
    }

    fn takes(waiting: &[Lane], n: usize) -> Vec<Lane> {
        let mut pick = WeightedPick::default();
        (0..n)
            .map(|_| pick.pick(|lane| waiting.contains(&lane)).unwrap())
            .collect()
    }

    #[test]
    fn lanes_share_takes_by_weight_and_low_is_never_starved() {
        let all = takes(&Lane::ALL, 15 * 20);
        for lane in Lane::ALL {
            let got = all.iter().filter(|l| **l == lane).count();
            assert_eq!(got as i64, lane.weight() * 20, "{lane:?}");
        }
        for window in all.windows(15) {
            assert!(window.contains(&Lane::Low), "{window:?}");
        }
    }

    #[test]
    fn high_gets_four_of_five_takes_against_low() {
        let both = takes(&[Lane::High, Lane::Low], 25);
        assert_eq!(both.iter().filter(|l| **l == Lane::Low).count(), 5);
        // Spread out: never two lows in a row.
        assert!(!both.windows(2).any(|w| w == [Lane::Low, Lane::Low]));
        assert_eq!(WeightedPick::default().pick(|_| false), None);
    }

    #[test]
    fn a_sync_call_is_in_the_sync_lane_whatever_its_class() {
        assert_eq!(Lane::of(true, Priority::Low), Lane::Sync);
        assert_eq!(Lane::of(false, Priority::High), Lane::High);
        for lane in Lane::ALL {
            assert_eq!(Lane::parse(lane.as_str()), Some(lane));
            assert_eq!(Lane::ALL[lane.index()], lane);
        }
    }

    #[test]
    fn the_class_is_stamped_into_the_headers_and_read_back() {
        let spec = PrioritySpec {
            default: Priority::Normal,
            max: Priority::High,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(requested(&spec, &headers), Ok(Priority::Normal));
        headers.append("Sluice-Priority", HeaderValue::from_static("HIGH"));
        assert_eq!(requested(&spec, &headers), Ok(Priority::High));
        headers.append("sluice-priority", HeaderValue::from_static("low"));
        assert_eq!(requested(&spec, &headers), Err(BadPriority::Repeated));
        let mut invocation = crate::Invocation {
            id: crate::InvocationId::random(),
            function: "default/hello".parse().unwrap(),
            method: http::Method::POST,
            path: "/".into(),
            query: None,
            forwarded_prefix: String::new(),
            headers,
            body: bytes::Bytes::new(),
            deadline: std::time::SystemTime::now(),
            traceparent: None,
        };
        stamp(&mut invocation.headers, Priority::High);
        assert_eq!(
            invocation.headers.get_all("sluice-priority").iter().count(),
            1
        );
        assert_eq!(invocation.priority(), Priority::High);
        stamp(&mut invocation.headers, Priority::Normal);
        assert!(invocation.headers.get("sluice-priority").is_none());
        assert_eq!(invocation.priority(), Priority::Normal);
    }
}
