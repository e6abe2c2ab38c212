//! The server's sessions (`pg_stat_activity` with `pg_blocking_pids`), ending them
//! (`pg_cancel_backend`, then `pg_terminate_backend` after a grace period), and the
//! read-only query runner of the integrity checks.
//!
//! Also here: [`require_stats`], the privilege check every report on other users'
//! sessions runs first. What must not live here: the inspection reports (`inspect.rs`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, pin_mut};
use ops_core::maintain::{
    EndMode, EndOptions, EndReport, Ended, EndedSession, QueryRows, SessionFilter, SessionInfo,
    SessionKind,
};
use ops_core::{Error, ErrorKind, Result};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::connect;
use crate::PostgresEngine;
use crate::errors::{column, query_error};

/// Fails unless the session's user is a superuser or a member of `pg_read_all_stats`
/// (`pg_monitor` includes it): without it PostgreSQL shows other users' sessions and
/// statements without state, timings, wait events or text, which would read as
/// "nothing running, nothing waiting". `to` says what could not be done.
///
/// # Errors
/// [`ErrorKind::PermissionDenied`] naming `GRANT pg_monitor TO <user>`.
pub(super) async fn require_stats(client: &Client, to: &str) -> Result<()> {
    let doing = "checking whether the user may see other users' sessions";
    let row = client
        .query_one(
            // USAGE, not MEMBER: a NOINHERIT member does not have the role's rights.
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
                    OR coalesce((SELECT rolsuper FROM pg_roles
                                  WHERE rolname = current_user), false),
                    quote_ident(current_user)",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    if column::<bool>(&row, 0, doing)? {
        return Ok(());
    }
    let user: String = column(&row, 1, doing)?;
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "user {user} may not see other users' sessions, so dbops cannot {to} \
             (PostgreSQL would show them without state, timings or query text); grant it \
             pg_monitor: GRANT pg_monitor TO {user}"
        ),
    ))
}

/// The kind of a backend from its `backend_type`.
fn kind_of(backend_type: Option<&str>, own: bool) -> SessionKind {
    if own {
        return SessionKind::Own;
    }
    match backend_type {
        Some("walsender" | "walreceiver") => SessionKind::Replication,
        Some("client backend") => SessionKind::Client,
        // Autovacuum, background and parallel workers, checkpointer, ...; and a backend
        // whose type the server does not say is not ours to end.
        _ => SessionKind::System,
    }
}

/// Every session of the server, the asking one marked [`SessionKind::Own`].
pub(super) async fn load(client: &Client) -> Result<Vec<SessionInfo>> {
    require_stats(client, "list the server's sessions").await?;
    let doing = "reading pg_stat_activity";
    // pg_blocking_pids takes the lock manager's locks: ask only for waiting sessions.
    let rows = client
        .query(
            "SELECT a.pid::int8, a.backend_type, a.usename::text, a.datname::text,
                    nullif(a.application_name, ''), host(a.client_addr), a.state,
                    a.wait_event_type || ':' || a.wait_event, left(a.query, 1000),
                    extract(epoch FROM now() - a.query_start)::float8,
                    extract(epoch FROM now() - a.xact_start)::float8,
                    extract(epoch FROM now() - a.state_change)::float8,
                    CASE WHEN a.wait_event_type = 'Lock' OR a.wait_event = 'SafeSnapshot'
                         THEN pg_blocking_pids(a.pid) END,
                    a.pid = pg_backend_pid()
               FROM pg_stat_activity a
              ORDER BY a.pid",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let backend_type: Option<String> = column(r, 1, doing)?;
        let own: bool = column::<Option<bool>>(r, 13, doing)?.unwrap_or(false);
        let state: Option<String> = column(r, 6, doing)?;
        let active = state.as_deref() == Some("active");
        let mut blocked: Vec<i64> = column::<Option<Vec<i32>>>(r, 12, doing)?
            .unwrap_or_default()
            .into_iter()
            .map(i64::from)
            .collect();
        // One 0 per prepared transaction in the way: one is enough.
        blocked.sort_unstable();
        blocked.dedup();
        out.push(SessionInfo {
            id: column(r, 0, doing)?,
            kind: kind_of(backend_type.as_deref(), own),
            user: column(r, 2, doing)?,
            database: column(r, 3, doing)?,
            application: column(r, 4, doing)?,
            client: column(r, 5, doing)?,
            // System processes have no state.
            state: state.unwrap_or_default(),
            wait: column(r, 7, doing)?,
            query: column(r, 8, doing)?,
            // query_start stays at the last query of an idle session: its age is not
            // "running for", so it is given for running queries only.
            query_seconds: if active { column(r, 9, doing)? } else { None },
            transaction_seconds: column(r, 10, doing)?,
            state_seconds: column(r, 11, doing)?,
            blocked_by: blocked,
        });
    }
    if out
        .iter()
        .any(|s| s.blocked_by.contains(&PREPARED_TRANSACTIONS))
    {
        out.push(prepared_transactions(client).await?);
    }
    Ok(out)
}

