//! Delivery of each closed hour's report (and of each new revision of it): JSON and CSV files in
//! `--report-dir`, the JSON POSTed to `--report-webhook`.
//!
//! **An outbox in Postgres** (`bill_deliveries`, one row per hour, revision and destination). Destinations are
//! named by a SHA-256 prefix of the directory or URL, never the URL itself (it may hold a secret), and
//! recorded with when they were first configured (`report_destinations`). Each round, every sidecar with a
//! destination queues each closing of an hour since then that is not queued yet (the current revision of
//! every `closed` hour in `bill_hours`): deliveries are derived from the bill's state, so a closing made by
//! any sidecar while this one was down or cut off is delivered when it is back, and a restart loses none. A
//! sidecar delivers only the rows of the destinations it is configured with.
//!
//! **Once per (hour, revision) and destination, across sidecars and restarts.** A deliverer claims a due row
//! by setting its lease ([`LEASE`]) in one short transaction, delivers with no connection or lock held, and
//! records the outcome in a second transaction (if its lease is still its own). Two sidecars configured alike
//! never deliver the same row while a lease runs (the second skips it, then sees it done). The one window for a
//! repeat: the process dies (or loses the database) after the receiver got the POST and before the outcome is
//! recorded. Then the lease runs out and the row is delivered again, with the same `Idempotency-Key`
//! (`<hour>/r<revision>`), so a receiver that dedupes on it sees each (hour, revision) once. Files are
//! written atomically (temporary file, fsync, rename), so a repeat rewrites the same content.
//!
//! **What is delivered** is the hour's report as it is when delivered, every grouping (model, project,
//! key). A closed hour's bill only changes by a re-roll, which bumps its revision and enqueues a new delivery:
//! a row whose revision is no longer the hour's is marked `superseded` instead of delivering content of the
//! newer revision under the older number.
//!
//! **Retries** back off from 1 s, doubling, up to 5 min, without end: a delivery is never dropped. Each
//! failure is counted (`deepseek_meter_report_delivery_failures_total{target}`), and `/readyz` shows what is
//! pending and the last error.

use super::read;
use super::report::{Report, ReportQuery};
use crate::calendar::local;
use crate::webhook::Webhook;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait between two attempts of one delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long a claimed delivery is its deliverer's: longer than a webhook POST may take.
pub const LEASE: Duration = Duration::from_secs(60);

/// Where this sidecar delivers.
#[derive(Clone, Default)]
pub struct Destinations {
    pub dir: Option<PathBuf>,
    pub webhook: Option<(http::Uri, Webhook)>,
}

impl Destinations {
    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.webhook.is_none()
    }

    /// The destination ids written in this sidecar's heartbeat.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        if let Some(dir) = &self.dir {
            ids.push(id("dir", &dir.to_string_lossy()));
        }
        if let Some((url, _)) = &self.webhook {
            ids.push(id("webhook", &url.to_string()));
        }
        ids
    }
}

/// `dir:` or `webhook:` and the first 16 hex digits of the SHA-256 of the destination.
fn id(kind: &str, destination: &str) -> String {
    let digest = Sha256::digest(destination.as_bytes());
    format!("{kind}:{}", &hex::encode(digest)[..16])
}

/// What `/readyz` shows about this sidecar's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryStatus {
    /// Deliveries of this sidecar's destinations not made yet.
    pub pending: i64,
    /// Of those, how many have failed at least once.
    pub failing: i64,
    pub last_error: Option<String>,
}

/// A shared view of [`DeliveryStatus`], updated by the deliverer each round.
pub type StatusCell = Arc<Mutex<DeliveryStatus>>;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        hour: DateTime<Utc>,
        revision: i32,
        target: &'static str,
    },
    Superseded,
    Failed {
        target: &'static str,
        error: String,
    },
}

/// One sidecar's deliverer.
#[derive(Clone)]
pub struct Deliverer {
    pool: PgPool,
    timezone: Tz,
    destinations: Destinations,
    ids: Vec<String>,
}

impl Deliverer {
    pub fn new(pool: PgPool, timezone: Tz, destinations: Destinations) -> Deliverer {
        let ids = destinations.ids();
        Deliverer {
            pool,
            timezone,
            destinations,
            ids,
        }
    }

    /// The destination ids this deliverer serves (written in the heartbeat).
    pub fn destination_ids(&self) -> &[String] {
        &self.ids
    }

