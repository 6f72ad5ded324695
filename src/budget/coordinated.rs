//! `block` budgets coordinated through Postgres (`--budget-coordination postgres`): one call of
//! `budget_admit()` per covered call decides, for every sidecar on the database, whether there is room —
//! spent (kept by a trigger on each ledger insert) + every sidecar's reservations + this call's worst case.
//! The SQL and why it is exact: `migrations/20261126000007_budget_coordination.sql`.
//!
//! The tracker (`super::tracker`) still keeps this sidecar's view (what `/v1/budgets`, the metrics and the
//! alerts show) and decides alone while Postgres cannot be asked: a failed or slow round trip falls back to
//! the local check, which itself follows `--budget-when-database-down` once its numbers are stale.

use super::tracker::Reservation;
use super::{Action, Attribution, Budget};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// How several sidecars share a `block` budget (`--budget-coordination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Coordination {
    /// Each sidecar reserves in memory: no round trip; sidecars overshoot by what the others have in flight.
    Local,
    /// One round trip to Postgres per covered call: exact across every sidecar on the database.
    Postgres,
}

/// An admission that waits longer than this is decided locally instead.
pub const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the budgets' definitions and this sidecar's instance are in Postgres.
pub struct Coordinator {
    pool: PgPool,
    instance: Uuid,
    /// Per budget: its definition id (block budgets only; alerts reserve nothing).
    defs: Vec<Option<String>>,
    budgets: Vec<Budget>,
    reservation: Reservation,
    /// The definitions are in `budget_defs` (the refresher writes them once the database answers).
    ready: AtomicBool,
    /// Admissions go through the request path's own pool.
    admission: PgPool,
}

/// Postgres's verdict on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// The first budget (index into the config's) without room.
    Exceeded(usize),
}

