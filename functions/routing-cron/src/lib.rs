//! routing-cron: every minute, routes orders left `received` (a chained call
//! failed, or inventory was not set up yet), releases allocated work whose
//! holds were lifted, and releases backorders for every SKU with stock.

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::{flows::schedules, spin_glue};

struct RoutingCron;

impl Guest for RoutingCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let db = spin_glue::open_writer().map_err(|e| Error::Other(e.to_string()))?;
        let r =
            schedules::routing(&db, chrono::Utc::now()).map_err(|e| Error::Other(e.to_string()))?;
        println!("routing-cron: {r}");
        Ok(())
    }
}

export!(RoutingCron);
