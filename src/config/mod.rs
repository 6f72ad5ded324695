//! Command line and settings.
//!
//! Every setting of `serve` is declared once, in the table below ([`table`] generates the flags, the file
//! keys and the resolution from it). Every setting resolves in one order: flag, else environment variable,
//! else the TOML config file (`--config`), else the default. Resolution and validation happen once, at
//! startup; a bad value stops the process with one line that names the setting (flag, variable and file
//! key), never a panic or a stack of errors. The names here are part of the contract (DESIGN §2):
//! dashboards, deploy scripts and users type them.

mod parse;
#[macro_use]
pub mod table;

use parse::*;

use crate::budget::coordinated::Coordination;
use crate::budget::tracker::{Reservation, Unpriced, WhenUnknown};
use crate::budget::Budget;
use crate::journal::{Durability, JournalConfig, OnFull};
use crate::pricing::PriceBook;
use crate::usage::tap::InputConvention;
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "deepseek-meter",
    version,
    about = "Metering and cost-accounting sidecar for DeepSeek on DashScope"
)]
pub struct Cli {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, global = true, env = "METER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, env = "METER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: proxy listener and admin listener.
    Serve(Box<ServeArgs>),
    /// Run the DashScope simulator alone (benchmarks, demos).
    Sim(SimArgs),
    /// Print the effective price book (`--prices`, `--billing-timezone`, as `serve` would read them).
    Prices(Box<ServeArgs>),
    /// Create the database if missing and apply the migrations (`--database-url`, as `serve` would read it).
    Migrate(Box<ServeArgs>),
    /// Print the hourly bill (`--database-url` and `--billing-timezone` as `serve` would read them).
    Report(Box<ReportArgs>),
    /// Compare the ledger with the platform's bill-detail export (`[reconcile]` and `[[api_key]]` of the
    /// config file, the database and billing time zone as `serve` reads them).
    Reconcile(Box<ReconcileArgs>),
    /// Apply a corrected price book (`--prices FILE`, required) to a past period as adjustments: the ledger is
    /// never edited; the hourly bill and its reports include the corrections.
    Reprice(Box<RepriceArgs>),
}

