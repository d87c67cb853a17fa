//! Checkpoints: fold committed versions into the base store, evict what memory no longer
//! needs, and remove the log segments the checkpoint covers.
//!
//! A checkpoint at timestamp C (the newest installed commit when it collects, under the state
//! lock, so no key's version at C has been pruned yet) waits until the log is durable through
//! C, then writes, for every key changed since the previous checkpoint, its newest version at
//! or before C, in one redb transaction that also records C: the base store never holds a
//! commit the log could still lose. Only after that commit is durable does the engine move its
//! checkpoint timestamp to C and evict chains: a chain whose newest version is at or before
//! both C and the oldest live snapshot says nothing the base store does not, to every reader
//! that exists or can exist. Then log segments wholly at or before C are removed. A crash at
//! any point leaves either the old checkpoint plus the whole log, or the new one plus a log
//! that may still hold records it covers (skipped on replay). Which covered segments go is
//! retention's choice (`history.rs`): the log doubles as the change-stream history.
//!
//! Lock order: `checkpointing` (one checkpoint at a time), then `state` (read, to collect;
//! write, to evict) with `readers` under it; the base store's write and the control file's
//! update happen with no engine lock held. See the engine's lock order (`engine.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::catalog::CollectionInfo;
use super::{Engine, lock_mutex};
use crate::base::{BaseCollection, BaseStore, CheckpointData};
use crate::{StorageError, Timestamp};

/// What one checkpoint did.
#[derive(Clone, Debug, Default)]
pub struct CheckpointReport {
    pub ts: Timestamp,
    pub documents_written: usize,
    pub chains_evicted: usize,
    pub chains_in_memory: usize,
    pub segments_removed: usize,
    pub elapsed: Duration,
}

impl Engine {
    /// Runs a checkpoint now. `Ok(None)` if nothing was committed durably since the last one
    /// or the engine has no base store.
    pub fn checkpoint(&self) -> Result<Option<CheckpointReport>, StorageError> {
        let _one_at_a_time = lock_mutex(&self.inner.checkpointing);
        let started = Instant::now();
        let log_bytes = self.inner.stats.bytes.load(Ordering::Relaxed);
        let derived_bytes = self.inner.derived_bytes.load(Ordering::Relaxed);
        let Some((data, base)) = self.checkpoint_data() else {
            // Nothing new, but retention may have changed (`set_history_retention`): trim to
            // what the control file already records as checkpointed.
            if let Some(control) = &self.inner.control {
                let checkpoint = control.checkpoint().min(self.read_state().checkpoint_ts);
                self.trim_history(checkpoint)?;
            }
            return Ok(None);
        };
        // The cut is the newest visible commit (see `checkpoint_data`); the base store must
        // not hold what a crash could still take back from the log.
        self.wait_durable_through(data.ts)?;
        base.write_checkpoint(&data)?;

        let mut report = CheckpointReport {
            ts: data.ts,
            documents_written: data.docs.len(),
            ..CheckpointReport::default()
        };
        self.evict_checkpointed(data.ts, &mut report);
        self.inner
            .checkpoint_log_bytes
            .store(log_bytes, Ordering::Relaxed);
        self.inner
            .checkpoint_derived_bytes
            .store(derived_bytes, Ordering::Relaxed);
        // The control file first: a reader of the log that trusts it (`mangrove log verify`)
        // must never see segments gone that its checkpoint does not cover.
        if let Some(control) = &self.inner.control {
            control.update(|c| c.checkpoint = data.ts)?;
        }
        if self.inner.control.is_some() {
            report.segments_removed = self.trim_history(data.ts)?;
        }
        report.elapsed = started.elapsed();
        self.inner
            .stats
            .checkpoint_micros
            .record(report.elapsed.as_micros() as u64);
        Ok(Some(report))
    }

