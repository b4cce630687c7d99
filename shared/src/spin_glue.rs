//! The few lines every Spin component needs: convert requests and responses,
//! open the database (migrating if due), read variables.

use spin_sdk::http::{Request as SpinRequest, Response as SpinResponse};

use crate::db::spin::SpinDb;
use crate::error::{Error, ErrorKind};
use crate::http::{Request, Response};

/// Copies a Spin request into the host-independent [`Request`].
pub fn request(req: &SpinRequest) -> Request {
    let path_and_query = req.path_and_query().unwrap_or("/");
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    Request {
        method: req.method().to_string().to_ascii_uppercase(),
        path: path.to_string(),
        query: query.to_string(),
        headers: req
            .headers()
            .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: req.body().to_vec(),
    }
}

pub fn response(r: Response) -> SpinResponse {
    let mut b = SpinResponse::builder();
    b.status(r.status);
    for (k, v) in &r.headers {
        b.header(k.as_str(), v.as_str());
    }
    b.body(r.body).build()
}

/// Opens the `default` database for a request that only reads.
pub fn open_db() -> Result<SpinDb, Error> {
    let db = SpinDb::open("default").map_err(|e| Error::new(ErrorKind::Unavailable, e.0))?;
    crate::schema::prepare(&db).map_err(Error::from)?;
    Ok(db)
}

/// Opens the `default` database for a request that writes (see `schema::prepare_writer`).
pub fn open_writer() -> Result<SpinDb, Error> {
    let db = SpinDb::open("default").map_err(|e| Error::new(ErrorKind::Unavailable, e.0))?;
    crate::schema::prepare_writer(&db).map_err(Error::from)?;
    Ok(db)
}

/// A Spin variable, or `default` when it is not set for this component.
pub fn variable(name: &str, default: &str) -> String {
    spin_sdk::variables::get(name).unwrap_or_else(|_| default.to_string())
}
