//! What the running command examined: index keys, documents and the plan chosen, added up by
//! the access paths (`access.rs`, `cursor.rs`, `pipeline_input.rs`) for the profiler and the
//! slow-query log (`commands/profile.rs`).
//!
//! Invariants: the counts live in a task-local set by `commands::run` around one command, so
//! nothing is passed through every signature and nothing is counted outside a command (a note
//! made elsewhere, e.g. on the blocking pool, is dropped); this module imports nothing of the
//! server, so the access layer depends on it without depending on the commands.
//! - Noting costs every planned read two atomic adds and, for the plan, at most one `Arc`
//!   clone: the summary text is made only when an entry or log line is written.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mangrove_storage::IndexInfo;

tokio::task_local! {
    static OP: Arc<OpStats>;
}

/// What one command examined, as the profiler and the slow-query log report it.
#[derive(Default)]
pub(crate) struct OpStats {
    pub keys: AtomicU64,
    pub docs: AtomicU64,
    /// The first plan the command chose.
    pub plan: OnceLock<Plan>,
    /// A blocking stage spilled to disk (mongod's `usedDisk`).
    pub used_disk: AtomicBool,
    /// `killOp` asked the command to stop (`ops.rs`): its next interruption check fails.
    pub killed: AtomicBool,
    /// Wakes a command waiting (a `getMore` awaiting data) when it is killed.
    pub kill_wake: tokio::sync::Notify,
    /// Interruption checks made so far (`access::check_deadline`): how long a read has run.
    pub checks: std::sync::atomic::AtomicU32,
    /// The command runs JavaScript (`$where`, `$function`, `$accumulator`): its reads leave
    /// the async worker to the runtime's other tasks (see `access::with_deadline`).
    pub runs_js: bool,
}

impl OpStats {
    /// Asks the command to stop: its next interruption check fails, and a wait ends now.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill_wake.notify_waiters();
    }
}

/// An access path as mongod's `planSummary` names it.
pub(crate) enum Plan {
    CollectionScan,
    IdPoint,
    IdRange,
    Index(Arc<IndexInfo>),
}

impl Plan {
    /// mongod's text: `COLLSCAN`, `IDHACK`, `IXSCAN { a: 1, b: -1 }`.
    pub fn summary(&self) -> String {
        match self {
            Plan::CollectionScan => "COLLSCAN".to_string(),
            Plan::IdPoint => "IDHACK".to_string(),
            Plan::IdRange => "IXSCAN { _id: 1 }".to_string(),
            Plan::Index(index) => {
                let fields: Vec<String> = index
                    .key
                    .key_pattern
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                format!("IXSCAN {{ {} }}", fields.join(", "))
            }
        }
    }
}

/// Adds index keys and documents examined to the running command's count (none outside one).
pub(crate) fn note_examined(keys: u64, docs: u64) {
    let _ = OP.try_with(|s| {
        s.keys.fetch_add(keys, Ordering::Relaxed);
        s.docs.fetch_add(docs, Ordering::Relaxed);
    });
}

/// The running command spilled to disk (`spill.rs`, when it opens a spill file).
pub(crate) fn note_used_disk() {
    let _ = OP.try_with(|s| s.used_disk.store(true, Ordering::Relaxed));
}

/// The running command's plan (the first plan chosen wins).
pub(crate) fn note_plan(plan: impl FnOnce() -> Plan) {
    let _ = OP.try_with(|s| {
        if s.plan.get().is_none() {
            let _ = s.plan.set(plan());
        }
    });
}

/// Whether `killOp` asked the running command to stop (false outside a command).
pub(crate) fn killed() -> bool {
    OP.try_with(|s| s.killed.load(Ordering::Relaxed))
        .unwrap_or(false)
}

/// Counts an interruption check of the running command: true once, at the check that makes
/// it a long read (`LONG_READ_CHECKS` checks, some 500 documents).
pub(crate) fn became_long() -> bool {
    const LONG_READ_CHECKS: u32 = 2;
    OP.try_with(|s| s.checks.fetch_add(1, Ordering::Relaxed) + 1 == LONG_READ_CHECKS)
        .unwrap_or(false)
}

/// Whether the running command runs JavaScript (false outside a command).
pub(crate) fn runs_javascript() -> bool {
    OP.try_with(|s| s.runs_js).unwrap_or(false)
}

/// Whether a command's body names a JavaScript operator (a key `$where`, `$function` or
/// `$accumulator`, at any depth): a byte search, no parse, so a string value spelling one
/// counts too. Every find and aggregate pays it, so it is one pass over the `$`s rather than a
/// search per name.
pub(crate) fn names_javascript(body: &[u8]) -> bool {
    const NAMES: [&[u8]; 3] = [b"$where\0", b"$function\0", b"$accumulator\0"];
    memchr::memchr_iter(b'$', body).any(|at| NAMES.iter().any(|n| body[at..].starts_with(n)))
}

/// Returns once `killOp` has asked the running command to stop (never outside a command): a
/// command that waits selects on it, so a kill ends the wait.
pub(crate) async fn until_killed() {
    let Ok(stats) = OP.try_with(Arc::clone) else {
        return std::future::pending().await;
    };
    let woken = stats.kill_wake.notified();
    tokio::pin!(woken);
    // Registered before the flag is read, so a kill between the two still wakes it.
    woken.as_mut().enable();
    if !stats.killed.load(Ordering::Relaxed) {
        woken.await;
    }
}

/// Runs `f` with `stats` counting what it examines.
pub(crate) async fn measured<F: Future>(stats: Arc<OpStats>, f: F) -> F::Output {
    OP.scope(stats, f).await
}

#[cfg(test)]
mod tests {
    use super::names_javascript;

    #[test]
    fn names_javascript_finds_the_operators_as_keys_only() {
        let body = |d: bson::Document| bson::RawDocumentBuf::try_from(&d).unwrap();
        for (d, named) in [
            (
                bson::doc! { "find": "c", "filter": { "$where": "true" } },
                true,
            ),
            (
                bson::doc! { "aggregate": "c", "pipeline": [{ "$group": { "_id": 1,
                "a": { "$accumulator": {} } } }] },
                true,
            ),
            (
                bson::doc! { "find": "c", "filter": { "$expr": { "$function": {} } } },
                true,
            ),
            // A longer key is not the operator; a string value equal to one counts (the search
            // errs towards JavaScript, which only moves the read off the async worker).
            (
                bson::doc! { "find": "c", "filter": { "s": "$where" } },
                true,
            ),
            (
                bson::doc! { "find": "c", "filter": { "$whereabouts": 1 } },
                false,
            ),
            (bson::doc! { "find": "$", "filter": { "$gt$": 1 } }, false),
        ] {
            assert_eq!(names_javascript(body(d.clone()).as_bytes()), named, "{d}");
        }
    }
}
