//! waybill-host: a Spin-compatible host on wasmtime.
//!
//! It reads a `spin.toml` (manifest version 2) and runs the real compiled
//! components the way Spin 3.x/4.x does: a fresh instance per request, WASI 0.2,
//! `wasi:http`, Spin's key-value, SQLite and variables interfaces, service
//! chaining, `allowed_outbound_hosts`, HTTP and cron triggers. It exists because
//! no Spin binary can be installed where Waybill is built and tested; it must
//! never be more permissive than Spin.
//!
//! Library use (tests, benchmarks):
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let app = waybill_host::App::builder("spin.toml").start().await?;
//! let (status, _headers, body) = waybill_host::client::get(&app.url("/api/orders")).await?;
//! app.fire_cron("report").await?;
//! app.stop().await;
//! # Ok(()) }
//! ```

pub mod allowed_hosts;
pub mod client;
pub mod manifest;
pub mod routes;
pub mod runtime;
pub mod stores;
mod unbacked;
pub mod variables;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use runtime::AppRt;
pub use stores::{SqlResult, SqlValue};

/// Builds and starts an app.
pub struct AppBuilder {
    manifest: PathBuf,
    listen: SocketAddr,
    state_dir: Option<PathBuf>,
    variables: Vec<(String, String)>,
    env: Option<HashMap<String, String>>,
    sqlite: Vec<String>,
    log_requests: bool,
    cron: bool,
}

/// Entry point.
pub struct App;

impl App {
    /// Defaults for tests: an ephemeral loopback port, a fresh state directory,
    /// no `SPIN_VARIABLE_*` from the process environment, schedules not started.
    pub fn builder(manifest: impl AsRef<Path>) -> AppBuilder {
        AppBuilder {
            manifest: manifest.as_ref().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: None,
            variables: Vec::new(),
            env: Some(HashMap::new()),
            sqlite: Vec::new(),
            log_requests: false,
            cron: false,
        }
    }
}

impl AppBuilder {
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// Where the stores live (default: a fresh temporary directory for tests;
    /// `.spin/` next to spin.toml for `waybill-host up`).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }
    pub fn variable(mut self, name: &str, value: &str) -> Self {
        self.variables.push((name.to_string(), value.to_string()));
        self
    }
    /// Reads `SPIN_VARIABLE_*` from this map instead of the process environment.
    pub fn env(mut self, env: HashMap<String, String>) -> Self {
        self.env = Some(env);
        self
    }
    /// Reads `SPIN_VARIABLE_*` from the process environment (as `spin up` does).
    pub fn process_env(mut self) -> Self {
        self.env = None;
        self
    }
    pub fn sqlite_statement(mut self, sql: impl Into<String>) -> Self {
        self.sqlite.push(sql.into());
        self
    }
    pub fn log_requests(mut self, on: bool) -> Self {
        self.log_requests = on;
        self
    }
    /// Runs the cron triggers on their schedules.
    pub fn schedules(mut self, on: bool) -> Self {
        self.cron = on;
        self
    }

    /// Loads and validates everything, then listens. Fails with a message naming
    /// the manifest field, the missing import or the missing variable.
    pub async fn start(self) -> Result<RunningApp> {
        let state_dir = match self.state_dir {
            Some(d) => d,
            None => tempdir()?,
        };
        let cfg = runtime::AppConfig {
            manifest_path: self.manifest.clone(),
            state_dir: Some(state_dir),
            variables: self.variables,
            env: self.env.unwrap_or_else(|| std::env::vars().collect()),
            sqlite_statements: self.sqlite,
            log_requests: self.log_requests,
        };
        let manifest = self.manifest.clone();
        let app = tokio::task::spawn_blocking(move || AppRt::build(cfg))
            .await?
            .with_context(|| format!("cannot start {}", manifest.display()))?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        let _ = app.listen.set(addr);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = vec![tokio::spawn(serve(app.clone(), listener, stop_rx.clone()))];
        if self.cron {
            for t in &app.manifest.cron {
                tasks.push(tokio::spawn(run_schedule(
                    app.clone(),
                    t.component.clone(),
                    t.schedule.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        Ok(RunningApp {
            addr,
            app,
            stop: stop_tx,
            tasks,
        })
    }
}

fn tempdir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "waybill-host-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn serve(
    app: Arc<AppRt>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, client) = match accepted {
            Ok(x) => x,
            Err(e) => {
                eprintln!("waybill-host: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(app.handle(req, client).await) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn run_schedule(
    app: Arc<AppRt>,
    component: String,
    schedule: cron::Schedule,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(next) = schedule.upcoming(chrono::Utc).next() else {
            return;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = app.fire_cron(&component).await {
            eprintln!("waybill-host: cron {component}: {e:#}");
        }
    }
}

/// A started app.
pub struct RunningApp {
    pub addr: SocketAddr,
    pub app: Arc<AppRt>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn state_dir(&self) -> &Path {
        &self.app.state_dir
    }

    /// Fires one event at a cron-triggered component now.
    pub async fn fire_cron(&self, component: &str) -> Result<()> {
        self.app.fire_cron(component).await
    }

    /// Reads a key from a key-value store (label `default`).
    pub fn kv_get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.app.kv().get(store, key).map_err(anyhow::Error::msg)
    }

    /// Runs one statement on its own connection to a SQLite database.
    pub fn sql(&self, label: &str, sql: &str, params: &[SqlValue]) -> Result<SqlResult> {
        let conn = self
            .app
            .sqlite()
            .connect(label)
            .map_err(anyhow::Error::msg)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        stores::execute(&conn, sql, params).map_err(anyhow::Error::msg)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
