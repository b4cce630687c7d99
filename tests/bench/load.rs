//! A closed-loop HTTP load generator for Waybill's benchmarks (loopback only).
//!
//! Unlike a generic tool it can sign every request: each Shopify webhook carries
//! a distinct order id and its own X-Shopify-Hmac-Sha256, so every request
//! creates one durable order.
//!
//! bench-load <base-url> <mode> <connections> <seconds>   (BENCH_LINES: lines per Shopify order)
//!   mode: hello | write-floor | shopify | raw-sqlite:<dir> | raw-batched:<dir>
//! Prints one markdown table row: | mode | connections | requests/s | p50 | p99 | errors |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Lines per order (`BENCH_LINES`, default 3: the fixed order below; any other
/// count: that many lines `SKU-1`..`SKU-n`, one unit of 10.00 each).
fn lines() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("BENCH_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
    })
}

/// A compact Shopify order (the documented shape, fewer fields) with a unique id.
fn shopify_body(n: u64, run: u64) -> Vec<u8> {
    let id = 9_000_000_000u64 + run * 10_000_000 + n;
    if std::env::var("BENCH_LINES").is_ok() {
        return shopify_body_with(id, n, lines());
    }
    serde_json::json!({
        "id": id, "name": format!("#B{n}"), "email": "bench@example.com", "currency": "EUR",
        "created_at": "2026-11-20T10:00:00+01:00", "processed_at": "2026-11-20T10:00:00+01:00",
        "financial_status": "authorized", "taxes_included": true, "total_price": "64.90",
        "customer": {"id": 1, "email": "bench@example.com", "first_name": "Bench", "last_name": "Mark"},
        "shipping_address": {"first_name": "Bench", "last_name": "Mark", "address1": "Hauptstr. 1", "city": "Berlin", "zip": "10115", "country_code": "DE"},
        "line_items": [
            {"id": 1, "sku": "SKU-A", "name": "A", "quantity": 1, "price": "19.90", "requires_shipping": true, "tax_lines": [{"price": "3.18", "rate": 0.19, "title": "MwSt"}], "discount_allocations": []},
            {"id": 2, "sku": "SKU-B", "name": "B", "quantity": 2, "price": "10.00", "requires_shipping": true, "tax_lines": [{"price": "3.19", "rate": 0.19, "title": "MwSt"}], "discount_allocations": []},
            {"id": 3, "sku": "SKU-C", "name": "C", "quantity": 1, "price": "20.00", "requires_shipping": true, "tax_lines": [{"price": "3.19", "rate": 0.19, "title": "MwSt"}], "discount_allocations": []}
        ],
        "shipping_lines": [{"id": 1, "code": "standard", "title": "Standard", "price": "5.00", "tax_lines": [], "discount_allocations": []}]
    })
    .to_string()
    .into_bytes()
}

/// An order of `k` lines `SKU-1`..`SKU-k` (10.00 each, 19% tax included), its
/// total stated so that no review hold stops its release.
fn shopify_body_with(id: u64, n: u64, k: usize) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (1..=k)
        .map(|i| serde_json::json!({"id": i, "sku": format!("SKU-{i}"), "name": format!("SKU {i}"), "quantity": 1,
            "price": "10.00", "requires_shipping": true,
            "tax_lines": [{"price": "1.60", "rate": 0.19, "title": "MwSt"}], "discount_allocations": []}))
        .collect();
    serde_json::json!({
        "id": id, "name": format!("#B{n}"), "email": "bench@example.com", "currency": "EUR",
        "created_at": "2026-11-20T10:00:00+01:00", "processed_at": "2026-11-20T10:00:00+01:00",
        "financial_status": "authorized", "taxes_included": true, "total_price": format!("{}.00", 10 * k + 5),
        "customer": {"id": 1, "email": "bench@example.com", "first_name": "Bench", "last_name": "Mark"},
        "shipping_address": {"first_name": "Bench", "last_name": "Mark", "address1": "Hauptstr. 1", "city": "Berlin", "zip": "10115", "country_code": "DE"},
        "line_items": items,
        "shipping_lines": [{"id": 1, "code": "standard", "title": "Standard", "price": "5.00", "tax_lines": [], "discount_allocations": []}]
    })
    .to_string()
    .into_bytes()
}

struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn worker(addr: String, mode: String, secret: String, run: u64, until: Instant) -> Stats {
    let mut st = Stats {
        latencies_us: Vec::new(),
        errors: 0,
    };
    let mut sender = None;
    while Instant::now() < until {
        if sender.is_none() {
            match tokio::net::TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s))
                        .await
                    {
                        Ok((tx, conn)) => {
                            tokio::spawn(conn);
                            sender = Some(tx);
                        }
                        Err(_) => {
                            st.errors += 1;
                            continue;
                        }
                    }
                }
                Err(_) => {
                    st.errors += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let tx = sender.as_mut().expect("connected");
        let req = match mode.as_str() {
            "hello" => hyper::Request::get("/hello")
                .header("host", &addr)
                .body(Full::new(Bytes::new()))
                .expect("request"),
            "write-floor" => {
                let n = SEQ.fetch_add(1, Ordering::Relaxed);
                hyper::Request::post("/floor")
                    .header("host", &addr)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(shopify_body(n, run))))
                    .expect("request")
            }
            _ => {
                let n = SEQ.fetch_add(1, Ordering::Relaxed);
                let body = shopify_body(n, run);
                let sig = waybill::kernel::signature::base64_hmac(secret.as_bytes(), &body);
                hyper::Request::post("/webhooks/shopify")
                    .header("host", &addr)
                    .header("content-type", "application/json")
                    .header("x-shopify-topic", "orders/create")
                    .header("x-shopify-hmac-sha256", sig)
                    .header("x-shopify-event-id", format!("bench-{run}-{n}"))
                    .body(Full::new(Bytes::from(body)))
                    .expect("request")
            }
        };
        let t0 = Instant::now();
        match tx.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                if ok {
                    st.latencies_us
                        .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    st.errors += 1;
                }
            }
            Err(_) => {
                st.errors += 1;
                sender = None;
            }
        }
    }
    st
}