/// A budget's definition id: what decides which calls it counts, hashed (name and limit are not part of it).
pub fn def_id(b: &Budget, tz: Tz) -> String {
    let s = &b.scope;
    let text = format!(
        "{}|{}|{:?}|{:?}|{:?}|{:?}",
        b.period.as_str(),
        tz.name(),
        s.model,
        s.project,
        s.key_fingerprint,
        s.end_user
    );
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Coordinator {
    pub fn new(
        pool: PgPool,
        admission: PgPool,
        instance: Uuid,
        budgets: &[Budget],
        timezone: Tz,
        reservation: Reservation,
    ) -> Coordinator {
        Coordinator {
            pool,
            admission,
            instance,
            defs: budgets
                .iter()
                .map(|b| (b.action == Action::Block).then(|| def_id(b, timezone)))
                .collect(),
            budgets: budgets.to_vec(),
            reservation,
            ready: AtomicBool::new(false),
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The definitions are in `budget_defs` (the refresher wrote them): admissions may go to Postgres.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Asks Postgres whether the call fits every `block` budget covering it, reserving its worst case in
    /// each when it does (`worst` `None`: unpriced, reserves nothing). `windows` are the tracker's, per budget.
    pub async fn admit(
        &self,
        call_id: Uuid,
        a: &Attribution<'_>,
        worst: Option<Decimal>,
        windows: &[(DateTime<Utc>, DateTime<Utc>)],
        now: DateTime<Utc>,
    ) -> Result<Verdict, sqlx::Error> {
        let mut covered: Vec<(&str, usize)> = self
            .budgets
            .iter()
            .zip(&self.defs)
            .enumerate()
            .filter_map(|(i, (b, def))| Some((def.as_deref()?, i)).filter(|_| b.scope.covers(a)))
            .collect();
        // One counter per definition: budgets sharing one (same scope and period, other names or limits) are
        // checked against the smallest of their limits. Ascending, the order the counters are locked in.
        covered.sort_by(|a, b| {
            a.0.cmp(b.0)
                .then(self.budgets[a.1].limit.cmp(&self.budgets[b.1].limit))
        });
        covered.dedup_by(|later, first| later.0 == first.0);
        if covered.is_empty() {
            return Ok(Verdict::Admitted);
        }
        let defs: Vec<&str> = covered.iter().map(|c| c.0).collect();
        let starts: Vec<DateTime<Utc>> = covered.iter().map(|c| windows[c.1].0).collect();
        let ends: Vec<DateTime<Utc>> = covered.iter().map(|c| windows[c.1].1).collect();
        let limits: Vec<Decimal> = covered.iter().map(|c| self.budgets[c.1].limit).collect();
        let amount = match self.reservation {
            Reservation::WorstCase => Some(worst.unwrap_or_default()),
            Reservation::None => None,
        };
        let refused: i32 =
            sqlx::query_scalar("SELECT budget_admit($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(call_id)
                .bind(&defs)
                .bind(&starts)
                .bind(&ends)
                .bind(&limits)
                .bind(amount)
                .bind(self.instance)
                .bind(now)
                .fetch_one(&self.admission)
                .await?;
        Ok(match usize::try_from(refused) {
            Ok(0) | Err(_) => Verdict::Admitted,
            Ok(n) => Verdict::Exceeded(covered[n - 1].1),
        })
    }

    /// Releases what no admission needs any more: reservations of sidecars gone (no heartbeat for
    /// `stale`, reserved before that), of ended windows, and of calls already in the ledger.
    pub async fn sweep(
        &self,
        now: DateTime<Utc>,
        stale: chrono::Duration,
    ) -> Result<(), sqlx::Error> {
        // Reservations no admission needs: of sidecars gone, of ended windows, and of calls already in the
        // ledger (an admission that committed after its call's row, having timed out on our side). Each comes
        // off its counter's `reserved` in the same statement, counters locked in the admissions' order.
        sqlx::query(
            "WITH gone AS (
               DELETE FROM budget_reservations r
               WHERE (r.reserved_at < $2
                      AND NOT EXISTS (SELECT 1 FROM meter_instances i
                                      WHERE i.instance_id = r.instance_id AND i.last_seen >= $2))
                  OR EXISTS (SELECT 1 FROM budget_spent s WHERE s.def_id = r.def_id
                             AND s.window_start = r.window_start AND s.window_end <= $1)
                  OR EXISTS (SELECT 1 FROM usage_ledger l WHERE l.call_id = r.call_id
                             AND l.billing_hour >= r.window_start)
               RETURNING r.def_id, r.window_start, r.amount
             ), freed AS (
               SELECT def_id, window_start, sum(amount) AS amount FROM gone GROUP BY 1, 2
             ), locked AS (
               SELECT s.def_id, s.window_start FROM budget_spent s JOIN freed f USING (def_id, window_start)
               ORDER BY s.def_id, s.window_start
               FOR UPDATE OF s
             )
             UPDATE budget_spent s SET reserved = s.reserved - f.amount
             FROM freed f JOIN locked l USING (def_id, window_start)
             WHERE s.def_id = f.def_id AND s.window_start = f.window_start",
        )
        .bind(now)
        .bind(now - stale)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(toml_text: &str) -> Budget {
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        super::super::parse(table.get("budget")).unwrap().remove(0)
    }

    #[test]
    fn a_definition_is_what_decides_which_calls_count_not_its_name_or_limit() {
        let tz = chrono_tz::Asia::Shanghai;
        let a = budget("[[budget]]\nname = \"a\"\nperiod = \"day\"\nlimit_yuan = \"1\"\nproject = \"p\"\naction = \"block\"\n");
        let b = budget("[[budget]]\nname = \"b\"\nperiod = \"day\"\nlimit_yuan = \"9\"\nproject = \"p\"\naction = \"block\"\n");
        let c = budget("[[budget]]\nname = \"a\"\nperiod = \"month\"\nlimit_yuan = \"1\"\nproject = \"p\"\naction = \"block\"\n");
        let d = budget("[[budget]]\nname = \"a\"\nperiod = \"day\"\nlimit_yuan = \"1\"\nmodel = \"p\"\naction = \"block\"\n");
        assert_eq!(def_id(&a, tz), def_id(&b, tz));
        assert_ne!(def_id(&a, tz), def_id(&c, tz));
        assert_ne!(def_id(&a, tz), def_id(&d, tz));
        assert_ne!(def_id(&a, tz), def_id(&a, chrono_tz::UTC));
        assert_eq!(def_id(&a, tz).len(), 16);
    }
}
