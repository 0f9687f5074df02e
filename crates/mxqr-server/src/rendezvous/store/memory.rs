//! In-memory back end of [`super::Store`]: one process, sessions lost on restart.
//!
//! Layout is chosen for a million live sessions in well under 1 GiB: IDs and tokens are
//! integers, times are milliseconds since the store started, the payload is one shared string,
//! and the wake-up handle and transaction log are allocated only when used. Expiry uses an
//! ordered index `(expires_ms, id)`, so purging and eviction touch only the sessions concerned.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::{
    Counters, SequenceToken, SessionId, SessionLimits, SessionMeta, Snapshot, StoreError,
    StoreStats, Transport, Write,
};
use crate::sync::lock;

/// Transaction IDs remembered per session: both sides alternate writes, and a retry arrives
/// soon after the original, so a few suffice.
const TXN_LOG_LEN: usize = 4;

/// Expired sessions removed per lock acquisition, so a mass expiry never stalls requests.
const PURGE_BATCH: usize = 1024;

/// Sessions looked at, closest to expiry first, when looking for room at the cap: a bounded
/// amount of work per create even when every session is protected.
const EVICTION_SCAN: usize = 256;

struct TxnRecord {
    txn_id: Box<str>,
    fingerprint: u64,
    outcome: Result<u64, StoreError>,
}

/// Boxed inside [`Entry`] so sessions that never use transaction IDs pay one pointer.
#[derive(Default)]
struct TxnLog(VecDeque<TxnRecord>);

struct Entry {
    data: Arc<str>,
    token: u64,
    /// Token the latest write replaced (0: none yet), for the retried-write rule.
    prev_token: u64,
    created_ms: u64,
    expires_ms: u64,
    modified_ms: u64,
    transport: Transport,
    waiters: Option<Arc<Notify>>,
    txns: Option<Box<TxnLog>>,
}

impl Entry {
    fn wake(&mut self) {
        if let Some(waiters) = self.waiters.take() {
            waiters.notify_waiters();
        }
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u128, Entry>,
    by_expiry: BTreeSet<(u64, u128)>,
    /// Payload bytes of all sessions, for `max_total_bytes`.
    bytes: usize,
}

impl Inner {
    /// Removes a session, waking its waiters; returns its transport.
    fn remove(&mut self, id: u128) -> Option<Transport> {
        let mut entry = self.sessions.remove(&id)?;
        self.by_expiry.remove(&(entry.expires_ms, id));
        self.bytes = self.bytes.saturating_sub(entry.data.len());
        entry.wake();
        Some(entry.transport)
    }
}

/// The in-memory back end.
pub struct MemoryStore {
    /// Taken with [`lock`]: a panic while holding it leaves the maps consistent (no
    /// multi-step invariant is broken mid-way by anything that can panic), so keep serving.
    inner: Mutex<Inner>,
    limits: SessionLimits,
    epoch: Instant,
    epoch_wall: SystemTime,
    hasher: RandomState,
    counters: Counters,
}

impl MemoryStore {
    /// An empty store enforcing `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            hasher: RandomState::new(),
            counters: Counters::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        Self::ms(self.epoch.elapsed())
    }

    fn meta(&self, entry: &Entry, now_ms: u64) -> SessionMeta {
        SessionMeta {
            token: SequenceToken(entry.token),
            expires_in: Duration::from_millis(entry.expires_ms.saturating_sub(now_ms)),
            last_modified: self.epoch_wall + Duration::from_millis(entry.modified_ms),
        }
    }

    fn ms(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }

