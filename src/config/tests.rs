//! The config's tests: defaults, the shipped files, and one clear message
//! per bad value.

use super::*;

const MIN: &str = r#"
[redis]
[mongodb]
[[collections]]
name = "signal"
key = ["symbol", "strategyName"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(MIN).unwrap();
    assert_eq!(c.partitions, 8);
    assert_eq!(c.write_concern, WriteConcernW::Majority);
    assert!(c.journal);
    assert_eq!(c.collection("signal").unwrap().mode, WriteMode::Replace);
}

#[test]
fn every_table_but_the_collections_may_be_left_out() {
    let c = Config::from_toml(&MIN.replace("[redis]\n[mongodb]\n", "")).unwrap();
    assert_eq!(c.partitions, 8);
    assert_eq!(c.namespace, "writ");
    assert_eq!(c.database, "writ");
    assert!(c.journal);
}

#[test]
fn unknown_field_is_named() {
    let err = Config::from_toml(&MIN.replace("[redis]", "[redis]\npartitons = 3")).unwrap_err();
    assert!(err.to_string().contains("partitons"), "{err}");
}

#[test]
fn bad_values_name_field() {
    let e = Config::from_toml(&MIN.replace("[redis]", "[redis]\npartitions = 0")).unwrap_err();
    assert!(e.to_string().contains("redis.partitions"), "{e}");
    let e = Config::from_toml(&MIN.replace("\"strategyName\"", "\"symbol\"")).unwrap_err();
    assert!(e.to_string().contains("collections[0].key"), "{e}");
    let e = Config::from_toml(&MIN.replace("[mongodb]", "[mongodb]\nwrite_concern = \"all\""))
        .unwrap_err();
    assert!(e.to_string().contains("mongodb.write_concern"), "{e}");
    // w: 0 is an unacknowledged write: writ could never learn the outcome.
    let e =
        Config::from_toml(&MIN.replace("[mongodb]", "[mongodb]\nwrite_concern = 0")).unwrap_err();
    assert!(
        e.to_string()
            .contains("`mongodb.write_concern`: 0 asks MongoDB not to answer"),
        "{e}"
    );
    assert!(Config::from_toml(&MIN.replace("[mongodb]", "[mongodb]\nwrite_concern = 1")).is_ok());
    let e = Config::from_toml(&MIN.replace(
        "[mongodb]",
        "[daemon]\nlog_level = \"verbose=??!\"\n[mongodb]",
    ))
    .unwrap_err();
    assert!(e.to_string().contains("daemon.log_level"), "{e}");
    let e =
        Config::from_toml(&MIN.replace("[mongodb]", "[daemon]\nlog_level = \"debgu\"\n[mongodb]"))
            .unwrap_err();
    assert!(e.to_string().contains("not a level"), "{e}");
    let ok = Config::from_toml(&MIN.replace(
        "[mongodb]",
        "[daemon]\nlog_level = \"info,writ=debug\"\n[mongodb]",
    ));
    assert!(ok.is_ok(), "{ok:?}");
    // A URL of the wrong type says what it takes (serde's untagged enum
    // said "data did not match any variant").
    let e = Config::from_toml(&MIN.replace("[redis]", "[redis]\nurl = 6379")).unwrap_err();
    assert!(
        e.to_string().contains("redis.url")
            && e.to_string().contains("a URL string")
            && !e.to_string().contains("variant"),
        "{e}"
    );
    let ok = Config::from_toml(&MIN.replace(
        "[redis]",
        "[redis]\ncluster = true\nurl = [\"redis://a:7000\", \"redis://b:7000\"]",
    ));
    assert_eq!(ok.unwrap().redis_urls.len(), 2);
    let e = Config::from_toml(&MIN.replace(
        "[mongodb]",
        "[daemon]\nmetrics_listen = \"localhost:9108\"\n[mongodb]",
    ))
    .unwrap_err();
    assert!(e.to_string().contains("host names are not resolved"), "{e}");
}

