//! Schedule triggers (`spec.triggers.schedule`): parsing a cron expression
//! in a time zone, deciding which tick is due, and the CloudEvent
//! invocation a tick makes. Pure: the caller reads the clock and sleeps.
//!
//! Every gateway runs every schedule; the invocation id of a tick derives
//! from the function, the schedule's name and the tick's instant
//! ([`tick_invocation_id`]), and doubles as `Nats-Msg-Id`, so the stream's
//! duplicate window keeps one invocation per tick however many gateways
//! fire it.

use std::time::SystemTime;

use bytes::Bytes;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::names::FunctionRef;
use crate::{Invocation, InvocationId, ScheduleTrigger};

/// How late a tick may still fire: a gateway that wakes later than this
/// after a tick (it was suspended, or every gateway was down) skips it.
/// It is well inside JetStream's default duplicate window (2m), so a tick
/// fired late by one gateway still dedupes against another's on-time
/// firing of it.
pub const LATE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// `ce-type` prefix of a tick; the schedule's name follows it.
pub const SCHEDULE_EVENT_TYPE: &str = "dev.sluice.schedule";

/// A cron expression in a time zone, parsed.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

/// Which part of a schedule trigger is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0:?} is not a cron expression: {1}")]
    Cron(String, String),
    #[error("{0:?} is not an IANA time zone (such as UTC or Europe/Paris): {1}")]
    TimeZone(String, String),
}

impl ScheduleError {
    /// The field at fault, under `spec.triggers.schedule[<index>]`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Cron(..) => "cron",
            Self::TimeZone(..) => "timeZone",
        }
    }
}

/// What a schedule's loop does next, given the last tick it handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due before this instant.
    SleepUntil(Timestamp),
    /// Fire this tick (the latest due one, within [`LATE_GRACE`]); when
    /// `skipped`, earlier due ticks were passed over. The tick becomes the
    /// last handled.
    Fire { tick: Timestamp, skipped: bool },
    /// The due ticks are all older than [`LATE_GRACE`]: none fires, and
    /// `now` becomes the last handled.
    Skip { oldest: Timestamp },
    /// The expression matches no instant after the last tick.
    Never,
}

