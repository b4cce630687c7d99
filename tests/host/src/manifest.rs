//! spin.toml (manifest version 2), parsed and validated the way Spin does it.
//!
//! Every error names the field it is about (`component.intake.source`,
//! `trigger.http[3].route`, `variables.shop_secret`) and the reason, so that a
//! broken manifest fails at start with a message an operator can act on.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::allowed_hosts::AllowedHosts;
use crate::variables::Template;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    /// Checked on the probe table before this struct is read.
    #[allow(dead_code)]
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    /// Required, as in Spin (`missing field `trigger``).
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    /// May be empty: Spin does not check it.
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    /// Application-level trigger settings (`[application.trigger.http]` etc.).
    #[serde(default)]
    trigger: BTreeMap<String, toml::Table>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    /// Settings for tools and plugins; Spin ignores them.
    #[serde(default)]
    tool: BTreeMap<String, toml::Table>,
}

/// `targets` entries: a catalogue name, `{ url }` or `{ path }` (used by `spin
/// build`/deploy checks; a host only parses them).
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[allow(dead_code)]
enum RawTarget {
    Catalogue(String),
    Http { url: String },
    File { path: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<RawFilesMount>,
    #[serde(default)]
    exclude_files: Vec<String>,
    /// Deprecated; Spin converts each entry to `http://` and `https://` hosts.
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    targets: Option<Vec<RawTarget>>,
    /// Used by `spin build`; the host ignores it.
    #[serde(default)]
    build: Option<RawBuild>,
    #[serde(default)]
    tool: BTreeMap<String, toml::Table>,
    #[serde(default)]
    #[allow(dead_code)]
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    dependencies: Option<toml::Table>,
    #[serde(default)]
    profile: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged, deny_unknown_fields)]
