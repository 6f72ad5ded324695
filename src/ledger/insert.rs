//! The ledger insert: a batch of records in one statement, with everything that must commit with them.
//!
//! The call's columns are declared once, in [`columns!`]: the column list, the `UNNEST` parameters and their
//! array types, and how each is read from a [`CallRecord`] all come from that one table. In the same statement
//! as the rows (so a row and its sums commit together, or neither does): the billing hours they fall in
//! (`bill_hours`, and a mark for the roller in `bill_dirty_hours`), and the rollups' sums — the hourly bill,
//! spent per end user, usage per key ID and workspace — added for the rows that are new (`ON CONFLICT DO
//! NOTHING … RETURNING` returns only those: a replayed batch adds nothing). The budget counters are moved by the
//! table's statement trigger in the same transaction.
//!
//! Rollup rows are upserted in key order, so two sidecars' batches lock shared rows in the same order.

use crate::record::CallRecord;
use sqlx::PgPool;

/// Declares the ledger's columns once: `name: RustType = "sql_type" => |record| value`.
macro_rules! columns {
    ($( $name:ident : $ty:ty = $sql:literal => |$r:ident| $get:expr ),* $(,)?) => {
        /// The columns, in insert order.
        pub const COLUMNS: &[&str] = &[$(stringify!($name)),*];
        /// Their Postgres types, in the same order.
        const SQL_TYPES: &[&str] = &[$($sql),*];

        /// Writes `records` as `COPY … (FORMAT csv)` rows, the columns in [`COLUMNS`]' order (the COPY path of
        /// [`copy_insert`]).
        pub fn copy_rows<'q>(records: &'q [CallRecord], out: &mut String) {
            for record in records {
                let mut first = true;
                $(
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    let $r = record;
                    let v: $ty = $get;
                    v.write_csv(out);
                )*
                let _ = first;
                out.push('\n');
            }
        }

        /// Writes `records` as binary `COPY` tuples (a field count, then each field's length and its binary
        /// value as the UNNEST insert binds it), the columns in [`COLUMNS`]' order (the path of
        /// [`copy_binary_insert`]).
        pub fn copy_binary_rows<'q>(
            records: &'q [CallRecord],
            out: &mut Vec<u8>,
        ) -> Result<(), sqlx::error::BoxDynError> {
            let fields = i16::try_from(COLUMNS.len()).unwrap_or(i16::MAX);
            for record in records {
                out.extend_from_slice(&fields.to_be_bytes());
                $(
                    let $r = record;
                    let v: $ty = $get;
                    binary_field(&v, out)?;
                )*
            }
            Ok(())
        }

        /// Binds each column of `records`, as an array, to `query`.
        fn bind_columns<'q, O>(
            mut query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
            records: &'q [CallRecord],
        ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
            $(
                let column: Vec<$ty> = records.iter().map(|$r| $get).collect();
                query = query.bind(column);
            )*
            query
        }
    };
}

/// A count as Postgres `bigint` (a record's counts are bounded far below, see `Tokens::MAX`).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

columns! {
    call_id: uuid::Uuid = "uuid" => |r| r.call_id,
    upstream_request_id: Option<&'q str> = "text" => |r| r.upstream_request_id.as_deref(),
    protocol: &'q str = "text" => |r| r.protocol.as_str(),
    model: &'q str = "text" => |r| r.model.as_str(),
    stream: bool = "bool" => |r| r.stream,
    status: &'q str = "text" => |r| r.status.as_str(),
    http_status: Option<i16> = "int2" => |r| r.http_status.map(|s| s as i16),
    error_code: Option<&'q str> = "text" => |r| r.error_code.as_deref(),
    started_at: chrono::DateTime<chrono::Utc> = "timestamptz" => |r| r.started_at,
    finished_at: chrono::DateTime<chrono::Utc> = "timestamptz" => |r| r.finished_at,
    billing_hour: chrono::DateTime<chrono::Utc> = "timestamptz" => |r| r.billing_hour,
    input_tokens: i64 = "int8" => |r| big(r.input_tokens),
    cached_tokens: i64 = "int8" => |r| big(r.cached_tokens),
    cache_creation_tokens: i64 = "int8" => |r| big(r.cache_creation_tokens),
    output_tokens: i64 = "int8" => |r| big(r.output_tokens),
    reasoning_tokens: i64 = "int8" => |r| big(r.reasoning_tokens),
    answer_tokens: i64 = "int8" => |r| big(r.answer_tokens),
    usage_source: &'q str = "text" => |r| r.usage_source.as_str(),
    reasoning_estimated: bool = "bool" => |r| r.reasoning_estimated,
    priced: bool = "bool" => |r| r.priced,
    price_version: Option<&'q str> = "text" => |r| r.price_version.as_deref(),
    price_period: Option<&'q str> = "text" => |r| r.price_period.as_deref(),
    cost_total: Option<rust_decimal::Decimal> = "numeric" => |r| r.cost_total,
    cost_input: Option<rust_decimal::Decimal> = "numeric" => |r| r.cost_input,
    key_fingerprint: Option<&'q str> = "text" => |r| r.key_fingerprint.as_deref(),
    key_hint: Option<&'q str> = "text" => |r| r.key_hint.as_deref(),
    project: Option<&'q str> = "text" => |r| r.project.as_deref(),
    end_user: Option<&'q str> = "text" => |r| r.end_user.as_deref(),
    workspace: Option<&'q str> = "text" => |r| r.workspace.as_deref(),
    api_key_id: Option<&'q str> = "text" => |r| r.api_key_id.as_deref(),
    ttft_ms: Option<f64> = "float8" => |r| r.ttft_ms,
    duration_ms: f64 = "float8" => |r| r.duration_ms,
}

