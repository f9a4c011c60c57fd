//! Ordering keys in the in-process queue (local mode): jobs with the same
//! key run one at a time, in the order the queue took them; a job holds
//! its key from its first attempt through its retries until it ends
//! (succeeded, failed for good, dead-lettered or cancelled). What JetStream
//! does with a consumer per ordering bucket ([`sluice_api::ordering`]),
//! here exact per key: keys never wait for each other.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sluice_serve::sync::lock;

/// The keys held by running (or retrying) jobs, each with the jobs that
/// wait for it, in order.
#[derive(Debug)]
pub struct KeyGate<T> {
    held: Mutex<HashMap<String, VecDeque<T>>>,
}

impl<T> Default for KeyGate<T> {
    fn default() -> Self {
        Self {
            held: Mutex::default(),
        }
    }
}

impl<T> KeyGate<T> {
    /// `job` back when it may run now (no key; its key free, which it now
    /// holds; or `holds`: a retry of the job holding its key), or `None`
    /// when it waits behind its key, to come back from [`Self::release`].
    pub fn admit(&self, key: Option<&str>, holds: bool, job: T) -> Option<T> {
        let Some(key) = key else { return Some(job) };
        let mut held = lock(&self.held);
        match held.get_mut(key) {
            Some(_) if holds => Some(job),
            Some(waiting) => {
                waiting.push_back(job);
                None
            }
            None => {
                held.insert(key.to_owned(), VecDeque::new());
                Some(job)
            }
        }
    }

    /// The job holding `key` has ended: the next one waiting for it, which
    /// now holds it, or `None` (the key is free).
    pub fn release(&self, key: &str) -> Option<T> {
        let mut held = lock(&self.held);
        let waiting = held.get_mut(key)?;
        let next = waiting.pop_front();
        if next.is_none() {
            held.remove(key);
        }
        next
    }

    /// Jobs waiting behind a key (not counting those holding one).
    pub fn waiting(&self) -> usize {
        lock(&self.held).values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_lets_one_job_out_at_a_time_in_order() {
        let gate = KeyGate::default();
        assert_eq!(gate.admit(None, false, 0), Some(0), "no key: at once");
        assert_eq!(gate.admit(Some("a"), false, 1), Some(1));
        assert_eq!(gate.admit(Some("b"), false, 2), Some(2), "another key");
        assert_eq!(gate.admit(Some("a"), false, 3), None);
        assert_eq!(gate.admit(Some("a"), false, 4), None);
        assert_eq!(gate.waiting(), 2);
        // Job 1's retry holds the key: it runs, 3 and 4 still wait.
        assert_eq!(gate.admit(Some("a"), true, 1), Some(1));
        assert_eq!(gate.release("a"), Some(3));
        assert_eq!(gate.release("a"), Some(4));
        assert_eq!(gate.release("a"), None);
        assert_eq!(gate.waiting(), 0);
        // Free again: the next job runs at once.
        assert_eq!(gate.admit(Some("a"), false, 5), Some(5));
        assert_eq!(gate.release("b"), None);
        assert_eq!(gate.release("unknown"), None);
    }
}
