//! Logical sessions: the registry of sessions by `lsid` (bounded, expiring after 30 idle
//! minutes), each session's transaction state, and the registry of open transactions that DDL,
//! `currentOp` and `serverStatus` read. The state machine's transitions (one transaction at a
//! time per session, `txnNumber` only growing, the error codes drivers retry on) are in
//! `commands/txn`.
//!
//! A session's transaction belongs to the session, not to a connection: any connection may run
//! its next statement, and closing a connection does not abort it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bson::raw::{RawBsonRef, RawDocument};
use mangrove_storage::Txn;

use crate::error::{CommandError, CommandResult, code};
use crate::retryable::RetryableWrite;

pub(crate) enum TxnState {
    /// No transaction has run under the current `txnNumber`.
    Idle,
    Active(Box<ActiveTxn>),
    Committed,
    Aborted,
}

pub(crate) struct ActiveTxn {
    pub txn: Txn,
    pub started: Instant,
    /// The namespaces its statements used; DDL on them waits until this transaction ends.
    pub touched: Touched,
}

/// Every open transaction: who runs it, since when, and which namespaces it used. DDL waits
/// on it (where mongod would wait for collection locks), and `currentOp` and `serverStatus`
/// read it without locking any session.
#[derive(Default)]
pub(crate) struct OpenTransactions {
    open: Mutex<HashMap<u64, OpenTxn>>,
    next: std::sync::atomic::AtomicU64,
    /// Woken whenever a transaction ends.
    ended: tokio::sync::Notify,
    pub stats: TxnStats,
}

#[derive(Clone)]
pub(crate) struct OpenTxn {
    pub lsid: bson::Document,
    pub txn_number: i64,
    pub started: Instant,
    pub started_wall: bson::DateTime,
    pub namespaces: std::collections::BTreeSet<String>,
    /// A statement of it is running right now (mongod's "active" transaction).
    pub running: bool,
}

/// `serverStatus.transactions` counters.
#[derive(Default)]
pub(crate) struct TxnStats {
    pub started: std::sync::atomic::AtomicU64,
    pub committed: std::sync::atomic::AtomicU64,
    pub aborted: std::sync::atomic::AtomicU64,
    pub write_conflicts: std::sync::atomic::AtomicU64,
}

impl OpenTransactions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenTxn>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<OpenTxn> {
        self.lock().values().cloned().collect()
    }

    /// Whether an open transaction used a namespace `matches` accepts.
    pub fn in_use(&self, matches: &(dyn Fn(&str) -> bool + Sync)) -> bool {
        self.lock()
            .values()
            .any(|t| t.namespaces.iter().any(|ns| matches(ns)))
    }

    /// Waits until no open transaction uses a matching namespace, or `deadline` (if any)
    /// passes (false).
    pub async fn wait_unused(
        &self,
        matches: &(dyn Fn(&str) -> bool + Sync),
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the check and the wait still wakes us.
            ended.as_mut().enable();
            if !self.in_use(matches) {
                return true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        return !self.in_use(matches);
                    }
                }
                None => ended.await,
            }
        }
    }
}

/// One open transaction's entry in [`OpenTransactions`]; removed (waking waiting DDL) when the
/// transaction ends in any way, because it is dropped with the transaction's state.
pub(crate) struct Touched {
    registry: Arc<OpenTransactions>,
    id: u64,
}

impl Touched {
    pub fn new(registry: &Arc<OpenTransactions>, lsid: bson::Document, txn_number: i64) -> Touched {
        let id = registry
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        registry.lock().insert(
            id,
            OpenTxn {
                lsid,
                txn_number,
                started: Instant::now(),
                started_wall: bson::DateTime::now(),
                namespaces: Default::default(),
                running: false,
            },
        );
        Touched {
            registry: registry.clone(),
            id,
        }
    }

    /// A statement of the transaction starts, on namespace `ns` if it names one: one lock of the
    /// shared table per statement.
    pub fn statement_started(&self, ns: Option<String>) {
        if let Some(t) = self.registry.lock().get_mut(&self.id) {
            t.running = true;
            if let Some(ns) = ns {
                t.namespaces.insert(ns);
            }
        }
    }

