//! Sizing the process-wide memory budget: every instance reserves what it
//! may hold (its function's `limits.memory` plus its host-side share,
//! [`instance_reservation`]) from a [`MemoryBudget`] before it starts, and
//! gives it back when its store is dropped, so the instances alive at once
//! never add up to more than the container may hold. [`plan`] sizes the
//! budget from the flags and the container's memory limit.
//!
//! A reservation is granted as soon as it fits, not in arrival order: a
//! function with a small limit never waits behind a large one, which waits
//! until enough is free at once (bounded by its invocation's deadline).

use sluice_api::ByteSize;
pub use sluice_serve::memory::{MemoryBudget, Reservation};

/// Bytes an instance may hold besides its linear memory: its fiber stack,
/// the response body collected from it, and its two log buffers.
pub fn instance_overhead(stack: usize, max_response_body: usize, max_log_bytes: usize) -> u64 {
    (stack + max_response_body + 2 * max_log_bytes) as u64
}

/// What an instance of a function with `limits.memory` = `memory` reserves.
pub fn instance_reservation(memory: u64, overhead: u64) -> u64 {
    memory.saturating_add(overhead)
}

/// The settings a memory plan is made from (`sluice-runtime`'s flags and
/// its cgroup), bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySettings {
    /// The container's memory limit, if it has one.
    pub container_limit: Option<u64>,
    /// `--memory-budget`: the budget itself, overriding the limit.
    pub budget: Option<u64>,
    /// `--memory-reserve`: the process's own share, kept out of the budget.
    pub reserve: u64,
    /// `--max-instance-memory`: the largest `limits.memory` allowed.
    pub max_instance_memory: Option<u64>,
    /// [`instance_overhead`] of this process's settings.
    pub overhead: u64,
}

/// What the settings come to, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The budget; `None` without a container limit or `--memory-budget`.
    pub budget: Option<u64>,
    /// The largest `limits.memory` allowed: as set, or else
    /// [`DEFAULT_MAX_INSTANCE_MEMORY`] lowered to what fits the budget.
    pub max_instance_memory: u64,
}

/// The largest `limits.memory` when neither the flag nor the budget says
/// less: 1Gi.
pub const DEFAULT_MAX_INSTANCE_MEMORY: u64 = 1 << 30;

/// Settings that contradict each other; the message names the flags.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the container's memory limit {limit} leaves nothing for instances after --memory-reserve {reserve} and one instance's {overhead} outside its linear memory: raise the limit or lower --memory-reserve"
    )]
    NothingLeft {
        limit: ByteSize,
        reserve: ByteSize,
        overhead: ByteSize,
    },
    #[error(
        "--memory-budget {budget} is more than the container's memory limit {limit}: the kernel would kill the process first"
    )]
    BudgetOverLimit { budget: ByteSize, limit: ByteSize },
    #[error(
        "--max-instance-memory {max} plus each instance's {overhead} outside it does not fit the memory budget {budget}: no function at that limit could ever run; lower it, or raise the budget"
    )]
    MaxInstanceOverBudget {
        max: ByteSize,
        overhead: ByteSize,
        budget: ByteSize,
    },
}

/// Sizes the budget: `--memory-budget` if set, else the container's limit
/// less `--memory-reserve`; and the largest `limits.memory` so that one
/// instance at it fits.
pub fn plan(settings: MemorySettings) -> Result<MemoryPlan, PlanError> {
    let budget = match (settings.budget, settings.container_limit) {
        (Some(budget), Some(limit)) if budget > limit => {
            return Err(PlanError::BudgetOverLimit {
                budget: ByteSize(budget),
                limit: ByteSize(limit),
            });
        }
        (Some(budget), _) => Some(budget),
        (None, Some(limit)) => Some(limit.saturating_sub(settings.reserve)),
        (None, None) => None,
    };
    let Some(budget) = budget else {
        return Ok(MemoryPlan {
            budget: None,
            max_instance_memory: settings
                .max_instance_memory
                .unwrap_or(DEFAULT_MAX_INSTANCE_MEMORY),
        });
    };
    let room = budget.saturating_sub(settings.overhead);
    if room == 0 {
        return Err(PlanError::NothingLeft {
            limit: ByteSize(settings.container_limit.unwrap_or(budget)),
            reserve: ByteSize(settings.reserve),
            overhead: ByteSize(settings.overhead),
        });
    }
    let max_instance_memory = match settings.max_instance_memory {
        Some(max) if max > room => {
            return Err(PlanError::MaxInstanceOverBudget {
                max: ByteSize(max),
                overhead: ByteSize(settings.overhead),
                budget: ByteSize(budget),
            });
        }
        Some(max) => max,
        None => DEFAULT_MAX_INSTANCE_MEMORY.min(room),
    };
    Ok(MemoryPlan {
        budget: Some(budget),
        max_instance_memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn the_plan_follows_the_flags_and_the_container() {
        let base = MemorySettings {
            container_limit: Some(1024 * MI),
            budget: None,
            reserve: 128 * MI,
            max_instance_memory: None,
            overhead: 8 * MI,
        };
        let plan_of = |change: fn(&mut MemorySettings)| {
            let mut settings = base;
            change(&mut settings);
            plan(settings)
        };
        let ok = |budget: Option<u64>, max: u64| {
            Ok(MemoryPlan {
                budget,
                max_instance_memory: max,
            })
        };
        // The limit less the reserve; the largest instance fits it.
        assert_eq!(plan_of(|_| {}), ok(Some(896 * MI), 888 * MI));
        assert_eq!(
            plan_of(|s| s.max_instance_memory = Some(512 * MI)),
            ok(Some(896 * MI), 512 * MI)
        );
        // The flag overrides the container.
        assert_eq!(
            plan_of(|s| s.budget = Some(300 * MI)),
            ok(Some(300 * MI), 292 * MI)
        );
        // No limit, no budget: the default largest instance.
        assert_eq!(
            plan_of(|s| s.container_limit = None),
            ok(None, DEFAULT_MAX_INSTANCE_MEMORY)
        );
        assert_eq!(
            plan_of(|s| s.container_limit = Some(4096 * MI)),
            ok(Some(3968 * MI), DEFAULT_MAX_INSTANCE_MEMORY)
        );
        assert!(matches!(
            plan_of(|s| s.container_limit = Some(130 * MI)),
            Err(PlanError::NothingLeft { .. })
        ));
        assert!(matches!(
            plan_of(|s| s.budget = Some(2048 * MI)),
            Err(PlanError::BudgetOverLimit { .. })
        ));
        let too_large = plan_of(|s| s.max_instance_memory = Some(1024 * MI)).unwrap_err();
        assert!(
            too_large.to_string().contains("--max-instance-memory 1Gi"),
            "{too_large}"
        );
    }
}