/// Every numeric bound: the value just outside is refused with the
/// field and its range, the value at the edge is accepted.
#[test]
fn numeric_bounds_are_checked_at_their_edges() {
    let with = |section: &str, line: &str| {
        let header = format!("[{section}]");
        let text = if MIN.contains(&header) {
            MIN.replace(&header, &format!("{header}\n{line}"))
        } else {
            format!("{header}\n{line}\n{MIN}")
        };
        Config::from_toml(&text)
    };
    // (section, field, refused, accepted at the edge, the range it names)
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("redis", "min_replicas_acked", "17", "16", "between 0 and 16"),
        ("redis", "replica_ack_timeout_ms", "0", "1", "between 1 and 60000"),
        ("redis", "replica_ack_timeout_ms", "60001", "60000", "between 1 and 60000"),
        ("redis", "partitions", "4097", "4096", "between 1 and 4096"),
        ("mongodb", "op_timeout_ms", "0", "1", "between 1 and 2147483647"),
        ("mongodb", "op_timeout_ms", "2147483648", "2147483647", "between 1 and 2147483647"),
        ("mongodb", "max_concurrency", "1001", "1000", "between 1 and 1000"),
        ("daemon", "batch_size", "0", "1", "between 1 and 10000"),
        ("daemon", "block_ms", "60001", "60000", "between 1 and 60000"),
        ("daemon", "max_attempts", "0", "1", "at least 1"),
        ("daemon", "max_timeouts", "1001", "1000", "between 0 and 1000"),
        ("daemon", "lease_ttl_ms", "299", "300", "between 300 and 300000"),
        ("daemon", "worker_threads", "0", "1", "between 1 and 256"),
        ("daemon", "worker_threads", "257", "256", "between 1 and 256"),
        ("daemon", "stats_interval_ms", "99", "100", "between 100 and 300000"),
        ("daemon", "stats_interval_ms", "300001", "300000", "between 100 and 300000"),
        ("daemon", "max_in_flight", "1000001", "1000000", "between 1 and 1000000"),
        ("daemon", "shutdown_deadline_ms", "99", "100", "between 100 and 3600000"),
        ("daemon", "shutdown_deadline_ms", "3600001", "3600000", "between 100 and 3600000"),
        ("daemon", "backoff_cap_ms", "9", "10", "between 10 and 600000"),
        ("daemon", "backoff_cap_ms", "600001", "600000", "between 10 and 600000"),
        ("client", "write_timeout_ms", "0", "1", "between 1 and 86400000"),
        ("client", "read_timeout_ms", "0", "1", "between 1 and 86400000"),
        ("client", "read_timeout_ms", "86400001", "86400000", "between 1 and 86400000"),
        ("daemon", "retention_max_entries", "0", "1", "at least 1"),
        ("daemon", "retention_max_age_secs", "18446744073709552", "3153600000", "between 0 and 3153600000"),
        ("client", "max_backlog", "0", "1", "at least 1"),
        ("client", "lost_write_after_ms", "0", "1", "at least 1"),
        ("client", "max_document_bytes", "16777217", "16777216", "between 1 and 16777216"),
    ];
    for (section, field, bad, edge, range) in cases {
        let e = with(section, &format!("{field} = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("`{section}.{field}`: must be {range}")),
            "{field} = {bad}: {e}"
        );
        if let Err(e) = with(section, &format!("{field} = {edge}")) {
            panic!("{field} = {edge} refused: {e}");
        }
    }
    // The byte bound: at least 1 MiB, and at least twice the document cap.
    let e = with("daemon", "max_in_flight_bytes = 1048575").unwrap_err();
    assert!(e.to_string().contains("at least 1048576"), "{e}");
    let e = with("daemon", "max_in_flight_bytes = 33423359").unwrap_err();
    assert!(
        e.to_string().contains("twice client.max_document_bytes"),
        "{e}"
    );
    with("daemon", "max_in_flight_bytes = 33423360").unwrap();
    let small = format!(
        "[client]\nmax_document_bytes = 524288\n[daemon]\nmax_in_flight_bytes = 1048576\n{MIN}"
    );
    Config::from_toml(&small).unwrap();
    let e = with("daemon", "batch_size = 64\nmax_in_flight = 63").unwrap_err();
    assert!(e.to_string().contains("daemon.max_in_flight"), "{e}");
}

/// The shipped configs parse: the default, docker-compose's, and its
/// cluster profile's (with all six seed nodes and replica acks).
#[test]
fn shipped_configs_are_valid() {
    for text in [
        include_str!("../../config/writ.toml"),
        include_str!("../../docker/writ.toml"),
    ] {
        assert!(!Config::from_toml(text).unwrap().redis_cluster);
    }
    let c = Config::from_toml(include_str!("../../docker/writ-cluster.toml")).unwrap();
    assert!(c.redis_cluster);
    assert_eq!(c.redis_urls.len(), 6);
    assert_eq!(c.min_replicas_acked, 1);
}

