//! The engine, the linker with WASI 0.2 + wasi:http + Spin's interfaces, the
//! per-instance state, and request/cron dispatch into fresh component instances.

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::allowed_hosts::{service_chaining_target, AllowedHosts};
use crate::manifest::{ComponentDef, Handler, Manifest, Route, Source};
use crate::routes::{RouteMatch, Router};
use crate::stores::{self, KeyValueBackend, KvStore, SqlValue, SqliteBackend, SqliteConn};
use crate::variables::{Resolver, Template};

pub(crate) mod spin_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "waybill:host/spin-imports",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": crate::stores::KvStore,
            "fermyon:spin/sqlite.connection": crate::stores::SqliteConn,
            "spin:sqlite/sqlite.connection": crate::stores::SqliteConn,
            "fermyon:spin/redis.connection": crate::unbacked::NoConnection,
            "fermyon:spin/mqtt.connection": crate::unbacked::NoConnection,
            "fermyon:spin/postgres.connection": crate::unbacked::NoConnection,
            "fermyon:spin/mysql.connection": crate::unbacked::NoConnection,
        },
    });
}

mod cron_bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/cron.wit",
        world: "fermyon:spin-cron/spin-cron",
        exports: { default: async },
    });
}

use spin_bindings::fermyon::spin::key_value as kv;
use spin_bindings::fermyon::spin::sqlite as sqlite2;
use spin_bindings::fermyon::spin::variables as vars;
use spin_bindings::spin::sqlite::sqlite as sqlite3;

/// `WAYBILL_HOST_TRACE_SQL=1` prints each statement's time (for profiling the host).
fn trace_sql() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("WAYBILL_HOST_TRACE_SQL")
            .map(|v| v == "1")
            .unwrap_or(false)
    })
}

/// Spin refuses more open handles than this per instance (`store-table-full`).
const MAX_OPEN_HANDLES: usize = 256;

/// One process-wide engine (compiled code is shared between apps in a test binary).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut base = wasmtime::Config::new();
        base.wasm_component_model(true);
        let mut pooled = base.clone();
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(1_000)
            .total_core_instances(8_000)
            .total_memories(2_000)
            .total_tables(4_000)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .max_memories_per_component(16)
            .max_tables_per_component(32)
            .max_core_instances_per_component(64)
            .max_memory_size(256 << 20);
        pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&pooled) {
            Ok(e) => e,
            Err(e) => {
                eprintln!(
                    "waybill-host: pooling allocator unavailable ({e}); using on-demand allocation"
                );
                Engine::new(&base).expect("wasmtime engine")
            }
        }
    })
}

