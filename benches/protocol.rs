//! Criterion benchmarks of the CPU-side hot path: encoding a write as stream
//! fields (client), decoding and validating it (daemon), canonical keys and
//! partitions. Run: `cargo bench --bench protocol`.

use criterion::{criterion_group, criterion_main, Criterion};
use mongodb::bson::doc;
use writ::config::Config;
use writ::protocol::{self, Key, Op};

fn config() -> Config {
    Config::from_toml(
        r#"
[redis]
[mongodb]
[[collections]]
name = "signal"
key = ["symbol", "strategyName", "exchangeName"]
"#,
    )
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let config = config();
    let coll = config.collection("signal").unwrap().clone();
    let key_doc = doc! {"symbol": "BTCUSDT", "strategyName": "trend", "exchangeName": "binance"};
    let key = Key::from_document(&key_doc, &coll).unwrap();
    let payload = doc! {"id": "sig-1", "position": "long", "priceOpen": 64000.5, "priceTakeProfit": 66000.0,
    "priceStopLoss": 63000.0, "minuteEstimatedTime": 120, "note": "x".repeat(200)};
    let fields = protocol::encode(&coll, &key, Op::Put, Some(&payload), None).unwrap();
    let owned: Vec<(Vec<u8>, Vec<u8>)> = fields
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect();
    let p = key.partition("signal", config.partitions);

    c.bench_function("encode put (bson)", |b| {
        b.iter(|| protocol::encode(&coll, &key, Op::Put, Some(&payload), None).unwrap())
    });
    c.bench_function("decode + validate put (bson)", |b| {
        b.iter(|| protocol::decode(&owned, &config, Some(p)).unwrap())
    });
    let json_fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"v".to_vec(), b"1".to_vec()),
        (b"coll".to_vec(), b"signal".to_vec()),
        (b"op".to_vec(), b"put".to_vec()),
        (b"enc".to_vec(), b"json".to_vec()),
        (
            b"key".to_vec(),
            br#"{"symbol":"BTCUSDT","strategyName":"trend","exchangeName":"binance"}"#.to_vec(),
        ),
        (b"doc".to_vec(), serde_json::to_vec(&payload).unwrap()),
    ];
    c.bench_function("decode + validate put (json)", |b| {
        b.iter(|| protocol::decode(&json_fields, &config, Some(p)).unwrap())
    });
    c.bench_function("canonical key + partition", |b| {
        b.iter(|| key.partition("signal", 64))
    });
}

criterion_group!(protocol_benches, benches);
criterion_main!(protocol_benches);
