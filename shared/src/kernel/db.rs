//! The one small database interface: execute a statement with positional
//! parameters; rows written are counted with `RETURNING` ([`Db::exec`]), never
//! with the host's `changes()` or `last_insert_rowid()`. Implemented over
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
    /// A libSQL server (sqld) refuses the statement as unsupported, e.g. the
    /// PRAGMAs that tune a local file (`journal_mode`, `synchronous`,
    /// `busy_timeout`): "SQL string could not be parsed: unsupported
    /// statement: PRAGMA ..." (sqld 0.24.32, code SQL_PARSE_ERROR).
    pub fn is_unsupported_statement(&self) -> bool {
        self.0
            .to_ascii_lowercase()
            .contains("unsupported statement")
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

    /// Runs one write statement (INSERT, UPDATE, DELETE; without a RETURNING clause of its
    /// own) and counts the rows it wrote, with `RETURNING 1`. Waybill never
    /// asks the host for `changes()` or `last_insert_rowid()`: Spin's libSQL
    /// backend (client 0.5.0, remote) always answers 0 to both, so every
    /// conditional write would read "nothing happened" there.
    fn exec(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        Ok(self.execute(&format!("{sql} RETURNING 1"), params)?.len() as u64)
    }

    /// True inside [`transaction`]'s closure: a nested [`transaction`] becomes a
    /// savepoint of the outer one.
    fn in_transaction(&self) -> bool {
        false
    }

    /// Inside a [`Batched`] unit: where rows for write-only tables go until
    /// the unit ends (one multi-row INSERT per table instead of one per row).
    fn appends(&self) -> Option<&Appends> {
        None
    }

    /// Inside a [`Batched`] unit: the reference reads it has made ([`reference`]).
    fn references(&self) -> Option<&References> {
        None
    }
}

/// The connection as [`transaction`] hands it to its closure. Once the
/// transaction is gone under it — a libSQL server rolls back a transaction
/// that held the write lock past its limit while another writer waited
/// (sqld 0.24.32: "Transaction timed out", then "cannot commit - no
/// transaction is active"), and SQLite itself rolls back on some errors
/// (SQLITE_FULL, IOERR, NOMEM) — the connection is back in autocommit and
/// every later statement would commit on its own. So the first sign of it
/// poisons the unit: no statement after it reaches the connection, and the
/// unit fails (a retryable error: the caller answers 503 or the sweep retries).
struct InTransaction<'a>(&'a dyn Db, std::cell::Cell<bool>);

impl DbError {
    /// The transaction this statement ran in is gone (see [`InTransaction`]).
    fn lost_transaction(&self) -> bool {
        let m = self.0.to_ascii_lowercase();
        m.contains("transaction timed out")
            || m.contains("no transaction is active")
            || m.contains("no such savepoint")
    }
}

impl Db for InTransaction<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        if self.1.get() {
            return Err(DbError(
                "database is busy: the transaction was rolled back under this unit; nothing more of it runs".into(),
            ));
        }
        let r = self.0.execute(sql, params);
        if let Err(e) = &r {
            if e.lost_transaction() {
                self.1.set(true);
            }
        }
        r
    }
    fn in_transaction(&self) -> bool {
        true
    }
    fn appends(&self) -> Option<&Appends> {
        self.0.appends()
    }
    fn references(&self) -> Option<&References> {
        self.0.references()
    }
}

/// The longest pause between two tries of a waiter ([`retry_busy`]).
const BUSY_POLL_CAP_US: u64 = 5_000;

