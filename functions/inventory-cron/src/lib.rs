//! inventory-cron: pulls every active facility's inventory endpoint on a
//! schedule (every 15 minutes), keeps the snapshot in key-value and applies the
//! levels. Backorders the new stock allows are released by routing-cron's next
//! sweep (the cron trigger cannot chain to HTTP components).

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::{flows::schedules, inventory, spin_glue};

struct InventoryCron;

/// A center's signing secret: only the variables declared for centers.
fn secret(name: &str) -> Option<String> {
    waybill::inventory::FC_SECRET_VARIABLES
        .contains(&name)
        .then(|| spin_glue::variable(name, ""))
        .filter(|s| !s.is_empty())
}

impl Guest for InventoryCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let fail = |e: waybill::Error| Error::Other(e.to_string());
        let db = spin_glue::open_writer().map_err(fail)?;
        let kv = spin_glue::kv().map_err(fail)?;
        let receivers = spin_glue::receivers();
        let cfg = inventory::Config {
            secret: &secret,
            receivers: &receivers,
        };
        let mut fx = inventory::Effects::default();
        let get = spin_glue::http_get_owned;
        let r = spin_sdk::http::run(schedules::inventory(&db, &kv, &cfg, &mut fx, get))
            .map_err(fail)?;
        println!("inventory-cron: {r}");
        Ok(())
    }
}

export!(InventoryCron);
