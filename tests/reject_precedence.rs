//! Which dead-letter reason wins when an entry has several faults: the first
//! failing check in the order docs/protocol.md (section 7) lists. No servers:
//! this is the decoder alone.

use writ::config::Config;
use writ::protocol::{decode, RejectReason};

const CONFIG: &str = r#"
[redis]
partitions = 8
[mongodb]
[client]
max_document_bytes = 64
[[collections]]
name = "m"
key = ["k"]
"#;

/// Stream entry fields.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A valid put of key `{"k":"a"}` to its own partition, with `changes`
/// applied (`None` removes the field).
fn entry(config: &Config, changes: &[(&str, Option<&str>)]) -> (Fields, u32) {
    let mut fields: Vec<(String, String)> = [
        ("v", "1"),
        ("coll", "m"),
        ("op", "put"),
        ("enc", "json"),
        ("key", r#"{"k":"a"}"#),
        ("doc", r#"{"x":1}"#),
        ("client", "c1"),
        ("req", "r1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in changes {
        match (fields.iter().position(|(k, _)| k == name), value) {
            (Some(i), Some(v)) => fields[i].1 = v.to_string(),
            (Some(i), None) => {
                fields.remove(i);
            }
            (None, Some(v)) => fields.push((name.to_string(), v.to_string())),
            (None, None) => {}
        }
    }
    let coll = config.collection("m").unwrap();
    let key = serde_json::from_str::<serde_json::Value>(r#"{"k":"a"}"#).unwrap();
    let key = writ::protocol::json_to_document(key).unwrap();
    let p = writ::protocol::Key::from_document(&key, coll)
        .unwrap()
        .partition("m", config.partitions);
    (
        fields
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect(),
        p,
    )
}

fn reason(
    config: &Config,
    changes: &[(&str, Option<&str>)],
    other_partition: bool,
) -> RejectReason {
    let (e, p) = entry(config, changes);
    let p = if other_partition {
        (p + 1) % config.partitions
    } else {
        p
    };
    decode(&e, config, Some(p))
        .expect_err("faulty entry")
        .reason
}

#[test]
fn the_first_failing_check_names_the_reason() {
    let config = Config::from_toml(CONFIG).unwrap();
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(200));
    let all_faults: Vec<(&str, Option<&str>)> = vec![
        ("v", Some("2")),
        ("coll", Some("nope")),
        ("key", Some(r#"{"other":1}"#)),
        ("doc", Some(&big)),
        ("req", None),
    ];
    // Peel the faults off one at a time, in the documented order.
    let order = [
        RejectReason::BadVersion,
        RejectReason::UnknownCollection,
        RejectReason::KeyField,
        RejectReason::WrongPartition,
        RejectReason::TooLarge,
        RejectReason::Malformed,
    ];
    for (i, want) in order.iter().enumerate() {
        // Faults i.. are present (wrong partition is fault 3; the key fault
        // must be gone before the partition can be computed).
        let mut changes: Vec<(&str, Option<&str>)> = Vec::new();
        let faults: Vec<usize> = (i..order.len()).collect();
        for f in &faults {
            match f {
                0 => changes.push(all_faults[0]),
                1 => changes.push(all_faults[1]),
                2 => changes.push(all_faults[2]),
                3 => {}
                4 => changes.push(all_faults[3]),
                5 => changes.push(all_faults[4]),
                _ => unreachable!(),
            }
        }
        let got = reason(&config, &changes, faults.contains(&3));
        assert_eq!(got, *want, "faults {faults:?}");
    }
    // An unknown field is malformed before anything else is looked at.
    assert_eq!(
        reason(&config, &[("extra", Some("1")), ("v", Some("2"))], true),
        RejectReason::Malformed
    );
    // A payload fault after the key and partition: `payload`, before the
    // client/req check.
    assert_eq!(
        reason(&config, &[("doc", Some("[1]")), ("req", None)], false),
        RejectReason::Payload
    );
    // A `doc` on remove/delete is `malformed` (not `payload`).
    for op in ["remove", "delete"] {
        assert_eq!(
            reason(&config, &[("op", Some(op))], false),
            RejectReason::Malformed,
            "{op} with a doc"
        );
    }
}
