//! A report in the format asked for: the one dispatch every door uses (`deepseek-meter report`,
//! `GET /v1/bill/hourly`, the delivered files and POSTs). Pure.

use super::html;
use super::report::{Format, Report, ReportRow};

/// `report` as `format`. `chart`: for HTML, the same query's rows by model only (its bar chart); ignored
/// by the other formats.
pub fn render(report: &Report, format: Format, chart: &[ReportRow]) -> String {
    match format {
        Format::Table => report.to_table(),
        Format::Csv => report.to_csv(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Html => html::page(report, chart),
    }
}
