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
    // on payments; its worker first writes the rows intake left pending.
    (
        "routing",
        &[
            "kernel",
            "orders",
            "intake",
            "inventory",
            "fulfillment",
            "payments",
        ],
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

/// Each table and the files (below `shared/src`) that may write it. A table
/// written elsewhere, or a table not listed, fails
/// [`every_table_has_one_writer`]. The schema's migrations (`kernel/schema.rs`)
/// create and seed tables and are not counted.
const WRITERS: &[(&str, &[&str])] = &[
    ("settings", &["kernel/settings.rs"]),
    ("orders", &["orders/store.rs"]),
    ("order_lines", &["orders/lines.rs"]),
    ("order_holds", &["orders/store.rs"]),
    ("order_events", &["orders/store.rs"]),
    ("outbox", &["orders/store.rs"]),
    ("webhook_receipts", &["intake/webhooks.rs"]),
    ("idempotency_keys", &["kernel/idempotency.rs"]),
    ("facilities", &["inventory/catalog.rs"]),
    // The catalog writes products; stock and keys keep their alert flags.
    ("products", &["inventory/"]),
    ("product_parts", &["inventory/catalog.rs"]),
    ("stock", &["inventory/stock.rs"]),
    ("inventory_watermarks", &["inventory/feeds.rs"]),
    ("stock_movements", &["inventory/stock.rs"]),
    ("signatures_seen", &["kernel/replay.rs"]),
    ("license_keys", &["inventory/stock.rs", "inventory/keys.rs"]),
    ("routing_decisions", &["routing/"]),
    ("routing_config", &["routing/settings.rs"]),
    ("geo_centroids", &["routing/settings.rs"]),
    (
        "fulfillment_orders",
        &["fulfillment/store.rs", "fulfillment/status.rs"],
    ),
    ("fulfillment_order_lines", &["fulfillment/store.rs"]),
    ("fulfillment_jobs", &["fulfillment/store.rs"]),
    ("shipments", &["fulfillment/"]),
    ("shipment_lines", &["fulfillment/"]),
    ("parcels", &["fulfillment/"]),
    ("tracking_events", &["fulfillment/"]),
    ("shipping_zones", &["fulfillment/rates.rs"]),
    ("shipping_rates", &["fulfillment/rates.rs"]),
    ("payments", &["payments/"]),
    ("payment_transactions", &["payments/"]),
    ("payment_transaction_lines", &["payments/"]),
    ("invoices", &["payments/"]),
    ("credit_memos", &["payments/"]),
    ("returns", &["returns/"]),
    ("return_lines", &["returns/"]),
    ("deliveries", &["notify/"]),
    ("subscriptions", &["notify/"]),
    ("email_templates", &["notify/"]),
    ("mailbox", &["notify/"]),
    ("locks", &["kernel/lease.rs"]),
    ("daily_reports", &["reporting/"]),
];

/// The tables a text writes: the identifier after `INSERT [OR x] INTO`,
/// `UPDATE` (not `DO UPDATE`) and `DELETE FROM`. A table named by a format
/// placeholder (`INTO {table}`) is skipped: its owner passes the literal name.
fn written(text: &str) -> Vec<String> {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let table = match *w {
            "INTO" if i > 0 && matches!(words[i - 1], "INSERT" | "REPLACE" | "IGNORE") => {
                words.get(i + 1)
            }
            "UPDATE" if i == 0 || words[i - 1] != "DO" => words.get(i + 1),
            "FROM" if i > 0 && words[i - 1] == "DELETE" => words.get(i + 1),
            _ => None,
        };
        if let Some(t) = table.filter(|t| t.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn every_table_has_one_writer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let writers: BTreeMap<&str, &[&str]> = WRITERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with("/tests.rs")
            || matches!(
                rel.as_str(),
                "kernel/schema.rs" | "testkit.rs" | "layout.rs"
            )
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for t in written(production(&text)) {
            match writers.get(t.as_str()) {
                Some(owners) if owners.iter().any(|o| rel.starts_with(o)) => {}
                Some(owners) => wrong.push(format!("{rel} writes {t}, owned by {owners:?}")),
                None => wrong.push(format!("{rel} writes {t}, which WRITERS does not list")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "tables written outside their owner:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_writer_check_reads_statements() {
    let sql = r#"db.execute("INSERT INTO stock (sku) VALUES (?) ON CONFLICT (sku) DO UPDATE SET on_hand = 1");
        db.execute("UPDATE order_lines SET qty_released = 0"); db.execute("DELETE FROM outbox WHERE id = ?");
        db.execute("INSERT OR REPLACE INTO idempotency_keys (scope) VALUES (?)"); // update the view"#;
    assert_eq!(
        written(sql),
        ["stock", "order_lines", "outbox", "idempotency_keys"]
    );
}
