//! Selecting entries of a pg_dump archive's table of contents for a partial restore.
//!
//! `pg_restore -l -v` prints one line per entry — `ID; CATALOG-OID OBJECT-OID DESC
//! SCHEMA TAG OWNER` — followed by `;\tdepends on: …` with the ids it depends on. Names
//! in those lines are not quoted, so they cannot be parsed reliably; we never parse
//! them. An entry is picked by its catalog identity `(catalog oid, object oid)`, looked
//! up in the table→objects map recorded at dump time, and entries without an identity
//! (comments, ACLs, `SEQUENCE SET`, `SEQUENCE OWNED BY`, `TABLE ATTACH`) follow the
//! entries they depend on, unless they also depend on an object of a table that is not
//! restored.

use std::collections::{BTreeSet, HashMap, HashSet};

use ops_core::TableRef;

use crate::catalog::ObjectMap;

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TocEntry {
    pub id: u32,
    pub catalog: u32,
    pub oid: u32,
    pub deps: Vec<u32>,
    /// The line as pg_restore printed it (for the `-L` file).
    pub line: String,
}

/// Parses `pg_restore -l [-v]` output.
pub(crate) fn parse_list(text: &str) -> Vec<TocEntry> {
    let mut out: Vec<TocEntry> = Vec::new();
    for line in text.lines() {
        if let Some(deps) = line.strip_prefix(";\tdepends on:") {
            if let Some(last) = out.last_mut() {
                last.deps = deps
                    .split_whitespace()
                    .filter_map(|d| d.parse().ok())
                    .collect();
            }
            continue;
        }
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let Some((id, rest)) = line.split_once("; ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(catalog), Some(oid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(id), Ok(catalog), Ok(oid)) = (id.parse(), catalog.parse(), oid.parse()) else {
            continue;
        };
        out.push(TocEntry {
            id,
            catalog,
            oid,
            deps: Vec::new(),
            line: line.to_owned(),
        });
    }
    out
}

fn is_session_entry(e: &TocEntry) -> bool {
    e.catalog == 0
        && e.oid == 0
        && [
            "ENCODING - ENCODING",
            "STDSTRINGS - STDSTRINGS",
            "SEARCHPATH - SEARCHPATH",
        ]
        .iter()
        .any(|k| e.line.contains(k))
}

/// Picks the entries that restore `tables` with their indexes, constraints, triggers,
/// defaults, policies and owned sequences. A foreign key is kept when the table it
/// references is restored too or already `exists` in the target. Returns the ids in
/// archive order.
pub(crate) fn select_tables(
    entries: &[TocEntry],
    map: &ObjectMap,
    tables: &BTreeSet<TableRef>,
    exists: &dyn Fn(&TableRef) -> bool,
) -> Vec<u32> {
    let mut wanted: HashSet<(u32, u32)> = HashSet::new();
    let mut unwanted: HashSet<(u32, u32)> = HashSet::new();
    let mut wanted_tables: HashSet<u32> = HashSet::new();
    let mut unwanted_tables: HashSet<u32> = HashSet::new();
    for t in &map.tables {
        if tables.contains(&t.table) {
            wanted_tables.insert(t.oid);
            let dropped_fks: HashSet<u32> = t
                .foreign_keys
                .iter()
                .filter(|(_, target)| !tables.contains(target) && !exists(target))
                .map(|(oid, _)| *oid)
                .collect();
            for obj in &t.objects {
                if dropped_fks.contains(&obj.1) {
                    unwanted.insert(*obj);
                } else {
                    wanted.insert(*obj);
                }
            }
        } else {
            unwanted_tables.insert(t.oid);
            unwanted.extend(t.objects.iter().copied());
        }
    }
    let mut included: HashSet<u32> = HashSet::new();
    let mut excluded: HashSet<u32> = HashSet::new();
    for e in entries {
        let identity = (e.catalog, e.oid);
        if is_session_entry(e)
            || wanted.contains(&identity)
            || (e.catalog == 0 && wanted_tables.contains(&e.oid))
        {
            included.insert(e.id);
        } else if unwanted.contains(&identity)
            || (e.catalog == 0 && unwanted_tables.contains(&e.oid))
        {
            excluded.insert(e.id);
        }
    }
    follow_dependents(entries, &mut included, &excluded);
    entries
        .iter()
        .filter(|e| included.contains(&e.id))
        .map(|e| e.id)
        .collect()
}

/// What the chosen entries need that belongs to no table: schemas, types, domains,
/// functions (a trigger's function), collations, extensions — followed upwards through
/// the dependencies. Relations (other tables, views, sequences) are never pulled in.
/// These may already exist in the target, so they are restored tolerating
/// "already exists".
pub(crate) fn prerequisites(entries: &[TocEntry], map: &ObjectMap, chosen: &[u32]) -> Vec<u32> {
    let owned: HashSet<(u32, u32)> = map
        .tables
        .iter()
        .flat_map(|t| t.objects.iter().copied())
        .collect();
    let by_id: HashMap<u32, &TocEntry> = entries.iter().map(|e| (e.id, e)).collect();
    let chosen: HashSet<u32> = chosen.iter().copied().collect();
    let mut found: HashSet<u32> = HashSet::new();
    let mut todo: Vec<u32> = chosen.iter().copied().collect();
    while let Some(id) = todo.pop() {
        let Some(e) = by_id.get(&id) else { continue };
        for dep in &e.deps {
            let Some(d) = by_id.get(dep) else { continue };
            let is_relation = d.catalog == 1259;
            if chosen.contains(dep)
                || found.contains(dep)
                || d.oid == 0
                || is_relation
                || owned.contains(&(d.catalog, d.oid))
            {
                continue;
            }
            found.insert(*dep);
            todo.push(*dep);
        }
    }
    entries
        .iter()
        .filter(|e| found.contains(&e.id))
        .map(|e| e.id)
        .collect()
}