/// The rollups' upserts, from the new rows (`ins`): sums added, never recomputed.
const ROLLUPS: &str = "
    hours AS (
        INSERT INTO bill_hours (billing_hour, state, revision, rolled_at)
        SELECT DISTINCT billing_hour, 'open', 0, now() FROM ins ORDER BY 1
        ON CONFLICT DO NOTHING
    ), marked AS (
        INSERT INTO bill_dirty_hours (billing_hour) SELECT DISTINCT billing_hour FROM ins
    ), bill AS (
        INSERT INTO hourly_bill AS b (billing_hour, model, project, key_fingerprint, calls, unpriced_calls,
            estimated_calls, input_tokens, cached_tokens, cache_creation_tokens, price_period, reasoning_tokens,
            answer_tokens, output_tokens, cost_total, adjustment_yuan, state, revision, closed_at)
        SELECT billing_hour, model, project, key_fingerprint, count(*), count(*) FILTER (WHERE NOT priced),
            count(*) FILTER (WHERE usage_source = 'estimated'), sum(input_tokens), sum(cached_tokens),
            sum(cache_creation_tokens), min(price_period), sum(reasoning_tokens), sum(answer_tokens),
            sum(output_tokens), coalesce(sum(cost_total), 0), 0, 'open', 0, NULL
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (billing_hour, model, project, key_fingerprint) DO UPDATE SET
            calls = b.calls + EXCLUDED.calls, unpriced_calls = b.unpriced_calls + EXCLUDED.unpriced_calls,
            estimated_calls = b.estimated_calls + EXCLUDED.estimated_calls,
            input_tokens = b.input_tokens + EXCLUDED.input_tokens,
            cached_tokens = b.cached_tokens + EXCLUDED.cached_tokens,
            cache_creation_tokens = b.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
            price_period = coalesce(b.price_period, EXCLUDED.price_period),
            reasoning_tokens = b.reasoning_tokens + EXCLUDED.reasoning_tokens,
            answer_tokens = b.answer_tokens + EXCLUDED.answer_tokens,
            output_tokens = b.output_tokens + EXCLUDED.output_tokens,
            cost_total = b.cost_total + EXCLUDED.cost_total
    ), users AS (
        INSERT INTO hourly_end_user_cost AS u (billing_hour, end_user, model, project, key_fingerprint, cost)
        SELECT billing_hour, end_user, model, project, key_fingerprint, coalesce(sum(cost_total), 0)
        FROM ins WHERE end_user IS NOT NULL GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (billing_hour, end_user, model, project, key_fingerprint) DO UPDATE SET
            cost = u.cost + EXCLUDED.cost
    ), keys AS (
        INSERT INTO hourly_key_usage AS k (billing_hour, api_key_id, key_fingerprint, workspace, model, calls,
            estimated_calls, input_tokens, output_tokens, cost, cost_input, unsplit_cost, unsplit_uncached,
            unsplit_cached, unsplit_writes)
        SELECT billing_hour, api_key_id, key_fingerprint, workspace, model, count(*),
            count(*) FILTER (WHERE usage_source = 'estimated'), sum(input_tokens), sum(output_tokens),
            coalesce(sum(cost_total), 0), coalesce(sum(cost_input), 0), 0, 0, 0, 0
        FROM ins WHERE input_tokens > 0 OR output_tokens > 0
        GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (billing_hour, api_key_id, key_fingerprint, workspace, model) DO UPDATE SET
            calls = k.calls + EXCLUDED.calls, estimated_calls = k.estimated_calls + EXCLUDED.estimated_calls,
            input_tokens = k.input_tokens + EXCLUDED.input_tokens,
            output_tokens = k.output_tokens + EXCLUDED.output_tokens,
            cost = k.cost + EXCLUDED.cost, cost_input = k.cost_input + EXCLUDED.cost_input
    )";

/// The insert of the rows `source` gives (the columns in [`COLUMNS`]' order) with their rollups.
fn insert_from(source: &str) -> String {
    format!(
        "WITH ins AS (INSERT INTO usage_ledger ({}) SELECT * FROM {source}
             ON CONFLICT (call_id, billing_hour) DO NOTHING RETURNING *),
         {ROLLUPS}
         SELECT count(*) FROM ins",
        COLUMNS.join(", ")
    )
}

