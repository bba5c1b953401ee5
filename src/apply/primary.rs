//! Which server writ's reads go to: the primary, whatever `readPreference`
//! the URI names. Every read writ makes (a post-image, a stale check, a
//! read-through on a cache miss, a list) must see the committed writes it
//! orders against; a secondary behind could fill the cache with a version
//! older than an acknowledged write.
//!
//! On a direct connection (`directConnection=true`) to one replica-set
//! member the driver selects that member whatever the read preference, and
//! reads a secondary as `primaryPreferred`: there a predicate that takes only
//! a primary (or a standalone server, a mongos, a load balancer) makes the
//! connection fail server selection instead, naming the criteria (said as
//! "no MongoDB primary among the servers reached"). Elsewhere the read
//! preference `primary` itself: a predicate would go out as
//! `primaryPreferred` on a replica set, and a primary that just stepped down
//! would answer as a secondary instead of refusing (NotPrimary) until the
//! driver's next heartbeat.

use mongodb::options::{ReadPreference, SelectionCriteria};

/// The selection criteria of writ's MongoDB client, by whether the URI asks
/// for a direct connection.
pub(super) fn criteria(direct_connection: Option<bool>) -> SelectionCriteria {
    if direct_connection == Some(true) {
        SelectionCriteria::Predicate(std::sync::Arc::new(|server: &mongodb::ServerInfo| {
            writable(server.server_type())
        }))
    } else {
        SelectionCriteria::ReadPreference(ReadPreference::Primary)
    }
}

/// Whether a server of this type takes writ's reads: a primary, never a
/// secondary behind it.
fn writable(t: mongodb::ServerType) -> bool {
    use mongodb::ServerType as T;
    matches!(
        t,
        T::RsPrimary | T::Standalone | T::Mongos | T::LoadBalancer
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_primary_takes_reads() {
        use mongodb::ServerType as T;
        for t in [T::RsPrimary, T::Standalone, T::Mongos, T::LoadBalancer] {
            assert!(super::writable(t), "{t:?}");
        }
        for t in [
            T::RsSecondary,
            T::RsArbiter,
            T::RsOther,
            T::RsGhost,
            T::Unknown,
        ] {
            assert!(!super::writable(t), "{t:?}");
        }
    }

    #[test]
    fn the_predicate_only_on_a_direct_connection() {
        use mongodb::options::SelectionCriteria as C;
        assert!(matches!(super::criteria(Some(true)), C::Predicate(_)));
        assert!(matches!(super::criteria(None), C::ReadPreference(_)));
        assert!(matches!(super::criteria(Some(false)), C::ReadPreference(_)));
    }
}
