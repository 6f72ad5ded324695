//! The one integration-test binary (one link of the crate, not ten): every suite is a module here.
//!
//! Tests go through the front door — the real app on port 0 or the real binary, real HTTP, real Postgres
//! (a fresh database per test, from `DATABASE_URL`'s server, dropped at the end) — with the helpers in
//! [`helpers`]: `TestApp` / `LedgerApp` with verbs, a scripted upstream over raw TCP, the binary as a child.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod helpers;

mod bill;
mod billing_time;
mod billing_truth;
mod budgets;
mod cli;
mod dashboards;
mod delivery;
mod durability;
mod faults;
mod fuzz_regressions;
mod ledger;
mod openai_sdk;
mod otel;
mod platform;
mod proxy;
mod reconcile;
mod reports;
mod reprice;
mod scale;
mod secrets;
mod simulator;
mod usage_tap;
mod usage_tap_2026;

/// The oracles the fuzz targets use, shared so that CI replays the committed inputs through the same checks.
#[path = "../../fuzz/checks.rs"]
mod fuzz_checks;
