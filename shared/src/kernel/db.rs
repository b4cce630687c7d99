//! The one small database interface: execute a statement with positional
//! parameters, read `changes()` and `last_insert_rowid()`. Implemented over
//! Spin's `spin:sqlite@3.0.0` (feature `spin`) and rusqlite (feature `native`).
//!
//! Multi-statement units run in `BEGIN IMMEDIATE ... COMMIT` through
//! [`transaction`], which rolls back on any error.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Integer(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// Builds a parameter list: `params![a, b, c]`.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::kernel::db::Value::from($v)),*][..] };
}

/// A statement's result.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// One row with typed accessors by column name.
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    fn idx(&self, col: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == col)
    }
    pub fn value(&self, col: &str) -> &Value {
        self.idx(col)
            .map(|i| &self.values[i])
            .unwrap_or(&Value::Null)
    }
    pub fn i64(&self, col: &str) -> i64 {
        match self.value(col) {
            Value::Integer(i) => *i,
            Value::Real(r) => *r as i64,
            Value::Text(t) => t.parse().unwrap_or(0),
            _ => 0,
        }
    }
    pub fn opt_i64(&self, col: &str) -> Option<i64> {
        match self.value(col) {
            Value::Null => None,
            _ => Some(self.i64(col)),
        }
    }
    pub fn opt_f64(&self, col: &str) -> Option<f64> {
        match self.value(col) {
            Value::Real(r) => Some(*r),
            Value::Integer(i) => Some(*i as f64),
            Value::Text(t) => t.parse().ok(),
            _ => None,
        }
    }
    pub fn str(&self, col: &str) -> String {
        self.opt_str(col).unwrap_or_default()
    }
    pub fn opt_str(&self, col: &str) -> Option<String> {
        match self.value(col) {
            Value::Text(t) => Some(t.clone()),
            Value::Integer(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Null => None,
        }
    }
}

impl Rows {
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|r| Row {
            columns: &self.columns,
            values: r,
        })
    }
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A storage failure (never the client's fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError(pub String);

impl DbError {
    /// SQLITE_BUSY / SQLITE_LOCKED: retryable contention.
    pub fn is_busy(&self) -> bool {
        let m = self.0.to_ascii_lowercase();
        m.contains("database is locked") || m.contains("database is busy") || m.contains("busy")
    }
    pub fn is_unique_violation(&self) -> bool {
        self.0.contains("UNIQUE constraint failed")
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

/// A database connection.
pub trait Db {
    /// Runs exactly one statement.
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError>;
    /// Rows changed by the last INSERT/UPDATE/DELETE.
    fn changes(&self) -> u64;
    fn last_insert_rowid(&self) -> i64;

    /// Runs a statement and returns `changes()`.
    fn exec(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.execute(sql, params)?;
        Ok(self.changes())
    }

    /// True inside [`transaction`]'s closure: a nested [`transaction`] becomes a
    /// savepoint of the outer one.
    fn in_transaction(&self) -> bool {
        false
    }
}

/// The connection as [`transaction`] hands it to its closure.
struct InTransaction<'a>(&'a dyn Db);

impl Db for InTransaction<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        self.0.execute(sql, params)
    }
    fn changes(&self) -> u64 {
        self.0.changes()
    }
    fn last_insert_rowid(&self) -> i64 {
        self.0.last_insert_rowid()
    }
    fn in_transaction(&self) -> bool {
        true
    }
}

/// How long a writer keeps trying to take the write lock before giving up (503).
pub const LOCK_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Retries `op` while SQLite reports the database busy, polling every 50 us to
/// 1 ms with jitter. SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms between
/// tries, so under contention a waiter sleeps on long after the lock is free;
/// polling finely keeps the lock busy and the tail short. Connections used with
/// this set `PRAGMA busy_timeout = 0` (see `schema::prepare_writer`).
pub fn retry_busy<T>(mut op: impl FnMut() -> Result<T, DbError>) -> Result<T, DbError> {
    let start = std::time::Instant::now();
    let mut wait_us: u64 = 50;
    let mut seed = start.elapsed().subsec_nanos() as u64 ^ (&wait_us as *const u64 as u64);
    loop {
        match op() {
            Err(e) if e.is_busy() && start.elapsed() < LOCK_WAIT_LIMIT => {
                // xorshift jitter: spread the waiters so they do not poll in step.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let jitter = seed % (wait_us / 2 + 1);
                std::thread::sleep(std::time::Duration::from_micros(wait_us / 2 + jitter));
                wait_us = (wait_us * 2).min(1000);
            }
            other => return other,
        }
    }
}