/// The id under which `pg_blocking_pids` names a prepared transaction: it holds its
/// locks with no session behind it.
pub(super) const PREPARED_TRANSACTIONS: i64 = 0;

/// The stand-in for the prepared transactions some session waits for (pid 0 in
/// `pg_blocking_pids`, which does not say which one): a [`SessionKind::System`] entry
/// with id 0, so that the lock trees show them as the root they are, rather than a
/// cycle through a session that does not exist, and so that no one tries to end it.
/// Only `COMMIT PREPARED` or `ROLLBACK PREPARED` ends a prepared transaction.
async fn prepared_transactions(client: &Client) -> Result<SessionInfo> {
    let doing = "reading pg_prepared_xacts";
    let rows = client
        .query(
            "SELECT gid, owner::text, database::text,
                    extract(epoch FROM now() - prepared)::float8
               FROM pg_prepared_xacts ORDER BY prepared",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut gids = Vec::with_capacity(rows.len());
    for r in &rows {
        gids.push(format!("'{}'", column::<String>(r, 0, doing)?));
    }
    let oldest = rows.first();
    let of_oldest = |i: usize| -> Result<Option<String>> {
        oldest.map_or(Ok(None), |r| column::<Option<String>>(r, i, doing))
    };
    let age: Option<f64> = match oldest {
        Some(r) => column(r, 3, doing)?,
        None => None,
    };
    let query = if gids.is_empty() {
        "a prepared transaction (ended since): no session to end".to_owned()
    } else {
        format!(
            "prepared transaction(s) {}: no session to end; COMMIT PREPARED or ROLLBACK \
             PREPARED ends one",
            gids.join(", ")
        )
    };
    Ok(SessionInfo {
        id: PREPARED_TRANSACTIONS,
        kind: SessionKind::System,
        user: of_oldest(1)?,
        database: of_oldest(2)?,
        application: None,
        client: None,
        state: "prepared transaction".into(),
        wait: None,
        query: Some(query),
        query_seconds: None,
        transaction_seconds: age,
        state_seconds: age,
        blocked_by: Vec::new(),
    })
}

/// [`ops_core::maintain::Maintenance::sessions`]: every session of the server, then
/// `filter`.
pub(crate) async fn sessions(
    engine: &PostgresEngine,
    filter: &SessionFilter,
) -> Result<Vec<SessionInfo>> {
    let client = connect(engine).await?;
    let all = load(&client).await?;
    Ok(filter.select(&all))
}

/// Who the asking user is, for the signalling rules.
struct Signaller {
    /// As an SQL identifier (quoted where needed), to be pasted into a GRANT.
    user: String,
    superuser: bool,
    signal_backend: bool,
}

async fn signaller(client: &Client) -> Result<Signaller> {
    let doing = "checking whether the user may end other sessions";
    let row = client
        .query_one(
            "SELECT quote_ident(current_user),
                    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                             false),
                    pg_has_role(current_user, 'pg_signal_backend', 'USAGE')",
            &[],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    Ok(Signaller {
        user: column(&row, 0, doing)?,
        superuser: column(&row, 1, doing)?,
        signal_backend: column(&row, 2, doing)?,
    })
}

/// Fails, before anything is signalled, when `who` may not signal one of `targets`
/// (PostgreSQL's rules: a superuser may signal anyone; a member of the session's
/// role may signal it; `pg_signal_backend` reaches every non-superuser's session).
async fn check_may_signal(
    client: &Client,
    who: &Signaller,
    targets: &[&SessionInfo],
) -> Result<()> {
    if who.superuser {
        return Ok(());
    }
    let doing = "checking the roles of the sessions to end";
    let quoted = &who.user;
    for t in targets {
        // A session whose role was dropped while it stayed connected has no user to
        // judge by: it is tried, and a refusal is recorded for it alone.
        let Some(user) = t.user.as_deref() else {
            continue;
        };
        let row = client
            .query_one(
                "SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = $1), false),
                        coalesce((SELECT pg_has_role(current_user, oid, 'USAGE')
                                    FROM pg_roles WHERE rolname = $1), false)",
                &[&user],
            )
            .await
            .map_err(|e| query_error(e, doing))?;
        let (target_super, member): (bool, bool) =
            (column(&row, 0, doing)?, column(&row, 1, doing)?);
        if target_super {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "user {quoted} may not end session {} of superuser {user}: only a \
                     superuser may (pg_signal_backend does not reach superusers' sessions); \
                     run this as a superuser",
                    t.id
                ),
            ));
        }
        if !member && !who.signal_backend {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "user {quoted} may not end session {} of user {user}; grant it \
                     pg_signal_backend: GRANT pg_signal_backend TO {quoted}",
                    t.id
                ),
            ));
        }
    }
    Ok(())
}

