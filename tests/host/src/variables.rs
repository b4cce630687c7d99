//! Application variables: `[variables]` with defaults, `required` and `secret`, and
//! the `{{ name }}` templates of `[component.X.variables]` and `allowed_outbound_hosts`.
//!
//! Values resolve as Spin resolves them: a `--variable name=value` given to the host,
//! then the `SPIN_VARIABLE_<NAME>` environment variable, then the manifest default.
//! A required variable with no value makes the app fail at start.

use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};

use crate::manifest::{runtime_variable_name, VariableDef};

/// A parsed template: literal text and `{{ variable }}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                bail!("unterminated '{{{{' in template {s:?}");
            };
            let name = after[..end].trim();
            if let Err(e) = runtime_variable_name(name) {
                bail!("invalid variable reference {{{{ {name} }}}} in template {s:?}: {e}");
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            bail!("unmatched '}}}}' in template {s:?}");
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The variable names referenced, in order of appearance.
    pub fn references(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(v.as_str()),
                Part::Lit(_) => None,
            })
            .collect()
    }

    /// Renders with the given values (e.g. the manifest defaults); every
    /// reference must have one.
    pub fn render_with(&self, values: &HashMap<String, String>) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(l) => l.as_str(),
                Part::Var(v) => values.get(v).map(String::as_str).unwrap_or(""),
            })
            .collect()
    }

    pub fn render(&self, values: &Resolver) -> Result<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(v) => match values.get(v) {
                    Some(val) => out.push_str(val),
                    None => bail!("no value for variable '{v}'"),
                },
            }
        }
        Ok(out)
    }
}

/// The resolved values of the application variables.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    values: HashMap<String, String>,
}

impl Resolver {
    /// `explicit`: `--variable name=value` pairs; `env`: the process environment
    /// (or a test's stand-in for it).
    pub fn new(
        defs: &BTreeMap<String, VariableDef>,
        explicit: &[(String, String)],
        env: &HashMap<String, String>,
    ) -> Result<Resolver> {
        let mut values = HashMap::new();
        // Spin takes a `--variable` the manifest does not declare and ignores it.
        for (name, _) in explicit {
            if !defs.contains_key(name) {
                eprintln!("waybill-host: warning: --variable {name}: no variable '{name}' is declared in [variables]; ignored");
            }
        }
        for (name, def) in defs {
            let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
            let value = explicit
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .or_else(|| env.get(&env_name).cloned())
                .or_else(|| def.default.clone());
            match value {
                Some(v) => {
                    values.insert(name.clone(), v);
                }
                None if def.required => bail!(
                    "variables.{name}: required variable has no value (set {env_name} or pass --variable {name}=...)"
                ),
                None => {}
            }
        }
        Ok(Resolver { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> BTreeMap<String, VariableDef> {
        let mut d = BTreeMap::new();
        d.insert(
            "a".into(),
            VariableDef {
                default: Some("da".into()),
                required: false,
                secret: false,
            },
        );
        d.insert(
            "b".into(),
            VariableDef {
                default: None,
                required: true,
                secret: true,
            },
        );
        d
    }

    #[test]
    fn templates() {
        let t = Template::parse("x-{{ a }}-{{b}}-y").unwrap();
        assert_eq!(t.references(), vec!["a", "b"]);
        assert!(Template::parse("{{ a ").is_err());
        assert!(Template::parse("{{ A }}").is_err());
        assert!(Template::parse("a }}").is_err());
        assert_eq!(
            Template::parse("plain").unwrap().references(),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn precedence_explicit_then_env_then_default() {
        let mut env = HashMap::new();
        env.insert("SPIN_VARIABLE_B".to_string(), "env-b".to_string());
        let r = Resolver::new(&defs(), &[], &env).unwrap();
        assert_eq!(r.get("a"), Some("da"));
        assert_eq!(r.get("b"), Some("env-b"));
        env.insert("SPIN_VARIABLE_A".to_string(), "env-a".to_string());
        let r = Resolver::new(&defs(), &[("a".into(), "cli-a".into())], &env).unwrap();
        assert_eq!(r.get("a"), Some("cli-a"));
        let t = Template::parse("{{a}}/{{ b }}").unwrap();
        assert_eq!(t.render(&r).unwrap(), "cli-a/env-b");
    }

    #[test]
    fn required_without_value_fails() {
        let e = Resolver::new(&defs(), &[], &HashMap::new()).unwrap_err();
        assert!(e
            .to_string()
            .contains("variables.b: required variable has no value"));
        // Spin ignores a --variable the manifest does not declare.
        let mut env = HashMap::new();
        env.insert("SPIN_VARIABLE_B".to_string(), "b".to_string());
        let r = Resolver::new(&defs(), &[("zz".into(), "1".into())], &env).unwrap();
        assert_eq!(r.get("zz"), None);
    }
}