    /// Records this sidecar's destinations (first time: from `now` on) and queues every closing since each
    /// destination was first configured that is not queued yet. Returns how many were queued.
    pub async fn enqueue(&self, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO report_destinations (destination, first_seen) SELECT unnest($1::text[]), $2
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.ids)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let queued = sqlx::query(
            "INSERT INTO bill_deliveries (billing_hour, revision, destination, enqueued_at, next_attempt_at)
             SELECT h.billing_hour, h.revision, d.destination, $2, $2
             FROM bill_hours h JOIN report_destinations d ON h.closed_at >= d.first_seen
             WHERE h.state = 'closed' AND d.destination = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM bill_deliveries b WHERE b.billing_hour = h.billing_hour
                               AND b.revision = h.revision AND b.destination = d.destination)
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.ids)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(queued.rows_affected())
    }

    /// Claims one due delivery of this sidecar's destinations and makes it. `None`: nothing is due.
    pub async fn deliver_one(&self, now: DateTime<Utc>) -> Result<Option<Attempt>, sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(None);
        }
        let lease = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        // 1. The claim: its own short transaction.
        let due: Option<(DateTime<Utc>, i32, String, i32)> = sqlx::query_as(
            "UPDATE bill_deliveries d SET lease_until = $3
             FROM (SELECT billing_hour, revision, destination FROM bill_deliveries
                   WHERE outcome IS NULL AND destination = ANY($1) AND next_attempt_at <= $2
                     AND (lease_until IS NULL OR lease_until <= $2)
                   ORDER BY billing_hour, revision LIMIT 1 FOR UPDATE SKIP LOCKED) due
             WHERE d.billing_hour = due.billing_hour AND d.revision = due.revision
               AND d.destination = due.destination
             RETURNING d.billing_hour, d.revision, d.destination, d.attempts",
        )
        .bind(&self.ids)
        .bind(now)
        .bind(lease)
        .fetch_optional(&self.pool)
        .await?;
        let Some((hour, revision, destination, attempts)) = due else {
            return Ok(None);
        };
        let row = (hour, revision, destination.as_str(), lease);
        // 2. What to deliver (reads only), then the delivery with nothing held.
        let current: Option<(String, i32)> =
            sqlx::query_as("SELECT state, revision FROM bill_hours WHERE billing_hour = $1")
                .bind(hour)
                .fetch_optional(&self.pool)
                .await?;
        if current.as_ref().is_some_and(|(_, r)| *r != revision) {
            finish(
                &self.pool,
                row,
                "outcome = 'superseded', finished_at = $5",
                now,
                None,
            )
            .await?;
            return Ok(Some(Attempt::Superseded));
        }
        let report = read::report(&self.pool, &ReportQuery::for_hour(hour, self.timezone)).await?;
        let target = if destination.starts_with("dir:") {
            "dir"
        } else {
            "webhook"
        };
        let result = self.deliver(target, hour, revision, &report).await;
        // 3. The outcome: a second transaction.
        match &result {
            Ok(()) => {
                let set = "outcome = 'delivered', finished_at = $5, attempts = attempts + 1, last_error = NULL";
                finish(&self.pool, row, set, now, None).await?;
            }
            Err(error) => {
                let set = "attempts = attempts + 1, next_attempt_at = $5, last_error = $6";
                finish(&self.pool, row, set, now + backoff(attempts), Some(error)).await?;
            }
        }
        Ok(Some(match result {
            Ok(()) => Attempt::Delivered {
                hour,
                revision,
                target,
            },
            Err(error) => Attempt::Failed { target, error },
        }))
    }

    async fn deliver(
        &self,
        target: &str,
        hour: DateTime<Utc>,
        revision: i32,
        report: &Report,
    ) -> Result<(), String> {
        let key = idempotency_key(hour, revision, self.timezone);
        match (target, &self.destinations.dir, &self.destinations.webhook) {
            ("dir", Some(dir), _) => {
                let stem = file_stem(hour, revision, self.timezone);
                let files = [
                    (
                        format!("{stem}.json"),
                        super::format::render(report, super::report::Format::Json, &[]),
                    ),
                    (format!("{stem}.csv"), report.to_csv()),
                ];
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    for (name, text) in &files {
                        write_atomically(&dir, name, text.as_bytes())?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map_err(|e| format!("writing the report: {e}"))?
                .map_err(|e| format!("writing the report: {e}"))
            }
            ("webhook", _, Some((_, hook))) => {
                let body = Bytes::from(super::format::render(
                    report,
                    super::report::Format::Json,
                    &[],
                ));
                let headers = [
                    (HeaderName::from_static("idempotency-key"), header(&key)),
                    (
                        HeaderName::from_static("x-meter-billing-hour"),
                        header(&local(hour, self.timezone)),
                    ),
                    (
                        HeaderName::from_static("x-meter-revision"),
                        header(&revision.to_string()),
                    ),
                ];
                hook.post_json(body, &headers)
                    .await
                    .map_err(|e| e.to_string())
            }
            _ => Err("this sidecar no longer has the destination".into()),
        }
    }

    /// Pending and failing deliveries of this sidecar's destinations, and the newest error.
    pub async fn status(&self) -> Result<DeliveryStatus, sqlx::Error> {
        let (pending, failing, last_error): (i64, i64, Option<String>) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0),
                (array_agg(last_error ORDER BY next_attempt_at DESC) FILTER (WHERE last_error IS NOT NULL))[1]
             FROM bill_deliveries WHERE outcome IS NULL AND destination = ANY($1)",
        )
        .bind(&self.ids)
        .fetch_one(&self.pool)
        .await?;
        Ok(DeliveryStatus {
            pending,
            failing,
            last_error,
        })
    }
}

