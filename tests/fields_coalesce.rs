//! Coalescing in the `fields` layout: a put sets only the fields it sends,
//! so a later put stands for an earlier one only if it sends every field the
//! earlier one sent. Partial puts of one key that arrive in one batch are
//! applied in order (none of their fields is lost); whole rows still
//! coalesce. Once through a round's bulk (many keys) and once through a
//! lone key's apply.

mod support;

use std::collections::HashMap;

use mongodb::bson::{doc, Document};
use support::{Daemon, Overrides, TestEnv};
use writ::Writ;

const ROWS: &str = "\n[[collections]]\nname = \"row\"\nkey = [\"id\"]\nlayout = \"fields\"\n";

fn key(s: &str) -> Document {
    doc! {"id": s}
}

/// What the stored document of `id` holds in `fields` (MongoDB's, not the
/// cache's: the cache is derived from it).
async fn stored(env: &TestEnv, id: &str, fields: &[&str]) -> Vec<(String, Option<i32>)> {
    let db = env.mongo_db().await;
    let d = db
        .collection::<Document>("row")
        .find_one(doc! {"id": id})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{id} is not in MongoDB"));
    fields
        .iter()
        .map(|f| (f.to_string(), d.get_i32(f).ok()))
        .collect()
}

fn want(pairs: &[(&str, i32)]) -> Vec<(String, Option<i32>)> {
    pairs
        .iter()
        .map(|(f, v)| (f.to_string(), Some(*v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_puts_of_one_batch_keep_every_field() {
    let env = TestEnv::start("fields_coalesce");
    let o = Overrides {
        collections: ROWS,
        ..Default::default()
    };
    let config = env.config_with(&o);
    // Every key in one partition, so one round holds them all (a bulk).
    let ids = support::same_partition(&config, "row", key, "F", "R", 6);
    let (split, whole, narrower) = (&ids[0], &ids[1], &ids[2]);
    let writ = Writ::connect(config.clone()).await.unwrap();
    let rows = writ.collection("row").unwrap();
    // Queued before any daemon runs, so each key's puts arrive in one batch.
    let mut tickets = Vec::new();
    let put = |id: &String, d: Document| {
        let (rows, id) = (rows.clone(), id.clone());
        async move { rows.submit(&key(&id), &d).await.unwrap() }
    };
    tickets.push(("split 1", put(split, doc! {"a": 1}).await));
    tickets.push(("split 2", put(split, doc! {"b": 2}).await));
    tickets.push(("whole 1", put(whole, doc! {"a": 1, "b": 1}).await));
    tickets.push(("whole 2", put(whole, doc! {"a": 2, "b": 2}).await));
    tickets.push(("narrower 1", put(narrower, doc! {"a": 1, "b": 1}).await));
    tickets.push(("narrower 2", put(narrower, doc! {"a": 2}).await));
    for other in &ids[3..] {
        tickets.push(("other", put(other, doc! {"a": 9}).await));
    }
    let daemon = Daemon::start(config.clone());
    let mut ids_of = HashMap::new();
    for (name, t) in tickets {
        ids_of.insert(t.version().to_stream_id(), name);
        t.wait().await.unwrap();
    }
    assert_eq!(
        stored(&env, split, &["a", "b"]).await,
        want(&[("a", 1), ("b", 2)])
    );
    assert_eq!(
        stored(&env, whole, &["a", "b"]).await,
        want(&[("a", 2), ("b", 2)])
    );
    assert_eq!(
        stored(&env, narrower, &["a", "b"]).await,
        want(&[("a", 2), ("b", 1)])
    );
    // The cache agrees with MongoDB.
    let split_read = rows.read(&key(split)).await.unwrap().unwrap();
    assert_eq!(
        (split_read.get_i32("a"), split_read.get_i32("b")),
        (Ok(1), Ok(2))
    );
    // Whole rows still coalesce; a put that leaves out a field does not.
    let mut outcome = HashMap::new();
    for a in support::acks::of_client(&env, writ.client_id()).await {
        if let Some(name) = ids_of.get(&a["id"]) {
            outcome.insert(*name, a["outcome"].clone());
        }
    }
    assert_eq!(outcome["split 1"], "applied", "{outcome:?}");
    assert_eq!(outcome["whole 1"], "coalesced", "{outcome:?}");
    assert_eq!(outcome["narrower 1"], "applied", "{outcome:?}");

    // A lone key (no bulk): the same through the single apply.
    daemon.stop().await;
    let lone = "lone";
    let first = put(&lone.to_string(), doc! {"a": 1, "c": 3}).await;
    let second = put(&lone.to_string(), doc! {"b": 2}).await;
    let daemon = Daemon::start(config.clone());
    first.wait().await.unwrap();
    second.wait().await.unwrap();
    assert_eq!(
        stored(&env, lone, &["a", "b", "c"]).await,
        want(&[("a", 1), ("b", 2), ("c", 3)])
    );
    daemon.stop().await;
}