impl Schedule {
    /// Parses `cron` (five fields, minute to day of week, or six with a
    /// leading seconds field; `@hourly`-style nicknames; names of months
    /// and weekdays) in the IANA time zone `time_zone`.
    pub fn parse(cron: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::Cron(cron.to_owned(), e.to_string()))?;
        let zone = TimeZone::get(time_zone)
            .map_err(|e| ScheduleError::TimeZone(time_zone.to_owned(), e.to_string()))?;
        Ok(Self { cron: parsed, zone })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The last tick at or before `at`.
    fn latest_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        let zoned = at.to_zoned(self.zone.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The missed-tick policy: after `last` (the last tick handled, or the
    /// loop's start), at `now`, the latest due tick fires if it is at most
    /// [`LATE_GRACE`] old; older due ticks are skipped, never run late.
    pub fn step(&self, last: Timestamp, now: Timestamp) -> Step {
        let Some(next) = self.next_after(last) else {
            return Step::Never;
        };
        if next > now {
            return Step::SleepUntil(next);
        }
        let latest = self.latest_at_or_before(now).unwrap_or(next).max(next);
        let grace = jiff::SignedDuration::try_from(LATE_GRACE).unwrap_or_default();
        if now.duration_since(latest) <= grace {
            Step::Fire {
                tick: latest,
                skipped: latest != next,
            }
        } else {
            Step::Skip { oldest: next }
        }
    }
}

impl ScheduleTrigger {
    /// The schedule's name: `name`, or its position in the list.
    pub fn name_at(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }
}

/// The invocation id of `function`'s tick at `tick` of schedule `name`:
/// the same on every gateway, so the queue stores the tick once.
pub fn tick_invocation_id(function: &FunctionRef, name: &str, tick: Timestamp) -> InvocationId {
    // A newline cannot occur in an HTTP Idempotency-Key, so no request
    // maps to a tick's id.
    InvocationId::for_idempotency_key(function, &format!("schedule\n{name}\n{}", tick.as_second()))
}

/// The CloudEvents binary-mode request of one tick: `POST` to the
/// trigger's `path`, `ce-type` `dev.sluice.schedule.<name>`, `ce-source`
/// `/sluice/<namespace>/<function>/schedules/<name>`, `ce-time` the tick
/// (not the firing), `ce-id` the invocation id, the trigger's `body` and
/// `contentType`. Nobody waits for it past `deadline`.
pub fn tick_invocation(
    function: &FunctionRef,
    trigger: &ScheduleTrigger,
    name: &str,
    tick: Timestamp,
    deadline: SystemTime,
) -> Invocation {
    let id = tick_invocation_id(function, name, tick);
    let (path, query) = match trigger.path.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (trigger.path.clone(), None),
    };
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("ce-specversion", "1.0".into());
    set("ce-id", id.to_string());
    set(
        "ce-source",
        format!(
            "/sluice/{}/{}/schedules/{name}",
            function.namespace, function.name
        ),
    );
    set("ce-type", format!("{SCHEDULE_EVENT_TYPE}.{name}"));
    set("ce-subject", trigger.cron.clone());
    set("ce-time", tick.to_string());
    if let Some(content_type) = &trigger.content_type {
        set("content-type", content_type.clone());
    }
    Invocation {
        id,
        function: function.clone(),
        method: Method::POST,
        path,
        query,
        forwarded_prefix: String::new(),
        headers,
        body: Bytes::from(trigger.body.clone().unwrap_or_default()),
        deadline,
        traceparent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_five_and_six_fields_and_refuses_the_rest() {
        for (cron, zone, error) in [
            ("*/5 * * * *", "UTC", None),
            ("0 */5 * * * *", "Europe/Paris", None),
            ("@hourly", "America/New_York", None),
            ("0 9 * * MON-FRI", "Asia/Tokyo", None),
            ("* * * *", "UTC", Some("cron")),
            ("0 0 0 1 1 * 2030", "UTC", Some("cron")),
            ("61 * * * *", "UTC", Some("cron")),
            ("every minute", "UTC", Some("cron")),
            ("", "UTC", Some("cron")),
            ("* * * * *", "Mars/Olympus", Some("timeZone")),
            ("* * * * *", "", Some("timeZone")),
        ] {
            let parsed = Schedule::parse(cron, zone);
            assert_eq!(
                parsed.as_ref().err().map(ScheduleError::field),
                error,
                "{cron:?} in {zone:?}: {parsed:?}"
            );
        }
    }

    #[test]
    fn next_ticks_follow_the_time_zone() {
        for (cron, zone, after, next) in [
            // Five fields: seconds are 0.
            (
                "*/5 * * * *",
                "UTC",
                "2026-12-06T14:02:30Z",
                "2026-12-06T14:05:00Z",
            ),
            // Six fields: the first is seconds.
            (
                "*/10 * * * * *",
                "UTC",
                "2026-12-06T14:02:30Z",
                "2026-12-06T14:02:40Z",
            ),
            // Strictly after: a tick is never its own next.
            (
                "* * * * * *",
                "UTC",
                "2026-12-06T14:02:30Z",
                "2026-12-06T14:02:31Z",
            ),
            // Day of month and day of week both restricted: either
            // matches (Vixie cron), so Friday the 11th comes before
            // Sunday the 13th.
            (
                "0 0 13 * FRI",
                "UTC",
                "2026-12-06T14:00:00Z",
                "2026-12-11T00:00:00Z",
            ),
            // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
            (
                "0 9 * * *",
                "Europe/Paris",
                "2026-12-06T10:00:00Z",
                "2026-12-07T08:00:00Z",
            ),
            (
                "0 9 * * *",
                "Europe/Paris",
                "2026-07-06T10:00:00Z",
                "2026-07-07T07:00:00Z",
            ),
            // 02:30 does not exist in Paris on 2027-03-28 (clocks jump
            // from 02:00 to 03:00): that day's tick falls in the gap and
            // runs once, at the first instant after it.
            (
                "30 2 * * *",
                "Europe/Paris",
                "2027-03-27T12:00:00Z",
                "2027-03-28T01:00:00Z",
            ),
        ] {
            let schedule = Schedule::parse(cron, zone).unwrap();
            assert_eq!(
                schedule.next_after(ts(after)),
                Some(ts(next)),
                "{cron:?} in {zone} after {after}"
            );
        }
    }

    #[test]
    fn steps_fire_on_time_late_within_grace_and_skip_past_it() {
        let every_minute = Schedule::parse("* * * * *", "UTC").unwrap();
        for (last, now, step) in [
            // Before the next tick: sleep until it.
            (
                "2026-12-06T14:00:00Z",
                "2026-12-06T14:00:20Z",
                Step::SleepUntil(ts("2026-12-06T14:01:00Z")),
            ),
            // At the tick: fire it.
            (
                "2026-12-06T14:00:00Z",
                "2026-12-06T14:01:00Z",
                Step::Fire {
                    tick: ts("2026-12-06T14:01:00Z"),
                    skipped: false,
                },
            ),
            // Woken 59s late: still fired.
            (
                "2026-12-06T14:00:00Z",
                "2026-12-06T14:01:59Z",
                Step::Fire {
                    tick: ts("2026-12-06T14:01:00Z"),
                    skipped: false,
                },
            ),
            // Three ticks due: only the latest fires, the others are
            // skipped.
            (
                "2026-12-06T14:00:00Z",
                "2026-12-06T14:03:10Z",
                Step::Fire {
                    tick: ts("2026-12-06T14:03:00Z"),
                    skipped: true,
                },
            ),
        ] {
            assert_eq!(
                every_minute.step(ts(last), ts(now)),
                step,
                "{last} then {now}"
            );
        }
        // Everything was down for an hour: the due ticks are older than
        // the grace, and none runs late.
        let hourly = Schedule::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(
            hourly.step(ts("2026-12-06T12:30:00Z"), ts("2026-12-06T14:20:00Z")),
            Step::Skip {
                oldest: ts("2026-12-06T13:00:00Z")
            }
        );
        // February 30th never comes: refused, or never due.
        match Schedule::parse("0 0 30 2 *", "UTC") {
            Ok(never) => assert_eq!(
                never.step(ts("2026-12-06T14:00:00Z"), ts("2026-12-06T14:00:00Z")),
                Step::Never
            ),
            Err(e) => assert_eq!(e.field(), "cron"),
        }
    }

    #[test]
    fn a_tick_has_one_id_per_function_schedule_and_instant() {
        let f = FunctionRef::new("default", "tick").unwrap();
        let g = FunctionRef::new("default", "tock").unwrap();
        let t = ts("2026-12-06T14:00:00Z");
        let u = ts("2026-12-06T14:00:01Z");
        assert_eq!(
            tick_invocation_id(&f, "a", t),
            tick_invocation_id(&f, "a", t)
        );
        assert_ne!(
            tick_invocation_id(&f, "a", t),
            tick_invocation_id(&f, "a", u)
        );
        assert_ne!(
            tick_invocation_id(&f, "a", t),
            tick_invocation_id(&f, "b", t)
        );
        assert_ne!(
            tick_invocation_id(&f, "a", t),
            tick_invocation_id(&g, "a", t)
        );
    }

    #[test]
    fn a_tick_is_a_binary_mode_cloudevent() {
        let f = FunctionRef::new("shop", "report").unwrap();
        let trigger = ScheduleTrigger {
            name: Some("nightly".into()),
            cron: "0 2 * * *".into(),
            time_zone: "Europe/Paris".into(),
            path: "/tick?full=1".into(),
            body: Some("{\"x\":1}".into()),
            content_type: Some("application/json".into()),
        };
        let tick = ts("2026-12-06T01:00:00Z");
        let invocation = tick_invocation(&f, &trigger, "nightly", tick, SystemTime::UNIX_EPOCH);
        let header = |name: &str| invocation.headers.get(name).unwrap().to_str().unwrap();
        assert_eq!(invocation.method, Method::POST);
        assert_eq!(invocation.path, "/tick");
        assert_eq!(invocation.query.as_deref(), Some("full=1"));
        assert_eq!(header("ce-specversion"), "1.0");
        assert_eq!(header("ce-type"), "dev.sluice.schedule.nightly");
        assert_eq!(header("ce-source"), "/sluice/shop/report/schedules/nightly");
        assert_eq!(header("ce-time"), "2026-12-06T01:00:00Z");
        assert_eq!(header("ce-id"), invocation.id.as_str());
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(&invocation.body[..], b"{\"x\":1}");
        assert_eq!(invocation.id, tick_invocation_id(&f, "nightly", tick));
    }
}