/// Records the outcome of a claimed outbox row (`(hour, revision, destination, lease)`) with `set`, which may
/// use `$5` (a time) and `$6` (an error text), and releases the lease — only while the lease is still this
/// claim's (a deliverer that overran it lets the next claim decide).
async fn finish(
    pool: &PgPool,
    (hour, revision, destination, lease): (DateTime<Utc>, i32, &str, DateTime<Utc>),
    set: &str,
    at: DateTime<Utc>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE bill_deliveries SET {set}, lease_until = NULL
         WHERE billing_hour = $1 AND revision = $2 AND destination = $3 AND lease_until = $4"
    ))
    .bind(hour)
    .bind(revision)
    .bind(destination)
    .bind(lease)
    .bind(at)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The deliverer: every [`super::ROLL_EVERY`], the closings not yet queued for this sidecar's destinations,
/// then every due delivery, then the pending count for `/readyz` and the gauge. Stops between deliveries.
pub async fn run(
    deliverer: Deliverer,
    clock: crate::clock::Clock,
    metrics: crate::metrics::InstanceMetrics,
    status: StatusCell,
    stop: tokio_util::sync::CancellationToken,
) {
    if deliverer.destination_ids().is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(super::ROLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = deliverer.enqueue(clock.now()).await {
            tracing::debug!(error = %e, "report deliveries not enqueued; retrying next round");
            continue;
        }
        while !stop.is_cancelled() {
            match deliverer.deliver_one(clock.now()).await {
                Ok(None) => break,
                Ok(Some(Attempt::Delivered {
                    hour,
                    revision,
                    target,
                })) => {
                    metrics.report_delivered(target);
                    tracing::info!(%hour, revision, target, "hour report delivered");
                }
                Ok(Some(Attempt::Superseded)) => {}
                Ok(Some(Attempt::Failed { target, error })) => {
                    metrics.report_delivery_failed(target);
                    tracing::warn!(target, %error, "hour report delivery failed; retrying with backoff");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "report delivery round failed; retrying next round");
                    break;
                }
            }
        }
        if let Ok(s) = deliverer.status().await {
            metrics.publish_deliveries_pending(s.pending);
            if let Ok(mut cell) = status.lock() {
                *cell = s;
            }
        }
    }
}

fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
}

/// 1 s after the first failure, doubling, at most [`MAX_BACKOFF`].
fn backoff(failures_before: i32) -> chrono::Duration {
    let secs = 1u64 << failures_before.clamp(0, 16);
    chrono::Duration::from_std(Duration::from_secs(secs).min(MAX_BACKOFF))
        .unwrap_or(chrono::Duration::MAX)
}

/// `2026-11-25T23:00:00+08:00/r1`: what a receiver dedupes on.
pub fn idempotency_key(hour: DateTime<Utc>, revision: i32, tz: Tz) -> String {
    format!("{}/r{revision}", local(hour, tz))
}

/// `bill-2026-11-25T23+0800-r1`: the hour in the billing zone (no colons: portable file names) and the
/// revision; files of one hour sort by revision.
pub fn file_stem(hour: DateTime<Utc>, revision: i32, tz: Tz) -> String {
    format!(
        "bill-{}-r{revision}",
        hour.with_timezone(&tz).format("%Y-%m-%dT%H%z")
    )
}

/// Writes `dir/name` so that a reader sees the old file or the whole new one: a temporary file in the same
/// directory, fsynced, renamed over, and the directory fsynced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_hour_in_the_zone_and_the_revision() {
        let hour: DateTime<Utc> = "2026-11-25T15:00:00Z".parse().unwrap();
        let bj = chrono_tz::Asia::Shanghai;
        assert_eq!(file_stem(hour, 1, bj), "bill-2026-11-25T23+0800-r1");
        assert_eq!(idempotency_key(hour, 0, bj), "2026-11-25T23:00:00+08:00/r0");
        let kolkata: DateTime<Utc> = "2026-11-25T14:30:00Z".parse().unwrap();
        assert_eq!(
            file_stem(kolkata, 0, chrono_tz::Asia::Kolkata),
            "bill-2026-11-25T20+0530-r0"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let s = |n| backoff(n).num_seconds();
        assert_eq!(
            (s(0), s(1), s(2), s(8), s(9), s(1000)),
            (1, 2, 4, 256, 300, 300)
        );
    }

    #[test]
    fn destination_ids_never_hold_the_url() {
        let d = id("webhook", "https://hooks.example/T0/secret-token");
        assert!(d.starts_with("webhook:") && d.len() == 8 + 16, "{d}");
        assert!(!d.contains("secret"));
    }

    #[test]
    fn an_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("reports");
        write_atomically(&sub, "a.json", b"one").unwrap();
        write_atomically(&sub, "a.json", b"two").unwrap();
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.json"]);
        assert_eq!(std::fs::read(sub.join("a.json")).unwrap(), b"two");
    }
}
