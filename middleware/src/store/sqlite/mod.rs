//! The embedded, persistent store: one SQLite file (bundled SQLite, WAL), owned by one process.
//!
//! Every store operation is one transaction's worth of SQL run by a single writer thread, which
//! owns the connection: operations that arrive together are committed together (group commit,
//! each in a savepoint of its own, so one that fails is rolled back alone), and nobody is
//! answered before the commit that holds their change. With `synchronous = FULL` (the default)
//! that commit is on disk when the answer leaves: a crash -- `kill -9` or a power loss -- loses
//! nothing that was answered. With `NORMAL`, a `kill -9` still loses nothing, but a power loss
//! can lose the last transactions before the WAL's next sync.
//!
//! The file is opened with `locking_mode = EXCLUSIVE`: a second process opening it is refused
//! ([`OpenError::InUse`]). `":memory:"` gives a private in-memory database (tests, demos).
//!
//! The state machine is the Lua scripts' (`store/lua/*.lua`), with the arithmetic in
//! [`crate::store::rules`]; the conformance suite and the differential test hold the two
//! equal.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;
use crate::clock::{Clock, SystemClock};

mod balances;
mod charge;
mod extend;
mod lease;
mod ledger;
mod queue;
mod receipts;
mod refunds;
mod requests;
mod risk;
mod tx;
mod webhook;

use tx::Tx;

/// The schema this version writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// At most this many operations share one commit.
const MAX_BATCH: usize = 256;

/// Expired rows are deleted at most this often.
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// How SQLite syncs the WAL at commit (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is synced before it is answered: a power loss loses nothing answered.
    #[default]
    Full,
    /// The WAL is synced at checkpoints only: a process crash loses nothing, a power loss can
    /// lose the last commits (the file stays consistent).
    Normal,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the file (one writer).
    #[error(
        "{path} is in use by another process (the sqlite store has one writer: stop the other \
         tollgate, or give this one another store.path)"
    )]
    InUse {
        /// The file.
        path: String,
    },
    /// The file was written by a newer Tollgate.
    #[error("{path} has schema version {found}; this tollgate knows versions up to {SCHEMA_VERSION} (upgrade tollgate, or use another store.path)")]
    NewerSchema {
        /// The file.
        path: String,
        /// Its `user_version`.
        found: i64,
    },
    /// Not a usable SQLite file, or not writable.
    #[error("cannot open {path}: {source}")]
    Sqlite {
        /// The file.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the sqlite writer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Store options.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file, or `":memory:"`.
    pub path: String,
    /// WAL sync at commit.
    pub synchronous: Synchronous,
    /// The clock expiry is judged by.
    pub clock: Arc<dyn Clock>,
}

impl SqliteOptions {
    /// Options for `path` with full sync and the system clock.
    pub fn new(path: impl Into<String>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            clock: Arc::new(SystemClock),
        }
    }
}

/// What one operation returns to the writer: whether it succeeded (its savepoint is kept) and
/// how to answer once the batch's commit is known.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One operation, run by the writer inside the batch's transaction (`None`: the transaction
/// could not be begun; answer with the error).
type Job = Box<dyn FnOnce(Option<&Tx<'_>>) -> (bool, Reply) + Send>;

/// The SQLite store. Cheap to clone (one writer thread shared).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    clock: Arc<dyn Clock>,
    path: Arc<str>,
}

impl SqliteStore {
    /// Open (creating or migrating) the store at `opts.path`.
    pub fn open(opts: SqliteOptions) -> Result<Self, OpenError> {
        let conn = connect(&opts.path, opts.synchronous)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let clock = opts.clock.clone();
        std::thread::Builder::new()
            .name("tollgate-sqlite".into())
            .spawn(move || writer(conn, rx, clock))?;
        Ok(SqliteStore {
            jobs,
            clock: opts.clock,
            path: opts.path.into(),
        })
    }

    /// A private in-memory store (tests, demos): nothing survives the process.
    pub fn memory(clock: Arc<dyn Clock>) -> Result<Self, OpenError> {
        Self::open(SqliteOptions {
            clock,
            ..SqliteOptions::new(":memory:")
        })
    }