/// Compiled components, shared by path and modification time across apps.
fn load_component(path: &Path) -> Result<Component> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (SystemTime, u64, Component)>>> = OnceLock::new();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = (meta.modified()?, meta.len());
    let cache = CACHE.get_or_init(Default::default);
    if let Some((m, l, c)) = cache.lock().unwrap().get(path) {
        if (*m, *l) == key {
            return Ok(c.clone());
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = componentize_if_module(&bytes).with_context(|| {
        format!(
            "cannot convert the core module {} to a component",
            path.display()
        )
    })?;
    let c = Component::new(engine(), &bytes)
        .map_err(|e| anyhow!("cannot compile {}: {e:#}", path.display()))?;
    cache
        .lock()
        .unwrap()
        .insert(path.to_path_buf(), (key.0, key.1, c.clone()));
    Ok(c)
}

/// Spin runs core Wasm modules too: one built by wit-bindgen for WASI preview 1
/// (it carries its component type in custom sections) is wrapped into a
/// component with the preview-1 adapter when it is loaded, as Spin does.
fn componentize_if_module(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(bytes)?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()?;
    Ok(std::borrow::Cow::Owned(component))
}

/// Spin's "copy" mount strategy: every file a `files` glob matches (relative to
/// the manifest's directory, minus `exclude_files`) is copied to the same
/// relative path under `root`; a `{ source, destination }` placement copies the
/// source directory's tree under `destination`. `root` is then mounted at `/`.
fn copy_file_mounts(
    files: &[crate::manifest::RawFilesMount],
    exclude: &[String],
    app_dir: &Path,
    root: &Path,
) -> Result<()> {
    use crate::manifest::RawFilesMount;
    if root.exists() {
        std::fs::remove_dir_all(root)
            .with_context(|| format!("cannot clear {}", root.display()))?;
    }
    std::fs::create_dir_all(root)?;
    let excludes = exclude
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| anyhow!("exclude_files {p:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(())
    };
    for f in files {
        match f {
            RawFilesMount::Pattern(p) => {
                let pattern = app_dir.join(p);
                let matches = glob::glob(&pattern.to_string_lossy())
                    .map_err(|e| anyhow!("{p:?} is not a valid glob: {e}"))?;
                for m in matches {
                    let m = m?;
                    if !m.is_file() {
                        continue;
                    }
                    let rel = m.strip_prefix(app_dir).unwrap_or(&m).to_path_buf();
                    if excludes.iter().any(|x| x.matches_path(&rel)) {
                        continue;
                    }
                    copy(&m, &root.join(&rel))?;
                }
            }
            RawFilesMount::Placement {
                source,
                destination,
            } => {
                let src = app_dir.join(source);
                if !src.is_dir() {
                    bail!("{source:?}: the source of a placement must be a directory");
                }
                let dest = root.join(destination.trim_start_matches('/'));
                let mut stack = vec![src.clone()];
                while let Some(dir) = stack.pop() {
                    for entry in std::fs::read_dir(&dir)? {
                        let path = entry?.path();
                        if path.is_dir() {
                            stack.push(path);
                        } else {
                            let rel = path.strip_prefix(&src).unwrap_or(&path);
                            copy(&path, &dest.join(rel))?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// What one component may do, resolved at start.
pub struct ComponentRt {
    pub id: String,
    variables: BTreeMap<String, Template>,
    environment: Vec<(String, String)>,
    pub(crate) allowed_hosts: AllowedHosts,
    key_value_stores: Vec<String>,
    sqlite_databases: Vec<String>,
    pub(crate) ai_models: Vec<String>,
    /// The component's `files`, copied into a directory mounted read-only at `/`.
    files_root: Option<PathBuf>,
    http_pre: Option<ProxyPre<HostState>>,
    cron_pre: Option<cron_bindings::SpinCronPre<HostState>>,
}

/// The running application's shared state.
pub struct AppRt {
    pub manifest: Manifest,
    pub state_dir: PathBuf,
    pub listen: OnceLock<SocketAddr>,
    pub log_requests: bool,
    resolver: Resolver,
    components: HashMap<String, Arc<ComponentRt>>,
    router: Router,
    kv: Arc<KeyValueBackend>,
    sqlite: SqliteBackend,
}

/// Per-instance state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    pub(crate) comp: Arc<ComponentRt>,
    app: Arc<AppRt>,
    open_handles: usize,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub type HttpResponse = hyper::Response<HyperOutgoingBody>;
type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

fn full_body(body: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with no body and no content type, as Spin sends for 404 (no route),
/// 500 (a trap or an error) and the other answers it makes itself.
fn empty_response(status: u16) -> HttpResponse {
    hyper::Response::builder()
        .status(status)
        .body(full_body(Bytes::new()))
        .expect("static response")
}

/// Options for building an app.
pub struct AppConfig {
    pub manifest_path: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub variables: Vec<(String, String)>,
    /// The environment `SPIN_VARIABLE_*` is read from (the process's by default).
    pub env: HashMap<String, String>,
    /// Statements run against the default database before serving (`--sqlite`).
    pub sqlite_statements: Vec<String>,
    pub log_requests: bool,
}

impl AppRt {
    pub fn build(cfg: AppConfig) -> Result<Arc<AppRt>> {
        let manifest = Manifest::load(&cfg.manifest_path)?;
        let resolver = Resolver::new(&manifest.variables, &cfg.variables, &cfg.env)?;
        let state_dir = cfg.state_dir.unwrap_or_else(|| manifest.dir.join(".spin"));
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;

        let public_routes: Vec<(&str, &Handler, &str)> = manifest
            .http
            .iter()
            .filter_map(|t| match &t.route {
                Route::Path(p) => Some((t.id.as_str(), &t.handler, p.as_str())),
                Route::Private => None,
            })
            .collect();
        let (router, warnings) = Router::build(public_routes)?;
        for w in manifest.warnings.iter().chain(&warnings) {
            eprintln!("waybill-host: warning: {w}");
        }

        let mut linker: Linker<HostState> = Linker::new(engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        spin_bindings::SpinImports::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let http_components: Vec<&str> =
            manifest.http.iter().filter_map(|t| t.component()).collect();
        let cron_components: Vec<&str> =
            manifest.cron.iter().map(|t| t.component.as_str()).collect();
        let mut components = HashMap::new();
        for (id, def) in &manifest.components {
            if !http_components.contains(&id.as_str()) && !cron_components.contains(&id.as_str()) {
                continue; // Spin loads only components some trigger uses.
            }
            let rt = Self::prepare_component(
                def,
                &manifest.dir,
                &state_dir,
                &resolver,
                &linker,
                http_components.contains(&id.as_str()),
                cron_components.contains(&id.as_str()),
            )
            .with_context(|| format!("component '{id}'"))?;
            components.insert(id.clone(), Arc::new(rt));
        }

        let kv = Arc::new(KeyValueBackend::open(
            &state_dir.join("sqlite_key_value.db"),
        )?);
        let sqlite = SqliteBackend {
            default_path: state_dir.join("sqlite_db.db"),
        };
        if !cfg.sqlite_statements.is_empty() {
            let conn = sqlite
                .connect(stores::DEFAULT_LABEL)
                .map_err(|e| anyhow!(e))?;
            for s in &cfg.sqlite_statements {
                conn.execute_batch(s)
                    .with_context(|| format!("--sqlite statement failed: {s}"))?;
            }
        }
        Ok(Arc::new(AppRt {
            manifest,
            state_dir,
            listen: OnceLock::new(),
            log_requests: cfg.log_requests,
            resolver,
            components,
            router,
            kv,
            sqlite,
        }))
    }

    fn prepare_component(
        def: &ComponentDef,
        app_dir: &Path,
        state_dir: &Path,
        resolver: &Resolver,
        linker: &Linker<HostState>,
        http: bool,
        cron: bool,
    ) -> Result<ComponentRt> {
        for label in &def.key_value_stores {
            if label != stores::DEFAULT_LABEL {
                bail!("key_value_stores: store '{label}' is not defined (only 'default' exists without runtime configuration)");
            }
        }
        for label in &def.sqlite_databases {
            if label != stores::DEFAULT_LABEL {
                bail!("sqlite_databases: database '{label}' is not defined (only 'default' exists without runtime configuration)");
            }
        }
        // Spin resolves templated hosts when the component runs; one that cannot be
        // resolved or parsed then makes every outbound check of the component fail.
        let allowed_hosts = def
            .allowed_outbound_hosts
            .iter()
            .map(|h| Template::parse(h).and_then(|t| t.render(resolver)))
            .collect::<Result<Vec<String>>>()
            .and_then(|hosts| AllowedHosts::parse(&hosts));
        let allowed_hosts = match allowed_hosts {
            Ok(a) => a,
            Err(e) => {
                eprintln!("waybill-host: warning: component '{}': allowed_outbound_hosts cannot be resolved ({e:#}); its outbound requests will be refused", def.id);
                AllowedHosts::default()
            }
        };
        if def.has_dependencies {
            bail!(
                "dependencies: component dependencies (composition) are not supported by this host"
            );
        }
        let source = match &def.source {
            Source::Local(p) => p,
            Source::Remote(r) => bail!("source: remote source {r} cannot be fetched by this host; download the component and give a local path"),
        };
        if !source.is_file() {
            bail!(
                "source: file {} does not exist (build the components first: scripts/build-wasm or `spin build`)",
                source.display()
            );
        }
        let component = load_component(source)?;
        let files_root = if def.files.is_empty() {
            None
        } else {
            let root = state_dir.join("files").join(&def.id);
            copy_file_mounts(&def.files, &def.exclude_files, app_dir, &root).context("files")?;
            Some(root)
        };
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow!("{}: cannot be linked: {e:#} (the host provides WASI 0.2, wasi:http, fermyon:spin@2.0.0 key-value, variables, sqlite, redis, mqtt, postgres, mysql and llm, and spin:sqlite/sqlite@3.0.0)", source.display())
        })?;
        let http_pre = if http {
            Some(ProxyPre::new(pre.clone()).map_err(|e| {
                anyhow!(
                    "{}: does not export wasi:http/incoming-handler@0.2.x: {e}",
                    source.display()
                )
            })?)
        } else {
            None
        };
        let cron_pre = if cron {
            Some(cron_bindings::SpinCronPre::new(pre).map_err(|e| {
                anyhow!(
                    "{}: does not export handle-cron-event (fermyon:spin-cron@2.0.0): {e}",
                    source.display()
                )
            })?)
        } else {
            None
        };
        Ok(ComponentRt {
            id: def.id.clone(),
            variables: def.variables.clone(),
            environment: def
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            allowed_hosts,
            key_value_stores: def.key_value_stores.clone(),
            sqlite_databases: def.sqlite_databases.clone(),
            ai_models: def.ai_models.clone(),
            files_root,
            http_pre,
            cron_pre,
        })
    }

    pub fn component(&self, id: &str) -> Option<&Arc<ComponentRt>> {
        self.components.get(id)
    }

    pub fn kv(&self) -> &KeyValueBackend {
        &self.kv
    }

    pub fn sqlite(&self) -> &SqliteBackend {
        &self.sqlite
    }

    fn new_store(self: &Arc<Self>, comp: &Arc<ComponentRt>) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        wasi.inherit_stdout()
            .inherit_stderr()
            .envs(&comp.environment);
        if let Some(root) = &comp.files_root {
            if let Err(e) = wasi.preopened_dir(root, "/", wasmtime_wasi::FsPerms::ReadOnly) {
                eprintln!("waybill-host: {}: cannot mount files: {e:#}", comp.id);
            }
        }
        // wasi:sockets as Spin gates it: a TCP connection or a UDP datagram may
        // go where `allowed_outbound_hosts` lets a `tcp://` / `udp://` URL go;
        // explicit binds and listening are refused (the unspecified address is the
        // implicit bind a connect performs, which Spin does not check).
        let allowed = comp.allowed_hosts.clone();
        wasi.allow_tcp(true).allow_udp(true);
        wasi.socket_addr_check(move |addr, usage| {
            let ok = match usage {
                wasmtime_wasi::sockets::SocketAddrUse::TcpBind => {
                    addr.ip().is_unspecified() && addr.port() == 0
                }
                wasmtime_wasi::sockets::SocketAddrUse::TcpConnect => {
                    allowed.allows_socket("tcp", &addr)
                }
                wasmtime_wasi::sockets::SocketAddrUse::UdpBind
                | wasmtime_wasi::sockets::SocketAddrUse::UdpSend => {
                    allowed.allows_socket("udp", &addr)
                }
                wasmtime_wasi::sockets::SocketAddrUse::UdpReceive => true,
                _ => false,
            };
            Box::pin(async move { ok })
        });
        Store::new(
            engine(),
            HostState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                http: WasiHttpCtx::new(),
                hooks: OutboundHooks {
                    app: self.clone(),
                    comp: comp.clone(),
                },
                comp: comp.clone(),
                app: self.clone(),
                open_handles: 0,
            },
        )
    }

    /// Serves one incoming request: routing, `spin-*` headers, a fresh instance.
    pub fn handle<B>(
        self: &Arc<Self>,
        req: hyper::Request<B>,
        client: SocketAddr,
    ) -> BoxFut<HttpResponse>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let app = self.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if let Some(well_known) = path.strip_prefix("/.well-known/spin/") {
                return match well_known {
                    "health" => hyper::Response::new(full_body("OK")),
                    "info" => {
                        let mut info = serde_json::json!({"name": app.manifest.name});
                        if let Some(v) = &app.manifest.version {
                            info["version"] = v.clone().into();
                        }
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(full_body(
                                serde_json::to_vec_pretty(&info).unwrap_or_default(),
                            ))
                            .expect("static response")
                    }
                    _ => empty_response(404),
                };
            }
            let Some(m) = app.router.route(&path) else {
                app.log(req.method().as_str(), &path, "-", 404, Instant::now());
                return empty_response(404);
            };
            if m.component.is_none() {
                let trigger = app.manifest.http.iter().find(|t| t.id == m.trigger);
                if let Some(Handler::Static(sr)) = trigger.map(|t| &t.handler) {
                    let mut b = hyper::Response::builder().status(sr.status);
                    for (k, v) in &sr.headers {
                        b = b.header(k, v);
                    }
                    let body = sr.body.clone().map(Bytes::from).unwrap_or_default();
                    return b
                        .body(full_body(body))
                        .unwrap_or_else(|_| empty_response(500));
                }
                return empty_response(500);
            }
            app.dispatch(req, m, "http", client).await
        })
    }

    /// Runs `req` in a fresh instance of the matched component.
    fn dispatch<B>(
        self: &Arc<Self>,
        req: hyper::Request<B>,
        m: RouteMatch,
        scheme: &str,
        client: SocketAddr,
    ) -> BoxFut<HttpResponse>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let app = self.clone();
        let scheme = scheme.to_string();
        Box::pin(async move {
            let started = Instant::now();
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let Some(comp) = m
                .component
                .as_ref()
                .and_then(|c| app.components.get(c))
                .cloned()
            else {
                return empty_response(404);
            };
            let Some(pre) = comp.http_pre.clone() else {
                return empty_response(500);
            };
            let (mut parts, body) = req.into_parts();
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| "localhost".to_string());
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            for (k, v) in m.spin_headers(&scheme, &host, &pq, client) {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    parts.headers.insert(k, v);
                }
            }
            parts.uri = match http::Uri::builder()
                .scheme(scheme.as_str())
                .authority(host.as_str())
                .path_and_query(pq.as_str())
                .build()
            {
                Ok(u) => u,
                Err(_) => return empty_response(400),
            };
            let req = hyper::Request::from_parts(parts, body);
            let wasi_scheme = if scheme == "https" {
                Scheme::Https
            } else {
                Scheme::Http
            };

            let mut store = app.new_store(&comp);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let prepared = (|| -> wasmtime::Result<_> {
                let req = store
                    .data_mut()
                    .http()
                    .new_incoming_request(wasi_scheme, req)?;
                let out = store.data_mut().http().new_response_outparam(tx)?;
                Ok((req, out))
            })();
            let (wreq, out) = match prepared {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("waybill-host: {}: cannot prepare request: {e:#}", comp.id);
                    return empty_response(400);
                }
            };
            let comp_id = comp.id.clone();
            let task = tokio::spawn(async move {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, wreq, out)
                    .await
            });
            let resp = match rx.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(code)) => {
                    eprintln!(
                        "waybill-host: {comp_id}: component answered with an error: {code:?}"
                    );
                    empty_response(500)
                }
                Err(_) => {
                    let why = match task.await {
                        Ok(Ok(())) => {
                            "the component returned without setting a response".to_string()
                        }
                        Ok(Err(e)) => format!("{e:?}"),
                        Err(e) => e.to_string(),
                    };
                    eprintln!("waybill-host: {comp_id}: trapped: {why}");
                    empty_response(500)
                }
            };
            app.log(&method, &path, &comp_id, resp.status().as_u16(), started);
            resp
        })
    }

    fn log(&self, method: &str, path: &str, component: &str, status: u16, started: Instant) {
        if self.log_requests {
            eprintln!(
                "waybill-host: {method} {path} -> {component} {status} {:.3}ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
    }

    /// Fires one cron event at `component` now.
    pub async fn fire_cron(self: &Arc<Self>, component: &str) -> Result<()> {
        let comp = self
            .components
            .get(component)
            .cloned()
            .ok_or_else(|| anyhow!("no component '{component}'"))?;
        let pre = comp
            .cron_pre
            .clone()
            .ok_or_else(|| anyhow!("component '{component}' has no cron trigger"))?;
        let started = Instant::now();
        let mut store = self.new_store(&comp);
        let cron = pre.instantiate_async(&mut store).await?;
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs();
        let res = cron
            .call_handle_cron_event(
                &mut store,
                cron_bindings::fermyon::spin_cron::cron_types::Metadata { timestamp },
            )
            .await?;
        let status = if res.is_ok() { 200 } else { 500 };
        self.log("CRON", "-", component, status, started);
        match res {
            Ok(()) => Ok(()),
            Err(cron_bindings::fermyon::spin_cron::cron_types::Error::Other(m)) => {
                Err(anyhow!("cron component '{component}' failed: {m}"))
            }
        }
    }
}

/// Outbound HTTP: the allow-list, then service chaining in process or the network.
struct OutboundHooks {
    app: Arc<AppRt>,
    comp: Arc<ComponentRt>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<
                            dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                                + Send,
                        >,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let app = self.app.clone();
        let comp = self.comp.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("http").to_string();
            let host = uri.host().unwrap_or("").to_string();
            if !comp.allowed_hosts.allows(&scheme, &host, uri.port_u16()) {
                eprintln!(
                    "waybill-host: {}: outbound request to {scheme}://{host}{} denied: not in allowed_outbound_hosts",
                    comp.id,
                    uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default()
                );
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            if let Some(target) = service_chaining_target(&host) {
                if !app.components.contains_key(target) {
                    return Err(wasmtime_wasi_http::Error::DestinationNotFound);
                }
                let (mut parts, body) = request.into_parts();
                parts.headers.remove(http::header::HOST);
                let path = parts.uri.path().to_string();
                let m = RouteMatch::synthetic(target, &path);
                let chained_client = SocketAddr::from(([0, 0, 0, 0], 0));
                let resp = app
                    .dispatch(
                        hyper::Request::from_parts(parts, body),
                        m,
                        "http",
                        chained_client,
                    )
                    .await;
                let done: Box<
                    dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send,
                > = Box::new(async { Ok(()) });
                return Ok((resp, done));
            }
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let done: Box<
                dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send,
            > = Box::new(io);
            Ok((resp.map(|b| b.boxed_unsync()), done))
        })
    }
}

