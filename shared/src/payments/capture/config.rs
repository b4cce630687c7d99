//! Payment settings: when captures happen (release or shipment) and the
//! gateway retry schedule.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureAt {
    Release,
    Shipment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub capture_at: CaptureAt,
    /// First retry delay after a timeout or 5xx; doubles per attempt, at most an hour.
    pub retry_base_seconds: i64,
    /// Attempts before an unresolved capture becomes an action item.
    pub max_attempts: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capture_at: CaptureAt::Release,
            retry_base_seconds: 30,
            max_attempts: 10,
        }
    }
}

impl Settings {
    pub fn json(&self) -> Json {
        json!({"capture_at": match self.capture_at { CaptureAt::Release => "release", CaptureAt::Shipment => "shipment" },
               "retry_base_seconds": self.retry_base_seconds, "max_attempts": self.max_attempts})
    }
    pub(crate) fn backoff(&self, attempts: i64) -> Duration {
        let secs = self
            .retry_base_seconds
            .saturating_mul(1i64 << (attempts.clamp(1, 20) - 1))
            .min(3600);
        Duration::seconds(secs)
    }
}

pub fn settings(db: &dyn Db) -> Result<Settings> {
    let mut s = Settings::default();
    let v = crate::kernel::settings::get(db, "payments")?;
    if !v.is_null() {
        if v["capture_at"] == "shipment" {
            s.capture_at = CaptureAt::Shipment;
        }
        if let Some(n) = v["retry_base_seconds"].as_i64() {
            s.retry_base_seconds = n;
        }
        if let Some(n) = v["max_attempts"].as_i64() {
            s.max_attempts = n;
        }
    }
    Ok(s)
}

pub fn put_settings(db: &dyn Db, v: &Json) -> Result<Settings> {
    let mut s = settings(db)?;
    let mut errs = Vec::new();
    let Some(obj) = v.as_object() else {
        return Err(Error::bad_request("the body must be a JSON object"));
    };
    for (k, x) in obj {
        match k.as_str() {
            "capture_at" => match x.as_str() {
                Some("release") => s.capture_at = CaptureAt::Release,
                Some("shipment") => s.capture_at = CaptureAt::Shipment,
                _ => errs.push(FieldError::new(
                    "/capture_at",
                    "must be 'release' or 'shipment'",
                )),
            },
            "retry_base_seconds" => match x.as_i64() {
                Some(n) if (0..=3600).contains(&n) => s.retry_base_seconds = n,
                _ => errs.push(FieldError::new(
                    "/retry_base_seconds",
                    "must be an integer from 0 to 3600",
                )),
            },
            "max_attempts" => match x.as_i64() {
                Some(n) if (1..=50).contains(&n) => s.max_attempts = n,
                _ => errs.push(FieldError::new(
                    "/max_attempts",
                    "must be an integer from 1 to 50",
                )),
            },
            other => errs.push(FieldError::new(format!("/{other}"), "unknown setting")),
        }
    }
    if !errs.is_empty() {
        return Err(Error::invalid(errs));
    }
    crate::kernel::settings::put(db, "payments", &s.json())?;
    Ok(s)
}
