//! Which waiting invocation of a function starts next: a synchronous call
//! has a caller waiting on its connection, so it outranks the function's
//! async backlog, but never starves it.
//!
//! The rule: when both wait, sync calls are taken first, except that after
//! [`SYNC_RUN`] sync calls in a row the oldest async invocation goes; so
//! async work still gets at least one start in every `SYNC_RUN + 1` while
//! sync calls keep coming, and all of them when none does. A call with an
//! ordering key waits in its key's order instead (a sync call never
//! overtakes an invocation accepted before it on its key).

/// Sync calls started in a row, while async invocations wait, before one
/// async invocation starts.
pub const SYNC_RUN: u32 = 4;

/// The queue the next start comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The oldest waiting synchronous call.
    Sync,
    /// The oldest waiting async invocation (or retry, or keyed call).
    Async,
}

/// Which queue to take from first, given whether each has work waiting and
/// how many sync calls started in a row since the last async start; the
/// other queue is the fallback when the first turns out empty. `None` when
/// neither waits.
pub fn next(sync_waiting: bool, async_waiting: bool, syncs_in_a_row: u32) -> Option<Next> {
    match (sync_waiting, async_waiting) {
        (false, false) => None,
        (true, false) => Some(Next::Sync),
        (false, true) => Some(Next::Async),
        (true, true) if syncs_in_a_row >= SYNC_RUN => Some(Next::Async),
        (true, true) => Some(Next::Sync),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_calls_go_first_but_every_fifth_start_is_async_while_both_wait() {
        let cases = [
            // (sync waiting, async waiting, syncs in a row, next)
            (false, false, 0, None),
            (true, false, 0, Some(Next::Sync)),
            (true, false, 100, Some(Next::Sync)),
            (false, true, 0, Some(Next::Async)),
            (false, true, 100, Some(Next::Async)),
            (true, true, 0, Some(Next::Sync)),
            (true, true, SYNC_RUN - 1, Some(Next::Sync)),
            (true, true, SYNC_RUN, Some(Next::Async)),
            (true, true, SYNC_RUN + 7, Some(Next::Async)),
        ];
        for (sync, async_, run, expected) in cases {
            assert_eq!(next(sync, async_, run), expected, "{sync} {async_} {run}");
        }
    }

    #[test]
    fn a_steady_stream_of_both_starts_one_async_in_every_sync_run_plus_one() {
        let mut run = 0;
        let mut starts = Vec::new();
        for _ in 0..(SYNC_RUN + 1) * 3 {
            let taken = next(true, true, run).unwrap();
            run = if taken == Next::Sync { run + 1 } else { 0 };
            starts.push(taken);
        }
        let asyncs = starts.iter().filter(|n| **n == Next::Async).count();
        assert_eq!(asyncs, 3, "{starts:?}");
    }
}
