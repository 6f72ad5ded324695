//! `serve_settings!`: every setting of `serve` declared once — its config key (the flag is the key in
//! kebab case), environment variable, default, help and parser — and from that one table the clap flags,
//! the config-file keys, and the resolution `flag > env > file > default` with the one-line error.

/// How a setting's default reads in `--help` and the README: the text a user would type.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    pub key: &'static str,
    pub env: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

macro_rules! serve_settings {
    (
        $(
            #[doc = $help:literal]
            $name:ident: $ty:ty = $default:expr, env $env:literal, parse $parse:path
                $(, clap($($clap:tt)*))? ;
        )*
    ) => {
        /// Flags of `serve`. Each is a string here, so that "not given" falls through to the config file and
        /// every value, whatever its source, goes through the same parser.
        #[derive(Debug, Default, clap::Args)]
        pub struct ServeArgs {
            $(
                #[doc = $help]
                #[arg(long, env = $env $(, $($clap)*)?)]
                pub $name: Option<String>,
            )*
            /// API key injected upstream when the client sent no Authorization header.
            #[arg(skip)]
            pub dashscope_api_key: Option<String>,
            /// `DASHSCOPE_API_KEY_FILE`: a file holding that key (the Kubernetes and systemd credentials way).
            #[arg(skip)]
            pub dashscope_api_key_file: Option<String>,
        }

        /// Keys of the TOML config file. Unknown keys are an error: a typo must not silently fall back to a
        /// default.
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $name: Option<toml::Value>,)*
            /// `[[budget]]` tables (`crate::budget::parse`): not flags, only the file has them.
            pub budget: Option<toml::Value>,
            /// `[[api_key]]` tables (`crate::keys::parse`).
            pub api_key: Option<toml::Value>,
            /// `[reconcile]` (`crate::reconcile::parse`).
            pub reconcile: Option<toml::Value>,
        }

        /// Every setting of `serve`, parsed and validated.
        #[derive(Debug, Clone)]
        pub struct ServeValues {
            $(pub $name: $ty,)*
        }

        /// The table, for documentation and tests.
        pub const SERVE_SETTINGS: &[$crate::config::table::SettingInfo] = &[
            $($crate::config::table::SettingInfo {
                key: stringify!($name),
                env: $env,
                default: $default,
                help: $help,
            },)*
        ];

        impl ServeValues {
            /// Flag or environment (clap has merged those two) > file > default, each through its parser.
            pub fn resolve(args: &ServeArgs, file: &FileConfig) -> Result<ServeValues, SettingError> {
                Ok(ServeValues {
                    $(
                        $name: {
                            let raw = match (&args.$name, &file.$name) {
                                (Some(v), _) => Some(v.clone()),
                                (None, Some(v)) => Some($crate::config::table::file_text(v)),
                                (None, None) => $default.map(str::to_owned),
                            };
                            $parse(raw.as_deref())
                                .map_err(|problem| SettingError::new(stringify!($name), $env, problem))?
                        },
                    )*
                })
            }
        }
    };
}

/// A config-file value as the text a flag would carry (`8787`, `true`, `127.0.0.1:1`).
pub fn file_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