/// Flags of `reprice` (with `--prices`, `--database-url` and `--billing-timezone` of `serve`).
#[derive(Debug, Default, Args)]
pub struct RepriceArgs {
    /// Start of the period (as `report --from`).
    #[arg(long)]
    pub from: String,
    /// End of the period, exclusive (as `report --to`).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `reconcile`.
#[derive(Debug, Default, Args)]
pub struct ReconcileArgs {
    /// The platform's hourly bill-detail CSV export, imported before comparing (idempotent).
    #[arg(long)]
    pub bill: Option<PathBuf>,
    /// Start of the period (as `report --from`). Default: the first hour of the export.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the period, exclusive (as `report --to`). Default: the end of the export's last hour.
    #[arg(long)]
    pub to: Option<String>,
    /// table, csv or json.
    #[arg(long, value_enum, default_value_t = crate::billing::report::Format::Table)]
    pub format: crate::billing::report::Format,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `report`; the settings of `serve` (database, billing time zone) resolve as for `serve`.
#[derive(Debug, Default, Args)]
pub struct ReportArgs {
    /// Start of the window: RFC 3339, or a local time in the billing zone (`2026-11-25T13`, `2026-11-25`,
    /// `2026-11`). Default: the start of today in the billing zone.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (exclusive), written as `--from`. Default: the end of the running hour.
    #[arg(long)]
    pub to: Option<String>,
    /// Grouping columns: any of model, project, key (comma-separated).
    #[arg(long)]
    pub by: Option<String>,
    /// hour, day or month (days and months are calendar windows in the billing zone).
    #[arg(long)]
    pub granularity: Option<String>,
    /// table, csv, json or html.
    #[arg(long, value_enum, default_value_t = crate::billing::report::Format::Table)]
    pub format: crate::billing::report::Format,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of `sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// Delay before the first event of a stream (or before a non-streaming answer).
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Delay between stream events.
    #[arg(long, default_value_t = 0)]
    pub chunk_interval_ms: u64,
    /// Seed for the generated text; the same seed and request give the same response.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Default number of text chunks per answer (and per chain of thought when thinking).
    #[arg(long, default_value_t = 16)]
    pub chunks: u32,
    /// Keep the platform's bill of the calls served (`GET /sim/bill.csv`) and write it here at shutdown.
    #[arg(long)]
    pub bill_export: Option<PathBuf>,
    /// How long after a call the platform books it (a call this close to the end of an hour is billed in
    /// the next one).
    #[arg(long, default_value_t = 0)]
    pub booking_delay_ms: u64,
}

serve_settings! {
    /// Proxy listen address.
    listen: SocketAddr = Some("127.0.0.1:8787"), env "METER_LISTEN", parse address;
    /// Admin listen address (metrics, health, reports).
    admin_listen: SocketAddr = Some("127.0.0.1:9787"), env "METER_ADMIN_LISTEN", parse address;
    /// Upstream base URL, or `sim` for the built-in simulator. A per-workspace host (`https://{WorkspaceId}.cn-beijing.maas.aliyuncs.com`) gives every call its workspace.
    upstream: Upstream = Some("https://dashscope.aliyuncs.com"), env "METER_UPSTREAM", parse upstream;
    /// Connect to this address (`IP:PORT`) instead of resolving the upstream's host (a private endpoint); the URL, Host header and TLS name stay the upstream's.
    upstream_address: Option<SocketAddr> = None, env "METER_UPSTREAM_ADDRESS", parse optional_address;
    /// What the Anthropic API's `input_tokens` counts: `excludes-cache` (Anthropic's own convention: cache reads and writes come on top) or `includes-cache`.
    anthropic_input_tokens: InputConvention = Some("excludes-cache"), env "METER_ANTHROPIC_INPUT_TOKENS", parse choice;
    /// Bearer token required on the admin listener.
    admin_token: Option<String> = None, env "METER_ADMIN_TOKEN", parse secret,
        clap(hide_env_values = true);
    /// A file holding the admin token (instead of `--admin-token`: no secret on a command line or in the environment).
    admin_token_file: Option<PathBuf> = None, env "METER_ADMIN_TOKEN_FILE", parse optional_path;
    /// Token a client without its own `Authorization` sends (`X-Meter-Client-Token`) to use the injected key.
    client_token: Option<String> = None, env "METER_CLIENT_TOKEN", parse secret,
        clap(hide_env_values = true);
    /// A file holding the client token (instead of `--client-token`).
    client_token_file: Option<PathBuf> = None, env "METER_CLIENT_TOKEN_FILE", parse optional_path;
    /// Largest request body accepted, in bytes.
    max_body_bytes: u64 = Some("8388608"), env "METER_MAX_BODY_BYTES", parse positive;
    /// Upstream connect timeout, in milliseconds.
    connect_timeout_ms: Duration = Some("5000"), env "METER_CONNECT_TIMEOUT_MS", parse millis;
    /// Longest silence allowed from the upstream (before the headers or between body chunks), in milliseconds.
    idle_timeout_ms: Duration = Some("300000"), env "METER_IDLE_TIMEOUT_MS", parse millis;
    /// How long in-flight calls may run after SIGTERM, in milliseconds.
    drain_timeout_ms: Duration = Some("30000"), env "METER_DRAIN_TIMEOUT_MS", parse millis;
    /// Most open client connections on the proxy listener.
    max_connections: u64 = Some("10000"), env "METER_MAX_CONNECTIONS", parse positive;
    /// Time a client has to send a request head, in milliseconds (slow-client protection).
    header_read_timeout_ms: Duration = Some("10000"), env "METER_HEADER_READ_TIMEOUT_MS", parse millis;
    /// Price-book file (TOML); the built-in book when absent.
    prices: Option<PathBuf> = None, env "METER_PRICES", parse optional_path;
    /// Postgres URL of the ledger.
    database_url: String = Some(DEFAULT_DATABASE_URL), env "DATABASE_URL", parse postgres_url;
    /// Directory of the local journal.
    journal_dir: PathBuf = Some("./data/journal"), env "METER_JOURNAL_DIR", parse path;
    /// `batched` (fsync every group-commit window) or `strict` (fsync before a call's last byte).
    durability: Durability = Some("batched"), env "METER_DURABILITY", parse choice;
    /// Group-commit window of the journal, in milliseconds.
    group_commit_ms: Duration = Some("10"), env "METER_GROUP_COMMIT_MS", parse millis;
    /// Size cap of the journal, in bytes.
    journal_max_bytes: u64 = Some("1073741824"), env "METER_JOURNAL_MAX_BYTES", parse positive;
    /// At the journal's cap: `refuse` new calls (503) or `serve` them unrecorded (counted).
    on_journal_full: OnFull = Some("refuse"), env "METER_ON_JOURNAL_FULL", parse choice;
    /// Billing time zone (IANA name); billing hours are its clock hours.
    billing_timezone: Tz = Some("Asia/Shanghai"), env "METER_BILLING_TIMEZONE", parse timezone;
    /// How long an ended billing hour stays `provisional` before it closes (`500ms`, `30s`, `10m`, `1h`).
    billing_grace: Duration = Some("10m"), env "METER_BILLING_GRACE", parse duration;
    /// Directory that receives each closed hour's report (JSON and CSV, named by hour and revision).
    report_dir: Option<PathBuf> = None, env "METER_REPORT_DIR", parse optional_path;
    /// URL that receives each closed hour's report as a JSON POST (with an `Idempotency-Key`).
    report_webhook: Option<http::Uri> = None, env "METER_REPORT_WEBHOOK", parse optional_url,
        clap(hide_env_values = true);
    /// URL that receives each budget threshold crossing as a JSON POST (with an `Idempotency-Key`).
    alert_webhook: Option<http::Uri> = None, env "METER_ALERT_WEBHOOK", parse optional_url,
        clap(hide_env_values = true);
    /// How `block` budgets admit calls: `worst-case` (reserve each call's worst case) or `none` (while spent < limit).
    budget_reservation: Reservation = Some("worst-case"), env "METER_BUDGET_RESERVATION", parse choice;
    /// A `block` budget whose spent is unknown (database away): `open` (serve, count, warn) or `closed` (503).
    budget_when_database_down: WhenUnknown = Some("open"), env "METER_BUDGET_WHEN_DATABASE_DOWN", parse choice;
    /// A call to a model without a price under a `block` budget: `refuse` it (the budget cannot bound it) or `admit` it (served, counted in a metric, not in spent).
    budget_unpriced: Unpriced = Some("refuse"), env "METER_BUDGET_UNPRICED", parse choice;
    /// How sidecars share `block` budgets: `local` (reserve in memory) or `postgres` (one round trip per call, exact).
    budget_coordination: Coordination = Some("local"), env "METER_BUDGET_COORDINATION", parse choice;
    /// How long the ledger keeps calls (`400d`): whole monthly partitions past it are dropped (the bill keeps their sums). Empty: keep everything.
    ledger_retention: Option<chrono::Duration> = None, env "METER_LEDGER_RETENTION", parse retention;
    /// An OpenTelemetry collector's OTLP/HTTP endpoint (`http://127.0.0.1:4318`): one span per metered call goes to its `/v1/traces`, and the upstream gets the call's `traceparent`. Empty: no export, nothing added to calls.
    otlp_endpoint: Option<http::Uri> = None, env "OTEL_EXPORTER_OTLP_ENDPOINT", parse optional_url,
        clap(hide_env_values = true);
    /// The traces endpoint itself, used as given (instead of `--otlp-endpoint` + `/v1/traces`).
    otlp_traces_endpoint: Option<http::Uri> = None, env "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", parse optional_url,
        clap(hide_env_values = true);
    /// Headers of every export (`key=value,…`, values percent-encoded): a collector's credentials.
    otlp_headers: Vec<(http::HeaderName, http::HeaderValue)> = None, env "OTEL_EXPORTER_OTLP_HEADERS", parse otlp_headers,
        clap(hide_env_values = true);
    /// The OTLP transport: `http/protobuf` (the only one supported).
    otlp_protocol: crate::otel::Protocol = Some("http/protobuf"), env "OTEL_EXPORTER_OTLP_PROTOCOL", parse otlp_protocol;
    /// How long one export may take, in milliseconds (the spans of a batch not taken by then are lost, counted).
    otlp_timeout_ms: Duration = Some("10000"), env "OTEL_EXPORTER_OTLP_TIMEOUT", parse millis;
    /// How long a batch of spans waits for more after its first, in milliseconds (a batch also goes at 512 spans).
    otel_bsp_schedule_delay: Duration = Some("500"), env "OTEL_BSP_SCHEDULE_DELAY", parse millis;
    /// The spans' `service.name`.
    otel_service_name: String = Some("deepseek-meter"), env "OTEL_SERVICE_NAME", parse text;
    /// More resource attributes of the spans (`key=value,…`, values percent-encoded).
    otel_resource_attributes: Vec<(String, String)> = None, env "OTEL_RESOURCE_ATTRIBUTES", parse resource_attributes;
    /// Also give spans the deprecated `gen_ai.system` beside `gen_ai.provider.name` (backends on older GenAI conventions).
    otel_gen_ai_system: bool = Some("false"), env "METER_OTEL_GEN_AI_SYSTEM", parse flag,
        clap(num_args = 0..=1, default_missing_value = "true", require_equals = true);
    /// Do not create or migrate the database at startup.
    no_migrate: bool = Some("false"), env "METER_NO_MIGRATE", parse flag,
        clap(num_args = 0..=1, default_missing_value = "true", require_equals = true);
}

/// Where calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in simulator, started in-process on a loopback port.
    Sim,
    /// A base URL: scheme and authority only (`https://dashscope.aliyuncs.com`).
    Url(http::Uri),
}

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    /// Connect here instead of resolving the upstream's host.
    pub upstream_address: Option<SocketAddr>,
    pub anthropic_input_tokens: InputConvention,
    pub admin_token: Option<String>,
    pub dashscope_api_key: Option<String>,
    /// Required (`X-Meter-Client-Token`) from clients that use the injected key, when set.
    pub client_token: Option<String>,
    /// Read with its `effective_from` dates at midnight in the billing time zone.
    pub prices: PriceBook,
    /// `None`: records stay in memory (tests, embedding).
    pub ledger: Option<LedgerSettings>,
    pub billing_timezone: Tz,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `[[budget]]` tables of the config file.
    pub budgets: Vec<Budget>,
    pub budget_reservation: Reservation,
    pub budget_when_database_down: WhenUnknown,
    pub budget_unpriced: Unpriced,
    pub budget_coordination: Coordination,
    /// `[[api_key]]` tables of the config file.
    pub api_keys: crate::keys::ApiKeys,
    /// The `[reconcile]` table of the config file.
    pub reconcile: crate::reconcile::ReconcileConfig,
    pub alert_webhook: Option<http::Uri>,
    /// `--otlp-endpoint` and the `OTEL_*` settings (`None`: no spans).
    pub otel: Option<crate::otel::OtelSettings>,
}

