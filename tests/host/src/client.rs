//! A minimal HTTP/1.1 client for tests and benchmarks (loopback only).

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub type Headers = Vec<(String, String)>;

/// Sends one request on a new connection; returns status, headers and body.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<(u16, Headers, Bytes)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad url {url}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("url has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body.into()))?)
        .await?;
    let status = resp.status().as_u16();
    let hdrs = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, hdrs, body))
}

pub async fn get(url: &str) -> Result<(u16, Headers, Bytes)> {
    request("GET", url, &[], Bytes::new()).await
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Result<(u16, Headers, Bytes)> {
    request("POST", url, &[], body).await
}
