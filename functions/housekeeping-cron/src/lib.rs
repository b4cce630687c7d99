//! housekeeping-cron: hourly, every table's owner drops what is past its
//! retention (`retention` Spin variable; `waybill::flows::housekeeping`), in
//! bounded steps. Independent of the daily report.

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::flows::schedules;
use waybill::spin_glue;

struct HousekeepingCron;

impl Guest for HousekeepingCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let fail = |e: waybill::Error| Error::Other(e.to_string());
        let retention = spin_glue::retention().map_err(fail)?;
        let db = spin_glue::open_writer().map_err(fail)?;
        let dropped = schedules::housekeeping(&db, &retention, chrono::Utc::now()).map_err(fail)?;
        println!("housekeeping-cron: dropped {dropped}");
        Ok(())
    }
}

export!(HousekeepingCron);
