//! The crate's import direction, checked from its source: `kernel` names
//! nothing; `orders` names only `kernel`; a context names only the contexts
//! below it in [`ALLOWED`]; no context names `flows` or `http`. Test modules are
//! not checked, inline or in their own `tests.rs` (a test may set up state
//! through any context).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the top-level modules its production code may
/// name; a module names only modules listed before it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("kernel", &[]),
    ("orders", &["kernel"]),
    ("intake", &["kernel", "orders"]),
    ("inventory", &["kernel", "orders"]),
    ("notify", &["kernel", "orders"]),
    ("reporting", &["kernel", "orders"]),
    ("returns", &["kernel", "orders", "inventory"]),
    // Fulfillment orders: their status, release, jobs, shipments.
    ("fulfillment", &["kernel", "orders", "inventory"]),
    // Captures release (or hold) the fulfillment orders they pay for.
    ("payments", &["kernel", "orders", "fulfillment"]),
    // Routing places units, creates fulfillment orders and gates their release
    // on payments.
    (
        "routing",
        &["kernel", "orders", "inventory", "fulfillment", "payments"],
    ),
    (
        "flows",
        &[
            "kernel",
            "orders",
            "intake",
            "inventory",
            "notify",
            "reporting",
            "returns",
            "fulfillment",
            "payments",
            "routing",
        ],
    ),
    (
        "http",
        &[
            "kernel",
            "orders",
            "intake",
            "inventory",
            "notify",
            "reporting",
            "returns",
            "fulfillment",
            "payments",
            "routing",
            "flows",
        ],
    ),
];

/// The production part of a source file: everything before its `mod tests`.
fn production(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Every `crate::<module>` a text names.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// (module, named module) -> files, for every name a module's code uses.
fn edges() -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        // A test module in its own file (`mod tests;`) is not production code.
        if !modules.contains(top.as_str()) || rel.ends_with("/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for n in named(production(&text)) {
            if n != top && modules.contains(n.as_str()) {
                out.entry((top.clone(), n)).or_default().insert(rel.clone());
            }
        }
    }
    out
}

#[test]
fn modules_import_only_in_the_allowed_direction() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let wrong: Vec<String> = edges()
        .iter()
        .filter(|((from, to), _)| !allowed[from.as_str()].contains(&to.as_str()))
        .map(|((from, to), files)| format!("{from} -> {to} in {files:?}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "imports against the direction:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_allowed_directions_have_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Each module may name only modules listed before it.
    let order: Vec<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    for (i, m) in order.iter().enumerate() {
        for d in allowed[m] {
            let j = order.iter().position(|x| x == d).expect("a listed module");
            assert!(j < i, "{m} may name {d}, which is not below it");
        }
    }
}

#[test]
fn the_checker_sees_names_and_skips_tests() {
    let text = "use crate::orders::store;\nfn f() { crate::kernel::time::ts(x) }\n#[cfg(test)]\nmod tests {\n use crate::flows;\n}";
    let n = named(production(text));
    assert!(n.contains("orders") && n.contains("kernel") && !n.contains("flows"));
}
