//! The restore's schedule: which indexes and constraints are built while other tables
//! are still loading.
//!
//! pg_dump puts every index, primary key, unique and exclusion constraint and foreign
//! key in the archive's post-data section. Restoring the sections one after the other
//! leaves cores idle at both ends of the load and re-reads every table from disk for
//! its index builds. Instead, as `pg_restore -j` does, a table's own indexes and
//! constraints are built as soon as its rows are in, and a foreign key as soon as both
//! of its tables are loaded and the referenced key exists.
//!
//! What is built early is decided from the archive's own dependency list, never from
//! object names: an entry goes early only when it is an index or constraint (by its
//! catalog identity, looked up in the table→objects map recorded at dump time) of a
//! table loaded by this restore, and everything it depends on in the post-data section
//! goes early too. Everything else (triggers, rules, policies, comments, grants,
//! partitioned tables, small tables) is left to the final `pg_restore` run, which
//! skips the entries built early.

use std::collections::{BTreeSet, HashMap, HashSet};

use ops_core::TableRef;

use crate::catalog::ObjectMap;
use crate::toc::TocEntry;

/// `pg_class`: indexes (and tables).
const PG_CLASS: u32 = 1259;
/// `pg_constraint`: primary keys, unique, exclusion, check and foreign keys.
const PG_CONSTRAINT: u32 = 2606;

/// Tables with less data than this are not worth a `pg_restore` process of their own:
/// their indexes are built by the final run, in parallel, as before.
pub(crate) const EARLY_MIN_BYTES: u64 = 4 << 20;

/// One unit of early work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Archive entry ids, in archive order.
    pub entries: Vec<u32>,
    /// Tables whose rows must all be loaded first.
    pub tables: BTreeSet<TableRef>,
    /// Steps that must be done first (indexes into [`Plan::steps`]).
    pub after: BTreeSet<usize>,
    /// A foreign key (batched with other ready foreign keys), else a table's own
    /// indexes and constraints.
    pub foreign_key: bool,
    /// The data bytes of the table it belongs to: bigger first.
    pub bytes: u64,
    /// For messages.
    pub table: TableRef,
}

/// The early work of a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
}

#[cfg(test)]
impl Plan {
    /// Every entry planned early.
    pub(crate) fn early_entries(&self) -> HashSet<u32> {
        self.steps
            .iter()
            .flat_map(|s| s.entries.iter().copied())
            .collect()
    }
}

/// What the planner needs to know about the restore.
pub(crate) struct Inputs<'a> {
    /// The whole table of contents, with dependencies (`pg_restore -l -v`).
    pub entries: &'a [TocEntry],
    /// Ids of the pre-data and post-data sections.
    pub pre_data: &'a HashSet<u32>,
    pub post_data: &'a HashSet<u32>,
    /// Ids restored (None: all).
    pub restoring: Option<&'a HashSet<u32>>,
    pub map: &'a ObjectMap,
    /// Data bytes per table loaded by this restore.
    pub loaded: &'a HashMap<TableRef, u64>,
    /// Tables whose rows go in through their partition root.
    pub via_root: &'a HashSet<TableRef>,
    pub min_bytes: u64,
}

