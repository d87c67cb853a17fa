//! What the running command examined: index keys, documents and the plan chosen, added up by
//! the access paths (`access.rs`, `cursor.rs`, `pipeline_input.rs`) for the profiler and the
//! slow-query log (`commands/profile.rs`).
//!
//! Invariants: the counts live in a task-local set by `commands::run` around one command, so
//! nothing is passed through every signature and nothing is counted outside a command (a note
//! made elsewhere, e.g. on the blocking pool, is dropped); this module imports nothing of the
//! server, so the access layer depends on it without depending on the commands.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static OP: Arc<OpStats>;
}

/// What one command examined, as the profiler and the slow-query log report it.
#[derive(Default)]
pub(crate) struct OpStats {
    pub keys: AtomicU64,
    pub docs: AtomicU64,
    pub plan: Mutex<Option<String>>,
}

/// Adds index keys and documents examined to the running command's count (none outside one).
pub(crate) fn note_examined(keys: u64, docs: u64) {
    let _ = OP.try_with(|s| {
        s.keys.fetch_add(keys, Ordering::Relaxed);
        s.docs.fetch_add(docs, Ordering::Relaxed);
    });
}

/// The running command's plan, as mongod's `planSummary` (the first plan chosen wins).
pub(crate) fn note_plan(summary: impl FnOnce() -> String) {
    let _ = OP.try_with(|s| {
        let mut plan = s.plan.lock().unwrap_or_else(|p| p.into_inner());
        if plan.is_none() {
            *plan = Some(summary());
        }
    });
}

/// Runs `f` with `stats` counting what it examines.
pub(crate) async fn measured<F: Future>(stats: Arc<OpStats>, f: F) -> F::Output {
    OP.scope(stats, f).await
}
