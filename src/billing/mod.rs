//! The hourly bill and its reports (DESIGN §5, §6).
//!
//! - [`roll`]: `hourly_bill`, rolled up from `usage_ledger` in SQL, and each billing hour's state
//!   (open → provisional → closed, revisions for late rows). SQL.
//! - [`report`]: what a report asks for and holds, and its JSON, CSV and table renderings; [`html`]: the
//!   self-contained HTML page; [`format`]: the one dispatch between them. Pure: rows in, text out.
//! - [`read`]: a report's rows from `hourly_bill`. SQL.
//! - [`delivery`]: each closed hour's report to `--report-dir` and `--report-webhook`, through an outbox.
//!
//! Every door to a report (`deepseek-meter report`, `GET /v1/bill/hourly`, the delivered files and POSTs)
//! goes through [`read::report`] and [`format::render`].

pub mod delivery;
pub mod format;
pub mod html;
pub mod read;
pub mod report;
pub mod reprice;
pub mod roll;
pub mod roller;

pub use roll::{last_closed_hour, Bill, Rolled, INSTANCE_STALE, ROLLER_LOCK, ROLL_EVERY};