    /// Looks up a live session of `transport`, dropping it first if it has expired.
    fn live_entry<'a>(
        &self,
        inner: &'a mut Inner,
        transport: Transport,
        id: SessionId,
        now_ms: u64,
    ) -> Result<&'a mut Entry, StoreError> {
        let expired = match inner.sessions.get(&id.0) {
            None => return Err(StoreError::NotFound),
            Some(entry) if entry.transport != transport => return Err(StoreError::NotFound),
            Some(entry) => entry.expires_ms <= now_ms,
        };
        if expired {
            if let Some(t) = inner.remove(id.0) {
                self.counters.gone(&self.counters.expired, t);
            }
            return Err(StoreError::NotFound);
        }
        inner.sessions.get_mut(&id.0).ok_or(StoreError::NotFound)
    }

    fn purge_batch(&self, now_ms: u64) -> (usize, bool) {
        let mut inner = lock(&self.inner);
        let mut removed = 0;
        while removed < PURGE_BATCH {
            let Some(&(expires_ms, id)) = inner.by_expiry.first() else {
                return (removed, false);
            };
            if expires_ms > now_ms {
                return (removed, false);
            }
            if let Some(t) = inner.remove(id) {
                self.counters.gone(&self.counters.expired, t);
            }
            removed += 1;
        }
        (removed, true)
    }

    /// Makes room for `extra_sessions` more sessions and `extra_bytes` more payload bytes by
    /// evicting sessions closest to expiry (the likeliest abandoned) that were not written
    /// within `protect_written_within`; `keep` is never evicted. Evicts nothing and answers
    /// [`StoreError::Full`] when that is not enough.
    fn make_room(
        &self,
        inner: &mut Inner,
        extra_sessions: usize,
        extra_bytes: usize,
        now_ms: u64,
        keep: Option<u128>,
    ) -> Result<(), StoreError> {
        let max_sessions = self.limits.max_sessions.max(1);
        let max_bytes = self.limits.max_total_bytes;
        let fits = |sessions: usize, bytes: usize| {
            sessions + extra_sessions <= max_sessions
                && bytes.saturating_add(extra_bytes) <= max_bytes
        };
        let (mut sessions, mut bytes) = (inner.sessions.len(), inner.bytes);
        if fits(sessions, bytes) {
            return Ok(());
        }
        let protect_ms = Self::ms(self.limits.protect_written_within);
        let mut victims = Vec::new();
        let mut room_at = u64::MAX;
        for &(expires_ms, id) in inner.by_expiry.iter().take(EVICTION_SCAN) {
            if fits(sessions, bytes) {
                break;
            }
            let Some(entry) = inner.sessions.get(&id) else {
                continue;
            };
            if Some(id) == keep {
                continue;
            }
            let protected_until = entry.modified_ms.saturating_add(protect_ms);
            if expires_ms <= now_ms || protected_until <= now_ms {
                victims.push((expires_ms, id));
                sessions -= 1;
                bytes = bytes.saturating_sub(entry.data.len());
            } else {
                room_at = room_at.min(protected_until.min(expires_ms));
            }
        }
        if !fits(sessions, bytes) {
            let wait = Duration::from_millis(room_at.saturating_sub(now_ms));
            return Err(StoreError::full_after(wait, &self.limits));
        }
        for (expires_ms, victim) in victims {
            if let Some(t) = inner.remove(victim) {
                let counter = if expires_ms <= now_ms {
                    &self.counters.expired
                } else {
                    &self.counters.evicted
                };
                self.counters.gone(counter, t);
            }
        }
        Ok(())
    }

    /// See [`super::Store::create`].
    pub fn create(
        &self,
        transport: Transport,
        data: Arc<str>,
    ) -> Result<(SessionId, SessionMeta), StoreError> {
        let now_ms = self.now_ms();
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        self.make_room(inner, 1, data.len(), now_ms, None)?;
        let mut id = SessionId::random();
        while inner.sessions.contains_key(&id.0) {
            id = SessionId::random();
        }
        let expires_ms = now_ms.saturating_add(Self::ms(self.limits.ttl));
        let entry = Entry {
            data,
            token: SequenceToken::fresh(&[]).0,
            prev_token: 0,
            created_ms: now_ms,
            expires_ms,
            modified_ms: now_ms,
            transport,
            waiters: None,
            txns: None,
        };
        let meta = self.meta(&entry, now_ms);
        inner.bytes += entry.data.len();
        inner.sessions.insert(id.0, entry);
        inner.by_expiry.insert((expires_ms, id.0));
        Counters::bump(&self.counters.created, transport);
        Counters::bump(&self.counters.live, transport);
        Ok((id, meta))
    }

    /// See [`super::Store::update`].
    pub fn update(
        &self,
        transport: Transport,
        id: SessionId,
        write: Write,
    ) -> Result<SessionMeta, StoreError> {
        let now_ms = self.now_ms();
        let fingerprint = self.hasher.hash_one((write.expected.0, &*write.data));
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let entry = self.live_entry(inner, transport, id, now_ms)?;

        if let (Some(txn_id), Some(log)) = (&write.txn_id, &entry.txns)
            && let Some(record) = log.0.iter().find(|r| r.txn_id == *txn_id)
        {
            if record.fingerprint != fingerprint {
                return Err(StoreError::TxnReused);
            }
            let token = record.outcome.clone()?;
            let mut meta = self.meta(entry, now_ms);
            meta.token = SequenceToken(token);
            return Ok(meta);
        }

        // A write that grows the payload must fit the byte budget (a full store is answered
        // before the transaction log records anything, so a retry may succeed).
        let growth = write.data.len().saturating_sub(entry.data.len());
        if write.expected.0 == entry.token && growth > 0 {
            self.make_room(inner, 0, growth, now_ms, Some(id.0))?;
        }
        let entry = inner.sessions.get_mut(&id.0).ok_or(StoreError::NotFound)?;
        let outcome = if write.expected.0 == entry.token {
            inner.bytes = inner.bytes - entry.data.len() + write.data.len();
            let token = SequenceToken::fresh(&[entry.token, entry.prev_token]).0;
            entry.prev_token = entry.token;
            entry.token = token;
            entry.data = write.data;
            entry.modified_ms = now_ms;
            entry.wake();
            Ok(Some(token))
        } else if entry.prev_token != 0
            && write.expected.0 == entry.prev_token
            && *entry.data == *write.data
        {
            // A retry of the latest write whose response was lost: same answer again.
            Ok(None)
        } else {
            Err(StoreError::ConcurrentWrite)
        };

        if let Some(txn_id) = write.txn_id {
            let log = entry.txns.get_or_insert_with(Default::default);
            if log.0.len() == TXN_LOG_LEN {
                log.0.pop_front();
            }
            log.0.push_back(TxnRecord {
                txn_id,
                fingerprint,
                outcome: outcome.clone().map(|_| entry.token),
            });
        }

        let renewed = matches!(outcome, Ok(Some(_))) && self.limits.renew_on_write;
        outcome?;
        if renewed {
            let cap = entry
                .created_ms
                .saturating_add(Self::ms(self.limits.max_lifetime));
            let new_expiry = now_ms
                .saturating_add(Self::ms(self.limits.ttl))
                .min(cap)
                .max(entry.expires_ms);
            let old_expiry = std::mem::replace(&mut entry.expires_ms, new_expiry);
            let meta = self.meta(entry, now_ms);
            if old_expiry != new_expiry {
                inner.by_expiry.remove(&(old_expiry, id.0));
                inner.by_expiry.insert((new_expiry, id.0));
            }
            return Ok(meta);
        }
        Ok(self.meta(entry, now_ms))
    }

    /// See [`super::Store::get`].
    pub fn get(&self, transport: Transport, id: SessionId) -> Result<Snapshot, StoreError> {
        let now_ms = self.now_ms();
        let mut inner = lock(&self.inner);
        let entry = self.live_entry(&mut inner, transport, id, now_ms)?;
        Ok(Snapshot {
            data: entry.data.clone(),
            meta: self.meta(entry, now_ms),
        })
    }

    /// See [`super::Store::wait_for_change`].
    pub async fn wait_for_change(
        &self,
        transport: Transport,
        id: SessionId,
        since: SequenceToken,
        deadline: Instant,
    ) -> Result<Snapshot, StoreError> {
        loop {
            let now_ms = self.now_ms();
            let notify: Arc<Notify>;
            let notified;
            {
                let mut inner = lock(&self.inner);
                let entry = self.live_entry(&mut inner, transport, id, now_ms)?;
                if entry.token != since.0 || Instant::now() >= deadline {
                    return Ok(Snapshot {
                        data: entry.data.clone(),
                        meta: self.meta(entry, now_ms),
                    });
                }
                notify = entry
                    .waiters
                    .get_or_insert_with(|| Arc::new(Notify::new()))
                    .clone();
                // Created under the lock: any later write's `notify_waiters` reaches it.
                notified = notify.notified();
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
        }
    }

    /// See [`super::Store::delete`].
    pub fn delete(&self, transport: Transport, id: SessionId) -> Result<(), StoreError> {
        let now_ms = self.now_ms();
        let mut inner = lock(&self.inner);
        self.live_entry(&mut inner, transport, id, now_ms)?;
        if let Some(t) = inner.remove(id.0) {
            self.counters.gone(&self.counters.deleted, t);
        }
        Ok(())
    }

    /// Removes sessions past their expiry, a batch per lock; returns how many.
    pub async fn purge_expired(&self) -> usize {
        let now_ms = self.now_ms();
        let mut total = 0;
        loop {
            let (removed, more) = self.purge_batch(now_ms);
            total += removed;
            if !more {
                return total;
            }
            tokio::task::yield_now().await;
        }
    }

    /// See [`super::Store::stats`].
    pub fn stats(&self) -> StoreStats {
        self.counters.stats()
    }
}
