//! Catalog queries run inside the dump snapshot: which tables hold rows, their columns
//! and sizes, and which schema objects belong to which table (recorded in the schema
//! stream's meta so that a restore can pick one table's indexes, constraints and
//! triggers out of the pg_dump archive without parsing object names).

use std::collections::BTreeMap;

use ops_core::{Result, TableRef};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::errors::{column, query_error};

/// A relation of kind `r` (ordinary table, partition, inheritance child) or `p`
/// (partitioned parent, no storage).
#[derive(Debug, Clone)]
pub(crate) struct CatalogTable {
    pub oid: u32,
    pub table: TableRef,
    pub partitioned: bool,
    pub bytes: u64,
    /// Stored columns in attnum order (generated and dropped columns left out).
    pub columns: Vec<String>,
    /// Member of an extension: pg_dump dumps it (or its configuration rows) itself.
    pub extension_member: bool,
    /// `UNLOGGED`: its rows cannot be read on a standby.
    pub unlogged: bool,
}

/// Lists user tables as the snapshot sees them.
///
/// # Errors
/// Database errors.
pub(crate) async fn list_tables(client: &Client, version_num: i32) -> Result<Vec<CatalogTable>> {
    let generated = if version_num >= 120000 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
                CASE WHEN c.relkind = 'r' THEN pg_relation_size(c.oid) ELSE 0 END::int8, 0::int8,
                ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped {generated}
                      ORDER BY a.attnum),
                EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                        AND d.objid = c.oid AND d.deptype = 'e'),
                c.relpersistence = 'u'
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
         ORDER BY 2, 3"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| query_error(e, "listing tables"))?;
    let mut out = Vec::with_capacity(rows.len());
    const DOING: &str = "listing tables";
    for row in rows {
        let kind: String = column(&row, 3, DOING)?;
        let bytes: i64 = column(&row, 4, DOING)?;
        out.push(CatalogTable {
            oid: column(&row, 0, DOING)?,
            table: TableRef::new(
                column::<String>(&row, 1, DOING)?,
                column::<String>(&row, 2, DOING)?,
            ),
            partitioned: kind == "p",
            bytes: u64::try_from(bytes).unwrap_or(0),
            columns: column(&row, 6, DOING)?,
            extension_member: column(&row, 7, DOING)?,
            unlogged: column(&row, 8, DOING)?,
        });
    }
    Ok(out)
}

/// Objects that belong to one table, identified as pg_dump's archive identifies them:
/// `(catalog oid, object oid)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableObjects {
    pub table: TableRef,
    pub oid: u32,
    /// The table itself, its indexes, constraints, triggers, defaults, rules,
    /// policies, statistics objects and owned sequences.
    pub objects: Vec<(u32, u32)>,
    /// Direct partitions of a partitioned table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<TableRef>,
    /// Foreign keys: constraint oid and the referenced table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<(u32, TableRef)>,
}

/// The table→objects map recorded with the schema stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObjectMap {
    pub tables: Vec<TableObjects>,
    /// Schema name → pg_namespace oid.
    pub schemas: BTreeMap<String, u32>,
}

/// Meta key of the schema stream holding the [`ObjectMap`] as JSON.
pub(crate) const OBJECT_MAP_META: &str = "table_objects";

/// Builds the [`ObjectMap`] for `tables`.
///
/// # Errors
/// Database errors.
pub(crate) async fn object_map(client: &Client, tables: &[CatalogTable]) -> Result<ObjectMap> {
    let rows = client
        .query(
            "SELECT conrelid, 'pg_constraint'::regclass::oid, oid, confrelid FROM pg_constraint WHERE conrelid <> 0
             UNION ALL SELECT indrelid, 'pg_class'::regclass::oid, indexrelid, 0::oid FROM pg_index
             UNION ALL SELECT tgrelid, 'pg_trigger'::regclass::oid, oid, 0::oid FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL SELECT adrelid, 'pg_attrdef'::regclass::oid, oid, 0::oid FROM pg_attrdef
             UNION ALL SELECT ev_class, 'pg_rewrite'::regclass::oid, oid, 0::oid FROM pg_rewrite WHERE rulename <> '_RETURN'
             UNION ALL SELECT polrelid, 'pg_policy'::regclass::oid, oid, 0::oid FROM pg_policy
             UNION ALL SELECT stxrelid, 'pg_statistic_ext'::regclass::oid, oid, 0::oid FROM pg_statistic_ext
             UNION ALL SELECT d.refobjid, 'pg_class'::regclass::oid, d.objid, 0::oid
                 FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.deptype IN ('a', 'i')",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "reading which objects belong to which table"))?;
    let by_oid: BTreeMap<u32, &CatalogTable> = tables.iter().map(|t| (t.oid, t)).collect();
    let mut map: BTreeMap<u32, TableObjects> = tables
        .iter()
        .map(|t| {
            (
                t.oid,
                TableObjects {
                    table: t.table.clone(),
                    oid: t.oid,
                    objects: vec![(1259, t.oid)],
                    partitions: Vec::new(),
                    foreign_keys: Vec::new(),
                },
            )
        })
        .collect();
    for row in rows {
        const DOING: &str = "reading which objects belong to which table";
        let rel: u32 = column(&row, 0, DOING)?;
        let class: u32 = column(&row, 1, DOING)?;
        let oid: u32 = column(&row, 2, DOING)?;
        let referenced: u32 = column(&row, 3, DOING)?;
        if let Some(entry) = map.get_mut(&rel) {
            entry.objects.push((class, oid));
            if referenced != 0
                && let Some(target) = by_oid.get(&referenced)
            {
                entry.foreign_keys.push((oid, target.table.clone()));
            }
        }
    }
    let inherits = client
        .query(
            "SELECT i.inhparent, i.inhrelid FROM pg_inherits i
             JOIN pg_class p ON p.oid = i.inhparent AND p.relkind = 'p'",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "reading partitions"))?;
    for row in inherits {
        let parent: u32 = column(&row, 0, "reading partitions")?;
        let child: u32 = column(&row, 1, "reading partitions")?;
        if let (Some(child), Some(entry)) = (by_oid.get(&child), map.get_mut(&parent)) {
            entry.partitions.push(child.table.clone());
        }
    }
    let schemas = client
        .query(
            "SELECT nspname::text, oid FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog', 'information_schema')
               AND nspname !~ '^pg_(toast|temp_|toast_temp_)'",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "listing schemas"))?
        .into_iter()
        .map(|r| {
            Ok((
                column(&r, 0, "listing schemas")?,
                column(&r, 1, "listing schemas")?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(ObjectMap {
        tables: map.into_values().collect(),
        schemas,
    })
}
