//! notify-cron: the scheduled sweep (every minute) that retries what chained
//! sweeps left: due retries, events whose chained call failed, expired leases.

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::flows::center_requests::FulfillmentCenters;
use waybill::{flows::schedules, spin_glue};

struct NotifyCron;

impl Guest for NotifyCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let cfg = spin_glue::notify_config();
        let db = spin_glue::open_writer().map_err(|e| Error::Other(e.to_string()))?;
        let report = spin_sdk::http::run(schedules::notify(
            &db,
            &cfg,
            &FulfillmentCenters,
            &spin_glue::transport(),
            std::time::Duration::from_secs(50),
        ))
        .map_err(|e| Error::Other(e.to_string()))?;
        println!("notify-cron: {report}");
        Ok(())
    }
}

export!(NotifyCron);
