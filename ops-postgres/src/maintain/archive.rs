//! Moving old rows into an archive table on PostgreSQL, in primary-key batches.
//!
//! Each batch is one statement in one transaction — `DELETE ... RETURNING` feeding an
//! `INSERT` — so a kill at any point (the client, its connection, its backend) either
//! moved a whole batch or nothing of it, and running again resumes. The rows of a
//! batch are taken `FOR UPDATE SKIP LOCKED`: a row the application holds is left for a
//! later batch instead of making the archiver (and everyone queued behind it) wait.
//! The archive table is created like the source (columns, defaults that do not draw
//! from the source's sequences, CHECK constraints, the primary key, so that a replay
//! can never store a row twice).
//!
//! The predicate is the operator's SQL, run as given inside parentheses: it is a
//! trusted input, like the rest of the operator's configuration.
//!
//! What must not live here: the maintenance actions (actions.rs), reports.

use std::time::{Duration, Instant};

use ops_core::maintain::{ArchiveReport, ArchiveSpec};
use ops_core::{Error, ErrorKind, Result, TableRef};
use tokio_postgres::Client;

use super::{connect, resolve_tables};
use crate::PostgresEngine;
use crate::errors::{column, query_error};
use crate::session::{qualified, quote_ident};

/// How long the archiver sleeps while the only matching rows left are locked by
/// other sessions, before it looks again.
const LOCKED_ROWS_RETRY: Duration = Duration::from_millis(200);
/// The longest single sleep while throttled (the limits are looked at again after).
const THROTTLE_SLEEP: Duration = Duration::from_millis(500);