/// How long a writer keeps trying to take the write lock before giving up (503).
pub const LOCK_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Retries `op` while SQLite reports the database busy, pausing 50 us at
/// first and doubling up to [`BUSY_POLL_CAP_US`] (5 ms), with jitter. SQLite's
/// own busy handler sleeps 1, 2, 5 ... 100 ms between tries, so under
/// contention a waiter sleeps on long after the lock is free; a fine first
/// poll keeps the short waits short. The cap bounds what waiting costs: every
/// try is a host call, and with 200 instances waiting a 1 ms cap spent the
/// two cores on tries (the lock holder slowed until waiters passed the 10 s
/// limit: `routing` scenario, 200 concurrent orders, 2026-12-03), where 5 ms
/// let the same run finish in 47 s instead of 65 s, every order accepted.
/// Connections used with this set `PRAGMA busy_timeout = 0` (see
/// `schema::prepare_writer`).
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
                wait_us = (wait_us * 2).min(BUSY_POLL_CAP_US);
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
    fn in_transaction(&self) -> bool {
        self.0.in_transaction()
    }
    fn appends(&self) -> Option<&Appends> {
        self.0.appends()
    }
    fn references(&self) -> Option<&References> {
        self.0.references()
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
    let inner = InTransaction(db, std::cell::Cell::new(false));
    let result = f(&inner);
    if inner.1.get() {
        // Whatever the closure made of the error, the unit did not happen.
        let _ = db.execute("ROLLBACK", &[]);
        return Err(DbError(
            "database is busy: the transaction was rolled back by the database; retry".into(),
        )
        .into());
    }
    match result {
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
    // Rows appended inside the savepoint are rolled back with it.
    let mark = db.appends().map(Appends::len);
    match f(db) {
        Ok(v) => {
            db.execute("RELEASE step", &[])?;
            Ok(v)
        }
        Err(e) => {
            let _ = db.execute("ROLLBACK TO step", &[]);
            let _ = db.execute("RELEASE step", &[]);
            if let (Some(a), Some(mark)) = (db.appends(), mark) {
                a.truncate(mark);
            }
            // A read kept after a write inside the savepoint saw that write.
            if let Some(r) = db.references() {
                r.reads.borrow_mut().clear();
            }
            Err(e)
        }
    }
}

/// Rows for tables that nothing reads back within a unit of work (the
/// timeline, the outbox), kept in memory by a [`Batched`] unit and written
/// when it ends as one multi-row INSERT per table and column list, in the
/// order they were appended (so row ids keep that order). A savepoint that
/// rolls back drops the rows appended inside it.
#[derive(Default)]
pub struct Appends {
    rows: std::cell::RefCell<Vec<Append>>,
}

struct Append {
    /// `table (col, col, ...)`.
    into: &'static str,
    values: Vec<Value>,
}

/// Rows per INSERT when appends are written (well under SQLite's and
/// libSQL's parameter limits for the widest row).
const APPEND_ROWS_PER_STATEMENT: usize = 100;

impl Appends {
    /// Keeps one row for `into` (`"table (col, ...)"`); `values` has one value
    /// per column.
    pub fn push(&self, into: &'static str, values: Vec<Value>) {
        self.rows.borrow_mut().push(Append { into, values });
    }

    pub fn len(&self) -> usize {
        self.rows.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn truncate(&self, n: usize) {
        self.rows.borrow_mut().truncate(n);
    }

    /// Writes the rows kept so far and forgets them. Returns the statements run.
    pub fn write(&self, db: &dyn Db) -> Result<usize, DbError> {
        let rows = std::mem::take(&mut *self.rows.borrow_mut());
        let mut order: Vec<&'static str> = Vec::new();
        for r in &rows {
            if !order.contains(&r.into) {
                order.push(r.into);
            }
        }
        let mut statements = 0;
        for into in order {
            let mine: Vec<&Append> = rows.iter().filter(|r| r.into == into).collect();
            for chunk in mine.chunks(APPEND_ROWS_PER_STATEMENT) {
                let width = chunk[0].values.len();
                let one = format!("({})", vec!["?"; width].join(", "));
                let sql = format!(
                    "INSERT INTO {into} VALUES {}",
                    vec![one.as_str(); chunk.len()].join(", ")
                );
                let params: Vec<Value> = chunk.iter().flat_map(|r| r.values.clone()).collect();
                db.execute(&sql, &params)?;
                statements += 1;
            }
        }
        Ok(statements)
    }
}

/// A connection inside a unit of work that keeps appends ([`Appends`]) until
/// [`Batched::finish`]. Use inside a transaction; call `finish` before it
/// commits (rows not written are lost with the value).
pub struct Batched<'a> {
    db: &'a dyn Db,
    appends: Appends,
    references: References,
}

impl<'a> Batched<'a> {
    pub fn new(db: &'a dyn Db) -> Batched<'a> {
        Batched {
            db,
            appends: Appends::default(),
            references: References::default(),
        }
    }

    /// Writes what was appended. Returns the statements run.
    pub fn finish(self) -> Result<usize, DbError> {
        self.appends.write(self.db)
    }
}

impl Db for Batched<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        self.references.written(sql);
        self.db.execute(sql, params)
    }
    fn in_transaction(&self) -> bool {
        self.db.in_transaction()
    }
    fn appends(&self) -> Option<&Appends> {
        Some(&self.appends)
    }
    fn references(&self) -> Option<&References> {
        Some(&self.references)
    }
}