pub enum RawFilesMount {
    /// A glob relative to the manifest's directory, mounted at the same relative path.
    Pattern(String),
    /// A directory (relative to the manifest) mounted at an absolute guest path.
    Placement { source: String, destination: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawBuild {
    command: RawCommands,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum RawCommands {
    Single(String),
    Multiple(Vec<String>),
}

/// An HTTP trigger's own settings (Spin's `HttpTriggerConfig`, unknown keys refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    route: RawRoute,
    #[serde(default)]
    static_response: Option<RawStaticResponse>,
    #[serde(default)]
    executor: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private(RawPrivate),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivate {
    private: bool,
}

#[derive(Debug, Deserialize, Clone)]
struct RawStaticResponse {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCronTrigger {
    cron_expression: String,
}

/// `[application.trigger.http]`: only the deprecated `base`, and only as "/".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpAppSettings {
    #[serde(default)]
    base: Option<String>,
}

/// An application variable (`[variables]`).
#[derive(Debug, Clone)]
pub struct VariableDef {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// Where a component's Wasm comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Absolute path of the `.wasm` file (a component or a core module).
    Local(PathBuf),
    /// `{ url, digest }` or `{ registry, package, version }`: Spin downloads these;
    /// this host has no network access and refuses them when the component is used.
    Remote(String),
}

/// A component as the host runs it.
#[derive(Debug, Clone)]
pub struct ComponentDef {
    pub id: String,
    pub source: Source,
    pub variables: BTreeMap<String, Template>,
    pub environment: BTreeMap<String, String>,
    /// Raw entries (with the converted `allowed_http_hosts`); templates are resolved
    /// when the app starts.
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    pub sqlite_databases: Vec<String>,
    pub ai_models: Vec<String>,
    pub files: Vec<RawFilesMount>,
    pub exclude_files: Vec<String>,
    /// Component dependencies (composition): refused by this host when used.
    pub has_dependencies: bool,
}

/// Where an HTTP trigger is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A public route pattern: exact, with `:name` segments, or with a trailing `/...`.
    Path(String),
    /// Reachable only by service chaining (`http://<component>.spin.internal`).
    Private,
}

/// What an HTTP trigger answers with.
#[derive(Debug, Clone)]
pub enum Handler {
    Component(String),
    Static(StaticResponse),
}

/// A trigger's `static_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The trigger id (given, or assigned as Spin assigns it).
    pub id: String,
    pub handler: Handler,
    pub route: Route,
}

impl HttpTrigger {
    pub fn component(&self) -> Option<&str> {
        match &self.handler {
            Handler::Component(c) => Some(c),
            Handler::Static(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub component: String,
    pub cron_expression: String,
    pub schedule: cron::Schedule,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: Option<String>,
    pub dir: PathBuf,
    pub variables: BTreeMap<String, VariableDef>,
    pub components: BTreeMap<String, ComponentDef>,
    pub http: Vec<HttpTrigger>,
    pub cron: Vec<CronTrigger>,
    /// Accepted but noteworthy (deprecated fields), as Spin warns about them.
    pub warnings: Vec<String>,
}

/// Spin's identifiers (`spin-serde`'s `Id<DELIM, LOWER>`): non-empty words joined
/// by one `delim`; each word starts with an ASCII letter, holds only ASCII
/// letters and digits, and is all lowercase or all UPPERCASE (all lowercase when
/// `lower`). The other delimiter (`-` vs `_`) is named as the likely mistake.
pub fn spin_id(s: &str, delim: char, lower: bool) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    let wrong = if delim == '_' { '-' } else { '_' };
    if s.contains(wrong) {
        return Err(format!(
            "words must be separated with {delim:?}, not {wrong:?}"
        ));
    }
    for word in s.split(delim) {
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            return Err(format!("{delim:?}-separated words must not be empty"));
        };
        if !first.is_ascii_alphabetic() {
            return Err(format!(
                "{delim:?}-separated words must start with an ASCII letter; got {first:?}"
            ));
        }
        let upper = first.is_ascii_uppercase();
        for c in chars {
            if c.is_ascii_digit() {
                continue;
            }
            if !c.is_ascii_alphanumeric() {
                return Err(format!(
                    "{delim:?}-separated words may only contain alphanumeric ASCII; got {c:?}"
                ));
            }
            if c.is_ascii_uppercase() != upper {
                return Err(format!(
                    "{delim:?}-separated words must be all lowercase or all UPPERCASE; got {word:?}"
                ));
            }
        }
        if lower && upper {
            return Err(format!(
                "lower-case identifiers must be all lowercase; got {s:?}"
            ));
        }
    }
    Ok(())
}

/// A component id or reference (Spin's `KebabId`).
pub fn is_kebab_id(s: &str) -> bool {
    spin_id(s, '-', false).is_ok()
}

/// A manifest variable name (Spin's `LowerSnakeId`).
pub fn is_snake_id(s: &str) -> bool {
    spin_id(s, '_', true).is_ok()
}

/// The looser rule Spin applies at run time to a name a guest asks for
/// (`spin-expressions`' `Key`): lowercase letters, digits and single
/// underscores, starting with a letter and ending with a letter or digit. So
/// `fc_secret_1` is a valid name to ask for, but not to declare.
pub fn runtime_variable_name(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!("invalid character {c:?}: variable names may contain only lower-case letters, numbers and underscores"));
    }
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err("must start with a lowercase ASCII letter".into());
    }
    if !s.as_bytes()[s.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a lowercase ASCII letter or digit".into());
    }
    if s.contains("__") {
        return Err("must not contain multiple consecutive underscores".into());
    }
    Ok(())
}