/// A view of a connection whose statements wait out SQLITE_BUSY with [`retry_busy`].
/// For statements outside a transaction on a connection with `busy_timeout = 0`
/// (a new connection's first read can meet the lock of another connection's
/// closing checkpoint). A statement that returned BUSY did not run, so retrying
/// it is safe.
pub struct Patient<'a>(pub &'a dyn Db);

impl Db for Patient<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        retry_busy(|| self.0.execute(sql, params))
    }
    fn changes(&self) -> u64 {
        self.0.changes()
    }
    fn last_insert_rowid(&self) -> i64 {
        self.0.last_insert_rowid()
    }
    fn in_transaction(&self) -> bool {
        self.0.in_transaction()
    }
}

/// Runs `f` inside `BEGIN IMMEDIATE ... COMMIT`; rolls back if `f` or COMMIT fails.
/// Taking the write lock up front means no statement inside can meet SQLITE_BUSY.
/// Called within another transaction's closure, `f` runs in a [`savepoint`] of
/// it, so a caller can make several steps one unit (an Idempotency-Key kept
/// with the effect it answers for).
pub fn transaction<T, E: From<DbError>>(
    db: &dyn Db,
    f: impl FnOnce(&dyn Db) -> Result<T, E>,
) -> Result<T, E> {
    if db.in_transaction() {
        return savepoint(db, f);
    }
    retry_busy(|| db.execute("BEGIN IMMEDIATE", &[]))?;
    let inner = InTransaction(db);
    match f(&inner) {
        Ok(v) => match db.execute("COMMIT", &[]) {
            Ok(_) => Ok(v),
            Err(e) => {
                let _ = db.execute("ROLLBACK", &[]);
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = db.execute("ROLLBACK", &[]);
            Err(e)
        }
    }
}

/// Runs `f` inside `SAVEPOINT ... RELEASE` within the caller's transaction; on
/// error only `f`'s writes are rolled back.
pub fn savepoint<T, E: From<DbError>>(
    db: &dyn Db,
    f: impl FnOnce(&dyn Db) -> Result<T, E>,
) -> Result<T, E> {
    db.execute("SAVEPOINT step", &[])?;
    match f(db) {
        Ok(v) => {
            db.execute("RELEASE step", &[])?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.execute("ROLLBACK TO step", &[]);
            let _ = db.execute("RELEASE step", &[]);
            Err(e)
        }
    }
}

#[cfg(feature = "native")]
pub mod native {
    //! rusqlite, for native tests and benchmarks.
    use super::*;

    pub struct NativeDb {
        pub conn: rusqlite::Connection,
    }

    impl NativeDb {
        pub fn open(path: &std::path::Path) -> Result<NativeDb, DbError> {
            let conn = rusqlite::Connection::open(path).map_err(|e| DbError(e.to_string()))?;
            Ok(NativeDb { conn })
        }
        pub fn memory() -> NativeDb {
            NativeDb {
                conn: rusqlite::Connection::open_in_memory().expect("in-memory sqlite"),
            }
        }
    }

    struct P<'a>(&'a Value);
    impl rusqlite::ToSql for P<'_> {
        fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
            use rusqlite::types::{ToSqlOutput, ValueRef};
            Ok(ToSqlOutput::Borrowed(match self.0 {
                Value::Null => ValueRef::Null,
                Value::Integer(i) => ValueRef::Integer(*i),
                Value::Real(r) => ValueRef::Real(*r),
                Value::Text(t) => ValueRef::Text(t.as_bytes()),
                Value::Blob(b) => ValueRef::Blob(b),
            }))
        }
    }

    impl Db for NativeDb {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
            let err = |e: rusqlite::Error| DbError(e.to_string());
            let mut st = self.conn.prepare_cached(sql).map_err(err)?;
            let columns: Vec<String> = st.column_names().iter().map(|s| s.to_string()).collect();
            let n = columns.len();
            let mut out = Vec::new();
            let mut rows = st
                .query(rusqlite::params_from_iter(params.iter().map(P)))
                .map_err(err)?;
            while let Some(r) = rows.next().map_err(err)? {
                let mut vals = Vec::with_capacity(n);
                for i in 0..n {
                    use rusqlite::types::ValueRef;
                    vals.push(match r.get_ref(i).map_err(err)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(i) => Value::Integer(i),
                        ValueRef::Real(f) => Value::Real(f),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    });
                }
                out.push(vals);
            }
            Ok(Rows { columns, rows: out })
        }
        fn changes(&self) -> u64 {
            self.conn.changes()
        }
        fn last_insert_rowid(&self) -> i64 {
            self.conn.last_insert_rowid()
        }
    }
}