/// Moves the rows of `spec.table` matching `spec.predicate` into `spec.into`.
///
/// # Errors
/// Connection errors; a source without a primary key, an archive table whose columns
/// differ, an empty predicate ([`ErrorKind::InvalidInput`]); a batch whose inserted
/// and deleted counts differ (rolled back; [`ErrorKind::Mismatch`]); limits that
/// stay exceeded for `spec.max_wait`, or matching rows that stay locked by others as
/// long ([`ErrorKind::Locked`], temporary: run again later, it resumes); a user who
/// cannot see replication and other sessions' transactions
/// ([`ErrorKind::PermissionDenied`]).
pub(crate) async fn archive(engine: &PostgresEngine, spec: &ArchiveSpec) -> Result<ArchiveReport> {
    if spec.predicate.trim().is_empty() {
        return Err(Error::invalid(
            "archive needs a condition on the rows to move (`true` moves every row)",
        ));
    }
    let mut client = connect(engine).await?;
    client
        .batch_execute(
            "SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0",
        )
        .await
        .map_err(|e| query_error(e, "setting the archive session's timeouts"))?;
    // PostgreSQL 14+: a batch whose client is gone (the archiver killed) stops within
    // a second and releases its row locks; older servers do not know the setting.
    let _ = client
        .batch_execute("SET client_connection_check_interval = '1s'")
        .await;
    let source = resolve_tables(&client, std::slice::from_ref(&spec.table))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("resolve_tables returned no table for one name"))?;
    let src = qualified(&source);
    refuse_cascading_references(&client, &src).await?;
    let pk = primary_key(&client, &src).await?;
    let target = find_archive(&client, &spec.into).await?;
    let source_columns = columns(&client, &src).await?;
    if let Some(existing) = &target {
        if qualified(existing) == src {
            return Err(Error::invalid(format!(
                "the archive table {src} is the source table: name another archive table"
            )));
        }
        let archive_columns = columns(&client, &qualified(existing)).await?;
        compare_columns(
            &src,
            &source_columns,
            &qualified(existing),
            &archive_columns,
        )?;
    }
    let predicate = format!("({})", spec.predicate);
    let mut report = ArchiveReport {
        dry_run: spec.dry_run,
        ..ArchiveReport::default()
    };
    if spec.dry_run {
        let matching = count_matching(&client, &src, &predicate).await?;
        report.rows = spec.max_rows.map_or(matching, |m| m.min(matching));
        // What a real run would leave: the rows it would not get to.
        report.remaining = matching - report.rows;
        return Ok(report);
    }
    check_visibility(&client).await?;
    let arch = match target {
        Some(t) => qualified(&t),
        None => {
            let created = create_archive(&mut client, &src, &spec.into, &pk).await?;
            report.created_archive = true;
            created
        }
    };

    let pk_list = pk
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let pk_of_s = pk
        .iter()
        .map(|c| format!("s.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut locked_since: Option<Instant> = None;
    loop {
        let limit = match spec.max_rows {
            Some(max) if report.rows >= max => break,
            Some(max) => spec.batch.min(max - report.rows),
            None => spec.batch,
        }
        .max(1);
        throttle(&client, spec, &mut report).await?;
        // The limit is a literal (not a parameter) so that a `$1` in the operator's
        // predicate cannot be taken for ours.
        let sql = format!(
            "WITH moved AS (\
               DELETE FROM {src} AS s WHERE ({pk_of_s}) IN (\
                 SELECT {pk_list} FROM {src} WHERE {predicate} \
                 ORDER BY {pk_list} LIMIT {limit} FOR UPDATE SKIP LOCKED) \
               RETURNING s.*), \
             copied AS (INSERT INTO {arch} SELECT * FROM moved RETURNING 1) \
             SELECT (SELECT count(*) FROM moved)::int8, (SELECT count(*) FROM copied)::int8"
        );
        let tx = client
            .transaction()
            .await
            .map_err(|e| query_error(e, "starting an archive batch"))?;
        let row = tx
            .query_one(&sql, &[])
            .await
            .map_err(|e| query_error(e, format!("moving a batch of {src} into {arch}")))?;
        let moved: i64 = column(&row, 0, "rows deleted")?;
        let copied: i64 = column(&row, 1, "rows inserted")?;
        if moved != copied {
            tx.rollback()
                .await
                .map_err(|e| query_error(e, "rolling back a batch whose counts differ"))?;
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "a batch deleted {moved} rows from {src} but inserted {copied} into {arch} \
                     (a trigger or rule on {arch}?); the batch was rolled back, nothing of it \
                     moved; {} rows moved before it in {} batches",
                    report.rows, report.batches
                ),
            ));
        }
        tx.commit()
            .await
            .map_err(|e| query_error(e, format!("committing a batch of {src}")))?;
        let moved = u64::try_from(moved).unwrap_or(0);
        if moved == 0 {
            // Nothing movable: done, unless matching rows are left that other
            // sessions hold locked (SKIP LOCKED passed them); those are tried again.
            if !any_matching(&client, &src, &predicate).await? {
                break;
            }
            let since = *locked_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= spec.max_wait {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!(
                        "the rows of {src} still matching stayed locked by other sessions for \
                         {:.0} s; moved {} rows in {} batches; run again later (it resumes)",
                        since.elapsed().as_secs_f64(),
                        report.rows,
                        report.batches
                    ),
                )
                .temporary());
            }
            tokio::time::sleep(LOCKED_ROWS_RETRY.max(spec.pause)).await;
            continue;
        }
        locked_since = None;
        report.rows += moved;
        report.batches += 1;
        tracing::debug!(
            table = %src,
            rows = report.rows,
            batches = report.batches,
            "archive batch committed"
        );
        if !spec.pause.is_zero() {
            tokio::time::sleep(spec.pause).await;
        }
    }
    report.remaining = count_matching(&client, &src, &predicate).await?;
    Ok(report)
}

