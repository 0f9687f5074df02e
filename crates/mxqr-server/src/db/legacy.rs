//! The client-server half of the store ([`ClientDb`], [`OutboxDb`]) that still has one
//! implementation per back end (`client.rs` and `sqlite.rs` for SQLite, `postgres.rs` for
//! PostgreSQL, both halves of `outbox.rs`): [`SqlDb`] hands these calls to the one for its
//! back end until they move onto the shared code in `repo.rs`.

use super::outbox::{OutboxEntry, OutboxJob};
use super::postgres::LegacyPg;
use super::sql::Pool;
use super::sqlite::LegacySqlite;
use super::{
    AccountDataQuota, AccountDataWrite, BackupVersion, ClientDb, DbResult, OutboxDb, SqlDb,
    StoredDeviceKeys, TokenStatus, UploadedKey,
};
use crate::store::BoxFuture;

/// The per-back-end implementation over the same pool (and, on PostgreSQL, the same gate).
#[derive(Clone, Debug)]
pub(super) enum Legacy {
    /// SQLite.
    Sqlite(LegacySqlite),
    /// PostgreSQL.
    Postgres(LegacyPg),
}

impl Legacy {
    pub(super) fn new(pool: &Pool) -> Self {
        match pool {
            Pool::Sqlite(pool) => Self::Sqlite(LegacySqlite::new(pool.clone())),
            Pool::Postgres { pool, gate } => {
                Self::Postgres(LegacyPg::new(pool.clone(), gate.clone()))
            }
        }
    }
}

macro_rules! legacy {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.legacy {
            Legacy::Sqlite(db) => db.$method($($arg),*),
            Legacy::Postgres(db) => db.$method($($arg),*),
        }
    };
}

/// Not yet on the shared code: the legacy per-back-end implementations answer.
impl ClientDb for SqlDb {
    fn token_status<'a>(
        &'a self,
        access_hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<TokenStatus>> {
        legacy!(self.token_status(access_hash, now))
    }

    fn set_device_display_name<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        display_name: Option<&'a str>,
    ) -> BoxFuture<'a, DbResult<bool>> {
        legacy!(self.set_device_display_name(localpart, device_id, display_name))
    }

    fn revoke_user_sessions<'a>(
        &'a self,
        localpart: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<u64>> {
        legacy!(self.revoke_user_sessions(localpart, now))
    }

    fn device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_ids: &'a [String],
    ) -> BoxFuture<'a, DbResult<Vec<StoredDeviceKeys>>> {
        legacy!(self.device_keys(localpart, device_ids))
    }

    fn swap_device_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        old: Option<&'a str>,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        legacy!(self.swap_device_keys(localpart, device_id, old, new, now))
    }

    fn add_one_time_keys<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        keys: &'a [UploadedKey],
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.add_one_time_keys(localpart, device_id, keys, now))
    }

    fn one_time_key_counts<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, i64)>>> {
        legacy!(self.one_time_key_counts(localpart, device_id))
    }

    fn set_fallback_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        key: &'a UploadedKey,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.set_fallback_key(localpart, device_id, key, now))
    }

    fn claim_key<'a>(
        &'a self,
        localpart: &'a str,
        device_id: &'a str,
        algorithm: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<UploadedKey>>> {
        legacy!(self.claim_key(localpart, device_id, algorithm))
    }

    fn cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String)>>> {
        legacy!(self.cross_signing_keys(localpart))
    }

    fn put_cross_signing_keys<'a>(
        &'a self,
        localpart: &'a str,
        keys: &'a [(String, String)],
        consume_reset: bool,
        now: i64,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.put_cross_signing_keys(localpart, keys, consume_reset, now))
    }

    fn swap_cross_signing_key<'a>(
        &'a self,
        localpart: &'a str,
        usage: &'a str,
        old: &'a str,
        new: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        legacy!(self.swap_cross_signing_key(localpart, usage, old, new, now))
    }

    fn add_user_signature<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
        target_key_id: &'a str,
        signer_key_id: &'a str,
        signature: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.add_user_signature(
            signer,
            target_user_id,
            target_key_id,
            signer_key_id,
            signature
        ))
    }

    fn user_signatures<'a>(
        &'a self,
        signer: &'a str,
        target_user_id: &'a str,
    ) -> BoxFuture<'a, DbResult<Vec<(String, String, String)>>> {
        legacy!(self.user_signatures(signer, target_user_id))
    }

    fn create_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        algorithm: &'a str,
        auth_data: &'a str,
        now: i64,
    ) -> BoxFuture<'a, DbResult<i64>> {
        legacy!(self.create_backup_version(localpart, algorithm, auth_data, now))
    }

    fn backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, DbResult<Option<BackupVersion>>> {
        legacy!(self.backup_version(localpart, version))
    }

    fn update_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        auth_data: &'a str,
    ) -> BoxFuture<'a, DbResult<bool>> {
        legacy!(self.update_backup_version(localpart, version, auth_data))
    }

    fn delete_backup_version<'a>(
        &'a self,
        localpart: &'a str,
        version: i64,
        now: i64,
    ) -> BoxFuture<'a, DbResult<bool>> {
        legacy!(self.delete_backup_version(localpart, version, now))
    }

    fn account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<String>>> {
        legacy!(self.account_data(localpart, data_type))
    }

    fn put_account_data<'a>(
        &'a self,
        localpart: &'a str,
        data_type: &'a str,
        content: &'a str,
        now: i64,
        quota: AccountDataQuota,
    ) -> BoxFuture<'a, DbResult<AccountDataWrite>> {
        legacy!(self.put_account_data(localpart, data_type, content, now, quota))
    }
}

/// Not yet on the shared code: the legacy per-back-end implementations answer.
impl OutboxDb for SqlDb {
    fn outbox_push<'a>(&'a self, jobs: &'a [OutboxJob], now: i64) -> BoxFuture<'a, DbResult<i64>> {
        legacy!(self.outbox_push(jobs, now))
    }

    fn outbox_head(&self, limit: i64) -> BoxFuture<'_, DbResult<Vec<OutboxEntry>>> {
        legacy!(self.outbox_head(limit))
    }

    fn outbox_done(&self, id: i64) -> BoxFuture<'_, DbResult<()>> {
        legacy!(self.outbox_done(id))
    }

    fn outbox_retry<'a>(
        &'a self,
        id: i64,
        next_attempt_at: i64,
        error: &'a str,
    ) -> BoxFuture<'a, DbResult<()>> {
        legacy!(self.outbox_retry(id, next_attempt_at, error))
    }

    fn outbox_pending(&self, id: i64) -> BoxFuture<'_, DbResult<bool>> {
        legacy!(self.outbox_pending(id))
    }

    fn token_owner<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, DbResult<Option<(String, String)>>> {
        legacy!(self.token_owner(token_hash))
    }
}