    /// The database file (`":memory:"` for an in-memory store).
    pub fn path(&self) -> &str {
        &self.path
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Run `f` as one atomic operation on the writer thread; answered after its commit.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |t| {
            let result = match t {
                Some(t) => f(t),
                None => Err(StoreError::Unavailable("sqlite: no transaction".into())),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |committed| {
                let _ = tx.send(committed.and(result));
            });
            (ok, reply)
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// A row by column name, for the record decoders every backend shares.
impl super::Columns for rusqlite::Row<'_> {
    fn opt(&self, k: &str) -> Result<Option<String>, StoreError> {
        use rusqlite::types::ValueRef;
        let v = match self.get_ref(k) {
            Err(rusqlite::Error::InvalidColumnName(_)) => return Ok(None),
            v => v.map_err(sql_err)?,
        };
        Ok(match v {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(x) => Some(x.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => Some(
                String::from_utf8(t.to_vec())
                    .map_err(|_| StoreError::Protocol(format!("sqlite row: {k} is not UTF-8")))?,
            ),
        })
    }

    fn what(&self) -> String {
        "sqlite row".to_owned()
    }
}

/// Open, lock, configure and migrate the database.
fn connect(path: &str, sync: Synchronous) -> Result<Connection, OpenError> {
    let err = |e| open_error(path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if path == ":memory:" {
        Connection::open_in_memory_with_flags(flags)
    } else {
        Connection::open_with_flags(Path::new(path), flags)
    }
    .map_err(err)?;
    // rusqlite waits 5 s for a lock by default: the one writer is refused at once instead.
    conn.busy_timeout(Duration::ZERO).map_err(err)?;
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // EXCLUSIVE before WAL: the WAL index lives in this process's memory, and the first
    // write below takes a lock held until the connection closes (one writer).
    conn.execute_batch(&format!(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF;"
    ))
    .map_err(err)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .and_then(|_| conn.execute_batch("BEGIN IMMEDIATE; COMMIT;"))
        .map_err(err)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Busy means another connection holds the lock: the one-writer refusal.
fn open_error(path: &str, source: rusqlite::Error) -> OpenError {
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            OpenError::InUse {
                path: path.to_owned(),
            }
        }
        _ => OpenError::Sqlite {
            path: path.to_owned(),
            source,
        },
    }
}

/// Bring the schema to [`SCHEMA_VERSION`] (a no-op when it is there).
fn migrate(conn: &Connection, path: &str) -> Result<(), OpenError> {
    let err = |e| open_error(path, e);
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found,
        });
    }
    if found < 1 {
        conn.execute_batch(&format!(
            "BEGIN; {} PRAGMA user_version = 1; COMMIT;",
            include_str!("schema.sql")
        ))
        .map_err(err)?;
    }
    // Added within version 1 (an index only: older files get it here, in one statement).
    conn.execute_batch("CREATE INDEX IF NOT EXISTS events_by_payer_seq ON events (payer, seq);")
        .map_err(err)?;
    // Added within version 1 (a table an older tollgate never reads): each balance lease's last
    // recorded batch, so a batch sent again is recorded once.
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS lease_batches (lease TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;",
    )
    .map_err(err)?;
    // Added within version 1 (tables and indexes an older tollgate never reads): refunds.
    conn.execute_batch(refunds::SCHEMA).map_err(err)?;
    // Added within version 1 (tables an older tollgate never reads): the webhook outbox.
    conn.execute_batch(webhook::SCHEMA).map_err(err)?;
    conn.execute_batch(risk::SCHEMA).map_err(err)?;
    conn.execute_batch(requests::SCHEMA).map_err(err)?;
    Ok(())
}

/// The writer: batches of operations, one transaction each, answered after the commit.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>, clock: Arc<dyn Clock>) {
    let mut last_purge = Instant::now();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (replies, intact) = run_batch(&mut conn, batch);
        let committed = if intact {
            conn.execute_batch("COMMIT").map_err(sql_err)
        } else {
            Err(StoreError::Unavailable("sqlite: transaction failed".into()))
        };
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(committed.clone());
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            let purged = conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(sql_err)
                .and_then(|()| Tx::new(&conn).purge(clock.now_ms()))
                .and_then(|()| conn.execute_batch("COMMIT").map_err(sql_err));
            if purged.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
                tracing::warn!("sqlite store: deleting expired rows failed (retried later)");
            }
        }
    }
}

/// Run a batch inside one transaction, left open for the caller to commit: each job in a
/// savepoint of its own, rolled back alone when it fails. `false`: the transaction itself
/// failed (nothing of the batch may be committed).
fn run_batch(conn: &mut Connection, batch: Vec<Job>) -> (Vec<Reply>, bool) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut intact = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    for job in batch {
        if !intact || conn.execute_batch("SAVEPOINT op").is_err() {
            intact = false;
            replies.push(job(None).1);
            continue;
        }
        let (ok, reply) = job(Some(&Tx::new(conn)));
        let end = if ok {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        if conn.execute_batch(end).is_err() {
            intact = false;
        }
        replies.push(reply);
    }
    (replies, intact)
}

#[cfg(test)]
mod tests;