/// Refuses a source that foreign keys point at with `ON DELETE CASCADE`, `SET NULL`
/// or `SET DEFAULT`: deleting the archived rows would delete or change rows of
/// those tables, silently and for good (the archive keeps no foreign keys). A
/// `NO ACTION` or `RESTRICT` reference is fine: a batch that would break it fails,
/// loudly, and nothing of it moves.
async fn refuse_cascading_references(client: &Client, src: &str) -> Result<()> {
    let doing = format!("looking for foreign keys that point at {src}");
    let rows = client
        .query(
            "SELECT quote_ident(k.conname), format('%I.%I', n.nspname, c.relname),
                    CASE k.confdeltype WHEN 'c' THEN 'ON DELETE CASCADE'
                                       WHEN 'n' THEN 'ON DELETE SET NULL'
                                       ELSE 'ON DELETE SET DEFAULT' END
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE k.contype = 'f' AND k.confrelid = $1::text::regclass
                AND k.confdeltype IN ('c', 'n', 'd')
                -- The copies a partitioned referring table gives its partitions are
                -- the same key, named once.
                AND NOT EXISTS (SELECT 1 FROM pg_constraint p
                                 WHERE p.oid = k.conparentid AND p.confrelid = k.confrelid)
              ORDER BY 2, 1",
            &[&src],
        )
        .await
        .map_err(|e| query_error(e, &doing))?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut named = Vec::with_capacity(rows.len());
    for r in &rows {
        let constraint: String = column(r, 0, &doing)?;
        let table: String = column(r, 1, &doing)?;
        let action: String = column(r, 2, &doing)?;
        named.push(format!("{constraint} on {table} ({action})"));
    }
    Err(Error::invalid(format!(
        "foreign keys point at {src} with an action on delete: {}; deleting the archived \
         rows from {src} would delete or change the rows of those tables that refer to them. \
         Nothing was moved. Archive the referring rows first, or change those constraints to \
         ON DELETE NO ACTION (then a batch whose rows are still referred to fails and moves \
         nothing)",
        named.join(", ")
    )))
}

/// The primary key's columns of `table`, in key order.
async fn primary_key(client: &Client, table: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table],
        )
        .await
        .map_err(|e| query_error(e, format!("reading the primary key of {table}")))?;
    if rows.is_empty() {
        return Err(Error::invalid(format!(
            "{table} has no primary key: archive moves rows in primary-key batches and needs \
             one to resume safely after a stop; add one (ALTER TABLE {table} ADD PRIMARY KEY \
             (...)) and run again"
        )));
    }
    rows.iter()
        .map(|r| column::<String>(r, 0, "primary key column"))
        .collect()
}

/// The archive table when it exists; an error when the name is something else.
async fn find_archive(client: &Client, into: &str) -> Result<Option<TableRef>> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&into],
        )
        .await
        .map_err(|e| query_error(e, format!("looking up the archive table {into}")))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let kind: String = column(&row, 2, "relkind")?;
    let table = TableRef::new(
        column::<String>(&row, 0, "schema")?,
        column::<String>(&row, 1, "name")?,
    );
    if kind != "r" && kind != "p" {
        return Err(Error::invalid(format!(
            "the archive {} exists but is not a table (relkind '{kind}'): name another",
            qualified(&table)
        )));
    }
    Ok(Some(table))
}

/// Column names and types of `table`, in order.
async fn columns(client: &Client, table: &str) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&table],
        )
        .await
        .map_err(|e| query_error(e, format!("reading the columns of {table}")))?;
    rows.iter()
        .map(|r| {
            Ok((
                column::<String>(r, 0, "column name")?,
                column::<String>(r, 1, "column type")?,
            ))
        })
        .collect()
}

