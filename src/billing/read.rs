//! Reading a report from `hourly_bill` — or, when it groups by model only, from `hourly_model_bill`, the same
//! hours summed by model — never from the ledger: a month's report reads the month's bill rows only
//! (DESIGN §12). One query per report, grouped in SQL: periods are `date_trunc` in the billing time zone,
//! so a day or month is a calendar window there.

use super::report::{Format, Group, HourState, Report, ReportQuery, ReportRow, Sums};
use crate::calendar::Granularity;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgExecutor, Row};

/// The report of `query`, rows ordered by period then grouping columns.
pub async fn report<'e>(
    db: impl PgExecutor<'e>,
    query: &ReportQuery,
) -> Result<Report, sqlx::Error> {
    let rows = rows(db, query, &query.by).await?;
    Ok(Report::new(query.clone(), rows))
}

/// `deepseek-meter report`: the report of the texts given (`--from`, `--to`, `--by`, `--granularity`) from
/// the database at `database_url`, rendered in `format`. A bad flag or an unreachable database is one line.
pub async fn cli_report(
    database_url: &str,
    timezone: chrono_tz::Tz,
    texts: [Option<&str>; 4],
    format: Format,
) -> anyhow::Result<String> {
    let [from, to, by, granularity] = texts;
    let query = ReportQuery::parse(from, to, by, granularity, timezone, Utc::now())
        .map_err(|e| anyhow::anyhow!("invalid report flag --{}", e.0.replacen(": ", " ", 1)))?;
    let pool = crate::ledger::command_pool(database_url).await?;
    let text = render(&pool, &query, format)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the bill: {e}"))?;
    pool.close().await;
    Ok(text)
}

/// The report of `query` rendered in `format` (the HTML page also reads the by-model series of its chart).
pub async fn render(
    pool: &sqlx::PgPool,
    query: &ReportQuery,
    format: Format,
) -> Result<String, sqlx::Error> {
    let report = report(pool, query).await?;
    let chart = match format {
        Format::Html => rows(pool, query, &[Group::Model]).await?,
        _ => Vec::new(),
    };
    Ok(super::format::render(&report, format, &chart))
}

/// The same window and granularity grouped by `by` (the HTML chart asks for model only).
pub async fn rows<'e>(
    db: impl PgExecutor<'e>,
    query: &ReportQuery,
    by: &[Group],
) -> Result<Vec<ReportRow>, sqlx::Error> {
    let period = match query.granularity {
        Granularity::Hour => "billing_hour",
        Granularity::Day => "date_trunc('day', billing_hour, $3)",
        Granularity::Month => "date_trunc('month', billing_hour, $3)",
    };
    // Grouped by model and period only (or not at all): the per-model rollup holds the same sums in far fewer
    // rows (a model has one period per hour).
    let table = if by.iter().all(|g| matches!(g, Group::Model | Group::Period)) {
        "hourly_model_bill"
    } else {
        "hourly_bill"
    };
    // Column names come from the `Group` enum, never from the request.
    let groups: String = by.iter().map(|g| format!(", {}", g.column())).collect();
    let sql = format!(
        "SELECT {period} AS period{groups},
            sum(calls)::bigint, sum(unpriced_calls)::bigint, sum(estimated_calls)::bigint,
            sum(input_tokens)::bigint, sum(cached_tokens)::bigint, sum(cache_creation_tokens)::bigint,
            sum(reasoning_tokens)::bigint,
            sum(answer_tokens)::bigint, sum(output_tokens)::bigint, sum(cost_total), sum(adjustment_yuan),
            min(CASE state WHEN 'open' THEN 0 WHEN 'provisional' THEN 1 ELSE 2 END), max(revision)
         FROM {table}
         WHERE billing_hour >= $1 AND billing_hour < $2 AND $3 <> '' -- ($3 typed even when unused)
         GROUP BY 1{groups}
         ORDER BY 1{groups}"
    );
    let found = sqlx::query(&sql)
        .bind(query.from)
        .bind(query.to)
        .bind(query.timezone.name())
        .fetch_all(db)
        .await?;
    found
        .iter()
        .map(|r| {
            let n = by.len();
            let groups = (0..n)
                .map(|i| r.try_get::<Option<String>, _>(1 + i))
                .collect::<Result<Vec<_>, _>>()?;
            let at = |i: usize| r.try_get::<i64, _>(1 + n + i);
            Ok(ReportRow {
                period: r.try_get::<DateTime<Utc>, _>(0)?,
                groups,
                sums: Sums {
                    calls: at(0)?,
                    unpriced_calls: at(1)?,
                    estimated_calls: at(2)?,
                    input_tokens: at(3)?,
                    cached_tokens: at(4)?,
                    cache_creation_tokens: at(5)?,
                    reasoning_tokens: at(6)?,
                    answer_tokens: at(7)?,
                    output_tokens: at(8)?,
                    cost_total: r.try_get::<Decimal, _>(1 + n + 9)?,
                    adjustment_yuan: r.try_get::<Decimal, _>(1 + n + 10)?,
                },
                state: HourState::from_rank(r.try_get::<i32, _>(1 + n + 11)?),
                revision: r.try_get::<i32, _>(1 + n + 12)?,
            })
        })
        .collect()
}
