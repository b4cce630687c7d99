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
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    /// Application-level trigger settings (`[application.trigger.http]` etc.).
    #[serde(default)]
    trigger: Option<toml::Table>,
    #[serde(default)]
    targets: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
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
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Option<toml::Value>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    /// Used by `spin build`; the host ignores it.
    #[serde(default)]
    build: Option<toml::Table>,
    #[serde(default)]
    tool: Option<toml::Table>,
    #[serde(default)]
    dependencies_inherit_configuration: bool,
    #[serde(default)]
    dependencies: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    component: toml::Value,
    route: RawRoute,
    #[serde(default)]
    executor: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCronTrigger {
    #[serde(default)]
    id: Option<String>,
    component: toml::Value,
    cron_expression: String,
}

/// An application variable (`[variables]`).
#[derive(Debug, Clone)]
pub struct VariableDef {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

/// A component as the host runs it.
#[derive(Debug, Clone)]
pub struct ComponentDef {
    pub id: String,
    /// Absolute path of the `.wasm` file.
    pub source: PathBuf,
    pub variables: BTreeMap<String, Template>,
    pub environment: BTreeMap<String, String>,
    /// Raw entries; templates are resolved when the app starts.
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    pub sqlite_databases: Vec<String>,
}

/// Where an HTTP trigger is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A public route pattern: exact, with `:name` segments, or with a trailing `/...`.
    Path(String),
    /// Reachable only by service chaining (`http://<component>.spin.internal`).
    Private,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub component: String,
    pub route: Route,
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
    pub dir: PathBuf,
    pub variables: BTreeMap<String, VariableDef>,
    pub components: BTreeMap<String, ComponentDef>,
    pub http: Vec<HttpTrigger>,
    pub cron: Vec<CronTrigger>,
}

