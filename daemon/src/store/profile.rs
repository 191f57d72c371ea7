//! A counter-based profile of the durable write path, for the benchmark only:
//! per-phase nanosecond sums and counts, plus the sizes of committed groups.
//!
//! Off unless the daemon starts with `DEFENSECLAW_PROFILE_OUT=<file>` in its
//! environment; then the writer thread writes the figures there as JSON when
//! the store closes (daemon shutdown). Off, every probe is one relaxed atomic
//! load and no clock read.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Environment variable naming the file the profile is written to.
pub const PROFILE_ENV: &str = "DEFENSECLAW_PROFILE_OUT";

/// A timed phase of one durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Authenticating and authorising the caller (rpc/authn).
    Authorize,
    /// The caller's job waiting in the queue until the writer thread takes it.
    Handoff,
    /// `BEGIN IMMEDIATE` of a group (per group).
    Begin,
    /// The operation's statements, in its savepoint (per job).
    Statements,
    /// The group's `COMMIT`, i.e. the fsync (per group).
    Commit,
    /// Publishing a committed group: head, state cache, live entries (per group).
    Publish,
    /// From the writer answering to the caller's task running again (per job).
    Wake,
    /// Publishing an enforcement change to runtime enforcers (per change).
    FanOut,
}

const PHASES: [Phase; 8] = [
    Phase::Authorize,
    Phase::Handoff,
    Phase::Begin,
    Phase::Statements,
    Phase::Commit,
    Phase::Publish,
    Phase::Wake,
    Phase::FanOut,
];

impl Phase {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Authorize => "authorize",
            Phase::Handoff => "handoff_to_writer",
            Phase::Begin => "begin",
            Phase::Statements => "statements",
            Phase::Commit => "commit_fsync",
            Phase::Publish => "publish",
            Phase::Wake => "caller_wakeup",
            Phase::FanOut => "fan_out",
        }
    }
}

/// Group sizes are counted in power-of-two buckets: 1, 2–3, 4–7, … 512+.
const BUCKETS: usize = 11;

struct Counters {
    nanos: [AtomicU64; PHASES.len()],
    counts: [AtomicU64; PHASES.len()],
    groups: [AtomicU64; BUCKETS],
    jobs: AtomicU64,
    first_commit_ns: AtomicU64,
    last_commit_ns: AtomicU64,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static OUT: OnceLock<PathBuf> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();
static COUNTERS: Counters = Counters {
    nanos: [const { AtomicU64::new(0) }; PHASES.len()],
    counts: [const { AtomicU64::new(0) }; PHASES.len()],
    groups: [const { AtomicU64::new(0) }; BUCKETS],
    jobs: AtomicU64::new(0),
    first_commit_ns: AtomicU64::new(0),
    last_commit_ns: AtomicU64::new(0),
};

/// Turns the profile on when [`PROFILE_ENV`] names a file (once, at store open).
pub(super) fn init_from_env() {
    if let Some(path) = std::env::var_os(PROFILE_ENV).filter(|p| !p.is_empty())
        && OUT.set(PathBuf::from(path)).is_ok()
    {
        EPOCH.get_or_init(Instant::now);
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Whether probes record anything.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Now, when profiling; `None` (no clock read) otherwise.
#[inline]
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Adds the time since `since` to `phase` (nothing when `since` is `None`).
#[inline]
pub fn record(phase: Phase, since: Option<Instant>) {
    if let Some(t) = since {
        add(phase, t.elapsed().as_nanos());
    }
}

fn add(phase: Phase, nanos: u128) {
    let i = phase.index();
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    if let (Some(sum), Some(count)) = (COUNTERS.nanos.get(i), COUNTERS.counts.get(i)) {
        sum.fetch_add(nanos, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one committed group of `jobs` jobs.
pub(super) fn group(jobs: usize) {
    if !enabled() {
        return;
    }
    let bucket = (usize::BITS - jobs.max(1).leading_zeros()) as usize - 1;
    if let Some(b) = COUNTERS.groups.get(bucket.min(BUCKETS - 1)) {
        b.fetch_add(1, Ordering::Relaxed);
    }
    COUNTERS.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
    let now = EPOCH.get().map_or(0, |e| {
        u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX)
    });
    let _ = COUNTERS.first_commit_ns.compare_exchange(
        0,
        now.max(1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    COUNTERS.last_commit_ns.store(now, Ordering::Relaxed);
}

/// The figures so far, as JSON.
pub fn snapshot() -> serde_json::Value {
    let mut phases = serde_json::Map::new();
    for phase in PHASES {
        let i = phase.index();
        let n = COUNTERS
            .nanos
            .get(i)
            .map_or(0, |a| a.load(Ordering::Relaxed));
        let c = COUNTERS
            .counts
            .get(i)
            .map_or(0, |a| a.load(Ordering::Relaxed));
        phases.insert(
            phase.name().to_owned(),
            serde_json::json!({ "total_ns": n, "count": c }),
        );
    }
    let histogram: Vec<serde_json::Value> = COUNTERS
        .groups
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let low = 1u64 << i;
            let label = if i + 1 == BUCKETS {
                format!("{low}+")
            } else if low == 1 {
                "1".to_owned()
            } else {
                format!("{low}-{}", (low << 1) - 1)
            };
            serde_json::json!({ "jobs": label, "groups": a.load(Ordering::Relaxed) })
        })
        .collect();
    let first = COUNTERS.first_commit_ns.load(Ordering::Relaxed);
    let last = COUNTERS.last_commit_ns.load(Ordering::Relaxed);
    serde_json::json!({
        "phases": phases,
        "group_sizes": histogram,
        "jobs": COUNTERS.jobs.load(Ordering::Relaxed),
        "commit_span_ns": last.saturating_sub(first),
    })
}

/// Writes the profile to the file named at start-up (on store close).
pub(super) fn dump() {
    let Some(path) = OUT.get() else { return };
    if let Err(e) = write(path) {
        tracing::warn!(error = %e, "writing the write-path profile failed");
    }
}

/// Only numbers and fixed labels go out (no target, reason or caller), into a
/// private file; a symlink at the path is refused rather than followed.
fn write(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let text = serde_json::to_string_pretty(&snapshot()).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(text.as_bytes())
}