/// Rows go in by position (`INSERT ... SELECT *`): the archive must have the same
/// columns with the same types in the same order.
fn compare_columns(
    src: &str,
    source: &[(String, String)],
    arch: &str,
    archive: &[(String, String)],
) -> Result<()> {
    for (i, pair) in source.iter().zip(archive.iter()).enumerate() {
        let ((sn, st), (an, at)) = pair;
        if sn != an || st != at {
            return Err(Error::invalid(format!(
                "the archive table {arch} does not match {src}: column {} is {an} {at} there \
                 but {sn} {st} in the source; name another archive table (it is created like the \
                 source) or make its columns the source's, in the same order",
                i + 1
            )));
        }
    }
    if source.len() != archive.len() {
        let (more, extra) = if source.len() > archive.len() {
            (src, &source[archive.len()..])
        } else {
            (arch, &archive[source.len()..])
        };
        return Err(Error::invalid(format!(
            "the archive table {arch} does not match {src}: {src} has {} columns, {arch} {}; \
             only {more} has {}; name another archive table or make the columns the same",
            source.len(),
            archive.len(),
            extra
                .iter()
                .map(|(n, t)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Creates the archive table like `src`, in one transaction; returns its name.
///
/// Kept: columns and types, NOT NULL, CHECK constraints, defaults (but not those
/// calling `nextval`: an archive row must not draw from the source's sequence, nor
/// tie the sequence to the archive), storage and comments, and the primary key, so
/// that no row can be archived twice. Not kept: identity and generated columns (their
/// values come from the source as they are), other unique constraints (a value unique
/// among the live rows need not be unique across the whole history), other indexes
/// (add those you query by), foreign keys and triggers.
async fn create_archive(
    client: &mut Client,
    src: &str,
    into: &str,
    pk: &[String],
) -> Result<String> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| query_error(e, "starting to create the archive table"))?;
    let parts: Vec<String> = column(
        &tx.query_one("SELECT parse_ident($1)", &[&into])
            .await
            .map_err(|e| query_error(e, format!("reading the archive table name '{into}'")))?,
        0,
        "archive name",
    )?;
    let (schema, name) = match parts.as_slice() {
        [name] => {
            let row = tx
                .query_one("SELECT current_schema()::text", &[])
                .await
                .map_err(|e| query_error(e, "reading the current schema"))?;
            let schema: Option<String> = column(&row, 0, "current schema")?;
            let schema = schema.ok_or_else(|| {
                Error::invalid(format!(
                    "no schema to create the archive table {name} in (the search path has \
                     none that exists): give it as schema.name"
                ))
            })?;
            (schema, name.clone())
        }
        [schema, name] => (schema.clone(), name.clone()),
        _ => {
            return Err(Error::invalid(format!(
                "the archive table '{into}' is not `name` or `schema.name`"
            )));
        }
    };
    let arch = qualified(&TableRef::new(schema, name));
    tx.batch_execute(&format!(
        "CREATE TABLE {arch} (LIKE {src} INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
         INCLUDING STORAGE INCLUDING COMMENTS)"
    ))
    .await
    .map_err(|e| query_error(e, format!("creating the archive table {arch} like {src}")))?;
    let sequenced = tx
        .query(
            "SELECT a.attname::text FROM pg_attrdef d \
             JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = to_regclass($1) \
               AND pg_get_expr(d.adbin, d.adrelid) ~* 'nextval\\('",
            &[&arch],
        )
        .await
        .map_err(|e| query_error(e, format!("reading the defaults of {arch}")))?;
    for row in &sequenced {
        let col: String = column(row, 0, "column")?;
        tx.batch_execute(&format!(
            "ALTER TABLE {arch} ALTER COLUMN {} DROP DEFAULT",
            quote_ident(&col)
        ))
        .await
        .map_err(|e| query_error(e, format!("dropping the sequence default of {arch}.{col}")))?;
    }
    let pk_list = pk
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!("ALTER TABLE {arch} ADD PRIMARY KEY ({pk_list})"))
        .await
        .map_err(|e| query_error(e, format!("adding the primary key to {arch}")))?;
    tx.commit()
        .await
        .map_err(|e| query_error(e, format!("creating the archive table {arch}")))?;
    Ok(arch)
}

async fn count_matching(client: &Client, src: &str, predicate: &str) -> Result<u64> {
    let row = client
        .query_one(
            &format!("SELECT count(*)::int8 FROM {src} WHERE {predicate}"),
            &[],
        )
        .await
        .map_err(|e| {
            query_error(
                e,
                format!("counting the rows of {src} matching {predicate}"),
            )
        })?;
    let n: i64 = column(&row, 0, "count")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn any_matching(client: &Client, src: &str, predicate: &str) -> Result<bool> {
    let row = client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {src} WHERE {predicate})"),
            &[],
        )
        .await
        .map_err(|e| query_error(e, format!("looking for rows of {src} matching {predicate}")))?;
    column(&row, 0, "exists")
}

/// The limits look at other users' sessions and at replication: without the right
/// to see them, the archiver would find nothing to wait for and never throttle.
async fn check_visibility(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            // USAGE, not MEMBER: a member of pg_monitor (or pg_read_all_stats) that does
            // not inherit its rights sees other sessions without their transaction
            // ages and the replicas without their lag, like a user without the role.
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), current_user::text",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "checking the right to see other sessions"))?;
    let sees: bool = column(&row, 0, "pg_read_all_stats")?;
    if !sees {
        let user: String = column(&row, 1, "current user")?;
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "archive waits while a replica lags or another transaction is old, which \
                 {user} cannot see; GRANT pg_monitor TO {user} (or pg_read_all_stats) and run \
                 again"
            ),
        ));
    }
    Ok(())
}