    pub fn statement_finished(&self) {
        if let Some(t) = self.registry.lock().get_mut(&self.id) {
            t.running = false;
        }
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.registry
            .lock()
            .get(&self.id)
            .map(|t| t.namespaces.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Touched {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.ended.notify_waiters();
    }
}

pub(crate) struct Session {
    /// The newest transaction number this session has seen.
    pub txn_number: Option<i64>,
    pub state: TxnState,
    pub last_used: Instant,
    /// The statements the newest retryable write ran, if `txn_number` is a retryable write.
    pub retryable: Option<Arc<RetryableWrite>>,
    /// The session id for logs (the lsid's UUID).
    pub lsid: String,
    stats: Arc<OpenTransactions>,
    /// Whether `config.transactions` was consulted for this session since the server started.
    pub record_loaded: bool,
    /// The user the session belongs to, under `--auth`.
    owner: Option<Arc<str>>,
    /// The lsid as the client sent it.
    lsid_doc: bson::RawDocumentBuf,
    /// A snapshot session's first read snapshot, held so its later reads at the reported
    /// `atClusterTime` still find the history; with when it was taken.
    pub snapshot_pin: Option<(mangrove_storage::Snapshot, Instant)>,
}

impl Session {
    /// Aborts an open transaction: its intents go back and nothing of it was ever visible.
    /// Every abort is logged with its reason and counted.
    pub fn abort(&mut self, reason: &str) {
        if let TxnState::Active(active) = std::mem::replace(&mut self.state, TxnState::Aborted) {
            let namespaces = active.touched.namespaces();
            tracing::info!(
                lsid = %self.lsid,
                txn_number = self.txn_number,
                open_ms = active.started.elapsed().as_millis() as u64,
                namespaces = ?namespaces,
                reason,
                "transaction aborted"
            );
            active.txn.abort();
            self.stats
                .stats
                .aborted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Sessions that have run a transaction, by `lsid`. Bounded: past `max` a new session is
/// refused until others end.
pub(crate) struct Sessions {
    map: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<Session>>>>,
    max: usize,
    pub open: Arc<OpenTransactions>,
}

/// An lsid as logs show it: its UUID in the usual hex form.
pub(crate) fn lsid_display(lsid: &RawDocument) -> String {
    match lsid.get("id") {
        Ok(Some(RawBsonRef::Binary(b))) if b.bytes.len() == 16 => {
            let h: String = b.bytes.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        _ => format!("{lsid:?}"),
    }
}

/// A session's key: its lsid and its owner. The lsid's bytes start with their own length, so
/// the owner that follows cannot be mistaken for part of it; another user's use of the same
/// lsid is another session, as mongod's `uid` makes it.
fn lsid_key(lsid: &RawDocument, owner: Option<&str>) -> Vec<u8> {
    let mut key = lsid.as_bytes().to_vec();
    key.extend_from_slice(owner.unwrap_or("").as_bytes());
    key
}

/// mongod's `uid` of a session: SHA-256 of the user's name (of "" without authentication).
fn uid(owner: Option<&str>) -> bson::Binary {
    use sha2::Digest;
    bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: sha2::Sha256::digest(owner.unwrap_or("").as_bytes()).to_vec(),
    }
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
            open: Arc::new(OpenTransactions::default()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<Session>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get_or_create(
        &self,
        lsid: &RawDocument,
        owner: Option<&str>,
    ) -> CommandResult<Arc<tokio::sync::Mutex<Session>>> {
        let mut map = self.lock();
        if let Some(s) = map.get(&lsid_key(lsid, owner)) {
            return Ok(s.clone());
        }
        if map.len() >= self.max {
            return Err(CommandError::new(
                code::TOO_MANY_LOGICAL_SESSIONS,
                format!(
                    "Unable to add session into the cache because the number of active sessions is too high ({}); end sessions or raise --max-sessions",
                    self.max
                ),
            ));
        }
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            lsid: lsid_display(lsid),
            stats: self.open.clone(),
            txn_number: None,
            state: TxnState::Idle,
            last_used: Instant::now(),
            retryable: None,
            record_loaded: false,
            snapshot_pin: None,
            owner: owner.map(Arc::from),
            lsid_doc: lsid.to_owned(),
        }));
        map.insert(lsid_key(lsid, owner), session.clone());
        Ok(session)
    }

    /// Ends one of `owner`'s sessions, aborting its open transaction.
    pub async fn end(&self, lsid: &RawDocument, owner: Option<&str>) {
        let removed = self.lock().remove(&lsid_key(lsid, owner));
        if let Some(session) = removed {
            session
                .lock()
                .await
                .abort("its session was ended or killed");
        }
    }

    /// Ends the sessions of `lsid` whoever owns them (`killAllSessionsByPattern`, a privileged
    /// command).
    pub async fn end_any_owner(&self, lsid: &RawDocument) {
        let prefix = lsid.as_bytes();
        let removed: Vec<_> = {
            let mut map = self.lock();
            let keys: Vec<_> = map
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for session in removed {
            session.lock().await.abort("its session was killed");
        }
    }

    /// `owner`'s sessions (everyone's with `all_users`) as `$listLocalSessions` shows them:
    /// `{_id: {id, uid}, lastUse}`. A session busy with a command is skipped.
    pub fn list(&self, owner: Option<&str>, all_users: bool) -> Vec<bson::RawDocumentBuf> {
        let sessions: Vec<_> = self.lock().values().cloned().collect();
        let now = bson::DateTime::now();
        sessions
            .into_iter()
            .filter_map(|session| {
                let s = session.try_lock().ok()?;
                if !all_users && s.owner.as_deref() != owner {
                    return None;
                }
                let last_use = bson::DateTime::from_millis(
                    now.timestamp_millis() - s.last_used.elapsed().as_millis() as i64,
                );
                let mut id = bson::RawDocumentBuf::new();
                if let Ok(Some(v)) = s.lsid_doc.get("id") {
                    id.append(bson::raw::cstr!("id"), v);
                }
                id.append(bson::raw::cstr!("uid"), uid(s.owner.as_deref()));
                let mut d = bson::RawDocumentBuf::new();
                d.append(bson::raw::cstr!("_id"), id);
                d.append(bson::raw::cstr!("lastUse"), last_use);
                Some(d)
            })
            .collect()
    }

    /// Records that a command used `lsid`, so the session is listed and expires 30 minutes
    /// after its last use, as in mongod's logical session cache. Past the session limit new
    /// sessions are simply not cached; commands still run.
    pub fn note_use(&self, lsid: &RawDocument, owner: Option<&str>) {
        if !self.touch(lsid, owner) {
            let _ = self.get_or_create(lsid, owner);
        }
    }

    /// `refreshSessions`: the session counts as used now. False if it is not known. A session
    /// busy with a command is in use anyway, and its command sets `last_used` itself.
    pub fn touch(&self, lsid: &RawDocument, owner: Option<&str>) -> bool {
        let Some(session) = self.lock().get(&lsid_key(lsid, owner)).cloned() else {
            return false;
        };
        if let Ok(mut s) = session.try_lock() {
            s.last_used = Instant::now();
        }
        true
    }

    /// Ends every session (killAllSessions).
    pub async fn end_all(&self) {
        let all: Vec<_> = self.lock().drain().map(|(_, s)| s).collect();
        for session in all {
            session.lock().await.abort("killAllSessions");
        }
    }

    /// Aborts transactions open longer than `limit` (`transactionLifetimeLimitSeconds`);
    /// their next statement gets NoSuchTransaction. Sessions in use right now are skipped and
    /// looked at on the next round.
    pub fn reap_expired(&self, limit: std::time::Duration) -> usize {
        let sessions: Vec<_> = self.lock().values().cloned().collect();
        let mut aborted = 0;
        for session in sessions {
            let Ok(mut s) = session.try_lock() else {
                continue;
            };
            if let TxnState::Active(active) = &s.state
                && active.started.elapsed() > limit
            {
                let reason = format!(
                    "it exceeded transactionLifetimeLimitSeconds ({} s)",
                    limit.as_secs()
                );
                s.abort(&reason);
                aborted += 1;
            }
        }
        aborted
    }

    /// Forgets sessions idle longer than `idle` (MongoDB's 30-minute logical session
    /// timeout), with their retryable-write records (which stay on disk) and snapshot pins.
    pub fn expire_idle(&self, idle: std::time::Duration) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, s| match s.try_lock() {
            Ok(s) => s.last_used.elapsed() <= idle || matches!(s.state, TxnState::Active(_)),
            Err(_) => true,
        });
        before - map.len()
    }
}