/// Picks the entries of `schemas`: the ids pg_restore selects with `-n` (`in_schemas`),
/// the schemas themselves, and what depends only on those.
pub(crate) fn select_schemas(
    entries: &[TocEntry],
    map: &ObjectMap,
    schemas: &[String],
    in_schemas: &HashSet<u32>,
) -> Vec<u32> {
    let schema_oids: HashSet<u32> = schemas
        .iter()
        .filter_map(|s| map.schemas.get(s).copied())
        .collect();
    let mut included: HashSet<u32> = in_schemas.clone();
    for e in entries {
        if is_session_entry(e) || (e.catalog == 2615 && schema_oids.contains(&e.oid)) {
            included.insert(e.id);
        }
    }
    let excluded: HashSet<u32> = entries
        .iter()
        .filter(|e| e.oid != 0 && !included.contains(&e.id))
        .map(|e| e.id)
        .collect();
    follow_dependents(entries, &mut included, &excluded);
    entries
        .iter()
        .filter(|e| included.contains(&e.id))
        .map(|e| e.id)
        .collect()
}

/// Adds identity-less entries (comments, ACLs, sequence values, attachments) whose
/// dependencies include an included entry and no excluded one.
fn follow_dependents(entries: &[TocEntry], included: &mut HashSet<u32>, excluded: &HashSet<u32>) {
    loop {
        let mut grew = false;
        for e in entries {
            if e.oid != 0 || included.contains(&e.id) || excluded.contains(&e.id) {
                continue;
            }
            let any_in = e.deps.iter().any(|d| included.contains(d));
            let any_out = e.deps.iter().any(|d| excluded.contains(d));
            if any_in && !any_out {
                included.insert(e.id);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
}

/// The `-L` file for the chosen ids, in archive order.
pub(crate) fn list_file(entries: &[TocEntry], ids: &[u32]) -> String {
    let chosen: HashSet<u32> = ids.iter().copied().collect();
    let by_id: HashMap<u32, &TocEntry> = entries.iter().map(|e| (e.id, e)).collect();
    let mut out = String::new();
    for e in entries {
        if chosen.contains(&e.id) && by_id.contains_key(&e.id) {
            out.push_str(&e.line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TableObjects;

    const LIST: &str = ";
; Selected TOC Entries:
;
3373; 0 0 ENCODING - ENCODING 
216; 1259 16385 TABLE public t postgres
3378; 0 0 COMMENT public TABLE t postgres
;\tdepends on: 216
220; 1259 16405 TABLE public we.ird postgres
215; 1259 16384 SEQUENCE public t_id_seq postgres
;\tdepends on: 216
3379; 0 0 SEQUENCE OWNED BY public t_id_seq postgres
;\tdepends on: 215
3384; 0 0 SEQUENCE SET public t_id_seq postgres
;\tdepends on: 215
3220; 2604 16388 DEFAULT public t id postgres
;\tdepends on: 216 215 216
3222; 2606 16392 CONSTRAINT public t t_pkey postgres
;\tdepends on: 216
3223; 1259 16408 INDEX public t_x_idx postgres
;\tdepends on: 216
3367; 0 16385 ROW SECURITY public t postgres
;\tdepends on: 216
3500; 2606 16500 FK CONSTRAINT public t t_w_fkey postgres
;\tdepends on: 216 220
3501; 0 0 COMMENT public CONSTRAINT t_w_fkey ON t postgres
;\tdepends on: 3500
";

    fn map() -> ObjectMap {
        ObjectMap {
            tables: vec![
                TableObjects {
                    table: TableRef::new("public", "t"),
                    oid: 16385,
                    objects: vec![
                        (1259, 16385),
                        (1259, 16384),
                        (2604, 16388),
                        (2606, 16392),
                        (1259, 16408),
                        (2606, 16500),
                    ],
                    partitions: vec![],
                    foreign_keys: vec![(16500, TableRef::new("public", "we.ird"))],
                },
                TableObjects {
                    table: TableRef::new("public", "we.ird"),
                    oid: 16405,
                    objects: vec![(1259, 16405)],
                    partitions: vec![],
                    foreign_keys: vec![],
                },
            ],
            schemas: [("public".to_owned(), 2200)].into_iter().collect(),
        }
    }

    #[test]
    fn one_table_with_its_objects_without_dangling_fk() {
        let entries = parse_list(LIST);
        assert_eq!(entries.len(), 13);
        let tables = [TableRef::new("public", "t")].into_iter().collect();
        let ids = select_tables(&entries, &map(), &tables, &|_| false);
        assert_eq!(
            ids,
            vec![3373, 216, 3378, 215, 3379, 3384, 3220, 3222, 3223, 3367]
        );
        // The referenced table exists in the target: the FK and its comment come along.
        let ids = select_tables(&entries, &map(), &tables, &|_| true);
        assert!(ids.contains(&3500) && ids.contains(&3501));
        assert!(!ids.contains(&220));
        let file = list_file(&entries, &ids);
        assert!(file.starts_with("3373; 0 0 ENCODING"));
    }
}
