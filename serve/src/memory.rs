//! The memory limit of the container this process runs in, read from its
//! memory cgroup (v1 `memory.limit_in_bytes` or v2 `memory.max`), so that a
//! binary can size what it holds at once to what the kernel lets it keep;
//! and [`MemoryBudget`], from which what is held is reserved.
//!
//! The process's cgroup is found as the kernel names it in
//! `/proc/self/cgroup`, placed under where that hierarchy is mounted
//! (`/proc/self/mountinfo`: a container without its own cgroup namespace
//! sees the host's path there, mounted at its own root). The limit is the
//! smallest of that cgroup's and its ancestors' up to the mount, since a
//! parent's limit binds its children too.

use crate::sync;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Which cgroup hierarchy holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The file holding the limit in a cgroup's folder.
    pub fn limit_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.limit_in_bytes",
            Self::V2 => "memory.max",
        }
    }
}

/// A memory limit and the file it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    /// Bytes.
    pub limit: u64,
    pub file: PathBuf,
}

/// A limit file that exists but does not say a limit.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the memory limit from {file}: {problem}")]
pub struct CgroupError {
    pub file: PathBuf,
    pub problem: String,
}

/// The memory limit of this process's cgroup; `None` when it has none
/// (or is not in a memory cgroup, or not on Linux).
pub fn container_memory_limit() -> Result<Option<CgroupMemory>, CgroupError> {
    let (Ok(cgroup), Ok(mountinfo)) = (
        std::fs::read_to_string("/proc/self/cgroup"),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return Ok(None);
    };
    let Some((version, path)) = memory_cgroup(&cgroup) else {
        return Ok(None);
    };
    let Some(mount) = memory_mount(&mountinfo, version) else {
        return Ok(None);
    };
    let mut dir = mount.dir_of(&path);
    if !dir.is_dir() {
        // Another namespace's path: the mount is this container's own.
        dir.clone_from(&mount.point);
    }
    let mut smallest: Option<CgroupMemory> = None;
    loop {
        let file = dir.join(version.limit_file());
        if let Ok(text) = std::fs::read_to_string(&file) {
            let limit = parse_limit(&text).map_err(|problem| CgroupError {
                file: file.clone(),
                problem,
            })?;
            if let Some(limit) = limit
                && smallest.as_ref().is_none_or(|s| limit < s.limit)
            {
                smallest = Some(CgroupMemory { limit, file });
            }
        }
        if dir == mount.point || !dir.pop() || !dir.starts_with(&mount.point) {
            break;
        }
    }
    Ok(smallest)
}

/// The cgroup path of the memory controller in `/proc/self/cgroup`: the v1
/// hierarchy that lists `memory` if there is one (a hybrid system keeps it
/// there), else the v2 one (`0::<path>`).
pub fn memory_cgroup(proc_cgroup: &str) -> Option<(CgroupVersion, String)> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some((CgroupVersion::V1, path.to_owned()));
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some((CgroupVersion::V2, path.to_owned()));
        }
    }
    v2
}

/// Where a cgroup hierarchy is mounted: the cgroup shown at `point` is
/// `root` of the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: String,
    pub point: PathBuf,
}

impl CgroupMount {
    /// The folder of the cgroup whose path is `path` in the hierarchy.
    pub fn dir_of(&self, path: &str) -> PathBuf {
        let relative = path
            .strip_prefix(self.root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        self.point.join(relative)
    }
}

/// The mount of the hierarchy holding the memory controller, from
/// `/proc/self/mountinfo` (`id parent major:minor root point options
/// [optional…] - fstype source super-options`).
pub fn memory_mount(mountinfo: &str, version: CgroupVersion) -> Option<CgroupMount> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount: Vec<&str> = mount.split(' ').collect();
        let fs: Vec<&str> = fs.split(' ').collect();
        let wanted = match version {
            CgroupVersion::V1 => {
                fs.first() == Some(&"cgroup")
                    && fs.get(2)?.split(',').any(|option| option == "memory")
            }
            CgroupVersion::V2 => fs.first() == Some(&"cgroup2"),
        };
        if !wanted {
            return None;
        }
        Some(CgroupMount {
            root: unescape(mount.get(3)?),
            point: PathBuf::from(unescape(mount.get(4)?)),
        })
    })
}

/// Mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Above this a v1 limit means "none": the kernel shows an unset limit as
/// the largest page-aligned `i64`.
const UNLIMITED_V1: u64 = 1 << 62;

/// A limit file's value: `None` for no limit (`max` in v2, a huge number
/// in v1).
pub fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is neither a number of bytes nor \"max\""))?;
    Ok((bytes < UNLIMITED_V1).then_some(bytes))
}

