//! housekeeping-cron: hourly, every table's owner drops what is past its
//! retention (`retention` Spin variable; `waybill::flows::housekeeping`), in
//! bounded steps. Independent of the daily report.

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::flows::housekeeping::{self, Retention};
use waybill::spin_glue;

struct HousekeepingCron;

impl Guest for HousekeepingCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let retention = Retention::parse(&spin_glue::variable("retention", ""))
            .map_err(|e| Error::Other(format!("retention: {e}")))?;
        let db = spin_glue::open_writer().map_err(|e| Error::Other(e.to_string()))?;
        let dropped = housekeeping::run(&db, &retention, chrono::Utc::now())
            .map_err(|e| Error::Other(e.to_string()))?;
        println!("housekeeping-cron: dropped {dropped}");
        Ok(())
    }
}

export!(HousekeepingCron);