/// Sends `function` (`pg_cancel_backend`, `pg_terminate_backend`) to `pid`: whether
/// the backend was there to receive it.
async fn signal(client: &Client, function: &str, pid: i64, user: &str) -> Result<bool> {
    let doing = format!("{function}({pid})");
    let row = client
        .query_one(&format!("SELECT {function}($1::int4)"), &[&(pid as i32)])
        .await
        .map_err(|e| {
            let err = query_error(e, &doing);
            if err.kind() == ErrorKind::PermissionDenied {
                let quoted = user;
                Error::new(
                    ErrorKind::PermissionDenied,
                    format!("{err}; grant pg_signal_backend: GRANT pg_signal_backend TO {quoted}"),
                )
            } else {
                err
            }
        })?;
    Ok(column::<Option<bool>>(&row, 0, &doing)?.unwrap_or(false))
}

/// Of `pids`: the ones still there, and the ones among them that block someone.
async fn still_there(client: &Client, pids: &[i64]) -> Result<(BTreeSet<i64>, BTreeSet<i64>)> {
    let doing = "checking whether the signalled sessions are gone";
    let rows = client
        .query(
            "SELECT a.pid::int8,
                    EXISTS (SELECT 1 FROM pg_stat_activity w
                             WHERE w.wait_event_type = 'Lock'
                               AND a.pid = ANY (pg_blocking_pids(w.pid)))
               FROM pg_stat_activity a WHERE a.pid::int8 = ANY ($1)",
            &[&pids],
        )
        .await
        .map_err(|e| query_error(e, doing))?;
    let mut there = BTreeSet::new();
    let mut blocking = BTreeSet::new();
    for r in &rows {
        let pid: i64 = column(r, 0, doing)?;
        there.insert(pid);
        if column::<Option<bool>>(r, 1, doing)?.unwrap_or(false) {
            blocking.insert(pid);
        }
    }
    Ok((there, blocking))
}

