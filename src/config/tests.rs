use super::*;
use crate::authz::static_rules::StaticRuleSpec;
use crate::tls::TlsVersion;

fn minimal() -> Settings {
    with_base(Settings::default(), |s| {
        s.node.node_name = Some("node-1".into());
        s.serving.tls_cert_file = Some("tls.crt".into());
        s.serving.tls_private_key_file = Some("tls.key".into());
        s.upstream.upstream_ca_file = Some("kubelet-ca.crt".into());
    })
}

fn with_base(mut settings: Settings, change: impl FnOnce(&mut Settings)) -> Settings {
    change(&mut settings);
    settings
}

/// The minimal settings with one change.
fn with(change: impl FnOnce(&mut Settings)) -> Settings {
    with_base(minimal(), change)
}

fn error_of(settings: Settings) -> String {
    settings
        .validate()
        .expect_err("should be invalid")
        .to_string()
}

#[test]
fn defaults_follow_the_kubelet() {
    let config = minimal().validate().unwrap();
    assert_eq!(config.listen, "0.0.0.0:10250".parse().unwrap());
    assert_eq!(config.upstream_scheme, Scheme::HTTPS);
    assert_eq!(config.upstream_authority.as_str(), "127.0.0.1:10250");
    assert_eq!(config.streaming_authz, StreamingAuthz::Strict);
    assert!(!config.anonymous_auth);
    assert_eq!(config.tls.min_version, TlsVersion::Tls12);
}

#[test]
fn errors_name_the_flag_and_the_fix() {
    let cases: Vec<(Settings, &str)> = vec![
        (
            with(|s| s.node.node_name = None),
            "--node-name (nodeName in the config file): required",
        ),
        (
            with(|s| s.node.node_name = Some("Node_1".into())),
            "not a valid node name",
        ),
        (with(|s| s.serving.tls_cert_file = None), "--tls-cert-file"),
        (
            with(|s| s.serving.tls_private_key_file = None),
            "--tls-private-key-file",
        ),
        (
            with(|s| s.upstream.upstream_ca_file = None),
            "--upstream-ca-file",
        ),
        (
            with(|s| s.upstream.upstream_insecure_skip_tls_verify = true),
            "conflicts with --upstream-ca-file",
        ),
        (
            with(|s| s.upstream.upstream = "http://10.0.0.1:10250".into()),
            "only allowed to a kubelet on loopback",
        ),
        (
            with(|s| s.upstream.upstream = "https://127.0.0.1:10250/api".into()),
            "must not have a path",
        ),
        (
            with(|s| s.upstream.upstream = "ftp://127.0.0.1".into()),
            "scheme must be https or http",
        ),
        (
            with(|s| s.upstream.upstream = "127.0.0.1:10250".into()),
            "needs a scheme",
        ),
        (
            with(|s| s.upstream.upstream_client_cert_file = Some("c".into())),
            "--upstream-client-key-file",
        ),
        (
            with(|s| {
                s.authz.authorization = Some(AuthorizationSettings {
                    static_rules: vec![StaticRuleSpec {
                        user: None,
                        group: None,
                        verbs: vec!["get".into()],
                        subresources: vec!["proxy".into()],
                    }],
                })
            }),
            "authorization.static in the config file): rule 0: a rule needs exactly one of `user` or `group`",
        ),
    ];
    for (settings, want) in cases {
        let got = error_of(settings);
        assert!(got.contains(want), "{got:?} should contain {want:?}");
    }
}

