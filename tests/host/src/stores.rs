//! Key-value and SQLite stores, laid out as Spin lays them out by default.
//!
//! - Key-value label `default`: `<state>/sqlite_key_value.db`, table `spin_key_value`
//!   `(store, key, value)`, one connection shared by every instance behind a lock
//!   (as Spin's default key-value store is).
//! - SQLite label `default`: `<state>/sqlite_db.db`. Every `open` makes a new
//!   connection, as Spin 4 does, so transactions and locking behave as on Spin. The
//!   host sets no pragma of its own: the journal mode is whatever the app sets.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The labels the host knows. Spin's default runtime config defines only
/// `default` for each kind; other labels need runtime configuration.
pub const DEFAULT_LABEL: &str = "default";

#[derive(Debug)]
pub struct KeyValueBackend {
    conn: Mutex<rusqlite::Connection>,
}

impl KeyValueBackend {
    pub fn open(path: &Path) -> Result<KeyValueBackend> {
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot open key-value store {}", path.display()))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL,
                key   TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (store, key)
            );",
        )?;
        Ok(KeyValueBackend {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "key-value store lock poisoned".to_string())?;
        f(&conn).map_err(|e| e.to_string())
    }

    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        use rusqlite::OptionalExtension;
        self.with(|c| {
            c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .query_row([store, key], |r| r.get::<_, Vec<u8>>(0))
                .optional()
        })
    }

    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(store, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(rusqlite::params![store, key, value])
            .map(|_| ())
        })
    }

    pub fn delete(&self, store: &str, key: &str) -> Result<(), String> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .execute([store, key])
                .map(|_| ())
        })
    }

    pub fn exists(&self, store: &str, key: &str) -> Result<bool, String> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)",
            )?
            .query_row([store, key], |r| r.get(0))
        })
    }

    pub fn keys(&self, store: &str) -> Result<Vec<String>, String> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1")?;
            let rows = st.query_map([store], |r| r.get(0))?;
            rows.collect()
        })
    }
}

/// Where each SQLite label lives.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pub default_path: PathBuf,
}

impl SqliteBackend {
    pub fn path_for(&self, label: &str) -> Option<&Path> {
        (label == DEFAULT_LABEL).then_some(self.default_path.as_path())
    }

    /// A fresh connection, as Spin opens one per `open` call.
    pub fn connect(&self, label: &str) -> Result<rusqlite::Connection, String> {
        let path = self
            .path_for(label)
            .ok_or_else(|| format!("no database '{label}'"))?;
        rusqlite::Connection::open(path).map_err(|e| e.to_string())
    }
}

/// A value crossing the spin:sqlite interface.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(r) => ValueRef::Real(*r),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
            SqlValue::Null => ValueRef::Null,
        }))
    }
}

impl From<rusqlite::types::ValueRef<'_>> for SqlValue {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(r) => SqlValue::Real(r),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            ValueRef::Null => SqlValue::Null,
        }
    }
}

/// The result of one statement: column names and rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// The most a statement's result may hold, as Spin 4.0.2 counts it
/// (`spin_world::MAX_HOST_BUFFERED_BYTES`, 128 MiB): past it the statement
/// fails with "query result exceeds limit of 134217728 bytes".
pub const MAX_RESULT_BYTES: usize = 128 << 20;

/// What Spin counts for a result (`spin-sqlite-inproc::execute_query`): the
/// `QueryResult` itself, then per value the size of the WIT `value` enum
/// (32 bytes on 64-bit hosts) plus a text's or blob's length.
const QUERY_RESULT_SIZE: usize = 48;
const VALUE_SIZE: usize = 32;

fn memory_size(v: &SqlValue) -> usize {
    VALUE_SIZE
        + match v {
            SqlValue::Text(t) => t.len(),
            SqlValue::Blob(b) => b.len(),
            _ => 0,
        }
}

/// Runs one statement (Spin's `execute`: exactly one statement, positional
/// parameters). Prepared through the connection's statement cache, as Spin's
/// in-process SQLite does (`spin-sqlite-inproc`: `prepare_cached`, rusqlite's
/// default capacity of 16 statements per connection); its result bounded as
/// Spin bounds it ([`MAX_RESULT_BYTES`]).
pub fn execute(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[SqlValue],
) -> Result<SqlResult, String> {
    execute_bounded(conn, sql, params, MAX_RESULT_BYTES)
}

fn execute_bounded(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[SqlValue],
    max_result_bytes: usize,
) -> Result<SqlResult, String> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let ncol = columns.len();
    let mut rows_out = Vec::new();
    let mut bytes = QUERY_RESULT_SIZE;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(|e| e.to_string())?;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut vals = Vec::with_capacity(ncol);
        for i in 0..ncol {
            vals.push(SqlValue::from(row.get_ref(i).map_err(|e| e.to_string())?));
        }
        bytes += vals.iter().map(memory_size).sum::<usize>();
        if bytes > max_result_bytes {
            return Err(format!(
                "query result exceeds limit of {max_result_bytes} bytes"
            ));
        }
        rows_out.push(vals);
    }
    Ok(SqlResult {
        columns,
        rows: rows_out,
    })
}

/// A per-instance connection handle (the `connection` resource of both sqlite interfaces).
pub struct SqliteConn {
    pub conn: Arc<Mutex<rusqlite::Connection>>,
}

/// A per-instance key-value handle (the `store` resource).
pub struct KvStore {
    pub label: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_past_spin_s_buffer_limit_fails_as_spin_s_does() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (s TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) INSERT INTO t SELECT printf('%.100c', 'x') FROM n")
            .unwrap();
        // 48 + 10 rows x (32 + 100) = 1,368 bytes by Spin's count.
        assert_eq!(
            execute_bounded(&conn, "SELECT s FROM t", &[], 1368)
                .unwrap()
                .rows
                .len(),
            10
        );
        let err = execute_bounded(&conn, "SELECT s FROM t", &[], 1367).unwrap_err();
        assert_eq!(err, "query result exceeds limit of 1367 bytes");
        assert_eq!(MAX_RESULT_BYTES, 134_217_728);
    }
}