#[cfg(feature = "spin")]
pub mod spin {
    //! Spin's `spin:sqlite@3.0.0`.
    use super::*;
    use spin_sdk::sqlite3 as sq;

    pub struct SpinDb {
        conn: sq::Connection,
    }

    impl SpinDb {
        /// Opens the database with this label (listed in the component's `sqlite_databases`).
        pub fn open(label: &str) -> Result<SpinDb, DbError> {
            sq::Connection::open(label)
                .map(|conn| SpinDb { conn })
                .map_err(|e| DbError(format!("cannot open database '{label}': {e:?}")))
        }
    }

    fn to_sq(v: &Value) -> sq::Value {
        match v {
            Value::Null => sq::Value::Null,
            Value::Integer(i) => sq::Value::Integer(*i),
            Value::Real(r) => sq::Value::Real(*r),
            Value::Text(t) => sq::Value::Text(t.clone()),
            Value::Blob(b) => sq::Value::Blob(b.clone()),
        }
    }

    impl Db for SpinDb {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
            let p: Vec<sq::Value> = params.iter().map(to_sq).collect();
            let r = self.conn.execute(sql, &p).map_err(|e| {
                DbError(match e {
                    sq::Error::Io(m) => m,
                    other => format!("{other:?}"),
                })
            })?;
            Ok(Rows {
                columns: r.columns,
                rows: r
                    .rows
                    .into_iter()
                    .map(|row| {
                        row.values
                            .into_iter()
                            .map(|v| match v {
                                sq::Value::Null => Value::Null,
                                sq::Value::Integer(i) => Value::Integer(i),
                                sq::Value::Real(f) => Value::Real(f),
                                sq::Value::Text(t) => Value::Text(t),
                                sq::Value::Blob(b) => Value::Blob(b),
                            })
                            .collect()
                    })
                    .collect(),
            })
        }
        fn changes(&self) -> u64 {
            self.conn.changes()
        }
        fn last_insert_rowid(&self) -> i64 {
            self.conn.last_insert_rowid()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use native::NativeDb;

    fn n(db: &dyn Db) -> i64 {
        db.execute("SELECT COUNT(*) AS n FROM t", &[])
            .unwrap()
            .first()
            .map(|r| r.i64("n"))
            .unwrap_or(-1)
    }

    #[test]
    fn a_transaction_within_a_transaction_is_part_of_it() {
        let db = NativeDb::memory();
        db.execute("CREATE TABLE t (x INTEGER)", &[]).unwrap();
        // The inner unit commits with the outer one ...
        transaction(&db, |db| {
            db.execute("INSERT INTO t VALUES (1)", &[])?;
            transaction(db, |db| db.execute("INSERT INTO t VALUES (2)", &[]))?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        assert_eq!(n(&db), 2);
        // ... a failing inner unit rolls back only its own writes ...
        transaction(&db, |db| {
            db.execute("INSERT INTO t VALUES (3)", &[])?;
            let inner = transaction(db, |db| {
                db.execute("INSERT INTO t VALUES (4)", &[])?;
                Err::<(), _>(DbError("refused".into()))
            });
            assert!(inner.is_err());
            Ok::<_, DbError>(())
        })
        .unwrap();
        assert_eq!(n(&db), 3);
        // ... and a failing outer unit takes the inner one with it.
        let r = transaction(&db, |db| {
            transaction(db, |db| db.execute("INSERT INTO t VALUES (5)", &[]))?;
            Err::<(), _>(DbError("later step failed".into()))
        });
        assert!(r.is_err());
        assert_eq!(n(&db), 3);
        // Outside any transaction, a new one starts (not a savepoint).
        assert!(!db.in_transaction());
    }
}
