//! The Redis endpoint settings of `[redis]`: the URLs (one, or a cluster's
//! seeds, all of one scheme) and the TLS files, each checked with one
//! message naming the field and the fix.

use std::path::PathBuf;

use super::fix_where;
use super::validate::bad;
use super::{redact_url, RedisTls, ENV_REDIS_URL};
use crate::error::Result;

/// The Redis URLs: at least one, each `redis://` or `rediss://`, all with
/// the same scheme; more than one only in cluster mode.
/// `field` is where the URLs came from, as errors name it.
pub(super) fn redis_urls(urls: &[String], cluster: bool, field: &str) -> Result<Vec<String>> {
    let Some(first) = urls.first() else {
        return Err(bad(
            field,
            format!("is empty; set a redis:// URL there or in {ENV_REDIS_URL}"),
        ));
    };
    for url in urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(bad(
                field,
                format!(
                    "{} is not a redis:// or rediss:// URL; {}",
                    redact_url(url),
                    fix_where(field, ENV_REDIS_URL, "redis.url")
                ),
            ));
        }
        // A seed list whose later URLs lack the scheme is one URL to the
        // split (a comma starts the next URL only before a scheme).
        if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
            let after_userinfo =
                super::redact::userinfo_end(rest).map_or(rest, |end| &rest[end + 1..]);
            let host_part = after_userinfo.split(['/', '?', '#']).next().unwrap_or("");
            if host_part.contains(',') {
                return Err(bad(
                    field,
                    format!(
                        "{} holds a comma in its host part: to list cluster seed nodes, give each its scheme (redis://a:6379,redis://b:6379) or use a TOML list; {}",
                        redact_url(url),
                        fix_where(field, ENV_REDIS_URL, "redis.url")
                    ),
                ));
            }
        }
        // The parse `serve` meets (a bad port, database or host), said here
        // so that `check-config` refuses it too.
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            let why = match url::Url::parse(url) {
                Err(u) => u.to_string(),
                Ok(_) => e.to_string(),
            };
            return Err(bad(
                field,
                format!(
                    "{} does not parse: {}; check the host, the port (1-65535) and the database number (redis://host:port/N), and %-encode special characters in the password; {}",
                    redact_url(url),
                    super::redact::scrub(&why, url),
                    fix_where(field, ENV_REDIS_URL, "redis.url")
                ),
            ));
        }
        if url.starts_with("rediss://") != first.starts_with("rediss://") {
            return Err(bad(
                field,
                "mixes redis:// and rediss:// URLs; the nodes of one cluster all use TLS or none does",
            ));
        }
    }
    if urls.len() > 1 && !cluster {
        return Err(bad(
            field,
            format!(
                "names {} URLs but redis.cluster is false; set redis.cluster = true for Redis Cluster seed nodes, or give one URL",
                urls.len()
            ),
        ));
    }
    Ok(urls.to_vec())
}

/// The `redis.tls_*` files: only with a `rediss://` URL, the certificate and
/// the key together, each readable and holding PEM of the right kind (the
/// redis crate parses them when it connects; an empty CA file would otherwise
/// only show as every server being untrusted).
pub(super) fn redis_tls(
    url: &str,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> Result<RedisTls> {
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(RedisTls::default());
    }
    if !url.starts_with("rediss://") {
        let field = match (&ca, &cert) {
            (Some(_), _) => "redis.tls_ca_file",
            (None, Some(_)) => "redis.tls_cert_file",
            (None, None) => "redis.tls_key_file",
        };
        return Err(bad(
            field,
            format!(
                "is set but the Redis URL {} is not rediss:// (TLS); use rediss:// in redis.url or {ENV_REDIS_URL}, or remove the redis.tls_* fields",
                redact_url(url)
            ),
        ));
    }
    if cert.is_some() != key.is_some() {
        return Err(bad(
            if cert.is_some() {
                "redis.tls_key_file"
            } else {
                "redis.tls_cert_file"
            },
            "mutual TLS needs both redis.tls_cert_file and redis.tls_key_file",
        ));
    }
    let ca = read_pem(
        "redis.tls_ca_file",
        &ca,
        "certificate",
        "-----BEGIN CERTIFICATE-----",
    )?;
    let cert = read_pem(
        "redis.tls_cert_file",
        &cert,
        "certificate",
        "-----BEGIN CERTIFICATE-----",
    )?;
    let key = read_pem(
        "redis.tls_key_file",
        &key,
        "private key",
        "PRIVATE KEY-----",
    )?;
    let client_tls = match (&cert, &key) {
        (Some((_, c)), Some((_, k))) => Some(redis::ClientTlsConfig {
            client_cert: c.clone(),
            client_key: k.clone(),
        }),
        _ => None,
    };
    Ok(RedisTls {
        certificates: Some(redis::TlsCertificates {
            client_tls,
            root_cert: ca.as_ref().map(|(_, pem)| pem.clone()),
        }),
        ca_file: ca.map(|(p, _)| p),
        cert_file: cert.map(|(p, _)| p),
        key_file: key.map(|(p, _)| p),
    })
}

/// Reads the PEM file of a `redis.tls_*` field (`None`: not set), which
/// must hold a `marker` line.
fn read_pem(
    field: &str,
    path: &Option<String>,
    kind: &str,
    marker: &str,
) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let Some(path) = path else {
        return Ok(None);
    };
    if path.is_empty() {
        return Err(bad(field, "is empty; name a PEM file or remove it"));
    }
    let pem = std::fs::read(path).map_err(|e| bad(field, format!("cannot read {path}: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains(marker) {
        return Err(bad(
            field,
            format!("{path} holds no PEM {kind} (no \"{marker}\" line)"),
        ));
    }
    // An encrypted key passes the marker, and the TLS library refuses it
    // only at connect time: on a cluster as an I/O error that reads as an
    // unreachable server, waited for with the wrong hint.
    if text.contains("ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            field,
            format!(
                "{path} holds an encrypted private key, which writ does not read: decrypt it \
                 (openssl pkey -in {path} -out plain.pem) and point this at the plain file"
            ),
        ));
    }
    Ok(Some((PathBuf::from(path), pem)))
}