#[test]
fn review_settings_default_to_the_kubelets_and_read_go_durations() {
    let config = minimal().validate().unwrap();
    let apiserver = config.apiserver.expect("webhook modes are on by default");
    assert_eq!(apiserver.review_timeout, Duration::from_secs(5));
    let authz = apiserver.authorization.unwrap();
    assert_eq!(
        (authz.authorized_ttl, authz.unauthorized_ttl),
        (Duration::from_secs(300), Duration::from_secs(30))
    );
    assert_eq!(
        apiserver.token_authentication.unwrap().cache_ttl,
        Duration::from_secs(120)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "nodeName: n\ntlsCertFile: /c\ntlsPrivateKeyFile: /k\nupstreamCaFile: /ca\n\
         authorizationWebhookCacheAuthorizedTtl: 1m30s\nreviewTimeout: 500ms\n\
         authTokenAudiences: [a, b]\n",
    )
    .unwrap();
    let apiserver = Settings::from_file(&path)
        .unwrap()
        .validate()
        .unwrap()
        .apiserver
        .unwrap();
    assert_eq!(
        apiserver.authorization.unwrap().authorized_ttl,
        Duration::from_secs(90)
    );
    assert_eq!(apiserver.review_timeout, Duration::from_millis(500));
    assert_eq!(
        apiserver.token_authentication.unwrap().audiences,
        ["a", "b"]
    );

    std::fs::write(&path, "nodeName: n\nreviewTimeout: soon\n").unwrap();
    let err = Settings::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn static_mode_without_token_webhook_needs_no_apiserver() {
    let config = with(|s| {
        s.authz.authorization_mode = AuthorizationMode::Static;
        s.authn.authentication_token_webhook = false;
    })
    .validate()
    .unwrap();
    assert!(config.apiserver.is_none());
    let zero = with(|s| s.apiserver.review_timeout = GoDuration(Duration::ZERO));
    assert!(error_of(zero).contains("--review-timeout"));
}

#[test]
fn csr_mode_takes_no_certificate_files_and_defaults_its_kubeconfig() {
    let csr = with(|s| {
        s.serving.serving_cert_source = ServingCertSource::Csr;
        s.serving.tls_cert_file = None;
        s.serving.tls_private_key_file = None;
        s.node.node_ip = vec!["10.0.0.7".parse().unwrap()];
        s.node.node_hostname = vec!["node-1.example".into()];
        s.apiserver.kubeconfig = Some("/etc/kubelet-guard/kubeconfig".into());
    });
    let config = csr.clone().validate().unwrap();
    assert_eq!(
        config.serving,
        Serving::Csr(CsrSettings {
            ips: vec!["10.0.0.7".parse().unwrap()],
            dns_names: vec!["node-1.example".into()],
            dir: None,
            kubeconfig: Some("/etc/kubelet-guard/kubeconfig".into()),
        })
    );
    let with_files = with_base(csr.clone(), |s| {
        s.serving.tls_cert_file = Some("tls.crt".into())
    });
    assert!(error_of(with_files).contains("drop --tls-cert-file"));
    let bad_name = with_base(csr, |s| s.node.node_hostname = vec!["not a name".into()]);
    assert!(error_of(bad_name).contains("--node-hostname"));
}

#[test]
fn loopback_http_upstreams_are_allowed() {
    for url in [
        "http://127.0.0.1:10250",
        "http://[::1]:10250",
        "http://localhost:8080",
    ] {
        let config = with(|s| {
            s.upstream.upstream = url.into();
            s.upstream.upstream_ca_file = None;
        })
        .validate();
        assert!(config.is_ok(), "{url}: {config:?}");
    }
}

#[test]
fn flags_override_the_file() {
    let file = with(|s| {
        s.node.node_name = Some("from-file".into());
        s.authn.anonymous_auth = true;
    });
    // `--anonymous-auth` is not given: its declared default (false) must
    // not override the file's true.
    let flags = Settings::command()
        .try_get_matches_from(["serve", "--node-name", "from-flag"])
        .unwrap();
    let merged = file.overlaid_by(&flags).unwrap().validate().unwrap();
    assert_eq!(merged.node_name, "from-flag");
    assert!(merged.anonymous_auth, "a setting only the file has is kept");
}

#[test]
fn the_file_uses_camel_case_keys_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "nodeName: node-a\ntlsCertFile: /tls.crt\ntlsPrivateKeyFile: /tls.key\n\
         upstream: http://127.0.0.1:10250\nstreamingAuthz: kubelet\n\
         authorization:\n  static:\n    - group: system:masters\n      verbs: ['*']\n      subresources: ['*']\n",
    )
    .unwrap();
    let config = Settings::from_file(&path).unwrap().validate().unwrap();
    assert_eq!(config.node_name, "node-a");
    assert_eq!(config.streaming_authz, StreamingAuthz::Kubelet);
    assert!(!config.static_rules.is_empty());

    std::fs::write(&path, "nodeName: node-a\ntlsCertFil: /typo\n").unwrap();
    let err = Settings::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("tlsCertFil"), "{err}");
}

#[test]
fn a_flag_given_with_its_default_value_still_overrides_the_file() {
    let file = with(|s| s.authn.anonymous_auth = true);
    let flags = Settings::command()
        .try_get_matches_from(["serve", "--anonymous-auth=false"])
        .unwrap();
    let merged = file.overlaid_by(&flags).unwrap().validate().unwrap();
    assert!(!merged.anonymous_auth);
}

