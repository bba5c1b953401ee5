//! Redis key names: every key writ uses is named here and nowhere else.
//! Every per-partition key carries the hash tag `{p<N>}` so a partition's
//! stream, meta, cache entries, lease and fence live in one Redis Cluster
//! slot (the scripts that touch several of them need that).

/// Builds the Redis key names of one namespace.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Names under namespace `ns` (default `writ`).
    pub fn new(ns: &str) -> Names {
        Names { ns: ns.to_string() }
    }

    /// The namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The partition stream: `<ns>:{p<N>}:in`.
    pub fn stream(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:in", self.ns)
    }

    /// The partition whose stream is `stream` (the inverse of
    /// [`Names::stream`]), or `None` for any other key.
    pub fn partition_of_stream(&self, stream: &str) -> Option<u32> {
        stream
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(":{p")?
            .strip_suffix("}:in")?
            .parse()
            .ok()
    }

    /// The cache entry of a key: `<ns>:{p<N>}:c:<collection>:<canonical key>`.
    pub fn cache(&self, partition: u32, collection: &str, canonical: &str) -> String {
        format!("{}:{{p{partition}}}:c:{collection}:{canonical}", self.ns)
    }

    /// A partition's meta hash: `<ns>:{p<N>}:meta` (backlog bookkeeping; see
    /// `src/lua/admit.lua`).
    pub fn meta(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:meta", self.ns)
    }

    /// A writer's admission record in a partition: `<ns>:{p<N>}:adm:<caller>`
    /// (the replies of its last admission calls, so that a call sent twice
    /// adds its entries once; see `src/lua/admit.lua`).
    pub fn admission(&self, partition: u32, caller: &str) -> String {
        format!("{}:{{p{partition}}}:adm:{caller}", self.ns)
    }

    /// A partition's lease: `<ns>:{p<N>}:lease` (the owner's consumer name,
    /// with a TTL).
    pub fn lease(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:lease", self.ns)
    }

    /// A partition's last lease acquisition: `<ns>:{p<N>}:acquired` (the
    /// acquiring call's id and the token it took, with the lease's TTL), so
    /// that an acquisition sent twice takes the lease once.
    pub fn acquired(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:acquired", self.ns)
    }

    /// A partition's fencing counter: `<ns>:{p<N>}:fence`.
    pub fn fence(&self, partition: u32) -> String {
        format!("{}:{{p{partition}}}:fence", self.ns)
    }

    /// The live daemons: `<ns>:members` (a sorted set of heartbeats).
    pub fn members(&self) -> String {
        format!("{}:members", self.ns)
    }

    /// The consumer group every daemon joins.
    pub fn group(&self) -> String {
        self.ns.clone()
    }

    /// A client's ack stream: `<ns>:ack:<client>`.
    pub fn acks(&self, client: &str) -> String {
        format!("{}:ack:{client}", self.ns)
    }

    /// The dead-letter stream: `<ns>:dlq`.
    pub fn dead_letters(&self) -> String {
        format!("{}:dlq", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_name_gives_its_partition_back() {
        let n = Names::new("w:x");
        for p in [0, 7, 1023] {
            assert_eq!(n.partition_of_stream(&n.stream(p)), Some(p));
        }
        for other in [
            "w:x:{p3}:meta",
            "other:{p3}:in",
            "w:x:{pq}:in",
            "w:x:dlq",
            "",
        ] {
            assert_eq!(n.partition_of_stream(other), None, "{other}");
        }
    }
}
