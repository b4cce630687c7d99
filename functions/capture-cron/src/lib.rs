//! capture-cron: every minute, sends the gateway calls that are due: captures
//! routing scheduled while the chained call failed, and retries after a
//! timeout or 5xx (same Idempotency-Key, exponential backoff).

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::{flows::schedules, spin_glue};

struct CaptureCron;

impl Guest for CaptureCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let db = spin_glue::open_writer().map_err(|e| Error::Other(e.to_string()))?;
        let (gateway, stripe) = spin_glue::payment_gateway();
        let r = schedules::capture(&db, &gateway, &stripe, chrono::Utc::now())
            .map_err(|e| Error::Other(e.to_string()))?;
        println!("capture-cron: {r}");
        Ok(())
    }
}

export!(CaptureCron);