#[test]
fn cluster_urls_lists_and_replica_acks() {
    let with =
        |lines: &str| Config::from_toml(&MIN.replace("[redis]", &format!("[redis]\n{lines}")));
    let list = r#"url = ["redis://a:1", "redis://b:2"]"#;
    let e = with(list).unwrap_err().to_string();
    assert!(e.contains("redis.cluster = true"), "{e}");
    let c = with(&format!("cluster = true\n{list}")).unwrap();
    assert_eq!(c.redis_urls, ["redis://a:1", "redis://b:2"]);
    assert_eq!(c.redis_url, "redis://a:1");
    assert!(c.redis_cluster);
    // WRIT_REDIS_URL's form: one string, comma-separated.
    let c = with("cluster = true\nurl = \"redis://a:1, redis://b:2\"").unwrap();
    assert_eq!(c.redis_urls.len(), 2);
    // A seed list without the scheme on its later URLs is one URL to the
    // split: the message says how to list seeds, not "invalid port".
    for list in ["redis://a:1,b:2", "redis://:pw@a:1,b:2/0"] {
        let e = with(&format!("cluster = true\nurl = \"{list}\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("give each its scheme"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
    let e = with("cluster = true\nurl = [\"redis://a:1\", \"rediss://b:2\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixes"), "{e}");
    let e = with("url = []").unwrap_err().to_string();
    assert!(e.contains("redis.url"), "{e}");
    let c = with("min_replicas_acked = 1").unwrap();
    assert_eq!(c.min_replicas_acked, 1);
    assert_eq!(c.replica_ack_timeout, Duration::from_millis(1000));
    let e = with("replica_ack_timeout_ms = 0").unwrap_err().to_string();
    assert!(e.contains("redis.replica_ack_timeout_ms"), "{e}");
}

#[test]
fn redis_tls_files_are_checked_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let ca = pem(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let key = pem(
        "k.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let encrypted = pem(
        "enc.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let legacy = pem(
        "legacy.pem",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    );
    let with = |url: &str, lines: &str| {
        Config::from_toml(&MIN.replace("[redis]", &format!("[redis]\nurl = \"{url}\"\n{lines}")))
    };
    // An encrypted key is refused here, not met at connect time.
    for k in [&encrypted, &legacy] {
        let e = with(
            "rediss://h:6380",
            &format!("tls_cert_file = {ca:?}\ntls_key_file = {k:?}"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`redis.tls_key_file`")
                && e.contains("encrypted private key")
                && e.contains("openssl pkey"),
            "{e}"
        );
    }
    // Without files: no TLS material (a rediss:// URL trusts the webpki roots).
    let c = with("rediss://h:6380", "").unwrap();
    assert!(c.redis_tls.certificates.is_none());
    // A CA and a client certificate with its key.
    let c = with(
        "rediss://h:6380",
        &format!("tls_ca_file = {ca:?}\ntls_cert_file = {ca:?}\ntls_key_file = {key:?}"),
    )
    .unwrap();
    let certs = c.redis_tls.certificates.as_ref().unwrap();
    assert!(certs
        .root_cert
        .as_ref()
        .unwrap()
        .starts_with(b"-----BEGIN CERTIFICATE"));
    assert!(certs
        .client_tls
        .as_ref()
        .unwrap()
        .client_key
        .starts_with(b"-----BEGIN PRIVATE"));
    assert!(
        !format!("{c:?}").contains("BEGIN PRIVATE KEY"),
        "the key is never printed"
    );
    // Each rule names its field.
    let cases = [
        (
            "redis://h",
            format!("tls_ca_file = {ca:?}"),
            "`redis.tls_ca_file`: is set but the Redis URL redis://h is not rediss://",
        ),
        (
            "rediss://h",
            format!("tls_cert_file = {ca:?}"),
            "`redis.tls_key_file`: mutual TLS needs both",
        ),
        (
            "rediss://h",
            format!("tls_key_file = {key:?}"),
            "`redis.tls_cert_file`: mutual TLS needs both",
        ),
        (
            "rediss://h",
            "tls_ca_file = \"/nonexistent/ca.pem\"".into(),
            "`redis.tls_ca_file`: cannot read /nonexistent/ca.pem",
        ),
        (
            "rediss://h",
            format!("tls_ca_file = {key:?}"),
            "holds no PEM certificate",
        ),
        (
            "rediss://h",
            "tls_ca_file = \"\"".into(),
            "`redis.tls_ca_file`: is empty",
        ),
        (
            "rediss://h",
            format!("tls_ca_file = {ca:?}\ntls_cert_file = {ca:?}\ntls_key_file = {ca:?}"),
            "`redis.tls_key_file`: ",
        ),
    ];
    for (url, lines, want) in cases {
        let e = with(url, &lines).unwrap_err().to_string();
        assert!(e.contains(want), "{lines}: {e}");
    }
}

#[test]
fn documented_default_file_matches_the_code_defaults() {
    let file = include_str!("../../config/writ.toml");
    let documented = Config::from_toml(file).unwrap();
    // The same collections with every other table left to the defaults.
    let collections = &file[file.find("[[collections]]").unwrap()..];
    let defaults = Config::from_toml(&format!("[redis]\n[mongodb]\n{collections}")).unwrap();
    let strip = |c: &Config| {
        let mut c = c.clone();
        c.consumer_name.clear();
        format!("{c:?}")
    };
    assert_eq!(
        strip(&documented),
        strip(&defaults),
        "config/writ.toml documents other values than the defaults in code"
    );
    assert!(documented.collections.len() >= 10);
}

#[test]
fn urls_are_parsed_as_the_clients_will_with_no_secret_in_the_message() {
    let with = |redis: &str, mongo: &str| {
        Config::from_toml(
            &MIN.replace("[redis]", &format!("[redis]\nurl = \"{redis}\""))
                .replace("[mongodb]", &format!("[mongodb]\nuri = \"{mongo}\"")),
        )
    };
    let (r, m) = ("redis://127.0.0.1:6379", "mongodb://127.0.0.1:27017/");
    assert!(with(r, m).is_ok());
    // A comma in a password is not a list of seed nodes (it used to cut the
    // URL there, and print the piece with the password's start).
    let c = with("redis://u:s3c,ret@127.0.0.1:6379", m).unwrap();
    assert_eq!(
        c.redis_urls,
        vec!["redis://u:s3c,ret@127.0.0.1:6379".to_string()]
    );
    for (redis, mongo, field, says) in [
        (
            "redis://u:s3cretpw@127.0.0.1:99999",
            m,
            "redis.url",
            "invalid port",
        ),
        ("redis://:s3cretpw@", m, "redis.url", "empty host"),
        ("redis://127.0.0.1:6379/abc", m, "redis.url", "database"),
        (
            r,
            "mongodb://u:s3cretpw@127.0.0.1:99999/",
            "mongodb.uri",
            "port",
        ),
        (
            r,
            "mongodb://u:s3cret@pw@127.0.0.1/",
            "mongodb.uri",
            "URL encoded",
        ),
        // A `?` and `=` in the password, unescaped: no piece of it shown,
        // by the URL or by the driver's message.
        (
            "redis://u:s3c?ret=x@127.0.0.1:99999",
            m,
            "redis.url",
            "does not parse",
        ),
        (
            r,
            "mongodb://writ:s3c?ret=x@127.0.0.1/",
            "mongodb.uri",
            "does not parse",
        ),
        (
            r,
            "mongodb://writ:s3c?xy@127.0.0.1/",
            "mongodb.uri",
            "does not parse",
        ),
        (
            r,
            "mongodb://127.0.0.1/?directConnection=maybe",
            "mongodb.uri",
            "boolean",
        ),
        (
            r,
            "mongodb://127.0.0.1/?tlsCertificateKeyFilePassword=s3cretpw",
            "mongodb.uri",
            "decrypt the key file",
        ),
    ] {
        let e = with(redis, mongo).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains(says),
            "{redis} {mongo}: {e}"
        );
        assert!(
            !e.contains("s3cret") && !e.contains("s3c") && !e.contains("ret="),
            "a secret in the message: {e}"
        );
    }
}

/// `{:?}` of a config, raw or validated, never shows a URL's password.
#[test]
fn debug_prints_blank_the_urls_credentials() {
    let text = MIN
        .replace(
            "[redis]",
            "[redis]\nurl = \"redis://writer:r3dis-Secret@h:6379\"",
        )
        .replace(
            "[mongodb]",
            "[mongodb]\nuri = \"mongodb://writ:m0ngo-Secret@h:27017/?authSource=admin\"",
        );
    let c = Config::from_toml(&text).unwrap();
    let raw: RawConfig = toml::from_str(&text).unwrap();
    for shown in [format!("{c:?}"), format!("{c:#?}"), format!("{raw:?}")] {
        assert!(!shown.contains("r3dis-Secret"), "{shown}");
        assert!(!shown.contains("m0ngo-Secret"), "{shown}");
        assert!(
            shown.contains("h:6379") && shown.contains("h:27017"),
            "{shown}"
        );
    }
}
