//! The library agrees with the protocol test vectors (tests/vectors/, made by
//! an independent Python implementation of docs/protocol.md).

use mongodb::bson::Document;
use writ::config::{CollectionConfig, WriteMode};
use writ::protocol::{Key, Names};

#[derive(serde::Deserialize)]
struct Vector {
    collection: String,
    key_fields: Vec<String>,
    key_json: String,
    canonical: String,
    fnv1a64: String,
    partitions: u32,
    partition: u32,
    stream: String,
    cache_key: String,
}

#[test]
fn library_matches_protocol_v1_vectors() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/protocol_v1.json"
    ))
    .unwrap();
    let vectors: Vec<Vector> = serde_json::from_str(&text).unwrap();
    assert!(vectors.len() >= 11);
    let names = Names::new("writ");
    for v in vectors {
        let coll = CollectionConfig {
            name: v.collection.clone(),
            key: v.key_fields.clone(),
            mode: WriteMode::Replace,
            layout: Default::default(),
            timestamps: false,
        };
        let doc =
            writ::protocol::json_to_document(serde_json::from_str(&v.key_json).unwrap()).unwrap();
        let key = Key::from_document(&doc, &coll).unwrap();
        assert_eq!(key.canonical(), v.canonical, "canonical of {}", v.key_json);
        let h =
            writ::protocol::fnv1a64(v.collection.bytes().chain([0u8]).chain(v.canonical.bytes()));
        assert_eq!(format!("{h:016x}"), v.fnv1a64);
        assert_eq!(key.partition(&v.collection, v.partitions), v.partition);
        assert_eq!(names.stream(v.partition), v.stream);
        assert_eq!(
            names.cache(v.partition, &v.collection, &v.canonical),
            v.cache_key
        );
        // The key document (what entries carry) holds the declared fields in
        // order and parses back to the vector's canonical bytes.
        let back: Document = key.to_document();
        let fields: Vec<&str> = back.keys().map(String::as_str).collect();
        assert_eq!(
            fields, v.key_fields,
            "key document fields of {}",
            v.key_json
        );
        let again = Key::from_document(&back, &coll).unwrap();
        assert_eq!(
            again.canonical(),
            v.canonical,
            "round trip of {}",
            v.key_json
        );
        assert_eq!(again, key);
    }
}