#[test]
fn every_section_has_valid_defaults_and_the_file_falls_back_to_them() {
    let defaults = minimal()
        .validate()
        .expect("the declared defaults validate");
    let from_file = Settings::from_yaml(
        "nodeName: node-1\ntlsCertFile: tls.crt\ntlsPrivateKeyFile: tls.key\nupstreamCaFile: kubelet-ca.crt\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(from_file.limits, defaults.limits);
    assert_eq!(from_file.apiserver, defaults.apiserver);
    assert_eq!(from_file.admin_listen, "127.0.0.1:10251".parse().unwrap());
    assert_eq!(from_file.shutdown_grace_period, Duration::from_secs(30));
    // The environment is a flag's source, never a default.
    assert_eq!(Settings::default().node.node_name, None);
}

/// Every `serve` flag, with its declared default if it has one.
fn declared_flags() -> Vec<(String, Option<String>)> {
    Settings::command()
        .get_arguments()
        .filter_map(|arg| {
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((arg.get_long()?.to_owned(), default))
        })
        .collect()
}

#[test]
fn the_readme_flag_table_lists_every_flag_with_its_declared_default() {
    let readme = include_str!("../../README.md");
    // | `--flag`[, `--other`] | default | meaning |
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| line.split(" | ").collect())
        .collect();
    let flags = declared_flags();
    for (flag, default) in &flags {
        let named = |cell: &str| {
            cell.contains(&format!("`--{flag}`")) || cell.contains(&format!("`--{flag} "))
        };
        let row = rows
            .iter()
            .find(|row| named(row[0]))
            .unwrap_or_else(|| panic!("README.md's flag table has no row for --{flag}"));
        if let Some(default) = default {
            assert!(
                row[1].contains(&format!("`{default}`")),
                "README.md: --{flag} defaults to `{default}`, the table says {:?}",
                row[1]
            );
        }
    }
    for row in &rows {
        for named in row[0].split('`').filter(|s| s.starts_with("--")) {
            let name = named.trim_start_matches("--").split(' ').next().unwrap();
            assert!(
                flags.iter().any(|(flag, _)| flag == name),
                "README.md's flag table lists --{name}, which serve does not have"
            );
        }
    }
}

#[test]
fn the_example_config_names_every_setting() {
    let example = include_str!("../../config/kubelet-guard.yaml");
    for (flag, _) in declared_flags() {
        if flag == "config" {
            continue;
        }
        let key = file_key(&flag);
        assert!(
            example.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with(':'))
            }),
            "config/kubelet-guard.yaml does not show {key} (--{flag}), set or commented out"
        );
    }
}

#[test]
fn every_file_key_is_read_by_a_section() {
    // A map is the wrong type for every setting: if a section reads the
    // key, the file is refused; if none did, it would load silently.
    for key in Settings::file_keys() {
        let err = Settings::from_yaml(&format!("{key}: {{x: 1}}\n"))
            .expect_err(&format!("{key}: a map must not be accepted"));
        assert!(
            !err.contains(&format!("unknown field `{key}`")),
            "{key}: {err}"
        );
    }
    assert!(
        Settings::from_yaml("").is_ok(),
        "an empty file is all defaults"
    );
}

#[test]
fn load_reads_the_config_file_then_lays_the_given_flags_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "nodeName: from-file\ntlsCertFile: /c\ntlsPrivateKeyFile: /k\nupstreamCaFile: /ca\n\
         idleTimeout: 5s\nanonymousAuth: true\n",
    )
    .unwrap();
    let flags = Settings::command()
        .try_get_matches_from([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--node-name",
            "from-flag",
            "--max-connections",
            "7",
        ])
        .unwrap();
    let config = Settings::load(&flags).unwrap().validate().unwrap();
    assert_eq!(config.node_name, "from-flag");
    assert_eq!(config.limits.max_connections, 7);
    assert_eq!(config.limits.idle_timeout, Duration::from_secs(5));
    assert!(config.anonymous_auth);
    assert_eq!(config.limits.tls_handshake_timeout, Duration::from_secs(10));

    let missing = Settings::command()
        .try_get_matches_from(["serve", "--config", "/nonexistent/kubelet-guard.yaml"])
        .unwrap();
    let err = Settings::load(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with("config file /nonexistent/kubelet-guard.yaml:"),
        "{err}"
    );
}

#[test]
fn the_metrics_listener_is_off_unless_set_and_needs_the_webhook() {
    assert_eq!(minimal().validate().unwrap().metrics_listen, None);
    let at = |value: &str| with(|s| s.operations.metrics_listen_address = value.parse().unwrap());
    assert_eq!(
        at("0.0.0.0:10262").validate().unwrap().metrics_listen,
        Some("0.0.0.0:10262".parse().unwrap())
    );
    assert_eq!(at("off").validate().unwrap().metrics_listen, None);
    let got = error_of(with_base(at("127.0.0.1:10262"), |s| {
        s.authz.authorization_mode = AuthorizationMode::Static
    }));
    assert!(
        got.contains("--metrics-listen-address (metricsListenAddress in the config file)")
            && got.contains("--authorization-mode=Webhook"),
        "{got}"
    );
    assert!(
        "10262"
            .parse::<ListenSetting>()
            .unwrap_err()
            .contains("neither IP:PORT nor off")
    );
    let file = Settings::from_yaml("metricsListenAddress: off\n").unwrap();
    assert_eq!(file.operations.metrics_listen_address, ListenSetting::Off);
    let file = Settings::from_yaml("metricsListenAddress: 127.0.0.1:10262\n").unwrap();
    assert_eq!(
        file.operations.metrics_listen_address,
        ListenSetting::At("127.0.0.1:10262".parse().unwrap())
    );
}