// ---- fermyon:spin/key-value@2.0.0 ----

impl HostState {
    fn push_handle<T: Send + 'static>(&mut self, v: T) -> wasmtime::Result<Option<Resource<T>>> {
        if self.open_handles >= MAX_OPEN_HANDLES {
            return Ok(None);
        }
        self.open_handles += 1;
        Ok(Some(self.table.push(v)?))
    }

    async fn kv_op<T: Send + 'static>(
        &mut self,
        store: &Resource<KvStore>,
        f: impl FnOnce(&KeyValueBackend, &str) -> Result<T, String> + Send + 'static,
    ) -> wasmtime::Result<Result<T, kv::Error>> {
        let label = self.table.get(store)?.label.clone();
        let backend = self.app.kv.clone();
        let r = tokio::task::spawn_blocking(move || f(&backend, &label)).await?;
        Ok(r.map_err(kv::Error::Other))
    }
}

impl kv::Host for HostState {}

impl kv::HostStore for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvStore>, kv::Error>> {
        if !self.comp.key_value_stores.contains(&label) {
            return Ok(Err(kv::Error::AccessDenied));
        }
        if label != stores::DEFAULT_LABEL {
            return Ok(Err(kv::Error::NoSuchStore));
        }
        Ok(self
            .push_handle(KvStore { label })?
            .ok_or(kv::Error::StoreTableFull))
    }

    async fn get(
        &mut self,
        s: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        self.kv_op(&s, move |b, l| b.get(l, &key)).await
    }

    async fn set(
        &mut self,
        s: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        self.kv_op(&s, move |b, l| b.set(l, &key, &value)).await
    }

    async fn delete(
        &mut self,
        s: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        self.kv_op(&s, move |b, l| b.delete(l, &key)).await
    }

    async fn exists(
        &mut self,
        s: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        self.kv_op(&s, move |b, l| b.exists(l, &key)).await
    }

    async fn get_keys(
        &mut self,
        s: Resource<KvStore>,
    ) -> wasmtime::Result<Result<Vec<String>, kv::Error>> {
        self.kv_op(&s, move |b, l| b.keys(l)).await
    }

    async fn drop(&mut self, s: Resource<KvStore>) -> wasmtime::Result<()> {
        self.table.delete(s)?;
        self.open_handles = self.open_handles.saturating_sub(1);
        Ok(())
    }
}