/// Reads of reference data made inside a [`Batched`] unit, each distinct
/// statement and parameter list answered once: within one write transaction
/// nobody else writes, so the answer holds until the unit itself writes one
/// of the tables the read names (then every read of that table is dropped).
#[derive(Default)]
pub struct References {
    reads: std::cell::RefCell<Vec<Reference>>,
}

struct Reference {
    tables: &'static [&'static str],
    sql: String,
    params: Vec<Value>,
    rows: Rows,
}

impl References {
    /// A statement about to run: a write naming a table of a kept read drops
    /// that read.
    fn written(&self, sql: &str) {
        let head = sql.trim_start();
        if head.len() >= 6 && head[..6].eq_ignore_ascii_case("select") {
            return;
        }
        let mut reads = self.reads.borrow_mut();
        if reads.is_empty() {
            return;
        }
        let lower = sql.to_ascii_lowercase();
        reads.retain(|r| !r.tables.iter().any(|t| mentions(&lower, t)));
    }
}

/// Whether `sql` (lower case) names `table` as a whole word.
fn mentions(sql: &str, table: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    sql.match_indices(table).any(|(i, _)| {
        !word(sql[..i].chars().next_back()) && !word(sql[i + table.len()..].chars().next())
    })
}

/// A read of reference data (`tables`: every table the statement reads):
/// inside a [`Batched`] unit answered once per distinct statement and
/// parameters ([`References`]), elsewhere run as it is.
pub fn reference(
    db: &dyn Db,
    tables: &'static [&'static str],
    sql: &str,
    params: &[Value],
) -> Result<Rows, DbError> {
    let Some(refs) = db.references() else {
        return db.execute(sql, params);
    };
    if let Some(r) = (refs.reads.borrow().iter()).find(|r| r.sql == sql && r.params == params) {
        return Ok(r.rows.clone());
    }
    let rows = db.execute(sql, params)?;
    refs.reads.borrow_mut().push(Reference {
        tables,
        sql: sql.to_string(),
        params: params.to_vec(),
        rows: rows.clone(),
    });
    Ok(rows)
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

    #[test]
    fn exec_counts_the_rows_a_statement_wrote_from_its_returning_rows() {
        let db = NativeDb::memory();
        db.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, y INTEGER)", &[])
            .unwrap();
        let exec = |sql: &str| db.exec(sql, &[]).unwrap();
        assert_eq!(exec("INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)"), 3);
        // Only the rows written: OR IGNORE skips the existing one.
        assert_eq!(exec("INSERT OR IGNORE INTO t VALUES (3, 0), (4, 0)"), 1);
        assert_eq!(
            exec("INSERT INTO t VALUES (4, 0) ON CONFLICT DO NOTHING"),
            0
        );
        // A conditional update counts the rows that matched, not the table.
        assert_eq!(exec("UPDATE t SET y = 1 WHERE x <= 2 AND y = 0"), 2);
        assert_eq!(exec("UPDATE t SET y = 1 WHERE x <= 2 AND y = 0"), 0);
        assert_eq!(
            exec("DELETE FROM t WHERE x IN (SELECT x FROM t ORDER BY x LIMIT 3)"),
            3
        );
        assert_eq!(n(&db), 1);
    }

    /// A connection whose server rolls the transaction back at the `at`-th
    /// statement, as sqld does past its lock limit: that statement fails with
    /// "Transaction timed out" and the connection is in autocommit after it.
    struct ServerRollsBack<'a>(&'a NativeDb, std::cell::Cell<usize>, usize);
    impl Db for ServerRollsBack<'_> {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
            self.1.set(self.1.get() + 1);
            if self.1.get() == self.2 {
                self.0.execute("ROLLBACK", &[])?;
                return Err(DbError("Transaction timed out".into()));
            }
            self.0.execute(sql, params)
        }
    }

    #[test]
    fn a_transaction_rolled_back_under_the_unit_poisons_it_and_nothing_runs_in_autocommit() {
        let db = NativeDb::memory();
        db.execute("CREATE TABLE t (x INTEGER)", &[]).unwrap();
        // BEGIN, SAVEPOINT, INSERT 1, RELEASE, SAVEPOINT, then the 6th
        // statement (INSERT 2) meets the server's rollback.
        let conn = ServerRollsBack(&db, std::cell::Cell::new(0), 6);
        let r = transaction(&conn, |db| {
            for x in 1..=4 {
                // A batch goes on past one unit's failure (the routing worker does).
                let _ = savepoint(db, |db| {
                    db.execute("INSERT INTO t VALUES (?)", &[Value::Integer(x)])
                });
            }
            Ok::<_, DbError>(())
        });
        let e = r.unwrap_err();
        assert!(e.is_busy(), "a retryable error: {e}");
        assert_eq!(
            n(&db),
            0,
            "neither the rolled-back rows nor later ones were written"
        );
        assert_eq!(
            conn.1.get(),
            7,
            "after the rollback only the unit's final ROLLBACK reached the connection"
        );
    }

    /// Counts the statements that reach the connection.
    struct Counted<'a>(&'a NativeDb, std::cell::Cell<usize>);
    impl Db for Counted<'_> {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
            self.1.set(self.1.get() + 1);
            self.0.execute(sql, params)
        }
    }

    #[test]
    fn a_batched_unit_writes_its_appends_at_the_end_in_order_and_without_rolled_back_ones() {
        let db = NativeDb::memory();
        db.execute("CREATE TABLE t (x INTEGER)", &[]).unwrap();
        db.execute(
            "CREATE TABLE log (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)",
            &[],
        )
        .unwrap();
        let counted = Counted(&db, std::cell::Cell::new(0));
        transaction(&counted, |db| {
            let unit = Batched::new(db);
            for i in 0..250 {
                let kept = savepoint(&unit, |db| {
                    db.execute("INSERT INTO t VALUES (?)", &[Value::from(i as i64)])?;
                    db.appends().unwrap().push(
                        "log (a, b)",
                        vec![Value::from(format!("row {i}")), Value::from(i as i64)],
                    );
                    if i % 10 == 9 {
                        return Err(DbError("this one fails".into()));
                    }
                    Ok(())
                });
                assert_eq!(kept.is_ok(), i % 10 != 9);
            }
            assert_eq!(
                db.execute("SELECT COUNT(*) AS n FROM log", &[])?
                    .first()
                    .unwrap()
                    .i64("n"),
                0,
                "nothing written before the end"
            );
            let before = counted.1.get();
            assert_eq!(unit.finish()?, 3, "225 rows, 100 per statement");
            assert_eq!(counted.1.get() - before, 3);
            Ok::<_, DbError>(())
        })
        .unwrap();
        let rows = db.execute("SELECT a, b FROM log ORDER BY id", &[]).unwrap();
        let kept: Vec<i64> = rows.iter().map(|r| r.i64("b")).collect();
        let expected: Vec<i64> = (0..250).filter(|i| i % 10 != 9).collect();
        assert_eq!(
            kept, expected,
            "in the order appended, none of a rolled-back savepoint"
        );
        assert_eq!(n(&db), 225);
    }

    #[test]
    fn a_reference_read_is_made_once_until_the_unit_writes_its_table() {
        let db = NativeDb::memory();
        db.execute("CREATE TABLE t (x INTEGER)", &[]).unwrap();
        db.execute("CREATE TABLE t_other (x INTEGER)", &[]).unwrap();
        db.execute("INSERT INTO t VALUES (1)", &[]).unwrap();
        let counted = Counted(&db, std::cell::Cell::new(0));
        let unit = Batched::new(&counted);
        let read = || {
            reference(&unit, &["t"], "SELECT COUNT(*) AS n FROM t", &[])
                .unwrap()
                .first()
                .unwrap()
                .i64("n")
        };
        assert_eq!((read(), read(), read()), (1, 1, 1));
        assert_eq!(counted.1.get(), 1, "read once");
        // Another table's write keeps it; a write of its table drops it.
        unit.execute("INSERT INTO t_other VALUES (7)", &[]).unwrap();
        assert_eq!(read(), 1);
        assert_eq!(counted.1.get(), 2);
        unit.execute("INSERT INTO t VALUES (2)", &[]).unwrap();
        assert_eq!(read(), 2, "read again after its table was written");
        assert_eq!(counted.1.get(), 4);
        // A savepoint that rolls back forgets what was read inside it.
        let _ = savepoint(&unit, |db| {
            db.execute("INSERT INTO t VALUES (3)", &[])?;
            assert_eq!(
                reference(db, &["t"], "SELECT COUNT(*) AS n FROM t", &[])?
                    .first()
                    .unwrap()
                    .i64("n"),
                3
            );
            Err::<(), _>(DbError("rolled back".into()))
        });
        assert_eq!(read(), 2);
        // Outside a unit, every read runs.
        let plain = || reference(&counted, &["t"], "SELECT COUNT(*) AS n FROM t", &[]).unwrap();
        let before = counted.1.get();
        plain();
        plain();
        assert_eq!(counted.1.get() - before, 2);
    }
}