impl Settings {
    /// Resolves the flags (and environment) of `serve` over the config file and the defaults.
    pub fn resolve(args: ServeArgs, file: FileConfig) -> Result<Settings, SettingError> {
        let v = ServeValues::resolve(&args, &file)?;
        let prices = load_prices(v.prices.as_deref(), v.billing_timezone)?;
        let budgets = crate::budget::parse(file.budget.as_ref()).map_err(SettingError::budget)?;
        let api_keys =
            crate::keys::parse(file.api_key.as_ref()).map_err(|problem| SettingError {
                key: "api_key",
                env: "",
                problem,
            })?;
        let reconcile =
            crate::reconcile::parse(file.reconcile.as_ref()).map_err(|problem| SettingError {
                key: "reconcile",
                env: "",
                problem,
            })?;
        let admin_token = match (&v.admin_token, &v.admin_token_file) {
            (Some(_), Some(_)) => Err("give --admin-token or its file, not both".to_owned()),
            (token, None) => Ok(token.clone()),
            (None, Some(path)) => read_secret(path).map(Some),
        }
        .map_err(|p| SettingError::new("admin_token_file", "METER_ADMIN_TOKEN_FILE", p))?;
        let client_token = match (&v.client_token, &v.client_token_file) {
            (Some(_), Some(_)) => Err("give --client-token or its file, not both".to_owned()),
            (token, None) => Ok(token.clone()),
            (None, Some(path)) => read_secret(path).map(Some),
        }
        .map_err(|p| SettingError::new("client_token_file", "METER_CLIENT_TOKEN_FILE", p))?;
        let dashscope_api_key = match (
            args.dashscope_api_key.as_deref().filter(|k| !k.is_empty()),
            args.dashscope_api_key_file
                .as_deref()
                .filter(|f| !f.is_empty()),
        ) {
            (Some(_), Some(_)) => {
                Err("set DASHSCOPE_API_KEY or DASHSCOPE_API_KEY_FILE, not both".to_owned())
            }
            (key, None) => Ok(key.map(str::to_owned)),
            (None, Some(path)) => read_secret(Path::new(path)).map(Some),
        }
        .map_err(|p| SettingError::env_only("DASHSCOPE_API_KEY_FILE", p))?;
        // The injected key is lent only on loopback, or to clients with the client token.
        if dashscope_api_key.is_some() && !v.listen.ip().is_loopback() && client_token.is_none() {
            return Err(SettingError::new(
                "listen",
                "METER_LISTEN",
                format!(
                    "{} is not a loopback address and DASHSCOPE_API_KEY is set: anyone who reaches it would use \
                     the key; set --client-token (METER_CLIENT_TOKEN) too, or listen on 127.0.0.1",
                    v.listen
                ),
            ));
        }
        // --upstream-address replaces the resolution of a host name: with nothing to resolve it would be ignored.
        if v.upstream_address.is_some() {
            let named = match &v.upstream {
                Upstream::Url(u) => u.host().is_some_and(|h| {
                    h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_err()
                }),
                Upstream::Sim => false,
            };
            if !named {
                return Err(SettingError::new(
                    "upstream_address",
                    "METER_UPSTREAM_ADDRESS",
                    "applies only to an --upstream named by a host name (it replaces that name's resolution)"
                        .into(),
                ));
            }
        }
        // The admin API (calls, bills, budgets) is open only on loopback; anywhere else it needs the token.
        if !v.admin_listen.ip().is_loopback() && admin_token.is_none() {
            return Err(SettingError::new(
                "admin_listen",
                "METER_ADMIN_LISTEN",
                format!(
                    "{} is not a loopback address: set --admin-token (METER_ADMIN_TOKEN) too, or listen on 127.0.0.1",
                    v.admin_listen
                ),
            ));
        }
        let otel = otel_settings(&v)?;
        Ok(Settings {
            otel,
            budgets,
            budget_reservation: v.budget_reservation,
            budget_when_database_down: v.budget_when_database_down,
            budget_unpriced: v.budget_unpriced,
            budget_coordination: v.budget_coordination,
            api_keys,
            reconcile,
            alert_webhook: v.alert_webhook,
            ledger: Some(LedgerSettings {
                database_url: v.database_url,
                journal: JournalConfig {
                    dir: v.journal_dir,
                    durability: v.durability,
                    group_commit: v.group_commit_ms,
                    segment_bytes: JOURNAL_SEGMENT_BYTES,
                    max_bytes: v.journal_max_bytes,
                    on_full: v.on_journal_full,
                },
                migrate: !v.no_migrate,
                ship_deadline: SHIP_DEADLINE,
                billing_grace: v.billing_grace,
                report_dir: v.report_dir,
                report_webhook: v.report_webhook,
                retention: v.ledger_retention,
            }),
            billing_timezone: v.billing_timezone,
            listen: v.listen,
            admin_listen: v.admin_listen,
            upstream: v.upstream,
            upstream_address: v.upstream_address,
            anthropic_input_tokens: v.anthropic_input_tokens,
            admin_token,
            dashscope_api_key,
            client_token,
            prices,
            max_body_bytes: usize::try_from(v.max_body_bytes).unwrap_or(usize::MAX),
            connect_timeout: v.connect_timeout_ms,
            idle_timeout: v.idle_timeout_ms,
            drain_timeout: v.drain_timeout_ms,
            max_connections: usize::try_from(v.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: v.header_read_timeout_ms,
        })
    }

    /// The defaults, for tests and embedding: both listeners on ephemeral loopback ports, the simulator
    /// upstream, records in memory.
    pub fn for_tests() -> Settings {
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: Some("sim".into()),
            ..ServeArgs::default()
        };
        match Settings::resolve(args, FileConfig::default()) {
            Ok(s) => Settings { ledger: None, ..s },
            Err(e) => unreachable!("the defaults are valid: {e}"),
        }
    }
}

