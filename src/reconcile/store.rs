//! The SQL of reconciliation: imports into `platform_bill` (one transaction: a file is imported whole or not
//! at all; an identical line changes nothing), the ledger's side of the comparison, and the record of each
//! run (`reconcile_runs`, and the reconciled hours in `bill_hours` and `hourly_model_bill`).

use super::compare::{LedgerLine, Reconciliation};
use super::import::{Bill, BillLine};
use crate::keys::ApiKeys;
use crate::pricing::PriceBook;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Lines of other products in the file.
    pub skipped: usize,
}

/// Imports every line of `bill` in one transaction. A line already imported with the same figures is left
/// as it is; with other figures (a restated export) it takes the new ones.
pub async fn import(
    pool: &PgPool,
    bill: &Bill,
    sha256: &str,
    now: DateTime<Utc>,
) -> Result<Imported, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut out = Imported {
        skipped: bill.skipped,
        ..Imported::default()
    };
    for chunk in bill.lines.chunks(1000) {
        let hour: Vec<DateTime<Utc>> = chunk.iter().map(|l| l.hour).collect();
        let key: Vec<String> = chunk
            .iter()
            .map(|l| l.key_id.clone().unwrap_or_default())
            .collect();
        let ws: Vec<&str> = chunk.iter().map(|l| l.workspace.as_str()).collect();
        let model: Vec<&str> = chunk.iter().map(|l| l.model.as_str()).collect();
        let ty: Vec<&str> = chunk.iter().map(|l| l.token_type.as_str()).collect();
        let channel: Vec<&str> = chunk.iter().map(|l| l.channel.as_str()).collect();
        let tokens: Vec<i64> = chunk.iter().map(|l| l.tokens as i64).collect();
        let amount: Vec<Decimal> = chunk.iter().map(|l| l.amount).collect();
        // xmax = 0: the row was inserted; otherwise updated. Unchanged lines are not touched at all.
        let (new, changed): (i64, i64) = sqlx::query_as(
            "WITH up AS (
               INSERT INTO platform_bill (billing_hour, key_id, workspace, model, token_type, channel, tokens,
                   amount, imported_at, source_sha256)
               SELECT h, k, w, m, t, c, n, a, $9, $10
               FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                   $7::int8[], $8::numeric[]) AS l(h, k, w, m, t, c, n, a)
               ON CONFLICT (billing_hour, key_id, workspace, model, token_type, channel) DO UPDATE
                 SET tokens = EXCLUDED.tokens, amount = EXCLUDED.amount, imported_at = EXCLUDED.imported_at,
                     source_sha256 = EXCLUDED.source_sha256
                 WHERE (platform_bill.tokens, platform_bill.amount) IS DISTINCT FROM (EXCLUDED.tokens, EXCLUDED.amount)
               RETURNING (xmax = 0) AS inserted)
             SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
        )
        .bind(&hour)
        .bind(&key)
        .bind(&ws)
        .bind(&model)
        .bind(&ty)
        .bind(&channel)
        .bind(&tokens)
        .bind(&amount)
        .bind(now)
        .bind(sha256)
        .fetch_one(&mut *tx)
        .await?;
        out.new += new as u64;
        out.changed += changed as u64;
        out.unchanged += (chunk.len() as i64 - new - changed).max(0) as u64;
    }
    tx.commit().await?;
    Ok(out)
}

/// The bill's lines of the hours `[from, to]` (the hour at `to` too: a booking spilled past the end).
pub async fn bill_lines(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BillLine>, sqlx::Error> {
    type Row = (
        DateTime<Utc>,
        String,
        String,
        String,
        String,
        String,
        i64,
        Decimal,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT billing_hour, key_id, workspace, model, token_type, channel, tokens, amount
         FROM platform_bill WHERE billing_hour >= $1 AND billing_hour <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(hour, key, workspace, model, token_type, channel, tokens, amount)| BillLine {
                hour,
                key_id: Some(key).filter(|k| !k.is_empty()),
                workspace,
                model,
                token_type,
                channel,
                tokens: tokens.max(0) as u64,
                amount,
            },
        )
        .collect())
}

