//! The call mix of the ledger benchmarks (`bench/bill`, `bench/scale`): 6 models, 200 keys in 20 projects (both
//! skewed), 50 end users, 70 % of calls in Beijing business hours — and the way they go into the ledger: the
//! sidecar's own insert (`ledger::insert`, rows and rollups in one statement), from concurrent writers.

use chrono::{DateTime, Duration as Span, Utc};
use deepseek_meter::ledger::insert::insert;
use deepseek_meter::record::CallRecord;
use deepseek_meter::usage::{CallStatus, Protocol, UsageSource};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const TZ: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
const BATCH: usize = 5_000;

pub const MODELS: [&str; 6] = [
    "deepseek-v3.2-exp",
    "deepseek-r1",
    "deepseek-v3",
    "deepseek-v3.1",
    "deepseek-r1-0528",
    "deepseek-r1-distill-qwen-32b",
];

/// xorshift64*: reproducible and cheap.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One call finishing at `finished`, drawn from the mix.
pub fn call(rng: &mut Rng, finished: DateTime<Utc>) -> CallRecord {
    let model = MODELS[(rng.unit().powi(2) * 6.0) as usize];
    let key = (rng.unit().powf(2.5) * 200.0) as u64;
    let input = 200 + (rng.unit() * 8_000.0) as u64;
    let cached = (input as f64 * rng.unit() * 0.5) as u64;
    let output = 50 + (rng.unit() * 3_000.0) as u64;
    let reasoning = if model.starts_with("deepseek-r1") {
        output * 7 / 10
    } else {
        0
    };
    let cost_input = Decimal::new((input * 2) as i64, 6);
    CallRecord {
        call_id: uuid::Uuid::now_v7(),
        upstream_request_id: None,
        protocol: Protocol::OpenAi,
        model: model.into(),
        stream: true,
        status: CallStatus::Ok,
        http_status: Some(200),
        error_code: None,
        started_at: finished - Span::seconds(2),
        finished_at: finished,
        billing_hour: deepseek_meter::pricing::billing_hour(finished, TZ),
        ttft_ms: Some(120.0),
        duration_ms: 2_000.0,
        input_tokens: input,
        cached_tokens: cached,
        cache_creation_tokens: 0,
        output_tokens: output,
        reasoning_tokens: reasoning,
        answer_tokens: output - reasoning,
        usage_source: if key.is_multiple_of(97) {
            UsageSource::Estimated
        } else {
            UsageSource::Reported
        },
        reasoning_estimated: false,
        priced: true,
        price_version: Some(format!("{model}@bench")),
        price_period: None,
        cost_total: Some(cost_input + Decimal::new((output * 8) as i64, 6)),
        cost_input: Some(cost_input),
        key_fingerprint: Some(format!("{key:012x}")),
        key_hint: None,
        project: Some(format!("project-{}", key % 20)),
        end_user: key.is_multiple_of(2).then(|| format!("user-{}", key % 50)),
        workspace: None,
        api_key_id: None,
    }
}

/// A finish time in the day starting at `day` (Beijing midnight): 70 % between 09:00 and 19:00.
pub fn in_day(rng: &mut Rng, day: DateTime<Utc>) -> DateTime<Utc> {
    let secs = if rng.unit() < 0.7 {
        32_400.0 + rng.unit() * 36_000.0
    } else {
        rng.unit() * 86_399.0
    };
    day + Span::milliseconds((secs * 1e3) as i64)
}

/// Inserts `rows` calls from `workers` tasks, each call's finish time drawn by `when`; rows/s.
pub async fn ingest(
    pool: &PgPool,
    rows: u64,
    workers: u64,
    seed: u64,
    when: impl Fn(&mut Rng) -> DateTime<Utc> + Clone + Send + Sync + 'static,
    progress: bool,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (pool, when, done) = (pool.clone(), when.clone(), done.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(w + 1) | 1);
                let mine = rows / workers + u64::from(w < rows % workers);
                let mut left = mine;
                while left > 0 {
                    let n = left.min(BATCH as u64);
                    let batch: Vec<CallRecord> = (0..n)
                        .map(|_| {
                            let at = when(&mut rng);
                            call(&mut rng, at)
                        })
                        .collect();
                    insert(&pool, &batch).await.unwrap();
                    left -= n;
                    let total = done.fetch_add(n, Ordering::Relaxed) + n;
                    if progress && total % 5_000_000 < n {
                        eprintln!(
                            "  {total} rows, {:.0} rows/s",
                            total as f64 / t.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

/// A number from the environment (`SCALE_ROWS`, `BENCH_BILL_ROWS`, …), else `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` `n` times; (median, min, max) in milliseconds.
pub async fn timed<F, Fut>(n: usize, mut f: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ms[n / 2], ms[0], ms[n - 1])
}