/// Bytes that may be reserved at once across a process (by the runtime's
/// instances, the gateway's buffered requests). A reservation is granted
/// as soon as it fits, not in arrival order: a small one never waits
/// behind a large one that does not fit yet.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    reserved: Mutex<u64>,
    freed: Notify,
    /// Bytes reserved now (for a metric).
    gauge: Gauge,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Arc<Self> {
        Self::with_gauge(total, Gauge::default())
    }

    /// A budget that keeps `gauge` at the bytes reserved.
    pub fn with_gauge(total: u64, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            total,
            reserved: Mutex::new(0),
            freed: Notify::new(),
            gauge,
        })
    }

    /// The budget, bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        *sync::lock(&self.reserved)
    }

    /// The gauge of bytes reserved now (to register in a registry).
    pub fn reserved_gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    /// Waits until `bytes` fit beside what is reserved, then reserves them.
    /// A reservation larger than the whole budget would wait forever:
    /// callers refuse it before they wait.
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before the check, so a release in between wakes it.
            freed.as_mut().enable();
            if let Some(reservation) = self.try_reserve(bytes) {
                return reservation;
            }
            freed.await;
        }
    }

    /// Reserves `bytes` if they fit now.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: u64) -> bool {
        let mut reserved = sync::lock(&self.reserved);
        let Some(after) = reserved
            .checked_add(bytes)
            .filter(|after| *after <= self.total)
        else {
            return false;
        };
        *reserved = after;
        self.gauge.set(i64::try_from(after).unwrap_or(i64::MAX));
        true
    }

    fn release(&self, bytes: u64) {
        let mut reserved = sync::lock(&self.reserved);
        *reserved -= bytes;
        self.gauge.set(i64::try_from(*reserved).unwrap_or(i64::MAX));
        drop(reserved);
        // Every waiter checks again: a smaller one may fit where the first
        // in line does not.
        self.freed.notify_waiters();
    }
}

/// Bytes held from a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    /// Adds `bytes` to the reservation if they fit now.
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        let grown = self.budget.take(bytes);
        if grown {
            self.bytes += bytes;
        }
        grown
    }

    /// The budget it is reserved from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reservations_fit_within_the_budget_and_come_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(50).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.reserved_gauge().get(), 100);
        assert!(budget.try_reserve(1).is_none());
        drop(a);
        assert_eq!(budget.reserved_gauge().get(), 40);
        assert!(budget.try_reserve(101).is_none());
        drop(b);
        let mut c = budget.try_reserve(0).unwrap();
        assert!(c.try_grow(100));
        assert!(!c.try_grow(1));
        drop(c);
        assert!(budget.try_reserve(100).is_some());
        assert_eq!(budget.reserved_gauge().get(), 0);
    }

    #[tokio::test]
    async fn a_small_reservation_passes_a_large_one_that_does_not_fit_yet() {
        let budget = MemoryBudget::new(100);
        let held = budget.try_reserve(70).unwrap();
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(80).await }
        });
        // The large one waits; a small one that fits is not queued behind it.
        let small = tokio::time::timeout(Duration::from_secs(10), budget.reserve(20))
            .await
            .expect("the small reservation fits at once");
        assert!(!large.is_finished());
        drop((held, small));
        let large = tokio::time::timeout(Duration::from_secs(10), large)
            .await
            .expect("the large reservation is granted once enough is free")
            .unwrap();
        assert_eq!(budget.reserved_gauge().get(), 80);
        drop(large);
    }

    #[test]
    fn the_memory_controller_is_found_in_v1_hybrid_and_v2_systems() {
        let cases = [
            (
                "4:memory:/kubepods/pod1/abc\n0::/\n",
                Some((CgroupVersion::V1, "/kubepods/pod1/abc")),
            ),
            ("5:cpu,memory:/a\n", Some((CgroupVersion::V1, "/a"))),
            (
                "0::/kubepods.slice/x.scope\n",
                Some((CgroupVersion::V2, "/kubepods.slice/x.scope")),
            ),
            ("3:cpuset:/\n1:name=systemd:/x\n", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let expected = expected.map(|(v, p)| (v, p.to_owned()));
            assert_eq!(memory_cgroup(text), expected, "{text:?}");
        }
    }

    #[test]
    fn the_hierarchy_is_placed_under_its_mount() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
33 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 30 0:31 /kubepods/pod1 /sys/fs/cgroup/memory rw,nosuid master:9 - cgroup cgroup rw,memory
40 30 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let v1 = memory_mount(mountinfo, CgroupVersion::V1).unwrap();
        assert_eq!(v1.root, "/kubepods/pod1");
        assert_eq!(v1.point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            v1.dir_of("/kubepods/pod1/abc"),
            PathBuf::from("/sys/fs/cgroup/memory/abc")
        );
        assert_eq!(
            v1.dir_of("/elsewhere"),
            PathBuf::from("/sys/fs/cgroup/memory/elsewhere")
        );
        let v2 = memory_mount(mountinfo, CgroupVersion::V2).unwrap();
        assert_eq!(v2.dir_of("/"), PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(memory_mount("", CgroupVersion::V1), None);
    }

    #[test]
    fn limit_files_say_a_number_or_none() {
        assert_eq!(parse_limit("1073741824\n"), Ok(Some(1 << 30)));
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("9223372036854771712\n"), Ok(None));
        assert!(parse_limit("lots").unwrap_err().contains("\"lots\""));
    }
}
