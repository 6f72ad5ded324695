//! deepseek-meter: a metering and cost-accounting sidecar for DeepSeek models on Alibaba Cloud Model Studio.
//!
//! Where a streamed byte goes: the proxy listener's accept loop ([`server`]) hands each request to
//! [`proxy::Proxy::handle`], which forwards it to the one configured upstream ([`proxy::upstream`]). Each
//! upstream read goes to the client unchanged in [`proxy::body::MeteredBody`], which also feeds it to the
//! usage tap ([`usage`]: pure parsing of both protocols, no I/O). When the body ends (or the client leaves),
//! the tap's report becomes the call's facts, and [`meter::Meter::finish`] — the one exit of every metered
//! call — reads the [`clock`] once and computes the billing hour and the money ([`pricing`]: pure, exact
//! decimals), counts it in [`metrics`], logs it, and hands the complete [`record::CallRecord`] to the
//! [`journal`] (durable local log). The [`shipper`] reads the journal back through its cursor and inserts
//! into Postgres ([`ledger`]: all SQL).
//!
//! Around that path: [`state`] (the handles every request shares), [`error`] (our own answers, in the
//! caller's shape), [`admin`] (metrics, health, ledger reads), [`config`] (every setting declared once),
//! [`otel`] (OpenTelemetry spans of calls, off by default), [`sim`] (the built-in DashScope simulator), and [`app`], the composition root that wires it all,
//! is imported by nothing (only by `main.rs`, the doorway), and owns the shutdown order.

pub mod admin;
pub mod app;
pub mod auth;
pub mod billing;
pub mod budget;
pub mod calendar;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod journal;
pub mod keys;
pub mod ledger;
pub mod meter;
pub mod metrics;
pub mod models;
pub mod net;
pub mod otel;
pub mod pricing;
pub mod proxy;
pub mod reconcile;
pub mod record;
pub mod server;
pub mod shipper;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod usage;
pub mod webhook;
