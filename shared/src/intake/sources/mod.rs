//! Mappings from each source's documented payload to the canonical [`NewOrder`].
//!
//! Payloads are read as JSON values with a [`Reader`] that records every problem
//! with a JSON pointer, so a rejected payload says exactly what is wrong.

pub mod api;
pub mod commercetools;
pub mod shopify;
pub mod woocommerce;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::kernel::error::{Error, FieldError};
use crate::kernel::money::Currency;
use crate::orders::model::{Address, NewOrder};

/// Typed reads from a JSON document, collecting errors with their pointers.
#[derive(Default)]
pub struct Reader {
    pub errors: Vec<FieldError>,
}

pub fn ptr(base: &str, key: &str) -> String {
    format!("{base}/{key}")
}

impl Reader {
    pub fn err(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.errors.push(FieldError::new(pointer, detail));
    }

    /// A string (numbers are accepted and printed, as ids often are numeric).
    pub fn opt_str(&mut self, v: &Value, key: &str, base: &str) -> Option<String> {
        match v.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                self.err(ptr(base, key), "must be a string");
                None
            }
        }
    }

    pub fn req_str(&mut self, v: &Value, key: &str, base: &str) -> String {
        match self.opt_str(v, key, base) {
            Some(s) if !s.trim().is_empty() => s,
            Some(_) => {
                self.err(ptr(base, key), "must not be empty");
                String::new()
            }
            None => {
                if !matches!(v.get(key), Some(x) if !x.is_null()) {
                    self.err(ptr(base, key), "is required");
                }
                String::new()
            }
        }
    }

    /// A whole number (JSON integer; a string of digits is refused as a wrong type).
    pub fn int(&mut self, v: &Value, key: &str, base: &str) -> Option<i64> {
        match v.get(key) {
            None | Some(Value::Null) => {
                self.err(ptr(base, key), "is required");
                None
            }
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Some(i),
                None => {
                    self.err(ptr(base, key), "must be a whole number");
                    None
                }
            },
            Some(_) => {
                self.err(ptr(base, key), "must be a number");
                None
            }
        }
    }

    pub fn opt_bool(&mut self, v: &Value, key: &str, base: &str) -> Option<bool> {
        match v.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.err(ptr(base, key), "must be true or false");
                None
            }
        }
    }

    /// A decimal amount (string "12.34" or a JSON number) in `currency`'s minor units.
    pub fn money(&mut self, v: &Value, key: &str, base: &str, currency: Option<Currency>) -> i64 {
        self.opt_money(v, key, base, currency).unwrap_or(0)
    }

    pub fn opt_money(
        &mut self,
        v: &Value,
        key: &str,
        base: &str,
        currency: Option<Currency>,
    ) -> Option<i64> {
        let raw = match v.get(key) {
            None | Some(Value::Null) => return None,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                self.err(ptr(base, key), "must be a decimal amount");
                return None;
            }
        };
        let c = currency?;
        match c.parse_amount(&raw) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(ptr(base, key), format!("{e} for {c}"));
                None
            }
        }
    }

    pub fn array<'v>(&mut self, v: &'v Value, key: &str, base: &str) -> &'v [Value] {
        match v.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                self.err(ptr(base, key), "must be an array");
                &[]
            }
        }
    }

    pub fn currency(&mut self, v: &Value, key: &str, base: &str) -> Option<Currency> {
        let s = self.req_str(v, key, base);
        if s.is_empty() {
            return None;
        }
        let c = Currency::from_code(&s);
        if c.is_none() {
            self.err(
                ptr(base, key),
                format!("'{s}' is not an ISO 4217 currency code"),
            );
        }
        c
    }

    /// An RFC 3339 timestamp (or a naive one taken as UTC, as WooCommerce's `_gmt` fields are).
    pub fn time(&mut self, v: &Value, key: &str, base: &str) -> Option<DateTime<Utc>> {
        let s = self.opt_str(v, key, base)?;
        match crate::kernel::time::parse_time(&s) {
            Some(t) => Some(t),
            None => {
                self.err(
                    ptr(base, key),
                    format!("'{s}' is not an ISO 8601 timestamp"),
                );
                None
            }
        }
    }

    /// Turns collected errors into a 422.
    pub fn finish(self) -> Result<(), Error> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(self.errors))
        }
    }
}

pub fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|x| x.trim().to_string()).filter(|x| !x.is_empty())
}

/// Normalises a country code to ISO alpha-2 upper case.
pub fn country(code: Option<String>) -> String {
    code.map(|c| c.trim().to_ascii_uppercase())
        .unwrap_or_default()
}

/// The shape every mapper returns: a validated order or a 422 with pointers.
pub fn checked(order: NewOrder, reader: Reader, prefix: &str) -> Result<NewOrder, Error> {
    let mut errors = reader.errors;
    if errors.is_empty() {
        errors.extend(order.validate(prefix));
    }
    if errors.is_empty() {
        Ok(order)
    } else {
        Err(Error::invalid(errors))
    }
}

/// Common address fields under common names.
pub fn is_empty_address(a: &Address) -> bool {
    a.line1.is_empty() && a.city.is_empty() && a.country_code.is_empty()
}