/// The durable ledger: journal on local disk, shipped into Postgres.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub database_url: String,
    pub journal: JournalConfig,
    /// Create the database and apply migrations before shipping (not with `--no-migrate`).
    pub migrate: bool,
    /// How long shutdown keeps shipping the journal into Postgres.
    pub ship_deadline: Duration,
    /// How long an ended billing hour stays `provisional` (`crate::billing::roll`).
    pub billing_grace: Duration,
    /// Where closed hours' reports are delivered (`crate::billing::delivery`).
    pub report_dir: Option<PathBuf>,
    pub report_webhook: Option<http::Uri>,
    /// `--ledger-retention`: how long the ledger keeps calls (`None`: forever).
    pub retention: Option<chrono::Duration>,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://localhost/deepseek_meter";
/// A journal segment is closed past this size (and deleted once shipped).
pub const JOURNAL_SEGMENT_BYTES: u64 = 64 << 20;
/// How long shutdown keeps shipping (step 5 of the shutdown order).
pub const SHIP_DEADLINE: Duration = Duration::from_secs(10);

/// A setting that cannot be used. Displays as one line naming the flag, variable and file key (or, for a
/// `[[budget]]` table, the budget).
#[derive(Debug)]
pub struct SettingError {
    pub key: &'static str,
    pub env: &'static str,
    pub problem: String,
}

