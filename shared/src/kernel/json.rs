//! Request bodies as JSON.

use serde_json::Value;

use crate::kernel::error::Error;

/// Parses a JSON body, mapping syntax errors to 400 with the position.
pub fn parse_json(body: &[u8]) -> Result<Value, Error> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::bad_request(
            "the request body is empty; a JSON document is expected",
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::bad_request(format!("malformed JSON: {e}")))
}