/// Plans the early work. A dependency the planner cannot place keeps the entry (and
/// whatever depends on it) for the final run, so the plan is never wrong, only less
/// eager.
pub(crate) fn plan(input: &Inputs<'_>) -> Plan {
    let restored = |id: u32| input.restoring.is_none_or(|set| set.contains(&id));

    // Tables that take part: loaded here, big enough, and not part of a partition tree
    // (an index on a partitioned table spans partitions loaded at other times).
    let mut in_tree: HashSet<&TableRef> = HashSet::new();
    for t in &input.map.tables {
        if !t.partitions.is_empty() {
            in_tree.insert(&t.table);
            in_tree.extend(t.partitions.iter());
        }
    }
    let mut owner: HashMap<(u32, u32), (&TableRef, bool)> = HashMap::new();
    let mut table_entry: HashMap<u32, &TableRef> = HashMap::new();
    for t in &input.map.tables {
        table_entry.insert(t.oid, &t.table);
        let Some(&bytes) = input.loaded.get(&t.table) else {
            continue;
        };
        if bytes < input.min_bytes
            || in_tree.contains(&t.table)
            || input.via_root.contains(&t.table)
        {
            continue;
        }
        let fks: HashSet<u32> = t.foreign_keys.iter().map(|(oid, _)| *oid).collect();
        for &(catalog, oid) in &t.objects {
            if (catalog == PG_CLASS && oid != t.oid) || catalog == PG_CONSTRAINT {
                owner.insert((catalog, oid), (&t.table, fks.contains(&oid)));
            }
        }
    }

    // Candidates: post-data entries restored here that are such an index or constraint.
    let by_id: HashMap<u32, &TocEntry> = input.entries.iter().map(|e| (e.id, e)).collect();
    let mut candidate: HashMap<u32, (&TableRef, bool)> = input
        .entries
        .iter()
        .filter(|e| input.post_data.contains(&e.id) && restored(e.id))
        .filter_map(|e| owner.get(&(e.catalog, e.oid)).map(|o| (e.id, *o)))
        .collect();

    // Drop candidates that depend on what the final run builds (or on a foreign key),
    // until nothing changes.
    loop {
        let demoted: Vec<u32> = candidate
            .keys()
            .copied()
            .filter(|id| {
                by_id[id].deps.iter().any(|d| {
                    if !restored(*d) || !by_id.contains_key(d) {
                        return false; // not restored: pg_restore ignores it too
                    }
                    if input.pre_data.contains(d) {
                        return false; // done before any row is loaded
                    }
                    match candidate.get(d) {
                        Some((_, fk)) => *fk, // only keys and indexes may be waited for
                        None => {
                            // Table data: fine when that table is loaded here.
                            let e = by_id[d];
                            !(e.catalog == 0
                                && table_entry
                                    .get(&e.oid)
                                    .is_some_and(|t| input.loaded.contains_key(*t)))
                        }
                    }
                })
            })
            .collect();
        if demoted.is_empty() {
            break;
        }
        for id in demoted {
            candidate.remove(&id);
        }
    }

    // One step per table for its own indexes and constraints, one per foreign key.
    let mut steps: Vec<Step> = Vec::new();
    let mut table_step: HashMap<&TableRef, usize> = HashMap::new();
    let mut step_of: HashMap<u32, usize> = HashMap::new();
    for e in input
        .entries
        .iter()
        .filter(|e| candidate.contains_key(&e.id))
    {
        let (table, fk) = candidate[&e.id];
        let index = if fk {
            steps.push(new_step(table, true, input.loaded[table]));
            steps.len() - 1
        } else {
            *table_step.entry(table).or_insert_with(|| {
                steps.push(new_step(table, false, input.loaded[table]));
                steps.len() - 1
            })
        };
        steps[index].entries.push(e.id);
        step_of.insert(e.id, index);
    }
    for (index, step) in steps.iter_mut().enumerate() {
        for id in &step.entries {
            for d in &by_id[id].deps {
                if let Some(&other) = step_of.get(d) {
                    if other != index {
                        step.after.insert(other);
                    }
                } else if let Some(e) = by_id.get(d)
                    && let Some(t) = table_entry.get(&e.oid)
                    && (e.catalog == PG_CLASS || e.catalog == 0)
                    && input.loaded.contains_key(*t)
                {
                    step.tables.insert((*t).clone());
                }
            }
        }
    }
    // Foreign keys also wait for the referenced table (its key step is in `after`
    // when built early; its rows are waited for here in any case).
    for t in &input.map.tables {
        for (oid, target) in &t.foreign_keys {
            if let Some(e) = input
                .entries
                .iter()
                .find(|e| e.catalog == PG_CONSTRAINT && e.oid == *oid)
                && let Some(&index) = step_of.get(&e.id)
                && input.loaded.contains_key(target)
            {
                steps[index].tables.insert(target.clone());
            }
        }
    }
    if has_cycle(&steps) {
        return Plan::default();
    }
    Plan { steps }
}

fn new_step(table: &TableRef, foreign_key: bool, bytes: u64) -> Step {
    Step {
        entries: Vec::new(),
        tables: BTreeSet::from([table.clone()]),
        after: BTreeSet::new(),
        foreign_key,
        bytes,
        table: table.clone(),
    }
}