impl SettingError {
    pub fn new(key: &'static str, env: &'static str, problem: String) -> SettingError {
        SettingError { key, env, problem }
    }

    /// A setting that is only an environment variable (`DASHSCOPE_API_KEY_FILE`).
    pub fn env_only(env: &'static str, problem: String) -> SettingError {
        SettingError {
            key: "",
            env,
            problem,
        }
    }

    /// A `[[budget]]` table of the config file that cannot be used.
    pub fn budget(problem: String) -> SettingError {
        SettingError {
            key: "budget",
            env: "",
            problem,
        }
    }
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            return write!(f, "invalid setting {}: {}", self.env, self.problem);
        }
        if self.env.is_empty() {
            return write!(
                f,
                "invalid [[{}]] in the config file: {}",
                self.key, self.problem
            );
        }
        write!(
            f,
            "invalid setting --{} ({}, config key `{}`): {}",
            self.key.replace('_', "-"),
            self.env,
            self.key,
            self.problem
        )
    }
}

impl std::error::Error for SettingError {}

/// The config file could not be read or has an unknown key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config file {path}: {problem}")]
pub struct ConfigFileError {
    pub path: String,
    pub problem: String,
}

pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigFileError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans lines (it quotes the source); its first line names the key. Where: the line
        // and column of the span's start.
        let what = e.message().lines().next().unwrap_or("parse error");
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigFileError {
            path: path.display().to_string(),
            problem: format!("{}{what}", at.unwrap_or_default()),
        }
    })
}