fn pct(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    let us = sorted[i];
    if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

/// The same order rows written natively: one transaction per order on a new
/// connection, as each Spin request does.
fn raw_sqlite(dir: &str, conns: usize, secs: u64) {
    use waybill::kernel::db::native::NativeDb;
    let path = std::path::Path::new(dir).join("raw.db");
    let _ = std::fs::remove_file(&path);
    {
        let db = NativeDb::open(&path).expect("db");
        waybill::kernel::schema::prepare(&db).expect("schema");
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let run = std::process::id() as u64;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut st = Stats {
                    latencies_us: Vec::new(),
                    errors: 0,
                };
                while Instant::now() < until {
                    let n = SEQ.fetch_add(1, Ordering::Relaxed);
                    let v: serde_json::Value =
                        serde_json::from_slice(&shopify_body(n, run)).expect("json");
                    let order = waybill::intake::sources::shopify::map_order(&v, chrono_now())
                        .expect("maps");
                    let t0 = Instant::now();
                    let r = (|| -> Result<(), waybill::Error> {
                        let db = NativeDb::open(&path).map_err(waybill::Error::from)?;
                        waybill::kernel::schema::prepare_writer(&db)?;
                        waybill::kernel::db::transaction(&db, |db| {
                            waybill::flows::intake::place(db, &order, chrono_now(), "bench")
                                .map(|_| ())
                        })
                    })();
                    match r {
                        Ok(()) => st.latencies_us.push(t0.elapsed().as_micros() as u32),
                        Err(_) => st.errors += 1,
                    }
                }
                st
            })
        })
        .collect();
    report(
        "raw-sqlite",
        conns,
        secs,
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect(),
    );
}

/// The storage ceiling: the same order rows written natively in batches of
/// `BATCH` orders per transaction (one connection per thread). Prints orders/s;
/// the latencies are per batch.
fn raw_batched(dir: &str, conns: usize, secs: u64) {
    use waybill::kernel::db::native::NativeDb;
    const BATCH: usize = 100;
    let path = std::path::Path::new(dir).join("raw-batched.db");
    let _ = std::fs::remove_file(&path);
    {
        let db = NativeDb::open(&path).expect("db");
        waybill::kernel::schema::prepare(&db).expect("schema");
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let run = std::process::id() as u64;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let db = NativeDb::open(&path).expect("db");
                waybill::kernel::schema::prepare_writer(&db).expect("writer");
                let (mut orders, mut batches, mut errors) = (0u64, Vec::new(), 0u64);
                while Instant::now() < until {
                    let batch: Vec<_> = (0..BATCH)
                        .map(|_| {
                            let n = SEQ.fetch_add(1, Ordering::Relaxed);
                            let v: serde_json::Value =
                                serde_json::from_slice(&shopify_body(n, run)).expect("json");
                            waybill::intake::sources::shopify::map_order(&v, chrono_now())
                                .expect("maps")
                        })
                        .collect();
                    let t0 = Instant::now();
                    let r = waybill::kernel::db::transaction(&db, |db| {
                        for o in &batch {
                            waybill::flows::intake::place(db, o, chrono_now(), "bench")?;
                        }
                        Ok::<_, waybill::Error>(())
                    });
                    match r {
                        Ok(()) => {
                            orders += BATCH as u64;
                            batches.push(t0.elapsed().as_micros() as u32);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (orders, batches, errors)
            })
        })
        .collect();
    let (mut orders, mut all, mut errors) = (0u64, Vec::new(), 0u64);
    for h in handles {
        let (o, b, e) = h.join().expect("thread");
        orders += o;
        all.extend(b);
        errors += e;
    }
    all.sort_unstable();
    println!(
        "| raw-batched ({BATCH} orders per transaction) | {conns} | {:.0} | {} | {} | {errors} |",
        orders as f64 / secs as f64,
        pct(&all, 0.50),
        pct(&all, 0.99)
    );
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn report(mode: &str, conns: usize, secs: u64, stats: Vec<Stats>) {
    let mut all: Vec<u32> = stats
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    all.sort_unstable();
    println!(
        "| {mode} | {conns} | {:.0} | {} | {} | {errors} |",
        all.len() as f64 / secs as f64,
        pct(&all, 0.50),
        pct(&all, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!(
            "usage: bench-load <host:port> <hello|write-floor|shopify|raw-sqlite:DIR|raw-batched:DIR> <connections> <seconds>"
        );
        std::process::exit(2);
    }
    let (addr, mode) = (args[1].clone(), args[2].clone());
    let conns: usize = args[3].parse().expect("connections");
    let secs: u64 = args[4].parse().expect("seconds");
    if let Some(dir) = mode.strip_prefix("raw-sqlite:") {
        raw_sqlite(dir, conns, secs);
        return;
    }
    if let Some(dir) = mode.strip_prefix("raw-batched:") {
        raw_batched(dir, conns, secs);
        return;
    }
    let secret = std::env::var("SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET")
        .unwrap_or_else(|_| "bench-secret".into());
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 100_000;
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(worker(
                addr.clone(),
                mode.clone(),
                secret.clone(),
                run,
                until,
            ))
        })
        .collect();
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await.expect("worker"));
    }
    report(&mode, conns, secs, stats);
}