    /// What a checkpoint at the newest visible commit writes: every key's newest version there
    /// that the previous checkpoint does not hold, the catalog, and the keyspaces dropped
    /// since. `None` without a base store or with nothing new.
    ///
    /// The cut is the newest *installed* commit, taken under the state lock, because installing
    /// a commit prunes its keys' chains up to that commit (`commit.rs`): a cut any earlier
    /// (say, at the durable point while newer commits are visible) could find a key's newest
    /// version at or before it already pruned, and the base store would record that cut
    /// without it. The caller waits for the cut to be durable before writing it.
    fn checkpoint_data(&self) -> Option<(CheckpointData, Arc<BaseStore>)> {
        let state = self.read_state();
        let base = state.base.clone()?;
        let previous = state.checkpoint_ts;
        let ts = state.last_commit;
        if ts <= previous {
            return None;
        }
        let mut docs = Vec::new();
        for (coll_id, chains) in &state.collections {
            for (key, chain) in chains {
                if let Some((version_ts, value)) =
                    chain.versions.iter().rev().find(|(v, _)| *v <= ts)
                    && *version_ts > previous
                {
                    docs.push((*coll_id, key.clone(), *version_ts, value.clone()));
                }
            }
        }
        let catalog = state
            .catalog
            .iter()
            .filter_map(|(ns, chain)| {
                let (version_ts, info) = chain.versions.iter().rev().find(|(v, _)| *v <= ts)?;
                let info: &Arc<CollectionInfo> = info.as_ref()?;
                Some(BaseCollection {
                    ns: ns.clone(),
                    id: info.id,
                    options: (*info.options).clone(),
                    ts: *version_ts,
                    indexes: info
                        .indexes
                        .iter()
                        .map(|i| (i.id, i.spec.clone()))
                        .collect(),
                })
            })
            .collect();
        let dropped = state
            .base_drops
            .iter()
            .filter(|(drop_ts, _)| *drop_ts <= ts)
            .map(|(_, id)| *id)
            .collect();
        let data = CheckpointData {
            ts,
            next_coll_id: state.next_coll_id,
            docs,
            catalog,
            dropped,
        };
        Some((data, base))
    }

    /// Waits until the log is durable through `ts` (a visible commit, so its batch's
    /// fdatasync is under way: at most one sync away), or fails if the log failed meanwhile.
    /// Polls: the checkpointer is a plain thread, and this waits about once per checkpoint.
    fn wait_durable_through(&self, ts: Timestamp) -> Result<(), StorageError> {
        loop {
            {
                let progress = self.inner.progress.borrow();
                if progress.durable >= ts {
                    return Ok(());
                }
                if let Some(reason) = &progress.failed {
                    return Err(StorageError::LogFailed(reason.to_string()));
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Moves the checkpoint timestamp to `ts` (now durable in the base store) and evicts the
    /// chains that say nothing the base store does not, to every reader that exists or can.
    fn evict_checkpointed(&self, ts: Timestamp, report: &mut CheckpointReport) {
        let mut state = self.write_state();
        assert!(ts > state.checkpoint_ts, "checkpoints move forward");
        state.checkpoint_ts = ts;
        state.base_drops.retain(|(drop_ts, _)| *drop_ts > ts);
        let horizon = self.oldest_reader().map_or(ts, |r| r.min(ts));
        for chains in state.collections.values_mut() {
            let before = chains.len();
            chains.retain(|_, chain| {
                chain.intent.is_some() || chain.newest_ts().is_none_or(|newest| newest > horizon)
            });
            report.chains_evicted += before - chains.len();
            report.chains_in_memory += chains.len();
        }
    }

    /// Asks the checkpointer to run soon.
    pub(crate) fn request_checkpoint(&self) {
        lock_mutex(&self.inner.checkpoint_signal).requested = true;
        self.inner.checkpoint_wake.notify_one();
    }

    /// The checkpointer thread: runs a checkpoint when asked (log growth) or when the interval
    /// passes, until the engine closes.
    pub(crate) fn run_checkpointer(self) {
        let interval = self.inner.options.checkpoint_interval;
        loop {
            {
                let mut signal = lock_mutex(&self.inner.checkpoint_signal);
                let deadline = Instant::now() + interval;
                while !signal.requested && !signal.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    signal = self
                        .inner
                        .checkpoint_wake
                        .wait_timeout(signal, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                if signal.shutdown {
                    return;
                }
                signal.requested = false;
            }
            match self.checkpoint() {
                Ok(Some(report)) => tracing::info!(
                    ts = report.ts.0,
                    documents = report.documents_written,
                    evicted = report.chains_evicted,
                    in_memory = report.chains_in_memory,
                    segments_removed = report.segments_removed,
                    millis = report.elapsed.as_millis() as u64,
                    "checkpoint"
                ),
                Ok(None) => {}
                // The log still holds everything: a failed checkpoint only delays the next.
                Err(e) => tracing::warn!(error = %e, "checkpoint failed; will retry"),
            }
        }
    }
}