// ---- fermyon:spin/variables@2.0.0 ----

impl vars::Host for HostState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, vars::Error>> {
        // Spin's run-time rule (looser than the manifest's: `fc_secret_1` passes).
        if let Err(e) = crate::manifest::runtime_variable_name(&name) {
            return Ok(Err(vars::Error::InvalidName(format!(
                "invalid variable name {name:?}: {e}"
            ))));
        }
        let Some(t) = self.comp.variables.get(&name) else {
            return Ok(Err(vars::Error::Undefined(format!(
                "no variable for {:?}.{name:?}",
                self.comp.id
            ))));
        };
        Ok(t.render(&self.app.resolver)
            .map_err(|e| vars::Error::Undefined(e.to_string())))
    }
}

// ---- SQLite: spin:sqlite@3.0.0 and fermyon:spin/sqlite@2.0.0 ----

enum OpenError {
    AccessDenied,
    NoSuchDatabase,
    Full,
    Io(String),
}

impl HostState {
    async fn sqlite_open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<SqliteConn>, OpenError>> {
        if !self.comp.sqlite_databases.contains(&label) {
            return Ok(Err(OpenError::AccessDenied));
        }
        if self.app.sqlite.path_for(&label).is_none() {
            return Ok(Err(OpenError::NoSuchDatabase));
        }
        if self.open_handles >= MAX_OPEN_HANDLES {
            return Ok(Err(OpenError::Full));
        }
        let backend = self.app.sqlite.clone();
        let conn = tokio::task::spawn_blocking(move || backend.connect(&label)).await?;
        match conn {
            Ok(c) => Ok(Ok(self
                .push_handle(SqliteConn {
                    conn: Arc::new(Mutex::new(c)),
                })?
                .expect("checked capacity"))),
            Err(e) => Ok(Err(OpenError::Io(e))),
        }
    }

