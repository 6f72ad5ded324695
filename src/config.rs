//! Command line and settings.
//!
//! Every setting resolves in one order: flag, else environment variable, else the TOML config file
//! (`--config`), else the default. Resolution and validation happen once, at startup; a bad value stops the
//! process with one line that names the setting (flag, variable and file key), never a panic or a stack of
//! errors. The names here are part of the contract (DESIGN §2): dashboards, deploy scripts and users type them.

use crate::journal::{Durability, JournalConfig, OnFull};
use crate::pricing::{PriceBook, DEFAULT_TIMEZONE};
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
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
    /// Print the effective price book.
    Prices(PricesArgs),
    /// Create the database if missing and apply the migrations.
    Migrate(MigrateArgs),
}

/// Flags of `migrate`.
#[derive(Debug, Default, Args)]
pub struct MigrateArgs {
    /// Postgres URL of the ledger.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Flags of `prices`.
#[derive(Debug, Default, Args)]
pub struct PricesArgs {
    /// Price-book file (TOML); the built-in book when absent.
    #[arg(long, env = "METER_PRICES")]
    pub prices: Option<PathBuf>,
}

/// Flags of `serve`. Each is optional here so that "not given" can fall through to the config file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Proxy listen address.
    #[arg(long, env = "METER_LISTEN")]
    pub listen: Option<String>,
    /// Admin listen address (metrics, health, reports).
    #[arg(long, env = "METER_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Upstream base URL, or `sim` for the built-in simulator.
    #[arg(long, env = "METER_UPSTREAM")]
    pub upstream: Option<String>,
    /// Bearer token required on the admin listener.
    #[arg(long, env = "METER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "METER_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// Upstream connect timeout, in milliseconds.
    #[arg(long, env = "METER_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<String>,
    /// Longest silence allowed from the upstream (before the headers or between body chunks), in milliseconds.
    #[arg(long, env = "METER_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<String>,
    /// How long in-flight calls may run after SIGTERM, in milliseconds.
    #[arg(long, env = "METER_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<String>,
    /// Most open client connections on the proxy listener.
    #[arg(long, env = "METER_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Time a client has to send a request head, in milliseconds (slow-client protection).
    #[arg(long, env = "METER_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<String>,
    /// Price-book file (TOML); the built-in book when absent.
    #[arg(long, env = "METER_PRICES")]
    pub prices: Option<PathBuf>,
    /// Postgres URL of the ledger.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the local journal.
    #[arg(long, env = "METER_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// `batched` (fsync every group-commit window) or `strict` (fsync before a call's last byte).
    #[arg(long, env = "METER_DURABILITY")]
    pub durability: Option<String>,
    /// Group-commit window of the journal, in milliseconds.
    #[arg(long, env = "METER_GROUP_COMMIT_MS")]
    pub group_commit_ms: Option<String>,
    /// Size cap of the journal, in bytes.
    #[arg(long, env = "METER_JOURNAL_MAX_BYTES")]
    pub journal_max_bytes: Option<String>,
    /// At the journal's cap: `refuse` new calls (503) or `serve` them unrecorded (counted).
    #[arg(long, env = "METER_ON_JOURNAL_FULL")]
    pub on_journal_full: Option<String>,
    /// Billing time zone (IANA name); billing hours are its clock hours.
    #[arg(long, env = "METER_BILLING_TIMEZONE")]
    pub billing_timezone: Option<String>,
    /// Do not create or migrate the database at startup.
    #[arg(long, env = "METER_NO_MIGRATE")]
    pub no_migrate: bool,
    /// API key injected upstream when the client sent no Authorization header.
    #[arg(skip)]
    pub dashscope_api_key: Option<String>,
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
}

/// Keys of the TOML config file. Unknown keys are an error: a typo must not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub admin_token: Option<String>,
    pub prices: Option<PathBuf>,
    pub database_url: Option<String>,
    pub journal_dir: Option<PathBuf>,
    pub durability: Option<String>,
    pub group_commit_ms: Option<u64>,
    pub journal_max_bytes: Option<u64>,
    pub on_journal_full: Option<String>,
    pub billing_timezone: Option<String>,
    pub no_migrate: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
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
    pub admin_token: Option<String>,
    pub dashscope_api_key: Option<String>,
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
}

impl Settings {
    /// Defaults for tests and embedding: both listeners on ephemeral loopback ports, simulator upstream.
    pub fn for_tests() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: Upstream::Sim,
            admin_token: None,
            dashscope_api_key: None,
            prices: PriceBook::builtin(),
            ledger: None,
            billing_timezone: DEFAULT_TIMEZONE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S),
            drain_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The durable ledger: journal on local disk, shipped into Postgres.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub database_url: String,
    pub journal: JournalConfig,
    /// Create the database and apply migrations before shipping (not with `--no-migrate`).
    pub migrate: bool,
    /// How long shutdown keeps shipping the journal into Postgres.
    pub ship_deadline: Duration,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://localhost/deepseek_meter";
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 1 << 30;

pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// DashScope's own stream timeout is 180 s or more (`x-dashscope-timeout`); a thinking model can be silent
/// for a long time before its first token, so the idle timeout is generous.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 300;

/// A setting that cannot be used. Displays as one line naming the flag, variable and file key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {flag} ({env}, config key `{key}`): {problem}")]
pub struct SettingError {
    pub flag: &'static str,
    pub env: &'static str,
    pub key: &'static str,
    pub problem: String,
}

/// The config file could not be read or has an unknown key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config file {path}: {problem}")]
pub struct ConfigFileError {
    pub path: String,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigFileError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError {
        path: path.display().to_string(),
        // toml's message spans lines (it quotes the source); the first line names the key.
        problem: e
            .message()
            .lines()
            .next()
            .unwrap_or("parse error")
            .to_owned(),
    })
}

/// Resolves flag > env (clap has already merged those two) > file > default, and validates.
pub fn resolve(args: ServeArgs, file: FileConfig) -> Result<Settings, ConfigError> {
    let listen = addr(
        "--listen",
        "METER_LISTEN",
        "listen",
        args.listen.or(file.listen),
        "127.0.0.1:8787",
    )?;
    let admin_listen = addr(
        "--admin-listen",
        "METER_ADMIN_LISTEN",
        "admin_listen",
        args.admin_listen.or(file.admin_listen),
        "127.0.0.1:9787",
    )?;
    let upstream_raw = args
        .upstream
        .or(file.upstream)
        .unwrap_or_else(|| "https://dashscope.aliyuncs.com".into());
    let upstream = parse_upstream(&upstream_raw).map_err(|problem| SettingError {
        flag: "--upstream",
        env: "METER_UPSTREAM",
        key: "upstream",
        problem,
    })?;
    let admin_token = args
        .admin_token
        .or(file.admin_token)
        .filter(|t| !t.is_empty());
    let prices = load_prices(args.prices.or(file.prices).as_deref())?;
    let max_body_bytes = number(
        "--max-body-bytes",
        "METER_MAX_BODY_BYTES",
        "max_body_bytes",
        args.max_body_bytes,
        file.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES as u64,
    )? as usize;
    let ms = |flag, env, key, arg, file, default| {
        number(flag, env, key, arg, file, default).map(Duration::from_millis)
    };
    let connect_timeout = ms(
        "--connect-timeout-ms",
        "METER_CONNECT_TIMEOUT_MS",
        "connect_timeout_ms",
        args.connect_timeout_ms,
        file.connect_timeout_ms,
        5_000,
    )?;
    let idle_timeout = ms(
        "--idle-timeout-ms",
        "METER_IDLE_TIMEOUT_MS",
        "idle_timeout_ms",
        args.idle_timeout_ms,
        file.idle_timeout_ms,
        DEFAULT_IDLE_TIMEOUT_S * 1000,
    )?;
    let drain_timeout = ms(
        "--drain-timeout-ms",
        "METER_DRAIN_TIMEOUT_MS",
        "drain_timeout_ms",
        args.drain_timeout_ms,
        file.drain_timeout_ms,
        30_000,
    )?;
    let max_connections = number(
        "--max-connections",
        "METER_MAX_CONNECTIONS",
        "max_connections",
        args.max_connections,
        file.max_connections,
        DEFAULT_MAX_CONNECTIONS as u64,
    )? as usize;
    let header_read_timeout = ms(
        "--header-read-timeout-ms",
        "METER_HEADER_READ_TIMEOUT_MS",
        "header_read_timeout_ms",
        args.header_read_timeout_ms,
        file.header_read_timeout_ms,
        10_000,
    )?;
    let database_url = args
        .database_url
        .or(file.database_url)
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(SettingError {
            flag: "--database-url",
            env: "DATABASE_URL",
            key: "database_url",
            problem: "must be a postgres:// URL".into(),
        }
        .into());
    }
    let durability = choice(
        "--durability",
        "METER_DURABILITY",
        "durability",
        args.durability.or(file.durability),
        Durability::Batched,
    )?;
    let on_full = choice(
        "--on-journal-full",
        "METER_ON_JOURNAL_FULL",
        "on_journal_full",
        args.on_journal_full.or(file.on_journal_full),
        OnFull::Refuse,
    )?;
    let group_commit = ms(
        "--group-commit-ms",
        "METER_GROUP_COMMIT_MS",
        "group_commit_ms",
        args.group_commit_ms,
        file.group_commit_ms,
        10,
    )?;
    let max_bytes = number(
        "--journal-max-bytes",
        "METER_JOURNAL_MAX_BYTES",
        "journal_max_bytes",
        args.journal_max_bytes,
        file.journal_max_bytes,
        DEFAULT_JOURNAL_MAX_BYTES,
    )?;
    let tz_raw = args
        .billing_timezone
        .or(file.billing_timezone)
        .unwrap_or_else(|| "Asia/Shanghai".into());
    let billing_timezone: Tz = tz_raw.parse().map_err(|_| SettingError {
        flag: "--billing-timezone",
        env: "METER_BILLING_TIMEZONE",
        key: "billing_timezone",
        problem: format!("{tz_raw:?} is not an IANA time zone like Asia/Shanghai"),
    })?;
    let ledger = LedgerSettings {
        database_url,
        journal: JournalConfig {
            dir: args
                .journal_dir
                .or(file.journal_dir)
                .unwrap_or_else(|| PathBuf::from("./data/journal")),
            durability,
            group_commit,
            segment_bytes: 64 << 20,
            max_bytes,
            on_full,
        },
        migrate: !(args.no_migrate || file.no_migrate.unwrap_or(false)),
        ship_deadline: Duration::from_secs(10),
    };
    Ok(Settings {
        ledger: Some(ledger),
        billing_timezone,
        listen,
        admin_listen,
        upstream,
        admin_token,
        dashscope_api_key: args.dashscope_api_key.filter(|k| !k.is_empty()),
        prices,
        max_body_bytes,
        connect_timeout,
        idle_timeout,
        drain_timeout,
        max_connections,
        header_read_timeout,
    })
}

