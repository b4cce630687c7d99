//! Waybill's own signatures (`Waybill-Signature: t=<unix>,v1=<hex>`, from
//! fulfillment centers) are accepted once. The v1 value that verified is kept
//! for twice the signature tolerance, in the transaction of the effect it
//! allowed: a replay inside the window is refused, and an effect that rolled
//! back (a busy database, a refused body) leaves the signature usable for the
//! center's retry.

use chrono::{DateTime, Duration, Utc};

use crate::kernel::db::{Db, DbError, Patient};
use crate::kernel::time::ts;
use crate::params;

/// How long a used signature is remembered (twice the 300 s tolerance: a
/// signature with a timestamp at either end of the window is still refused).
pub const KEEP_SECS: i64 = 600;

/// Records the first use of `signature`; false when it was used before.
pub fn first_use(db: &dyn Db, signature: &str, now: DateTime<Utc>) -> Result<bool, DbError> {
    let r = db.execute(
        "INSERT INTO signatures_seen (signature, seen_at) VALUES (?, ?)
         ON CONFLICT (signature) DO NOTHING RETURNING signature",
        params![signature, ts(now)],
    )?;
    Ok(!r.is_empty())
}

/// Housekeeping: forgets signatures past the window. Returns the rows removed.
pub fn purge_expired(db: &dyn Db, now: DateTime<Utc>) -> Result<u64, DbError> {
    Patient(db).exec(
        "DELETE FROM signatures_seen WHERE seen_at < ?",
        params![ts(now - Duration::seconds(KEEP_SECS))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;

    #[test]
    fn a_signature_is_used_once_until_the_window_passed() {
        let db = NativeDb::memory();
        crate::kernel::schema::migrate(&db).unwrap();
        let now = Utc::now();
        assert!(first_use(&db, "ab12", now).unwrap());
        assert!(!first_use(&db, "ab12", now).unwrap(), "a replay");
        assert!(first_use(&db, "cd34", now).unwrap());
        assert_eq!(
            purge_expired(&db, now + Duration::seconds(KEEP_SECS + 1)).unwrap(),
            2
        );
        assert!(first_use(&db, "ab12", now).unwrap());
    }
}
