//! Redaction: URLs as they may appear in logs and error messages, with
//! credentials and secret query parameters replaced by `***`. Every message
//! that names a Redis or MongoDB URL goes through [`redact_url`].

/// A URL fit for logs and error messages: the user and password, and the value
/// of every query parameter that may hold a secret, replaced by `***`.
///
/// The user information is everything before the last `@` ahead of the query,
/// so a password with an unescaped `/` (base64) is hidden too; a password with
/// an unescaped `?` or `#` is found by the `@` after it ([`userinfo_end`]). A query parameter is secret when its name
/// (percent-decoded, any case) contains `password`, `passwd`, `pwd`, `secret`
/// or `token`, or is `pass` (redis-rs's `redis+unix` URLs); in
/// `authMechanismProperties` only the secret properties
/// (`AWS_SESSION_TOKEN:...`) are hidden. Text that follows a secret value up
/// to the next `name=value` (`name:value` for properties), as an unescaped `&`
/// or `,` inside a secret would leave it, is hidden with it.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparseable url>".into();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let at = userinfo_end(rest);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    let after = match at {
        Some(at) => {
            out.push_str("***");
            &rest[at..]
        }
        None => rest,
    };
    let query_start = after.find(['?', '#']).unwrap_or(after.len());
    out.push_str(&after[..query_start]);
    let query = &after[query_start..];
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        out.push_str(&redact_params(params));
    }
    out.push_str(fragment);
    out
}

/// Where the user information of `rest` (a URL after its `://`) ends: its
/// last `@` ahead of the query; else the last `@` before the first `=` (an
/// unescaped `?` or `#` in the password); else, when a `?` or `#` comes
/// before any `/` (no path yet: still the authority), the last `@` of all,
/// as `redis://:ab?c=d@host` has. Hiding too much of a URL that does not
/// parse anyway beats showing part of a password.
pub(super) fn userinfo_end(rest: &str) -> Option<usize> {
    let first_query = rest.find(['?', '#']).unwrap_or(rest.len());
    rest[..first_query]
        .rfind('@')
        .or_else(|| {
            let first_eq = rest.find('=').unwrap_or(rest.len());
            rest[..first_eq].rfind('@')
        })
        .or_else(|| {
            (first_query < rest.len() && !rest[..first_query].contains('/'))
                .then(|| rest.rfind('@'))
                .flatten()
        })
}

/// `text` with the credentials of `url` (its user info, as [`redact_url`]
/// finds it) blanked, in case an error quotes them. A piece of the password
/// too short to replace safely (under 3 characters) that `text` holds
/// anyway withholds the whole text.
pub(super) fn scrub(text: &str, url: &str) -> String {
    let userinfo = url
        .split_once("://")
        .and_then(|(_, rest)| Some(&rest[..userinfo_end(rest)?]))
        .unwrap_or("");
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let pieces = |s: &'_ str| -> Vec<String> {
        s.split([':', '?', '#', '&', '=', '/'])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    // The whole password first, then its pieces (a parser may quote one).
    let mut out = text.to_string();
    if password.len() >= 3 {
        out = out.replace(password, "***");
    }
    let secret = pieces(password);
    if secret
        .iter()
        .any(|p| p.len() < 3 && out.contains(p.as_str()))
    {
        return "(the driver's message is left out: it may quote the password)".into();
    }
    for part in pieces(user).iter().chain(&secret).filter(|p| p.len() >= 3) {
        out = out.replace(part.as_str(), "***");
    }
    out
}

/// Whether a URL parameter or `authMechanismProperties` property of this
/// name may hold a secret.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "pass"
        || ["password", "passwd", "pwd", "secret", "token"]
            .iter()
            .any(|s| name.contains(s))
}

/// A query string (`a=1&b=2`, `;` also separates), secret values redacted.
fn redact_params(params: &str) -> String {
    let mut out = String::with_capacity(params.len());
    let mut in_secret = false;
    let mut start = 0;
    for (i, c) in params.char_indices().chain([(params.len(), '&')]) {
        if c != '&' && c != ';' {
            continue;
        }
        let param = &params[start..i];
        match param.split_once('=') {
            // A piece of the secret before it: already hidden.
            None if in_secret => {}
            None => push_separated(&mut out, param, params, start),
            Some((name, value)) => {
                let decoded = percent_decode(name);
                in_secret = is_secret_name(&decoded);
                let shown = if in_secret {
                    format!("{name}=***")
                } else if decoded.eq_ignore_ascii_case("authMechanismProperties") {
                    format!("{name}={}", redact_properties(value))
                } else {
                    param.to_string()
                };
                push_separated(&mut out, &shown, params, start);
            }
        }
        start = i + 1;
    }
    out
}

/// Appends `piece` to `out`, after the separator (`&` or `;`) that preceded
/// it in `params`.
fn push_separated(out: &mut String, piece: &str, params: &str, start: usize) {
    if start > 0 {
        out.push_str(&params[start - 1..start]);
    }
    out.push_str(piece);
}