/// The price book from `--prices`, or the built-in one. Errors name the setting and the entry.
pub fn load_prices(path: Option<&Path>) -> Result<PriceBook, SettingError> {
    let Some(path) = path else {
        return Ok(PriceBook::builtin());
    };
    let fail = |problem: String| SettingError {
        flag: "--prices",
        env: "METER_PRICES",
        key: "prices",
        problem,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    PriceBook::parse(&text, DEFAULT_TIMEZONE).map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn addr(
    flag: &'static str,
    env: &'static str,
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, SettingError> {
    let raw = value.unwrap_or_else(|| default.to_owned());
    raw.parse().map_err(|_| SettingError {
        flag,
        env,
        key,
        problem: format!("{raw:?} is not an address like 127.0.0.1:8787"),
    })
}

fn number(
    flag: &'static str,
    env: &'static str,
    key: &'static str,
    arg: Option<String>,
    file: Option<u64>,
    default: u64,
) -> Result<u64, SettingError> {
    let value = match arg {
        Some(raw) => raw.trim().parse::<u64>().map_err(|_| SettingError {
            flag,
            env,
            key,
            problem: format!("{raw:?} is not a whole non-negative number"),
        })?,
        None => file.unwrap_or(default),
    };
    if value == 0 {
        return Err(SettingError {
            flag,
            env,
            key,
            problem: "must be greater than 0".into(),
        });
    }
    Ok(value)
}

fn choice<T: ValueEnum>(
    flag: &'static str,
    env: &'static str,
    key: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, SettingError> {
    let Some(raw) = value else { return Ok(default) };
    T::from_str(&raw, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_owned())
            .collect();
        SettingError {
            flag,
            env,
            key,
            problem: format!("{raw:?} is not one of {}", names.join(", ")),
        }
    })
}

fn parse_upstream(raw: &str) -> Result<Upstream, String> {
    if raw == "sim" {
        return Ok(Upstream::Sim);
    }
    let uri: http::Uri = raw.parse().map_err(|_| format!("{raw:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{raw:?} must start with http:// or https://, or be `sim`"
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(format!("{raw:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{raw:?} must be a base URL without a path (paths come from the calls)"
        ));
    }
    Ok(Upstream::Url(uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let file = FileConfig {
            listen: Some("127.0.0.1:1".into()),
            admin_listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let args = ServeArgs {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let s = resolve(args, file).unwrap();
        assert_eq!(s.listen.port(), 3);
        assert_eq!(s.admin_listen.port(), 2);
        assert_eq!(
            s.upstream,
            Upstream::Url("https://dashscope.aliyuncs.com".parse().unwrap())
        );
        assert_eq!(s.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn bad_values_name_the_setting_in_one_line() {
        let err = resolve(
            ServeArgs {
                listen: Some("nope".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid setting --listen (METER_LISTEN, config key `listen`): \"nope\" is not an address like 127.0.0.1:8787"
        );
        let err = resolve(
            ServeArgs {
                upstream: Some("ftp://x".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid setting --upstream (METER_UPSTREAM"),
            "{err}"
        );
        let err = resolve(
            ServeArgs {
                idle_timeout_ms: Some("-5".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--idle-timeout-ms") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meter.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:1\"\n").unwrap();
        let err = load_file(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("listn") && !err.contains('\n'), "{err}");
    }
}