/// Spin's conversion of the deprecated `allowed_http_hosts` (`host[:port]`,
/// `http(s)://host[:port]`, `self`, `insecure:allow-all`) into outbound hosts.
fn convert_allowed_http_hosts(entries: &[String]) -> Result<Vec<String>> {
    if entries.iter().any(|e| e == "insecure:allow-all") {
        return Ok(vec![
            "http://*:*".into(),
            "https://*:*".into(),
            "http://self".into(),
        ]);
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for e in entries {
        let parsed = if e.contains("//") {
            url::Url::parse(e)
                .map_err(|err| format!("{e} isn't a valid HTTP host URL: {err}"))
                .and_then(|u| {
                    if matches!(u.scheme(), "http" | "https") {
                        Ok(u)
                    } else {
                        Err(format!("{e} isn't a valid host or host:port string"))
                    }
                })
        } else {
            url::Url::parse(&format!("http://{e}"))
                .map_err(|_| format!("{e} isn't a valid host or host:port string"))
        };
        match parsed.and_then(|u| {
            let host = u
                .host_str()
                .ok_or_else(|| format!("{e} doesn't contain a host name"))?
                .to_string();
            if u.path().len() > 1 {
                return Err(format!(
                    "{e} contains a path, should be host and optional port only"
                ));
            }
            Ok((host, u.port()))
        }) {
            Ok((host, _)) if host == "self" => out.push("http://self".to_string()),
            Ok((host, port)) => {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                out.push(format!("http://{host}{port}"));
                out.push(format!("https://{host}{port}"));
            }
            Err(m) => errors.push(m),
        }
    }
    if !errors.is_empty() {
        bail!("one or more entries are invalid:\n{}", errors.join("\n"));
    }
    Ok(out)
}

/// The default-value check Spin's loader makes of templated outbound hosts: a
/// template whose variables all have defaults must render to a valid entry; one
/// that cannot be rendered yet (a required or undeclared variable) passes and is
/// checked when the component runs.
fn validate_allowed_host(entry: &str, variables: &BTreeMap<String, VariableDef>) -> Result<()> {
    let t = Template::parse(entry)?;
    if t.references().is_empty() {
        AllowedHosts::parse_one(entry)?;
        return Ok(());
    }
    let defaults: Option<Vec<(String, String)>> = t
        .references()
        .iter()
        .map(|r| {
            variables
                .get(*r)
                .and_then(|v| v.default.clone())
                .map(|d| (r.to_string(), d))
        })
        .collect();
    if let Some(defaults) = defaults {
        let rendered = t.render_with(&defaults.into_iter().collect());
        AllowedHosts::parse_one(&rendered).with_context(|| {
            format!("using default variable value(s) with template {entry:?} results in invalid config {rendered:?}")
        })?;
    }
    Ok(())
}

fn component_from_raw(
    id: &str,
    field: &str,
    c: RawComponent,
    dir: &Path,
    variables: &BTreeMap<String, VariableDef>,
    warnings: &mut Vec<String>,
) -> Result<ComponentDef> {
    let _ = (&c.description, &c.build, &c.tool, &c.targets, &c.profile);
    let source = match &c.source {
        toml::Value::String(s) => Source::Local(dir.join(s)),
        toml::Value::Table(t) if t.contains_key("url") && t.contains_key("digest") && t.len() == 2 => {
            Source::Remote(format!("{}", c.source))
        }
        toml::Value::Table(t)
            if t.contains_key("package")
                && t.contains_key("version")
                && t.keys().all(|k| ["registry", "package", "version"].contains(&k.as_str())) =>
        {
            Source::Remote(format!("{}", c.source))
        }
        other => bail!(
            "{field}.source: expected a path, {{ url, digest }} or {{ registry, package, version }}, found {other}"
        ),
    };
    let mut vars = BTreeMap::new();
    for (name, template) in &c.variables {
        spin_id(name, '_', true)
            .map_err(|e| anyhow!("{field}.variables.{name}: invalid variable name: {e}"))?;
        let t = Template::parse(template).with_context(|| format!("{field}.variables.{name}"))?;
        for r in t.references() {
            if !variables.contains_key(r) {
                bail!("{field}.variables.{name}: refers to {{{{ {r} }}}}, which is not declared in [variables]");
            }
        }
        vars.insert(name.clone(), t);
    }
    let mut hosts = c.allowed_outbound_hosts.clone();
    if !c.allowed_http_hosts.is_empty() {
        let converted = convert_allowed_http_hosts(&c.allowed_http_hosts)
            .with_context(|| format!("{field}.allowed_http_hosts is malformed"))?;
        warnings.push(format!(
            "{field}: the deprecated allowed_http_hosts is used; replace it with allowed_outbound_hosts = {converted:?}"
        ));
        hosts.extend(converted);
    }
    if hosts.len() == 1 && hosts[0] == "insecure:allow-all" {
        bail!("{field}.allowed_outbound_hosts: 'insecure:allow-all' is not allowed; use '*://*:*' to allow all outbound traffic");
    }
    for (i, host) in hosts.iter().enumerate() {
        validate_allowed_host(host, variables)
            .with_context(|| format!("{field}.allowed_outbound_hosts[{i}] is malformed"))?;
    }
    for (kind, labels) in [
        ("key_value_stores", &c.key_value_stores),
        ("sqlite_databases", &c.sqlite_databases),
    ] {
        for l in labels.iter() {
            if spin_id(l, '-', false).is_err() && spin_id(l, '_', false).is_err() {
                bail!("{field}.{kind}: {l:?}: expected kebab-case or snake_case");
            }
        }
    }
    let has_dependencies = c.dependencies.as_ref().is_some_and(|d| !d.is_empty());
    Ok(ComponentDef {
        id: id.to_string(),
        source,
        variables: vars,
        environment: c.environment,
        allowed_outbound_hosts: hosts,
        key_value_stores: c.key_value_stores,
        sqlite_databases: c.sqlite_databases,
        ai_models: c.ai_models,
        files: c.files,
        exclude_files: c.exclude_files,
        has_dependencies,
    })
}

impl Manifest {
    /// Reads and validates `path` (a spin.toml). Fails with a message naming the field.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .canonicalize()
            .with_context(|| format!("cannot resolve the directory of {}", path.display()))?;
        Self::parse(&text, &dir).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parses manifest text; relative sources resolve against `dir`. Accepts what
    /// Spin 3.x/4.x accepts and refuses what it refuses; component sources are
    /// read only when the app starts, and only for components a trigger uses.
    pub fn parse(text: &str, dir: &Path) -> Result<Manifest> {
        let probe: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        match probe.get("spin_manifest_version") {
            Some(toml::Value::Integer(2)) => {}
            Some(toml::Value::String(s)) if s == "1" => bail!(
                "spin_manifest_version: manifest version 1 is not supported by this host; \
                 convert it with `spin doctor` or write version 2"
            ),
            Some(other) => bail!("spin_manifest_version: invalid manifest version {other} (Spin reads the integer 2, or the string \"1\")"),
            None => bail!("missing field `spin_manifest_version`"),
        }
        let raw: RawManifest = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let _ = (
            &raw.application.description,
            &raw.application.authors,
            &raw.application.targets,
            &raw.application.tool,
        );
        let mut warnings = Vec::new();

        let mut variables = BTreeMap::new();
        for (name, v) in raw.variables {
            spin_id(&name, '_', true)
                .map_err(|e| anyhow!("variables.{name}: invalid variable name: {e}"))?;
            if v.required == v.default.is_some() {
                bail!("variables.{name}: must be `required` OR have a `default`");
            }
            variables.insert(
                name,
                VariableDef {
                    default: v.default,
                    required: v.required,
                    secret: v.secret,
                },
            );
        }

        let mut components = BTreeMap::new();
        for (id, c) in raw.component {
            let field = format!("component.{id}");
            spin_id(&id, '-', false).map_err(|e| anyhow!("{field}: invalid component id: {e}"))?;
            let def = component_from_raw(&id, &field, c, dir, &variables, &mut warnings)?;
            components.insert(id, def);
        }

        // Trigger ids as Spin assigns them, then inline components moved out under
        // the id Spin gives them (`<trigger-id>-component`, else `inline-componentN`).
        let mut taken_ids: std::collections::HashSet<String> = raw
            .trigger
            .values()
            .flatten()
            .filter_map(|t| t.get("id").and_then(|v| v.as_str()).map(str::to_string))
            .collect();
        let mut http = Vec::new();
        let mut cron = Vec::new();
        let mut inline_counter = 1;
        for (kind, triggers) in raw.trigger {
            let mut id_counter = 1;
            for (i, mut t) in triggers.into_iter().enumerate() {
                let field = format!("trigger.{kind}[{i}]");
                let id = match t.remove("id") {
                    Some(toml::Value::String(s)) if !s.is_empty() => s,
                    Some(toml::Value::String(_)) | None => {
                        let natural = match t.get("component") {
                            Some(toml::Value::String(c)) => Some(format!("{c}-{kind}-trigger")),
                            _ => None,
                        };
                        match natural.filter(|n| !taken_ids.contains(n)) {
                            Some(n) => n,
                            None => loop {
                                let n = format!("{kind}-trigger{id_counter}");
                                id_counter += 1;
                                if !taken_ids.contains(&n) {
                                    break n;
                                }
                            },
                        }
                    }
                    Some(other) => {
                        bail!("{field}.id: expected a string, found {}", other.type_str())
                    }
                };
                taken_ids.insert(id.clone());
                if let Some(cs) = t.remove("components") {
                    match cs {
                        toml::Value::Table(m) if m.is_empty() => {}
                        toml::Value::Table(_) => {
                            bail!("{field}.components: this trigger type takes one `component`")
                        }
                        other => bail!(
                            "{field}.components: expected a table, found {}",
                            other.type_str()
                        ),
                    }
                }
                let component = match t.remove("component") {
                    None => None,
                    Some(toml::Value::String(r)) => {
                        spin_id(&r, '-', false).map_err(|e| {
                            anyhow!("{field}.component: invalid component reference {r:?}: {e}")
                        })?;
                        Some(r)
                    }
                    Some(v @ toml::Value::Table(_)) => {
                        let c: RawComponent = v
                            .try_into()
                            .map_err(|e| anyhow!("{field}.component: {e}"))?;
                        let natural = format!("{id}-component");
                        let inline_id = if is_kebab_id(&natural) && !components.contains_key(&natural) {
                            natural
                        } else {
                            loop {
                                let n = format!("inline-component{inline_counter}");
                                inline_counter += 1;
                                if !components.contains_key(&n) {
                                    break n;
                                }
                            }
                        };
                        let f = format!("{field}.component");
                        let def = component_from_raw(&inline_id, &f, c, dir, &variables, &mut warnings)?;
                        components.insert(inline_id.clone(), def);
                        Some(inline_id)
                    }
                    Some(other) => bail!(
                        "{field}.component: expected a component id or an inline component, found {}",
                        other.type_str()
                    ),
                };
                if let Some(c) = &component {
                    if !components.contains_key(c) {
                        bail!("{field}.component: no component named '{c}'");
                    }
                }
                match kind.as_str() {
                    "http" => {
                        let ht: RawHttpTrigger = toml::Value::Table(t)
                            .try_into()
                            .map_err(|e| anyhow!("{field}: {e}"))?;
                        if let Some(exec) = &ht.executor {
                            match exec.get("type").and_then(|v| v.as_str()) {
                                Some("spin") | Some("http") if exec.len() == 1 => {}
                                Some("wagi") => bail!("{field}.executor: the wagi executor is not supported by this host"),
                                _ => bail!("{field}.executor: expected {{ type = \"http\" }} or {{ type = \"wagi\", ... }}"),
                            }
                        }
                        let handler = match (component, ht.static_response) {
                            (Some(c), None) => Handler::Component(c),
                            (None, Some(sr)) => Handler::Static(StaticResponse {
                                status: sr.status_code.unwrap_or(200),
                                headers: sr.headers.into_iter().collect(),
                                body: sr.body,
                            }),
                            (None, None) => bail!("{field}: triggers must specify either component or static_response - {id} has neither"),
                            (Some(_), Some(_)) => bail!("{field}: triggers must specify either component or static_response - {id} has both"),
                        };
                        let route = match ht.route {
                            RawRoute::Private(RawPrivate { private: true }) => Route::Private,
                            RawRoute::Private(RawPrivate { private: false }) => bail!(
                                "{field}.route: route must be a string pattern or '{{ private = true }}': '{id}' has {{ private = false }}"
                            ),
                            RawRoute::Path(p) => {
                                crate::routes::validate_route(&p)
                                    .with_context(|| format!("{field}.route"))?;
                                Route::Path(p)
                            }
                        };
                        http.push(HttpTrigger { id, handler, route });
                    }
                    "cron" => {
                        let Some(component) = component else {
                            bail!("{field}: a cron trigger needs a component");
                        };
                        let ct: RawCronTrigger = toml::Value::Table(t)
                            .try_into()
                            .map_err(|e| anyhow!("{field}: {e}"))?;
                        let schedule: cron::Schedule = ct.cron_expression.parse().map_err(|e| {
                            anyhow!(
                                "{field}.cron_expression: '{}' is not a valid cron expression \
                                 (sec min hour day-of-month month day-of-week [year]): {e}",
                                ct.cron_expression
                            )
                        })?;
                        cron.push(CronTrigger { component, cron_expression: ct.cron_expression, schedule });
                    }
                    other => bail!(
                        "trigger.{other}: trigger type '{other}' is not supported by this host (http, cron)"
                    ),
                }
            }
        }
        if http.is_empty() && cron.is_empty() {
            bail!("trigger: the application declares no triggers");
        }
        if !http.is_empty() {
            if let Some(settings) = raw.application.trigger.get("http") {
                let s: RawHttpAppSettings = toml::Value::Table(settings.clone())
                    .try_into()
                    .map_err(|e| anyhow!("application.trigger.http: {e}"))?;
                match s.base.as_deref() {
                    None => {}
                    Some("/") => warnings.push(
                        "application.trigger.http.base: the deprecated 'base' is set to its default '/'".into(),
                    ),
                    Some(_) => bail!(
                        "application.trigger.http.base: the deprecated trigger 'base' field is used; \
                         the base must be prepended to each [[trigger.http]]'s 'route'"
                    ),
                }
            }
        }
        Ok(Manifest {
            name: raw.application.name,
            version: raw.application.version,
            dir: dir.to_path_buf(),
            variables,
            components,
            http,
            cron,
            warnings,
        })
    }

    /// The components some trigger runs (Spin loads only these).
    pub fn used_components(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .http
            .iter()
            .filter_map(|t| t.component())
            .chain(self.cron.iter().map(|t| t.component.as_str()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_wasm() -> tempdir::TempDir {
        let d = tempdir::TempDir::new();
        std::fs::write(d.path().join("a.wasm"), b"\0asm").unwrap();
        d
    }

    /// A tiny temporary directory helper (no extra crate needed).
    mod tempdir {
        pub struct TempDir(std::path::PathBuf);
        impl TempDir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "waybill-manifest-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                TempDir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";

    fn parse(body: &str) -> Result<Manifest> {
        let d = dir_with_wasm();
        Manifest::parse(&format!("{HEAD}{body}"), d.path())
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = parse(
            r#"
[variables]
secret_key = { required = true, secret = true }
greeting = { default = "hi" }
[[trigger.http]]
route = "/api/:id/..."
component = "a"
[[trigger.http]]
route = { private = true }
component = "b"
[[trigger.cron]]
component = "b"
cron_expression = "0 */5 * * * *"
[component.a]
source = "a.wasm"
key_value_stores = ["default"]
sqlite_databases = ["default"]
allowed_outbound_hosts = ["http://b.spin.internal", "https://{{ greeting }}.example.com"]
[component.a.variables]
key = "{{ secret_key }}-{{greeting}}"
[component.a.build]
command = "cargo build --target wasm32-wasip2 --release"
[component.b]
source = "a.wasm"
"#,
        )
        .unwrap();
        assert_eq!(m.http.len(), 2);
        assert_eq!(m.http[1].route, Route::Private);
        assert_eq!(m.cron.len(), 1);
        assert!(m.variables["secret_key"].secret);
        assert_eq!(
            m.components["a"].variables["key"].references(),
            vec!["secret_key", "greeting"]
        );
    }

    const T: &str = "[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n";
    const C: &str = "[component.a]\nsource = \"a.wasm\"\n";

    /// Spin's manifest rules, each with a case Spin accepts and one it refuses
    /// (read from Spin 4.0.2's manifest, serde, loader and trigger-http crates):
    /// (rule, manifest body after the header, None = accepted / Some(part of the error)).
    fn rule_cases() -> Vec<(&'static str, String, Option<&'static str>)> {
        let tc = format!("{T}{C}");
        let with = |extra: &str| format!("{T}{C}{extra}");
        vec![
            ("a manifest without [trigger] is refused", C.to_string(), Some("missing field `trigger`")),
            ("an empty application name is accepted", format!("{tc}").replace("", ""), None),
            ("unknown top-level keys are refused", format!("{tc}bogus = 1\n"), Some("unknown field `bogus`")),
            ("component ids: kebab words", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"api-v2\"\n[component.api-v2]\nsource = \"a.wasm\"\n"), None),
            ("component ids: a word may be all UPPERCASE", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"API\"\n[component.API]\nsource = \"a.wasm\"\n"), None),
            ("component ids: a word must start with a letter", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"api\"\n[component.api]\nsource = \"a.wasm\"\n[component.api-v2-3]\nsource = \"a.wasm\"\n"), Some("component.api-v2-3: invalid component id: '-'-separated words must start with an ASCII letter; got '3'")),
            ("component ids: no mixed-case word", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n{C}[component.Api]\nsource = \"a.wasm\"\n"), Some("all lowercase or all UPPERCASE")),
            ("component ids: '_' is the wrong delimiter", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n{C}[component.a_b]\nsource = \"a.wasm\"\n"), Some("words must be separated with '-', not '_'")),
            ("component references follow the same rule", format!("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a-2\"\n{C}"), Some("trigger.http[0].component: invalid component reference \"a-2\"")),
            ("variable names: lower snake words", with("[variables]\nfc_secret_a = { default = \"\" }\n"), None),
            ("variable names: a word must start with a letter", with("[variables]\nfc_secret_1 = { default = \"\" }\n"), Some("variables.fc_secret_1: invalid variable name: '_'-separated words must start with an ASCII letter; got '1'")),
            ("variable names: lowercase only", with("[variables]\nSECRET = { default = \"\" }\n"), Some("lower-case identifiers must be all lowercase")),
            ("component variable names follow the same rule", with("[component.a.variables]\nkey_1 = \"x\"\n"), Some("component.a.variables.key_1: invalid variable name")),
            ("a variable may have a description", with("[variables]\nx = { default = \"1\", description = \"the x\" }\n"), None),
            ("a variable is required or has a default", with("[variables]\nx = {}\n"), Some("variables.x: must be `required` OR have a `default`")),
            ("not both", with("[variables]\nx = { required = true, default = \"1\" }\n"), Some("variables.x: must be `required` OR have a `default`")),
            ("component variables refer to declared variables", with("[component.a.variables]\nk = \"{{ nope }}\"\n"), Some("component.a.variables.k: refers to {{ nope }}")),
            ("a minimal manifest is accepted", tc.clone(), None),
            ("deprecated allowed_http_hosts is accepted (converted)", with("allowed_http_hosts = [\"example.com\", \"self\"]\n").replace("[component.a]\nsource = \"a.wasm\"\nallowed", "[component.a]\nsource = \"a.wasm\"\nallowed"), None),
            ("allowed_outbound_hosts: a scheme is required", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"example.com\"]\n"), Some("component.a.allowed_outbound_hosts[0] is malformed")),
            ("allowed_outbound_hosts: hosts must be valid", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"https://exa mple.com\"]\n"), Some("allowed_outbound_hosts[0] is malformed")),
            ("allowed_outbound_hosts: an empty scheme with a port is accepted", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"://example.com:80\"]\n"), None),
            ("allowed_outbound_hosts: an undeclared variable passes until run time", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"https://{{ nope }}\"]\n"), None),
            ("allowed_outbound_hosts: a default must render a valid host", format!("[variables]\nh = {{ default = \"no scheme\" }}\n{}", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"{{ h }}\"]\n")), Some("using default variable value(s)")),
            ("unknown component keys are refused", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nkey_value_store = [\"default\"]\n"), Some("unknown field `key_value_store`")),
            ("store labels are kebab or snake", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nkey_value_stores = [\"my store\"]\n"), Some("expected kebab-case or snake_case")),
            ("files are accepted", with("").replace(C, "[component.a]\nsource = \"a.wasm\"\nfiles = [\"static/**/*\", { source = \"assets\", destination = \"/assets\" }]\n"), None),
            ("an unused component's source is not read", with("[component.b]\nsource = \"missing.wasm\"\n"), None),
            ("routes: '/a/.../b' and '/a/*' are accepted", format!("{C}[[trigger.http]]\nroute = \"/a/.../b\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/c/*\"\ncomponent = \"a\"\n"), None),
            ("routes: private = false is refused", format!("{C}[[trigger.http]]\nroute = {{ private = false }}\ncomponent = \"a\"\n"), Some("trigger.http[0].route")),
            ("inline trigger components are accepted", "[[trigger.http]]\nroute = \"/\"\ncomponent = { source = \"a.wasm\" }\n".to_string(), None),
            ("static_response triggers are accepted", "[[trigger.http]]\nroute = \"/\"\nstatic_response = { status_code = 204 }\n".to_string(), None),
            ("component or static_response, not both", format!("{C}[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\nstatic_response = {{ body = \"x\" }}\n"), Some("has both")),
            ("unknown http trigger keys are refused", format!("{C}[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\nroutes = \"/x\"\n"), Some("unknown field `routes`")),
            ("an http trigger needs a route", format!("{C}[[trigger.http]]\ncomponent = \"a\"\n"), Some("missing field `route`")),
            ("the removed [application.trigger.http] base is refused", tc.clone(), None),
            ("unknown trigger types", format!("{C}[[trigger.redis]]\ncomponent = \"a\"\nchannel = \"x\"\n"), Some("trigger type 'redis' is not supported")),
            ("cron expressions are checked", format!("{C}[[trigger.cron]]\ncomponent = \"a\"\ncron_expression = \"every day\"\n"), Some("trigger.cron[0].cron_expression")),
        ]
    }

    #[test]
    fn manifest_rules_match_spin() {
        let d = dir_with_wasm();
        let mut failures = Vec::new();
        for (rule, body, want) in rule_cases() {
            let r = Manifest::parse(&format!("{HEAD}{body}"), d.path());
            match (want, r) {
                (None, Ok(_)) => {}
                (Some(part), Err(e)) if format!("{e:#}").contains(part) => {}
                (want, got) => failures.push(format!(
                    "{rule}: want {want:?}, got {:?}",
                    got.map(|_| "accepted").map_err(|e| format!("{e:#}"))
                )),
            }
        }
        let head = |version: &str, app: &str| {
            format!("spin_manifest_version = {version}\n[application]\n{app}\n{T}{C}")
        };
        for (rule, text, ok) in [
            (
                "an empty application name is accepted",
                head("2", "name = \"\""),
                true,
            ),
            (
                "version as the string \"2\" is refused",
                head("\"2\"", "name = \"t\""),
                false,
            ),
            (
                "base = \"/\" is accepted with a warning",
                head(
                    "2",
                    "name = \"t\"\n[application.trigger.http]\nbase = \"/\"",
                ),
                true,
            ),
            (
                "any other base is refused",
                head(
                    "2",
                    "name = \"t\"\n[application.trigger.http]\nbase = \"/api\"",
                ),
                false,
            ),
            (
                "unknown [application.trigger.http] keys are refused",
                head(
                    "2",
                    "name = \"t\"\n[application.trigger.http]\nprefix = \"/\"",
                ),
                false,
            ),
            (
                "application targets and tool tables are accepted",
                head(
                    "2",
                    "name = \"t\"\ntargets = [\"spin-up:3.3\"]\n[application.tool.x]\ny = 1",
                ),
                true,
            ),
        ] {
            if Manifest::parse(&text, d.path()).is_ok() != ok {
                failures.push(format!("{rule}: want accepted = {ok}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn inline_components_and_trigger_ids_are_named_as_spin_names_them() {
        let m = parse("[[trigger.http]]\nroute = \"/\"\ncomponent = { source = \"a.wasm\" }\n[[trigger.http]]\nid = \"hook\"\nroute = \"/h\"\ncomponent = { source = \"a.wasm\" }\n").unwrap();
        assert_eq!(m.http[0].id, "http-trigger1");
        assert_eq!(m.http[0].component(), Some("http-trigger1-component"));
        assert_eq!(m.http[1].component(), Some("hook-component"));
        let m = parse(&format!("{T}{C}")).unwrap();
        assert_eq!(m.http[0].id, "a-http-trigger");
    }

    #[test]
    fn runtime_variable_names_are_looser_than_declared_ones() {
        assert!(runtime_variable_name("fc_secret_1").is_ok());
        assert!(!is_snake_id("fc_secret_1"));
        assert!(runtime_variable_name("a__b").is_err());
        assert!(runtime_variable_name("a_").is_err());
        assert!(runtime_variable_name("1a").is_err());
    }

    /// The project's own manifests are checked by the same rules, so a spin.toml
    /// that Spin would refuse (like `fc_secret_1`) cannot land again.
    #[test]
    fn the_projects_own_manifests_are_valid_for_spin() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut paths = vec![root.join("spin.toml")];
        for e in std::fs::read_dir(root.join("tests/host/fixtures")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                paths.push(p);
            }
        }
        for p in paths {
            let m = Manifest::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(m.warnings.is_empty(), "{}: {:?}", p.display(), m.warnings);
        }
        let m = Manifest::load(&root.join("spin.toml")).unwrap();
        assert!(m.variables.contains_key("fc_secret_a"));
    }

    #[test]
    fn manifest_version_must_be_2() {
        let d = dir_with_wasm();
        let e = Manifest::parse(
            "spin_manifest_version = 1\n[application]\nname = \"t\"\n",
            d.path(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("spin_manifest_version"));
    }

    #[test]
    fn ids() {
        assert!(is_kebab_id("intake"));
        assert!(is_kebab_id("order-api2"));
        assert!(!is_kebab_id("Order"));
        assert!(is_kebab_id("ORDER-api"));
        assert!(!is_kebab_id("api-v2-3"));
        assert!(!is_kebab_id("a--b"));
        assert!(!is_kebab_id("-a"));
        assert!(!is_kebab_id("2a"));
        assert!(is_snake_id("shopify_secret"));
        assert!(!is_snake_id("shopify__secret"));
        assert!(!is_snake_id("Shopify"));
    }
}