/// `authMechanismProperties` (`NAME:value,NAME:value`, possibly
/// percent-encoded): the values of secret properties redacted. Unchanged
/// when it holds no secret.
fn redact_properties(value: &str) -> String {
    let props = percent_decode(value);
    let mut any = false;
    let mut in_secret = false;
    let mut kept: Vec<String> = Vec::new();
    for p in props.split(',') {
        match p.split_once(':') {
            None if in_secret => {}
            Some((k, _)) if is_secret_name(k) => {
                any = true;
                in_secret = true;
                kept.push(format!("{k}:***"));
            }
            _ => {
                in_secret = false;
                kept.push(p.to_string());
            }
        }
    }
    if any {
        kept.join(",")
    } else {
        value.to_string()
    }
}

/// `%xx` escapes decoded (lossy UTF-8; a bad escape is kept as it is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("mongodb://u:p@h/?a=b@c"),
            "mongodb://***@h/?a=b@c"
        );
        assert_eq!(
            redact_url("mongodb://user@h1:27017,h2:27017/db"),
            "mongodb://***@h1:27017,h2:27017/db"
        );
        assert_eq!(redact_url("redis://host"), "redis://host");
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }

    #[test]
    fn redacts_a_password_with_an_unescaped_slash_question_mark_or_hash() {
        assert_eq!(
            redact_url("redis://:ab/c+d=@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://:ab?cd@host/0?protocol=resp3"),
            "redis://***@host/0?protocol=resp3"
        );
        assert_eq!(redact_url("redis://:a#b@host/0"), "redis://***@host/0");
        // An `=` in the password after its `?`: no part of it is shown.
        assert_eq!(
            redact_url("redis://:ab?c=d@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("mongodb://writ:pa?ss=x@db/?authSource=admin"),
            "mongodb://***@db/?authSource=admin"
        );
        // An `@` in a query value after a path is not user information.
        assert_eq!(redact_url("mongodb://h/?a=b@c"), "mongodb://h/?a=b@c");
    }

    /// `url` redacted is `want`, and holds none of `secrets`.
    fn redacted(url: &str, want: &str, secrets: &[&str]) {
        let got = redact_url(url);
        assert_eq!(got, want, "{url}");
        for s in secrets {
            assert!(!got.contains(s), "{s} left in {got}");
        }
    }

    #[test]
    fn redacts_the_password_parameter() {
        redacted(
            "mongodb://h/?password=hunter2&authSource=admin",
            "mongodb://h/?password=***&authSource=admin",
            &["hunter2"],
        );
        redacted(
            "mongodb://u:p@h/db?password=hunter2",
            "mongodb://***@h/db?password=***",
            &["hunter2"],
        );
    }

    #[test]
    fn redacts_tls_certificate_key_file_password_and_keeps_the_file() {
        redacted(
            "mongodb://h/?tls=true&tlsCertificateKeyFile=/etc/k.pem&tlsCertificateKeyFilePassword=pem-pw",
            "mongodb://h/?tls=true&tlsCertificateKeyFile=/etc/k.pem&tlsCertificateKeyFilePassword=***",
            &["pem-pw"],
        );
    }

    #[test]
    fn redacts_ssl_password() {
        redacted(
            "mongodb://h/?ssl=true&sslPassword=ssl-pw&w=1",
            "mongodb://h/?ssl=true&sslPassword=***&w=1",
            &["ssl-pw"],
        );
    }

    #[test]
    fn redacts_the_aws_session_token_in_auth_mechanism_properties() {
        redacted(
            "mongodb+srv://c.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:FQoG/ZX+z=&authSource=$external",
            "mongodb+srv://c.example.net/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***&authSource=$external",
            &["FQoG"],
        );
        // Percent-encoded as a whole (as drivers' docs write it).
        redacted(
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3AFQoG%2FZX%2Cmore",
            "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***",
            &["FQoG", "more"],
        );
        // Without a secret property it is left as written.
        redacted(
            "mongodb://h/?authMechanismProperties=SERVICE_NAME%3Amongodb",
            "mongodb://h/?authMechanismProperties=SERVICE_NAME%3Amongodb",
            &[],
        );
    }

    #[test]
    fn redacts_any_parameter_named_like_a_password_secret_or_token() {
        redacted(
            "mongodb://h/?MyPassWord=a1&client_SECRET=b2&accessToken=c3&TOKEN=d4&pass%77ord=e5&dbPasswd=f6&pwd=g7&appName=writ",
            "mongodb://h/?MyPassWord=***&client_SECRET=***&accessToken=***&TOKEN=***&pass%77ord=***&dbPasswd=***&pwd=***&appName=writ",
            &["a1", "b2", "c3", "d4", "e5", "f6", "g7"],
        );
        // redis-rs: `redis+unix:///path?db=0&pass=...`.
        redacted(
            "redis+unix:///run/redis.sock?db=0&user=u&pass=p9",
            "redis+unix:///run/redis.sock?db=0&user=u&pass=***",
            &["p9"],
        );
    }

    #[test]
    fn a_secret_with_an_unescaped_separator_is_hidden_whole() {
        redacted(
            "mongodb://h/?password=ab&cd;ef&authSource=admin;w=1#frag",
            "mongodb://h/?password=***&authSource=admin;w=1#frag",
            &["ab", "cd", "ef"],
        );
        redacted(
            "mongodb://h/?a=1;b=2&flag&c=",
            "mongodb://h/?a=1;b=2&flag&c=",
            &[],
        );
    }
}
