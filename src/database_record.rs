//! The MongoDB database a namespace's daemons write to, recorded in
//! partition 0's meta hash (field `database`) so that a client or tool
//! configured with another database is refused when it connects.
//!
//! Writes land where the daemon applies them whatever a client names, but a
//! client reads MongoDB itself on a cache miss, and asks it about writes
//! whose stream entries are gone: configured with another database (the
//! default `writ` while the daemon runs on `backtest-kit`, say, right after
//! a switch from the official package) every miss would read nothing, a
//! restarted trading process would find no open position, and applied
//! writes could be settled as lost. A tool (`replay`, `dlq retry`,
//! `rebuild-cache`) would apply to, or read from, the wrong database.
//!
//! Each daemon records its database when it starts, and again at each
//! tenure of partition 0, so a Redis that lost the record has it back.
//! Daemons of one namespace on different databases (a mistake: one
//! namespace, one database) overwrite each other's record, each with a
//! warning, and which one a client meets depends on who wrote last. Checked at connect only: a client that connected before
//! any daemon recorded one is not checked.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Names;
use crate::redis_conn::Conn;

/// The meta hash field.
pub const FIELD: &str = "database";

/// For a daemon at start and at each tenure of partition 0: records
/// `config.database`. A Redis at
/// `maxmemory` refuses the write; that is logged, and the daemon runs (the
/// record only guards clients).
pub async fn record(conn: &mut Conn, config: &Config) -> Result<()> {
    let names = Names::new(&config.namespace);
    let before = recorded(conn, &names).await?;
    if before.as_deref() == Some(config.database.as_str()) {
        return Ok(());
    }
    if let Some(other) = before {
        tracing::warn!(
            recorded = %other,
            database = %config.database,
            "namespace {:?} recorded MongoDB database {other:?}; this daemon writes to {:?} and records it. \
             Every daemon and client of a namespace must use one database: clients configured with {other:?} \
             are refused from now on",
            config.namespace,
            config.database,
        );
    }
    let r: redis::RedisResult<()> = redis::cmd("HSET")
        .arg(names.meta(0))
        .arg(FIELD)
        .arg(&config.database)
        .query_async(conn)
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot record this daemon's MongoDB database in the namespace's meta hash; clients configured with another database are not refused");
    }
    Ok(())
}

/// For a client or tool at connect: refuses ([`Error::Config`]) a
/// `config.database` other than the one the namespace's daemons record.
pub async fn check(conn: &mut Conn, config: &Config) -> Result<()> {
    let names = Names::new(&config.namespace);
    match recorded(conn, &names).await? {
        Some(d) if d != config.database => {
            Err(Error::Config(refusal(&names, &config.database, &d)))
        }
        _ => Ok(()),
    }
}

/// The database the namespace's daemons record, if one does.
async fn recorded(conn: &mut Conn, names: &Names) -> Result<Option<String>> {
    let db: Option<String> = redis::cmd("HGET")
        .arg(names.meta(0))
        .arg(FIELD)
        .query_async(conn)
        .await?;
    Ok(db.filter(|d| !d.is_empty()))
}

fn refusal(names: &Names, configured: &str, recorded: &str) -> String {
    format!(
        "this process is configured with MongoDB database {configured:?} (mongodb.database; Node: \
         mongodbDatabase, WRIT_MONGODB_DATABASE), but the daemons of namespace {:?} write to {recorded:?} \
         ({} field {FIELD}): its reads would miss every write. Set the database to {recorded:?} (the \
         database in a MongoDB URI's path is not used for it)",
        names.ns(),
        names.meta(0),
    )
}
