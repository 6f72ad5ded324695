//! deepseek-meter: a metering and cost-accounting sidecar for DeepSeek models on Alibaba Cloud Model Studio.
//!
//! The data path: [`proxy`] (HTTP in and out) → [`usage`] (pure parsing of both protocols) →
//! [`record`] (one record per call, priced by [`pricing`]) → [`journal`] (durable local log) → [`ledger`]
//! (Postgres). [`sim`] is the built-in DashScope
//! simulator; [`app`] is the composition root and owns shutdown; [`config`] the settings.

pub mod admin;
pub mod app;
pub mod config;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod pricing;
pub mod proxy;
pub mod record;
pub mod sim;
pub mod usage;