/// Whether the steps' `after` relation has a cycle (then nothing is built early).
fn has_cycle(steps: &[Step]) -> bool {
    let mut waiting: Vec<usize> = steps.iter().map(|s| s.after.len()).collect();
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for (j, s) in steps.iter().enumerate() {
            if s.after.contains(&i) {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    done != steps.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TableObjects;

    fn entry(id: u32, catalog: u32, oid: u32, deps: &[u32]) -> TocEntry {
        TocEntry {
            id,
            catalog,
            oid,
            deps: deps.to_vec(),
            line: format!("{id}; {catalog} {oid} X"),
        }
    }

    fn table(name: &str, oid: u32, objects: &[(u32, u32)], fks: &[(u32, &str)]) -> TableObjects {
        let mut all = vec![(PG_CLASS, oid)];
        all.extend_from_slice(objects);
        TableObjects {
            table: TableRef::new("public", name),
            oid,
            objects: all,
            partitions: Vec::new(),
            foreign_keys: fks
                .iter()
                .map(|(o, t)| (*o, TableRef::new("public", *t)))
                .collect(),
        }
    }

    /// Two tables `a` (oid 100) and `b` (oid 200); b references a.
    /// Entries: 1 TABLE a, 2 TABLE b (pre-data); 3, 4 TABLE DATA; 5 PK a (constraint
    /// 101), 6 index b (class 201), 7 FK b→a (constraint 202, depends on 5), 8 trigger
    /// on b, 9 comment on index b (depends on 6).
    fn archive() -> (Vec<TocEntry>, HashSet<u32>, HashSet<u32>, ObjectMap) {
        let entries = vec![
            entry(1, PG_CLASS, 100, &[]),
            entry(2, PG_CLASS, 200, &[]),
            entry(3, 0, 100, &[1]),
            entry(4, 0, 200, &[2]),
            entry(5, PG_CONSTRAINT, 101, &[1]),
            entry(6, PG_CLASS, 201, &[2]),
            entry(7, PG_CONSTRAINT, 202, &[2, 5]),
            entry(8, 2620, 203, &[2]),
            entry(9, 0, 0, &[6]),
        ];
        let pre = HashSet::from([1, 2]);
        let post = HashSet::from([5, 6, 7, 8, 9]);
        let map = ObjectMap {
            tables: vec![
                table("a", 100, &[(PG_CONSTRAINT, 101)], &[]),
                table(
                    "b",
                    200,
                    &[(PG_CLASS, 201), (PG_CONSTRAINT, 202), (2620, 203)],
                    &[(202, "a")],
                ),
            ],
            schemas: Default::default(),
        };
        (entries, pre, post, map)
    }

    fn t(name: &str) -> TableRef {
        TableRef::new("public", name)
    }

    fn run(loaded: &[(&str, u64)], restoring: Option<&HashSet<u32>>, min: u64) -> Plan {
        let (entries, pre, post, map) = archive();
        let loaded: HashMap<TableRef, u64> = loaded.iter().map(|(n, b)| (t(n), *b)).collect();
        plan(&Inputs {
            entries: &entries,
            pre_data: &pre,
            post_data: &post,
            restoring,
            map: &map,
            loaded: &loaded,
            via_root: &HashSet::new(),
            min_bytes: min,
        })
    }

    #[test]
    fn keys_and_indexes_per_table_foreign_keys_after_both_sides() {
        let plan = run(&[("a", 10), ("b", 20)], None, 0);
        assert_eq!(plan.steps.len(), 3, "{plan:?}");
        let a = plan
            .steps
            .iter()
            .position(|s| s.entries == [5])
            .expect("a's key");
        let b = &plan
            .steps
            .iter()
            .find(|s| s.entries == [6])
            .expect("b's index");
        assert!(!b.foreign_key && b.tables == BTreeSet::from([t("b")]));
        let fk = plan
            .steps
            .iter()
            .find(|s| s.entries == [7])
            .expect("the fk");
        assert!(fk.foreign_key);
        assert_eq!(fk.tables, BTreeSet::from([t("a"), t("b")]));
        assert_eq!(fk.after, BTreeSet::from([a]));
        assert_eq!(
            plan.early_entries(),
            HashSet::from([5, 6, 7]),
            "trigger, comment: final run"
        );
    }

    #[test]
    fn a_small_referenced_table_keeps_its_key_and_the_foreign_key_for_the_final_run() {
        let plan = run(&[("a", 10), ("b", 20)], None, 15);
        assert_eq!(plan.early_entries(), HashSet::from([6]), "{plan:?}");
    }

    #[test]
    fn entries_not_restored_are_not_waited_for() {
        // Restoring b only, a exists in the target: the fk waits for b's rows only.
        let restoring = HashSet::from([2, 4, 6, 7, 8, 9]);
        let plan = run(&[("b", 20)], Some(&restoring), 0);
        let fk = plan
            .steps
            .iter()
            .find(|s| s.entries == [7])
            .expect("the fk");
        assert_eq!(fk.tables, BTreeSet::from([t("b")]));
        assert!(fk.after.is_empty());
        assert_eq!(plan.early_entries(), HashSet::from([6, 7]));
    }

    #[test]
    fn partition_trees_are_left_to_the_final_run() {
        let (entries, pre, post, mut map) = archive();
        map.tables[0].partitions = vec![t("b")];
        let loaded = HashMap::from([(t("a"), 10), (t("b"), 20)]);
        let plan = plan(&Inputs {
            entries: &entries,
            pre_data: &pre,
            post_data: &post,
            restoring: None,
            map: &map,
            loaded: &loaded,
            via_root: &HashSet::new(),
            min_bytes: 0,
        });
        assert!(plan.steps.is_empty(), "{plan:?}");
    }

    #[test]
    fn an_index_waiting_on_a_late_entry_waits_for_the_final_run() {
        let (mut entries, pre, post, map) = archive();
        entries[5].deps.push(8); // b's index depends on the trigger (made up)
        let loaded = HashMap::from([(t("a"), 10), (t("b"), 20)]);
        let plan = plan(&Inputs {
            entries: &entries,
            pre_data: &pre,
            post_data: &post,
            restoring: None,
            map: &map,
            loaded: &loaded,
            via_root: &HashSet::new(),
            min_bytes: 0,
        });
        assert_eq!(plan.early_entries(), HashSet::from([5, 7]), "{plan:?}");
    }
}