/// The ledger's lines of the hours `[from, to]`, from the per-key rollup (never the ledger itself): per
/// (hour, key, workspace, model), an `input_token` line (every input token: uncached, cache reads and cache
/// writes) and an `output_token` line (chain of thought + answer). A call's key is its recorded key ID, else the
/// one `[[api_key]]` gives its fingerprint today, else `fingerprint:<hex>`. Money is the effective cost (price
/// corrections included), split between the two lines as each call was priced (its input part, kept with it);
/// calls written before that part was kept are split by the price in force for their hour.
pub async fn ledger_lines(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    keys: &ApiKeys,
    prices: &PriceBook,
) -> Result<Vec<LedgerLine>, sqlx::Error> {
    let rows: Vec<KeyUsage> = sqlx::query_as(
        "SELECT billing_hour, api_key_id, key_fingerprint, workspace, model, calls, estimated_calls,
            input_tokens, output_tokens, cost, cost_input, unsplit_cost, unsplit_uncached, unsplit_cached,
            unsplit_writes
         FROM hourly_key_usage WHERE billing_hour >= $1 AND billing_hour <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len() * 2);
    for g in rows {
        let key = g
            .api_key_id
            .clone()
            .or_else(|| keys.key_id(g.key_fingerprint.as_deref()).map(str::to_owned))
            .or_else(|| {
                g.key_fingerprint
                    .as_ref()
                    .map(|f| format!("fingerprint:{f}"))
            })
            .unwrap_or_default();
        let count = |n: i64| n.max(0) as u64;
        let unsplit = crate::usage::Tokens {
            input: count(g.unsplit_uncached + g.unsplit_cached + g.unsplit_writes),
            cached: count(g.unsplit_cached),
            cache_creation: count(g.unsplit_writes),
            ..Default::default()
        };
        let unsplit_input = prices
            .price_at(&g.model, g.billing_hour)
            .map(|p| p.rates.input_cost(&unsplit))
            .unwrap_or_default()
            .min(g.unsplit_cost);
        let input_yuan = (g.cost_input + unsplit_input).min(g.cost);
        let line = |token_type: &str, tokens: i64, yuan: Decimal| LedgerLine {
            hour: g.billing_hour,
            key: key.clone(),
            workspace: g.workspace.clone(),
            model: g.model.clone(),
            token_type: token_type.to_owned(),
            tokens: count(tokens),
            yuan,
            calls: count(g.calls),
            estimated_calls: count(g.estimated_calls),
        };
        out.push(line("input_token", g.input_tokens, input_yuan));
        out.push(line("output_token", g.output_tokens, g.cost - input_yuan));
    }
    Ok(out)
}

/// One row of the per-key rollup, as [`ledger_lines`] reads it.
#[derive(sqlx::FromRow)]
struct KeyUsage {
    billing_hour: DateTime<Utc>,
    api_key_id: Option<String>,
    key_fingerprint: Option<String>,
    workspace: Option<String>,
    model: String,
    calls: i64,
    estimated_calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost: Decimal,
    cost_input: Decimal,
    unsplit_cost: Decimal,
    unsplit_uncached: i64,
    unsplit_cached: i64,
    unsplit_writes: i64,
}

/// The hours the bill's lines cover: from the first to the end of the last (`None`: no line).
pub fn period_of(lines: &[BillLine]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let first = lines.iter().map(|l| l.hour).min()?;
    let last = lines.iter().map(|l| l.hour).max()?;
    Some((first, last + Duration::hours(1)))
}

/// Records a run: `reconcile_runs`, and on each reconciled hour of the bill its verdict and drift (per hour
/// in `bill_hours`, per hour and model in `hourly_model_bill`).
pub async fn record(
    pool: &PgPool,
    r: &Reconciliation,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let verdicts = serde_json::to_value(super::render::verdict_counts(r)).unwrap_or_default();
    let drift: serde_json::Value = r
        .drift_by_model
        .iter()
        .map(|(m, d)| {
            (
                m.clone(),
                serde_json::Value::String(d.normalize().to_string()),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    sqlx::query(
        "INSERT INTO reconcile_runs (ran_at, period_from, period_to, verdicts, drift_by_model, ledger_yuan,
            bill_yuan, total_matches)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(now)
    .bind(r.from)
    .bind(r.to)
    .bind(verdicts)
    .bind(drift)
    .bind(r.ledger_yuan)
    .bind(r.bill_yuan)
    .bind(r.total_matches)
    .execute(&mut *tx)
    .await?;
    for h in &r.hours {
        sqlx::query(
            "UPDATE bill_hours SET reconciled_at = $2, reconcile_verdict = $3, reconcile_drift_yuan = $4
             WHERE billing_hour = $1",
        )
        .bind(h.hour)
        .bind(now)
        .bind(h.verdict.as_str())
        .bind(h.drift_yuan)
        .execute(&mut *tx)
        .await?;
        let mut by_model: std::collections::BTreeMap<&str, (Decimal, super::compare::Verdict)> =
            Default::default();
        for l in &h.lines {
            let e = by_model
                .entry(l.model.as_str())
                .or_insert((Decimal::ZERO, super::compare::Verdict::Match));
            e.0 += l.ledger_yuan - l.bill_yuan;
            e.1 = e.1.max(l.verdict);
        }
        for (model, (drift, verdict)) in by_model {
            sqlx::query(
                "UPDATE hourly_model_bill SET reconciled_at = $3, reconcile_verdict = $4, reconcile_drift_yuan = $5
                 WHERE billing_hour = $1 AND model = $2",
            )
            .bind(h.hour)
            .bind(model)
            .bind(now)
            .bind(verdict.as_str())
            .bind(drift)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The newest run's drift by model (for `deepseek_meter_reconcile_drift_yuan`).
pub async fn latest_drift(pool: &PgPool) -> Result<Vec<(String, Decimal)>, sqlx::Error> {
    let drift: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT drift_by_model FROM reconcile_runs ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(drift
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(m, v)| Some((m, v.as_str()?.parse().ok()?)))
        .collect())
}
