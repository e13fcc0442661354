//! Metadata store: SQLite in one file by default, PostgreSQL for several replicas,
//! one set of migrations (`kms/migrations`) run at start. Keys live only in the
//! token; rows reference them by `CKA_ID`.

pub mod approvals;
pub mod audit;
pub mod cards;
pub mod distribution;
pub mod entities;
pub mod keys;
pub mod leases;
pub mod settings;
pub mod tieups;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Transaction};

pub use sqlx::AnyConnection as Conn;

use crate::config::{DatabaseSettings, redact_url};

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached.
    #[error("cannot connect to database {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A row holds a value brandkms did not write.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// True when a uniqueness constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sql(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

pub(crate) fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file.
    Sqlite,
    /// PostgreSQL, shared by replicas.
    Postgres,
}

/// The metadata store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A write transaction.
pub type Tx = Transaction<'static, Any>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The database file of a `sqlite://PATH[?...]` URL, if it names one.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path.contains(":memory:") || query.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Creates a SQLite database file readable by its owner alone (0600) before
/// SQLite opens it (SQLite gives the `-wal` and `-shm` files the database file's
/// mode), and narrows an existing one, and its `-wal` and `-shm`, that is open
/// to group or others.
fn private_sqlite_file(url: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(path) = sqlite_path(url) else {
        return Ok(());
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                file = %file.display(),
                "the database file was open to group or others: narrowed to 0600"
            );
        }
    }
    Ok(())
}

impl Store {
    /// Connects and runs the migrations.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if settings.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let connect_error = |source| StoreError::Connect {
            url: redact_url(&settings.url),
            source,
        };
        if backend == Backend::Sqlite {
            private_sqlite_file(&settings.url).map_err(|e| StoreError::Connect {
                url: redact_url(&settings.url),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options: AnyConnectOptions = settings.url.parse().map_err(connect_error)?;
        let options = options.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite {
                settings.max_connections.min(4)
            } else {
                settings.max_connections
            })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A connection of its own, out of the pool for good (the audit writer's);
    /// the pool opens another in its place.
    pub async fn dedicated(&self) -> Result<AnyConnection, StoreError> {
        let mut conn = self.pool.acquire().await?.detach();
        if self.backend == Backend::Sqlite {
            // Its commits never copy the WAL back into the database file (an
            // fsync of the file in the middle of a request's answer); `kms
            // serve` checkpoints in the background instead (`checkpoint`).
            sqlx::query("PRAGMA wal_autocheckpoint = 0")
                .execute(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    /// SQLite: copies what the WAL holds back into the database file, as far as
    /// readers allow, without blocking the writer (`PASSIVE`). Nothing to do on
    /// PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// A connection for reads.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so that a later write never fails on a stale snapshot.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Begins a read-only transaction on one consistent snapshot: every read in
    /// it sees the database as of its first read, whatever commits meanwhile
    /// (SQLite in WAL mode: a deferred transaction's read snapshot; PostgreSQL:
    /// `REPEATABLE READ`). Writers are not blocked.
    pub async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN DEFERRED").await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Opens a single connection (used to create and drop test databases).
pub async fn connect_one(url: &str) -> Result<AnyConnection, StoreError> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .map_err(|source| StoreError::Connect {
            url: redact_url(url),
            source,
        })
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

#[cfg(test)]
mod migration_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A deployment made before migrations 0009 and 0010, with dual control
    /// in use, gains `import_key` and `mark_compromised` in its stored set;
    /// one that turned dual control off keeps it off.
    #[tokio::test]
    async fn later_sensitive_operations_join_a_stored_dual_control_set() {
        sqlx::any::install_default_drivers();
        for (before, after) in [
            (
                "rotate_key,set_dual_control",
                "rotate_key,set_dual_control,import_key,mark_compromised,widen_cryptoperiod",
            ),
            ("", ""),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
            let pool = sqlx::AnyPool::connect(&url).await.unwrap();
            let older = sqlx::migrate::Migrator {
                migrations: std::borrow::Cow::Owned(
                    MIGRATOR
                        .migrations
                        .iter()
                        .filter(|m| m.version < 9)
                        .cloned()
                        .collect(),
                ),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            older.run(&pool).await.unwrap();
            sqlx::query("UPDATE service_settings SET value = $1 WHERE name = 'dual_control'")
                .bind(before)
                .execute(&pool)
                .await
                .unwrap();
            MIGRATOR.run(&pool).await.unwrap();
            let (value,): (String,) =
                sqlx::query_as("SELECT value FROM service_settings WHERE name = 'dual_control'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(value, after);
        }
    }
}