/// Spin's `KebabId`: lowercase ASCII words of letters and digits joined by single
/// hyphens, starting with a letter.
pub fn is_kebab_id(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// Spin's `SnakeId` for variable names: like kebab but joined by underscores.
pub fn is_snake_id(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.split('_').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

fn component_ref(field: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Table(_) => bail!(
            "{field}: inline component definitions are not supported by this host; \
             declare the component in a [component.<id>] table and name it here"
        ),
        other => bail!(
            "{field}: expected a component id string, found {}",
            other.type_str()
        ),
    }
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

    /// Parses manifest text; relative sources resolve against `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Manifest> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        match &raw.spin_manifest_version {
            toml::Value::Integer(2) => {}
            toml::Value::String(s) if s == "2" => {}
            other => {
                bail!("spin_manifest_version: this host reads manifest version 2, found {other}")
            }
        }
        let _ = (
            &raw.application.version,
            &raw.application.description,
            &raw.application.authors,
            &raw.application.trigger,
            &raw.application.targets,
        );
        if raw.application.name.trim().is_empty() {
            bail!("application.name: must not be empty");
        }

        let mut variables = BTreeMap::new();
        for (name, v) in raw.variables {
            if !is_snake_id(&name) {
                bail!(
                    "variables.{name}: variable names must be lowercase letters, digits and \
                     single underscores, starting with a letter"
                );
            }
            if v.required && v.default.is_some() {
                bail!("variables.{name}: a variable cannot be both required and have a default");
            }
            if !v.required && v.default.is_none() {
                bail!("variables.{name}: a variable must be required or have a default");
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
            if !is_kebab_id(&id) {
                bail!("{field}: component ids must be kebab-case (lowercase letters, digits, single hyphens, starting with a letter)");
            }
            let _ = (
                &c.description,
                &c.build,
                &c.tool,
                &c.exclude_files,
                &c.ai_models,
            );
            let source = match &c.source {
                toml::Value::String(s) => dir.join(s),
                toml::Value::Table(_) => bail!(
                    "{field}.source: remote sources ({{ url, digest }}) are not supported by this host; build the component and give a local path"
                ),
                other => bail!("{field}.source: expected a path string, found {}", other.type_str()),
            };
            if !source.is_file() {
                bail!(
                    "{field}.source: file {} does not exist (build the components first: scripts/build-wasm or `spin build`)",
                    source.display()
                );
            }
            if !c.files.is_empty() {
                bail!("{field}.files: mounting files is not supported by this host");
            }
            if c.allowed_http_hosts.is_some() {
                bail!("{field}.allowed_http_hosts: this key was removed in manifest version 2; use allowed_outbound_hosts");
            }
            if c.dependencies_inherit_configuration || c.dependencies.is_some() {
                bail!(
                    "{field}.dependencies: component dependencies are not supported by this host"
                );
            }
            let mut vars = BTreeMap::new();
            for (name, template) in &c.variables {
                if !is_snake_id(name) {
                    bail!("{field}.variables.{name}: variable names must be lowercase letters, digits and single underscores");
                }
                let t = Template::parse(template)
                    .with_context(|| format!("{field}.variables.{name}"))?;
                for r in t.references() {
                    if !variables.contains_key(r) {
                        bail!("{field}.variables.{name}: refers to {{{{ {r} }}}}, which is not declared in [variables]");
                    }
                }
                vars.insert(name.clone(), t);
            }
            for (i, host) in c.allowed_outbound_hosts.iter().enumerate() {
                let t = Template::parse(host)
                    .with_context(|| format!("{field}.allowed_outbound_hosts[{i}]"))?;
                for r in t.references() {
                    if !variables.contains_key(r) {
                        bail!("{field}.allowed_outbound_hosts[{i}]: refers to {{{{ {r} }}}}, which is not declared in [variables]");
                    }
                }
                if t.references().is_empty() {
                    AllowedHosts::parse_one(host)
                        .with_context(|| format!("{field}.allowed_outbound_hosts[{i}]"))?;
                }
            }
            for (kind, labels) in [
                ("key_value_stores", &c.key_value_stores),
                ("sqlite_databases", &c.sqlite_databases),
            ] {
                for l in labels.iter() {
                    if l.is_empty() {
                        bail!("{field}.{kind}: labels must not be empty");
                    }
                }
            }
            components.insert(
                id.clone(),
                ComponentDef {
                    id,
                    source,
                    variables: vars,
                    environment: c.environment,
                    allowed_outbound_hosts: c.allowed_outbound_hosts,
                    key_value_stores: c.key_value_stores,
                    sqlite_databases: c.sqlite_databases,
                },
            );
        }

        let mut http = Vec::new();
        let mut cron = Vec::new();
        for (kind, triggers) in raw.trigger {
            for (i, t) in triggers.into_iter().enumerate() {
                let field = format!("trigger.{kind}[{i}]");
                match kind.as_str() {
                    "http" => {
                        let t: RawHttpTrigger = toml::Value::Table(t)
                            .try_into()
                            .map_err(|e| anyhow!("{field}: {e}"))?;
                        let _ = &t.id;
                        if let Some(exec) = &t.executor {
                            match exec.get("type").and_then(|v| v.as_str()) {
                                Some("spin") | None => {}
                                Some(other) => bail!("{field}.executor: executor type '{other}' is not supported by this host (only 'spin')"),
                            }
                        }
                        let component = component_ref(&format!("{field}.component"), &t.component)?;
                        if !components.contains_key(&component) {
                            bail!("{field}.component: no component named '{component}'");
                        }
                        let route = match t.route {
                            RawRoute::Private { private: true } => Route::Private,
                            RawRoute::Private { private: false } => bail!(
                                "{field}.route: must be a string pattern or {{ private = true }}"
                            ),
                            RawRoute::Path(p) => {
                                crate::routes::validate_route(&p)
                                    .with_context(|| format!("{field}.route"))?;
                                Route::Path(p)
                            }
                        };
                        http.push(HttpTrigger { component, route });
                    }
                    "cron" => {
                        let t: RawCronTrigger = toml::Value::Table(t)
                            .try_into()
                            .map_err(|e| anyhow!("{field}: {e}"))?;
                        let _ = &t.id;
                        let component = component_ref(&format!("{field}.component"), &t.component)?;
                        if !components.contains_key(&component) {
                            bail!("{field}.component: no component named '{component}'");
                        }
                        let schedule: cron::Schedule = t.cron_expression.parse().map_err(|e| {
                            anyhow!(
                                "{field}.cron_expression: '{}' is not a valid cron expression \
                                 (sec min hour day-of-month month day-of-week [year]): {e}",
                                t.cron_expression
                            )
                        })?;
                        cron.push(CronTrigger { component, cron_expression: t.cron_expression, schedule });
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
        Ok(Manifest {
            name: raw.application.name,
            dir: dir.to_path_buf(),
            variables,
            components,
            http,
            cron,
        })
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

    fn err(body: &str) -> String {
        format!(
            "{:#}",
            parse(body).expect_err("manifest should be rejected")
        )
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

    #[test]
    fn rejects_bad_manifests_naming_the_field() {
        assert!(err("[component.a]\nsource = \"a.wasm\"\n").contains("no triggers"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"zz\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("trigger.http[0].component: no component named 'zz'"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"missing.wasm\"\n")
            .contains("component.a.source"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"A_b\"\n[component.A_b]\nsource = \"a.wasm\"\n")
            .contains("kebab-case"));
        assert!(err("[variables]\nx = {}\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("variables.x: a variable must be required or have a default"));
        assert!(err("[variables]\nx = { required = true, default = \"1\" }\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("both required"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n[component.a.variables]\nk = \"{{ nope }}\"\n")
            .contains("component.a.variables.k: refers to {{ nope }}"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"example.com\"]\n")
            .contains("component.a.allowed_outbound_hosts[0]"));
        assert!(err("[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\nkey_value_store = [\"default\"]\n")
            .contains("unknown field `key_value_store`"));
        assert!(err("[[trigger.cron]]\ncron_expression = \"every day\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("trigger.cron[0].cron_expression"));
        assert!(
            err("[[trigger.redis]]\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
                .contains("trigger type 'redis' is not supported")
        );
        assert!(err("[[trigger.http]]\nroute = { private = false }\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("trigger.http[0].route"));
        assert!(err("[[trigger.http]]\nroute = \"/a/.../b\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n")
            .contains("trigger.http[0].route"));
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
        assert!(!is_kebab_id("a--b"));
        assert!(!is_kebab_id("-a"));
        assert!(!is_kebab_id("2a"));
        assert!(is_snake_id("shopify_secret"));
        assert!(!is_snake_id("shopify__secret"));
        assert!(!is_snake_id("Shopify"));
    }
}
