//! The ledger's schema, versioned: each migration is a SQL file embedded in the binary, applied
//! once, in order, recorded in `schema_migrations`. Every replica runs [`migrate`] on connect,
//! under an advisory lock (one at a time); an empty database migrates to [`CURRENT`], a
//! database at [`CURRENT`] is left alone, and one at a newer version is refused
//! ([`LedgerError::SchemaTooNew`]): a newer Tollgate migrated it and this one does not know
//! its tables.

use super::LedgerError;

/// A migration: its version and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version after it is applied (1, 2, ...).
    pub version: i32,
    /// Short name, recorded with it.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// A migration of `version`, `name`d, from its SQL file.
macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("migrations/", $file)),
        }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "ledger", "0001_ledger.sql"),
    migration!(2, "views", "0002_views.sql"),
    migration!(3, "payer index", "0003_payer_index.sql"),
    migration!(4, "refunds", "0004_refunds.sql"),
    migration!(5, "bucket index", "0005_bucket_index.sql"),
];

/// The schema version this build writes and reads.
pub const CURRENT: i32 = 5;

/// Arbitrary, fixed: the advisory lock the replicas migrate under.
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version found (0: an empty database).
    pub from: i32,
    /// The versions applied now, in order (empty: it was current).
    pub applied: Vec<i32>,
}

/// Bring the database to [`CURRENT`], in one transaction.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Migrated, LedgerError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    let from: i32 = row.get(0);
    if from > CURRENT {
        return Err(LedgerError::SchemaTooNew {
            found: from,
            supported: CURRENT,
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(Migrated { from, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_up_to_current() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i).unwrap_or(-1) + 1, "{}", m.name);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(CURRENT));
    }
}