/// [`ops_core::maintain::Maintenance::end_sessions`]: checks the right to signal every
/// chosen session before signalling any; cancels all, waits out the grace period
/// once for all of them (a blocker that stops blocking keeps its session), then
/// terminates what is left. A signal that fails on its own (a session whose role is
/// gone, a right lost since the check) leaves that session [`Ended::Refused`] and the
/// others go on: the report says what became of each.
pub(crate) async fn end_sessions(
    engine: &PostgresEngine,
    filter: &SessionFilter,
    options: &EndOptions,
) -> Result<EndReport> {
    filter.check_for_ending()?;
    let mut client = connect(engine).await?;
    let all = load(&client).await?;
    let selected = filter.select(&all);
    let blockers: BTreeSet<i64> = all.iter().flat_map(|s| s.blocked_by.clone()).collect();
    let endable: Vec<&SessionInfo> = selected.iter().filter(|s| s.kind.may_end()).collect();
    if !options.dry_run && !endable.is_empty() {
        let who = signaller(&client).await?;
        check_may_signal(&client, &who, &endable).await?;
        let mut outcome = std::collections::BTreeMap::new();
        // Cancel every query first, then wait for all of them together: the grace
        // period is spent once, not once per session.
        for s in &endable {
            let ended = match signal(&client, "pg_cancel_backend", s.id, &who.user).await {
                Ok(true) => Ended::Cancelled,
                Ok(false) => Ended::Gone,
                Err(e) => not_signalled(engine, &mut client, s.id, &e).await,
            };
            outcome.insert(s.id, ended);
        }
        if options.mode == EndMode::Terminate {
            let deadline = Instant::now() + options.grace;
            let mut waiting: Vec<i64> = outcome
                .iter()
                .filter(|(_, o)| **o == Ended::Cancelled)
                .map(|(id, _)| *id)
                .collect();
            loop {
                let (there, blocking) = match still_there(&client, &waiting).await {
                    Ok(seen) => seen,
                    Err(e) => {
                        // Not knowing who left, the rest are terminated as planned.
                        tracing::warn!(error = %e, "could not see which sessions are gone");
                        reopen_if_closed(engine, &mut client).await;
                        break;
                    }
                };
                waiting.retain(|id| {
                    if !there.contains(id) {
                        outcome.insert(*id, Ended::Gone);
                        return false;
                    }
                    // A blocker whose blocking ended with its cancelled query need not
                    // lose its session.
                    !blockers.contains(id) || blocking.contains(id)
                });
                if waiting.is_empty() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for id in waiting {
                let ended = match signal(&client, "pg_terminate_backend", id, &who.user).await {
                    Ok(true) => Ended::Terminated,
                    Ok(false) => Ended::Gone,
                    // Its query was cancelled; the session stays.
                    Err(e) => {
                        not_signalled(engine, &mut client, id, &e).await;
                        Ended::Cancelled
                    }
                };
                outcome.insert(id, ended);
            }
        }
        let mut report = EndReport::default();
        for s in selected {
            let o = if s.kind.may_end() {
                outcome.get(&s.id).copied().unwrap_or(Ended::Gone)
            } else {
                Ended::Refused
            };
            report.sessions.push(EndedSession {
                session: s,
                outcome: o,
            });
        }
        return Ok(report);
    }
    let mut report = EndReport::default();
    for s in selected {
        let o = match (s.kind.may_end(), options.mode) {
            (false, _) => Ended::Refused,
            (true, EndMode::Cancel) => Ended::WouldCancel,
            (true, _) => Ended::WouldTerminate,
        };
        report.sessions.push(EndedSession {
            session: s,
            outcome: o,
        });
    }
    Ok(report)
}

/// A signal to session `id` failed: logged, the session left as it is
/// ([`Ended::Refused`]), and a lost connection opened again for the sessions after it.
async fn not_signalled(
    engine: &PostgresEngine,
    client: &mut Client,
    id: i64,
    error: &Error,
) -> Ended {
    tracing::warn!(session = id, error = %error, "the session could not be signalled; it is left as it is");
    reopen_if_closed(engine, client).await;
    Ended::Refused
}

/// Opens a new session when the server ended ours; when that fails too, every signal
/// after fails and is recorded as such.
async fn reopen_if_closed(engine: &PostgresEngine, client: &mut Client) {
    if client.is_closed()
        && let Ok(fresh) = connect(engine).await
    {
        *client = fresh;
    }
}

/// [`ops_core::maintain::Maintenance::query_rows`]: one statement, in a read-only
/// transaction with a statement timeout, rolled back.
pub(crate) async fn query_rows(
    engine: &PostgresEngine,
    sql: &str,
    timeout: Duration,
    sample: usize,
) -> Result<QueryRows> {
    let client = connect(engine).await?;
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {ms}"
        ))
        .await
        .map_err(|e| query_error(e, "starting a read-only transaction"))?;
    let result = run_counted(&client, sql, sample).await;
    // Nothing was written (read-only), and the connection ends here anyway.
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

/// Runs `sql` inside the open transaction, counting every row and keeping the first
/// `sample` as text, without holding more than one row at a time beyond the sample.
async fn run_counted(client: &Client, sql: &str, sample: usize) -> Result<QueryRows> {
    let doing = "running the query";
    // Preparing it first refuses several statements in one string ("SELECT 1;
    // COMMIT; DELETE ..."), which the simple protocol below would run one after the
    // other, out of the read-only transaction; and it gives the columns of a query
    // that returns no rows.
    let statement = client
        .prepare(sql)
        .await
        .map_err(|e| query_error(e, doing))?;
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    // The simple protocol returns every value as text, as the server prints it.
    let stream = client
        .simple_query_raw(sql)
        .await
        .map_err(|e| query_error(e, doing))?;
    pin_mut!(stream);
    let mut count = 0u64;
    let mut rows = Vec::new();
    while let Some(message) = stream.next().await {
        if let SimpleQueryMessage::Row(row) = message.map_err(|e| query_error(e, doing))? {
            count += 1;
            if rows.len() < sample {
                rows.push(
                    (0..row.len())
                        .map(|i| row.try_get(i).ok().flatten().map(str::to_owned))
                        .collect(),
                );
            }
        }
    }
    Ok(QueryRows::new(count, columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_types_map_to_kinds() {
        assert_eq!(kind_of(Some("client backend"), false), SessionKind::Client);
        assert_eq!(kind_of(Some("client backend"), true), SessionKind::Own);
        assert_eq!(kind_of(Some("walsender"), false), SessionKind::Replication);
        assert_eq!(
            kind_of(Some("walreceiver"), false),
            SessionKind::Replication
        );
        assert_eq!(
            kind_of(Some("autovacuum worker"), false),
            SessionKind::System
        );
        assert_eq!(
            kind_of(Some("background worker"), false),
            SessionKind::System
        );
        assert_eq!(kind_of(None, false), SessionKind::System);
    }
}
