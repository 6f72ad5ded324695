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
    let s = Settings::resolve(args, file).unwrap();
    assert_eq!(s.listen.port(), 3);
    assert_eq!(s.admin_listen.port(), 2);
    assert_eq!(
        s.upstream,
        Upstream::Url("https://dashscope.aliyuncs.com".parse().unwrap())
    );
    assert_eq!(s.max_body_bytes, 8 * 1024 * 1024);
}

#[test]
fn an_upstream_address_needs_a_host_name_to_replace() {
    let with = |upstream: &str| {
        Settings::resolve(
            ServeArgs {
                upstream: Some(upstream.into()),
                upstream_address: Some("127.0.0.1:9".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
    };
    let s = with("https://llm-ws1.cn-beijing.maas.aliyuncs.com").unwrap();
    assert_eq!(s.upstream_address, Some("127.0.0.1:9".parse().unwrap()));
    for ignored in ["sim", "http://127.0.0.1:8788"] {
        let e = with(ignored).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid setting --upstream-address (METER_UPSTREAM_ADDRESS"),
            "{e}"
        );
    }
}

#[test]
fn bad_values_name_the_setting_in_one_line() {
    let err = Settings::resolve(
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
    let err = Settings::resolve(
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
    let err = Settings::resolve(
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
fn the_admin_listener_beyond_loopback_needs_the_token() {
    let beyond = |token: Option<&str>| {
        Settings::resolve(
            ServeArgs {
                admin_listen: Some("0.0.0.0:9787".into()),
                admin_token: token.map(str::to_owned),
                ..Default::default()
            },
            FileConfig::default(),
        )
    };
    let err = beyond(None).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid setting --admin-listen (METER_ADMIN_LISTEN, config key `admin_listen`): 0.0.0.0:9787 is not a \
         loopback address: set --admin-token (METER_ADMIN_TOKEN) too, or listen on 127.0.0.1"
    );
    assert!(beyond(Some("secret")).is_ok());
    let loopback = ServeArgs {
        admin_listen: Some("[::1]:9787".into()),
        ..Default::default()
    };
    assert!(Settings::resolve(loopback, FileConfig::default()).is_ok());
}

#[test]
fn unknown_file_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meter.toml");
    std::fs::write(&path, "listn = \"127.0.0.1:1\"\n").unwrap();
    let err = load_file(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("listn") && !err.contains('\n'), "{err}");
}

/// The README's configuration table is the user's manual: every setting of the table above has its
/// row there, with its flag, variable, config key and default.
#[test]
fn the_readme_lists_every_setting_with_its_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for s in SERVE_SETTINGS {
        let flag = format!("`--{}`", s.key.replace('_', "-"));
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| {flag} |")))
            .unwrap_or_else(|| panic!("README has no row for {flag}"));
        assert!(row.contains(&format!("`{}`", s.env)), "{row}");
        assert!(row.contains(&format!("`{}`", s.key)), "{row}");
        match s.default {
            Some("false") => assert!(row.contains("off"), "{row}"),
            Some(d) => assert!(
                row.contains(&format!("`{d}`")),
                "{flag}: default {d}: {row}"
            ),
            None => {}
        }
    }
}