/// The insert statement, built once from the column table: the rows come as one array per column.
fn statement() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let params: Vec<String> = SQL_TYPES
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}[]", i + 1))
            .collect();
        insert_from(&format!("UNNEST({})", params.join(", ")))
    })
}

/// The same insert, the rows sent with `COPY … FROM STDIN (FORMAT csv)` into a temporary table first (one
/// transaction). Measured against [`insert`] by `bench/ledger` (issue 25): which costs Postgres less per row.
pub async fn copy_insert(pool: &PgPool, records: &[CallRecord]) -> Result<u64, sqlx::Error> {
    let mut csv = String::with_capacity(records.len() * 400);
    copy_rows(records, &mut csv);
    copy_and_insert(pool, "csv", csv.as_bytes()).await
}

/// The same insert, the rows sent with binary `COPY … FROM STDIN (FORMAT binary)` into a temporary table first
/// (one transaction): each value in Postgres's binary form, encoded by the same sqlx encoders the UNNEST insert's
/// arrays use. Measured against [`insert`] and [`copy_insert`] by `bench/ledger` (issue 25).
pub async fn copy_binary_insert(pool: &PgPool, records: &[CallRecord]) -> Result<u64, sqlx::Error> {
    /// `PGCOPY\n\377\r\n\0`, then the flags and the header extension length (both 0).
    const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
    let mut data = Vec::with_capacity(HEADER.len() + records.len() * 400 + 2);
    data.extend_from_slice(HEADER);
    copy_binary_rows(records, &mut data).map_err(sqlx::Error::Encode)?;
    data.extend_from_slice(&(-1i16).to_be_bytes());
    copy_and_insert(pool, "binary", &data).await
}

/// One transaction: `data` (COPY rows in `format`) into the temporary table, then the ledger's insert from it.
async fn copy_and_insert(pool: &PgPool, format: &str, data: &[u8]) -> Result<u64, sqlx::Error> {
    let (create, insert) = copy_statements();
    let mut tx = pool.begin().await?;
    sqlx::query(create).execute(&mut *tx).await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY ledger_copy ({}) FROM STDIN (FORMAT {format})",
            COLUMNS.join(", ")
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    let inserted: i64 = sqlx::query_scalar(insert).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(inserted.max(0) as u64)
}

/// One field of a binary `COPY` tuple: its length (-1: NULL) and its value as sqlx encodes it for Postgres (a
/// value sqlx cannot encode fails the batch, as it would the UNNEST insert's).
fn binary_field<'q, T: sqlx::Encode<'q, sqlx::Postgres>>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), sqlx::error::BoxDynError> {
    let mut buf = sqlx::postgres::PgArgumentBuffer::default();
    match value.encode_by_ref(&mut buf)? {
        sqlx::encode::IsNull::No => {
            let len = i32::try_from(buf.len())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&buf);
        }
        sqlx::encode::IsNull::Yes => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    Ok(())
}

/// The temporary table both COPY paths fill, and the insert from it.
fn copy_statements() -> &'static (String, String) {
    static COPY_SQL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    COPY_SQL.get_or_init(|| {
        let cols: Vec<String> = COLUMNS
            .iter()
            .zip(SQL_TYPES)
            .map(|(c, t)| format!("{c} {t}"))
            .collect();
        (
            format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS ledger_copy ({}) ON COMMIT DELETE ROWS",
                cols.join(", ")
            ),
            insert_from("ledger_copy"),
        )
    })
}

/// A column value as CSV text for `COPY`: NULL is an empty unquoted field, text is always quoted.
trait CsvField {
    fn write_csv(&self, out: &mut String);
}

impl<T: CsvField> CsvField for Option<T> {
    fn write_csv(&self, out: &mut String) {
        if let Some(v) = self {
            v.write_csv(out);
        }
    }
}

impl CsvField for &str {
    fn write_csv(&self, out: &mut String) {
        out.push('"');
        for c in self.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

macro_rules! csv_display {
    ($($t:ty),*) => {$(
        impl CsvField for $t {
            fn write_csv(&self, out: &mut String) {
                use std::fmt::Write as _;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
csv_display!(uuid::Uuid, bool, i16, i64, f64, rust_decimal::Decimal);

impl CsvField for chrono::DateTime<chrono::Utc> {
    fn write_csv(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Microseconds, cut as the binary encoding of the UNNEST insert cuts them (Postgres would round more).
        let _ = write!(
            out,
            "{}",
            self.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}

/// Inserts a batch with its rollups; returns how many rows were new.
pub async fn insert(pool: &PgPool, records: &[CallRecord]) -> Result<u64, sqlx::Error> {
    let query = bind_columns(sqlx::query_scalar::<_, i64>(statement()), records);
    let inserted = query.fetch_one(pool).await?;
    Ok(inserted.max(0) as u64)
}
