//! report-cron: (re)generates yesterday's report in the merchant's time zone.
//! It runs hourly: the first run after midnight creates the report and e-mails
//! management; later runs replace it with late-arriving data (no second e-mail),
//! and a missed run catches up at the next hour. (Retention is
//! housekeeping-cron's.)

wit_bindgen::generate!({
    world: "spin-cron",
    path: "../../wit/cron.wit",
});

use waybill::{flows::schedules, spin_glue};

struct ReportCron;

impl Guest for ReportCron {
    fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
        let fail = |e: waybill::Error| Error::Other(e.to_string());
        let cfg = spin_glue::report_config().map_err(fail)?;
        let db = spin_glue::open_writer().map_err(fail)?;
        let kv = spin_glue::kv().map_err(fail)?;
        let r = schedules::report(&db, &kv, cfg.timezone, chrono::Utc::now()).map_err(fail)?;
        println!("report-cron: {r}");
        Ok(())
    }
}

export!(ReportCron);