    async fn sqlite_execute(
        &mut self,
        c: &Resource<SqliteConn>,
        sql: String,
        params: Vec<SqlValue>,
    ) -> wasmtime::Result<Result<stores::SqlResult, String>> {
        let conn = self.table.get(c)?.conn.clone();
        let trace = trace_sql();
        let t0 = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            let t1 = Instant::now();
            let conn = conn
                .lock()
                .map_err(|_| "connection lock poisoned".to_string())?;
            let r = stores::execute(&conn, &sql, &params);
            if trace {
                eprintln!(
                    "waybill-host: sql {:>7.3}ms {}",
                    t1.elapsed().as_secs_f64() * 1000.0,
                    sql.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(60)
                        .collect::<String>()
                );
            }
            r
        })
        .await?;
        if trace {
            eprintln!(
                "waybill-host: sql call total {:>7.3}ms",
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
        Ok(r)
    }

    fn sqlite_drop(&mut self, c: Resource<SqliteConn>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        self.open_handles = self.open_handles.saturating_sub(1);
        Ok(())
    }
}

macro_rules! sqlite_value_conversions {
    ($m:ident) => {
        impl From<$m::Value> for SqlValue {
            fn from(v: $m::Value) -> Self {
                match v {
                    $m::Value::Integer(i) => SqlValue::Integer(i),
                    $m::Value::Real(r) => SqlValue::Real(r),
                    $m::Value::Text(t) => SqlValue::Text(t),
                    $m::Value::Blob(b) => SqlValue::Blob(b),
                    $m::Value::Null => SqlValue::Null,
                }
            }
        }
        impl From<SqlValue> for $m::Value {
            fn from(v: SqlValue) -> Self {
                match v {
                    SqlValue::Integer(i) => $m::Value::Integer(i),
                    SqlValue::Real(r) => $m::Value::Real(r),
                    SqlValue::Text(t) => $m::Value::Text(t),
                    SqlValue::Blob(b) => $m::Value::Blob(b),
                    SqlValue::Null => $m::Value::Null,
                }
            }
        }
        impl From<OpenError> for $m::Error {
            fn from(e: OpenError) -> Self {
                match e {
                    OpenError::AccessDenied => $m::Error::AccessDenied,
                    OpenError::NoSuchDatabase => $m::Error::NoSuchDatabase,
                    OpenError::Full => $m::Error::Io("too many open connections".into()),
                    OpenError::Io(m) => $m::Error::Io(m),
                }
            }
        }
        impl From<stores::SqlResult> for $m::QueryResult {
            fn from(r: stores::SqlResult) -> Self {
                $m::QueryResult {
                    columns: r.columns,
                    rows: r
                        .rows
                        .into_iter()
                        .map(|row| $m::RowResult {
                            values: row.into_iter().map(Into::into).collect(),
                        })
                        .collect(),
                }
            }
        }
    };
}

