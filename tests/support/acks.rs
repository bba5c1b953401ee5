//! Order, observed in the acks: per key, the sequence of ack outcomes and
//! versions the daemon sent, checked against the partition stream's order.
//!
//! Reads every partition stream and every ack stream of the namespace
//! (nothing may have been trimmed), and checks, for a fault-free run:
//! - every write got exactly one ack, and none is `stale`;
//! - an `applied` write is readable at its own version; a `coalesced` one at
//!   the version of a later write of the same key, which was itself applied;
//! - for two writes of one key, the earlier one in the stream was acked no
//!   later (by the ack stream's millisecond clock) than the later one.

use std::collections::{BTreeMap, HashMap};

use writ::ack::{Ack, Outcome};
use writ::config::Config;
use writ::protocol::{Names, Version};

/// What the check saw.
#[derive(Debug, Default)]
pub struct AckOrder {
    pub writes: usize,
    pub keys: usize,
    pub applied: usize,
    pub coalesced: usize,
}

/// The acks in one client's ack stream, in the daemon's order, each as its
/// fields (`id`, `outcome`, ...) read as text.
pub async fn of_client(env: &super::TestEnv, client: &str) -> Vec<HashMap<String, String>> {
    let mut conn = env.redis().await;
    super::streams::entries(&mut conn, &format!("{}:ack:{client}", env.name))
        .await
        .into_iter()
        .filter_map(|e| {
            let fields = e.fields?;
            Some(
                fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

/// A write's (client, request): what its ack is matched by.
type Request = (String, String);

pub async fn check_ack_order(config: &Config, conn: &mut writ::redis_conn::Conn) -> AckOrder {
    let names = Names::new(&config.namespace);
    // Per key, its writes in stream order.
    // (Entry ids are unique per partition only; acks are matched by request.)
    let mut per_key: BTreeMap<String, Vec<(Version, Request)>> = BTreeMap::new();
    for p in 0..config.partitions {
        for e in super::streams::entries(conn, &names.stream(p)).await {
            let fields = e.fields.expect("entry fields (nothing deleted)");
            let w = writ::protocol::decode(&fields, config, Some(p)).expect("a valid write");
            let key = format!("{}/{}", w.collection, w.key.canonical());
            let reply = w.reply.expect("the client asked for an ack");
            per_key
                .entry(key)
                .or_default()
                .push((e.id, (reply.client, reply.request)));
        }
    }
    // Every ack, by the write's entry id, with the ack's own stream id.
    let prefix = names.acks("");
    let streams: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut acks: HashMap<Request, Vec<(Version, Ack)>> = HashMap::new();
    for s in &streams {
        let client = s[prefix.len()..].to_string();
        for e in super::streams::entries(conn, s).await {
            let ack = Ack::parse(e.fields.as_deref().unwrap()).expect("a valid ack");
            acks.entry((client.clone(), ack.request.clone()))
                .or_default()
                .push((e.id, ack));
        }
    }
    let mut seen = AckOrder {
        keys: per_key.len(),
        ..Default::default()
    };
    for (key, writes) in &per_key {
        let mut last_applied_ack: Option<(Version, Version)> = None; // (write, ack id)
        let ids: Vec<Version> = writes.iter().map(|(id, _)| *id).collect();
        let ack_of = |id: &Version| {
            let i = ids.iter().position(|x| x == id)?;
            acks.get(&writes[i].1)?.first()
        };
        for (i, (w, req)) in writes.iter().enumerate() {
            seen.writes += 1;
            let got = acks.get(req).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(
                ack_of(w).map(|a| a.1.entry),
                Some(*w),
                "{key}: the ack of {w} names its entry"
            );
            assert_eq!(
                got.len(),
                1,
                "{key}: write {w} got {} acks: {got:?}",
                got.len()
            );
            let (ack_id, ack) = &got[0];
            match ack.outcome {
                Outcome::Applied => {
                    seen.applied += 1;
                    assert_eq!(
                        ack.version, *w,
                        "{key}: applied write {w} acked at another version"
                    );
                    if let Some((prev, prev_ack)) = last_applied_ack {
                        assert!(
                            prev_ack.ms <= ack_id.ms,
                            "{key}: write {w} was acked (at {ack_id}) before the earlier write {prev} (at {prev_ack})"
                        );
                    }
                    last_applied_ack = Some((*w, *ack_id));
                }
                Outcome::Coalesced => {
                    seen.coalesced += 1;
                    assert!(
                        ids[i + 1..].contains(&ack.version),
                        "{key}: coalesced write {w} names {}, not a later write of the key",
                        ack.version
                    );
                    let winner = ack_of(&ack.version);
                    assert!(
                        matches!(winner, Some((_, a)) if a.outcome == Outcome::Applied),
                        "{key}: coalesced write {w} names {}, which was not applied: {winner:?}",
                        ack.version
                    );
                }
                other => panic!("{key}: write {w} acked {other:?} in a fault-free run"),
            }
        }
    }
    seen
}