/// Waits while a replica lags or another transaction of this database is old, up to
/// `spec.max_wait`.
async fn throttle(client: &Client, spec: &ArchiveSpec, report: &mut ArchiveReport) -> Result<()> {
    let started = Instant::now();
    loop {
        let Some(reason) = over_limit(client, spec).await? else {
            return Ok(());
        };
        let waited = started.elapsed();
        if waited >= spec.max_wait {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "archive gave up after waiting {:.0} s: {reason}; moved {} rows in {} \
                     batches; run again later (it resumes)",
                    waited.as_secs_f64(),
                    report.rows,
                    report.batches
                ),
            )
            .temporary());
        }
        let nap = THROTTLE_SLEEP.min(spec.max_wait - waited);
        tracing::info!("archive waits: {reason}");
        tokio::time::sleep(nap).await;
        report.throttled_seconds += nap.as_secs_f64();
    }
}

/// Why the archiver must wait now, if it must.
async fn over_limit(client: &Client, spec: &ArchiveSpec) -> Result<Option<String>> {
    let row = client
        .query_one(
            "SELECT (SELECT extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication \
                     WHERE replay_lag IS NOT NULL ORDER BY replay_lag DESC LIMIT 1), \
                    (SELECT coalesce(application_name, '') || '@' || coalesce(client_addr::text, 'local') \
                     FROM pg_stat_replication WHERE replay_lag IS NOT NULL \
                     ORDER BY replay_lag DESC LIMIT 1), \
                    o.age, o.pid, o.usename, o.application_name \
             FROM (SELECT NULL) AS one LEFT JOIN ( \
               SELECT extract(epoch FROM now() - xact_start)::float8 AS age, pid, \
                      usename::text, application_name \
               FROM pg_stat_activity \
               WHERE pid <> pg_backend_pid() AND datname = current_database() \
                 AND backend_type = 'client backend' AND xact_start IS NOT NULL \
               ORDER BY xact_start LIMIT 1) AS o ON true",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "reading replication lag and transaction ages"))?;
    let lag: Option<f64> = column(&row, 0, "replay lag")?;
    let replica: Option<String> = column(&row, 1, "replica")?;
    let age: Option<f64> = column(&row, 2, "transaction age")?;
    let pid: Option<i32> = column(&row, 3, "pid")?;
    let user: Option<String> = column(&row, 4, "user")?;
    let app: Option<String> = column(&row, 5, "application")?;
    if let Some(lag) = lag.filter(|l| *l > spec.max_replication_lag.as_secs_f64()) {
        return Ok(Some(format!(
            "replica {} lags {lag:.1} s behind (limit {:.1} s)",
            replica.as_deref().unwrap_or("?"),
            spec.max_replication_lag.as_secs_f64()
        )));
    }
    if let Some(age) = age.filter(|a| *a > spec.max_transaction_age.as_secs_f64()) {
        return Ok(Some(format!(
            "session pid {} (user {}, application '{}') has had a transaction open for \
             {age:.0} s (limit {:.0} s): vacuum cannot clean behind it",
            pid.unwrap_or_default(),
            user.as_deref().unwrap_or("?"),
            app.as_deref().unwrap_or(""),
            spec.max_transaction_age.as_secs_f64()
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn differing_columns_are_named() {
        let src = cols(&[("id", "bigint"), ("note", "text")]);
        assert!(compare_columns("s", &src, "a", &src).is_ok());
        let err = compare_columns(
            "s",
            &src,
            "a",
            &cols(&[("id", "bigint"), ("note", "varchar")]),
        )
        .expect_err("a type differs");
        assert!(err.message().contains("column 2"), "{err}");
        let err = compare_columns("s", &src, "a", &cols(&[("id", "bigint")]))
            .expect_err("a column is missing");
        assert!(err.message().contains("note text"), "{err}");
    }
}