sqlite_value_conversions!(sqlite3);
sqlite_value_conversions!(sqlite2);

impl sqlite3::Host for HostState {}

impl sqlite3::HostConnection for HostState {
    async fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<SqliteConn>, sqlite3::Error>> {
        Ok(self.sqlite_open(database).await?.map_err(Into::into))
    }

    async fn execute(
        &mut self,
        c: Resource<SqliteConn>,
        statement: String,
        parameters: Vec<sqlite3::Value>,
    ) -> wasmtime::Result<Result<sqlite3::QueryResult, sqlite3::Error>> {
        let params = parameters.into_iter().map(Into::into).collect();
        Ok(self
            .sqlite_execute(&c, statement, params)
            .await?
            .map(Into::into)
            .map_err(sqlite3::Error::Io))
    }

    async fn last_insert_rowid(&mut self, c: Resource<SqliteConn>) -> wasmtime::Result<i64> {
        let conn = self.table.get(&c)?.conn.clone();
        let id = conn.lock().map(|c| c.last_insert_rowid()).unwrap_or(0);
        Ok(id)
    }

    async fn changes(&mut self, c: Resource<SqliteConn>) -> wasmtime::Result<u64> {
        let conn = self.table.get(&c)?.conn.clone();
        let n = conn.lock().map(|c| c.changes()).unwrap_or(0);
        Ok(n)
    }

    async fn drop(&mut self, c: Resource<SqliteConn>) -> wasmtime::Result<()> {
        self.sqlite_drop(c)
    }
}

impl sqlite2::Host for HostState {}

impl sqlite2::HostConnection for HostState {
    async fn open(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<Resource<SqliteConn>, sqlite2::Error>> {
        Ok(self.sqlite_open(database).await?.map_err(Into::into))
    }

    async fn execute(
        &mut self,
        c: Resource<SqliteConn>,
        statement: String,
        parameters: Vec<sqlite2::Value>,
    ) -> wasmtime::Result<Result<sqlite2::QueryResult, sqlite2::Error>> {
        let params = parameters.into_iter().map(Into::into).collect();
        Ok(self
            .sqlite_execute(&c, statement, params)
            .await?
            .map(Into::into)
            .map_err(sqlite2::Error::Io))
    }

    async fn drop(&mut self, c: Resource<SqliteConn>) -> wasmtime::Result<()> {
        self.sqlite_drop(c)
    }
}
