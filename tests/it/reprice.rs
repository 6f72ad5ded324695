//! Price corrections (issue 14, item 4) through the real binary: a sidecar priced deepseek-v3's output ten times
//! too high for two hours; `deepseek-meter reprice --prices <corrected book>` records one adjustment per
//! affected call with the exact delta, the ledger untouched (its append-only trigger still holds), the hourly
//! bill corrected with each changed hour's revision bumped (the closed one closes again), the report showing
//! the corrected total and the correction, and a second run changing nothing.

use crate::helpers::bin::run_bin as run;
use crate::helpers::*;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use deepseek_meter::pricing::{PriceBook, BUILTIN_BOOK, DEFAULT_TIMEZONE};
use rust_decimal::Decimal;
use serde_json::Value;

const V3_RIGHT: &str = "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"8\"";
const V3_WRONG: &str = "name = \"deepseek-v3\"\neffective_from = 2024-12-26\ninput = \"2\"\ncached_input = \"0.4\"\noutput = \"80\"";

/// (hour, revision, state, cost_total, adjustment_yuan) of the per-model bill.
async fn bill(pool: &sqlx::PgPool) -> Vec<(String, String, i32, String, Decimal, Decimal)> {
    sqlx::query_as(
        "SELECT to_char(billing_hour AT TIME ZONE 'Asia/Shanghai', 'HH24'), model, revision, state, cost_total,
            adjustment_yuan FROM hourly_model_bill ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn reprice_adjusts_the_bill_not_the_ledger_and_a_second_run_changes_nothing() {
    let wrong = BUILTIN_BOOK.replace(V3_RIGHT, V3_WRONG);
    assert_ne!(wrong, BUILTIN_BOOK);
    let book = PriceBook::parse(&wrong, DEFAULT_TIMEZONE).unwrap();
    let clock = Clock::manual("2026-11-25T05:10:00Z".parse().unwrap()); // 13:10 Beijing
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), move |s| s.prices = book).await;
    let call = |model: &'static str| {
        let t = &t;
        async move {
            let resp = t
                .http
                .post(t.url(COMPAT_PATH))
                .header("x-sim-chunks", "300")
                .body(format!(
                    r#"{{"model":"{model}","messages":[{{"role":"user","content":"price me"}}]}}"#
                ))
                .send()
                .await
                .unwrap();
            t.saw(&call_id(&resp));
            resp.bytes().await.unwrap();
        }
    };
    call("deepseek-v3").await;
    call("deepseek-r1").await;
    clock.set("2026-11-25T06:20:00Z".parse().unwrap()); // 14:20: hour 13 has ended, its grace too
    call("deepseek-v3").await;
    call("deepseek-v3").await;
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    t.app.roll_bill().await.unwrap().unwrap();
    let pool = t.db.pool().await;
    let before = bill(&pool).await;
    assert_eq!(before[0].3, "closed", "{before:?}");
    let ledger_before: (Decimal, i64) =
        sqlx::query_as("SELECT sum(cost_total), count(*) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();

    // The corrected book: the built-in one.
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, BUILTIN_BOOK).unwrap();
    let args = [
        "reprice",
        "--from",
        "2026-11-25T13",
        "--to",
        "2026-11-25T15",
        "--prices",
        prices.to_str().unwrap(),
        "--database-url",
        &t.db.url,
    ];
    let (code, out, err) = run(&args).await;
    assert_eq!(code, Some(0), "{err}");
    let summary: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["calls"], 4, "{summary}");
    assert_eq!(summary["adjusted"], 3, "{summary}");

    // One adjustment per v3 call: the delta is exactly the output tokens at 8 instead of 80 per million.
    let adjustments: Vec<(uuid::Uuid, Decimal, Decimal, Decimal, i64)> = sqlx::query_as(
        "SELECT a.call_id, a.old_cost, a.new_cost, a.delta, l.output_tokens
         FROM cost_adjustments a JOIN usage_ledger l USING (call_id) ORDER BY a.adjustment_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(adjustments.len(), 3);
    let million = Decimal::from(1_000_000);
    let mut delta = Decimal::ZERO;
    for (_, old, new, d, output) in &adjustments {
        assert_eq!(*d, new - old);
        assert_eq!(*d, -Decimal::from(*output) * Decimal::from(72) / million);
        delta += d;
    }
    assert_eq!(
        summary["delta"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        delta
    );

    // The ledger is untouched, and still append-only.
    let ledger_after: (Decimal, i64) =
        sqlx::query_as("SELECT sum(cost_total), count(*) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ledger_after, ledger_before);
    let err = sqlx::query("UPDATE usage_ledger SET cost_total = 0")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");

    // The bill: both hours corrected, each revision bumped once the changed hour closes again.
    clock.set("2026-11-25T07:20:00Z".parse().unwrap()); // 15:20: hour 14 closes too
    t.app.roll_bill().await.unwrap().unwrap();
    t.app.roll_bill().await.unwrap().unwrap();
    let after = bill(&pool).await;
    let v3 = |rows: &[(String, String, i32, String, Decimal, Decimal)], hh: &str| {
        rows.iter()
            .find(|r| r.0 == hh && r.1 == "deepseek-v3")
            .cloned()
            .unwrap()
    };
    let (h13, h14) = (v3(&after, "13"), v3(&after, "14"));
    assert_eq!(
        (h13.2, h13.3.as_str()),
        (1, "closed"),
        "hour 13 closed again, revision 1"
    );
    assert_eq!(h13.4, v3(&before, "13").4 + h13.5);
    assert_eq!(h13.5 + h14.5, delta);
    let r1 = after.iter().find(|r| r.1 == "deepseek-r1").unwrap();
    assert_eq!(r1.5, Decimal::ZERO, "r1 was priced right");

    // The report: the corrected total and the correction.
    let (code, json, err) = run(&[
        "report",
        "--from",
        "2026-11-25T13",
        "--to",
        "2026-11-25T15",
        "--by",
        "model",
        "--format",
        "json",
        "--database-url",
        &t.db.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let total: Decimal = report["total"]["cost_total"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let correction: Decimal = report["total"]["adjustment_yuan"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, ledger_before.0 + delta);
    assert_eq!(correction, delta);

    // Again: nothing to change, no revision moves.
    let (code, out, err) = run(&args).await;
    assert_eq!(code, Some(0), "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (again["adjusted"].as_u64(), again["hours"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    t.app.roll_bill().await.unwrap().unwrap();
    assert_eq!(bill(&pool).await, after);

    // Without --prices it refuses to guess.
    let (code, _, err) = run(&[
        "reprice",
        "--from",
        "2026-11-25T13",
        "--to",
        "2026-11-25T15",
        "--database-url",
        &t.db.url,
    ])
    .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("--prices: required"), "{err}");
    t.audit(&[]).await;
}