/// The price book: the built-in one, with a `--prices` file read over it (`crate::pricing::book`), dates at
/// midnight in `timezone`.
/// Errors name the setting and the entry.
pub fn load_prices(path: Option<&Path>, timezone: Tz) -> Result<PriceBook, SettingError> {
    let fail = |problem: String| SettingError::new("prices", "METER_PRICES", problem);
    let Some(path) = path else {
        return PriceBook::builtin_in(timezone).map_err(|e| fail(e.to_string()));
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    PriceBook::with_file(&text, timezone).map_err(|e| fail(format!("{}: {e}", path.display())))
}

// ---- parsers: a setting's text (None: not given and no default) to its value, or the problem ----------

#[cfg(test)]
mod tests;

/// The span export, when an endpoint is set: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, else the base
/// endpoint with `v1/traces` appended (the specification's rule for the two variables).
fn otel_settings(v: &ServeValues) -> Result<Option<crate::otel::OtelSettings>, SettingError> {
    let traces_endpoint = match (&v.otlp_traces_endpoint, &v.otlp_endpoint) {
        (Some(t), _) => t.clone(),
        (None, Some(base)) => {
            let text = base.to_string();
            let joined = format!("{}/v1/traces", text.trim_end_matches('/'));
            joined.parse().map_err(|_| {
                SettingError::new(
                    "otlp_endpoint",
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "with /v1/traces added it is not a URL (give OTEL_EXPORTER_OTLP_TRACES_ENDPOINT instead)"
                        .into(),
                )
            })?
        }
        (None, None) => return Ok(None),
    };
    let mut resource = vec![
        ("service.name".to_owned(), v.otel_service_name.clone()),
        (
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    for (k, val) in &v.otel_resource_attributes {
        if k == "service.name" && v.otel_service_name != "deepseek-meter" {
            continue; // a service name set by OTEL_SERVICE_NAME wins, as the specification says
        }
        resource.retain(|(have, _)| have != k);
        resource.push((k.clone(), val.clone()));
    }
    Ok(Some(crate::otel::OtelSettings {
        traces_endpoint,
        headers: v.otlp_headers.clone(),
        timeout: v.otlp_timeout_ms,
        schedule_delay: v.otel_bsp_schedule_delay,
        resource,
        gen_ai_system: v.otel_gen_ai_system,
    }))
}
