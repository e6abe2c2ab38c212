//! The server's sessions as [`SessionInfo`]: `information_schema.PROCESSLIST` with
//! the open InnoDB transactions (`INNODB_TRX`), who waits for whom (row locks from
//! `INNODB_LOCK_WAITS`, or `performance_schema.data_lock_waits` on MySQL 8; metadata
//! locks from the `metadata_lock_info` plugin) and the program names of the
//! connection attributes; and ending them (`KILL QUERY`, `KILL CONNECTION`).

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::Conn;
use ops_core::maintain::{
    EndMode, EndOptions, EndReport, Ended, EndedSession, SessionFilter, SessionInfo, SessionKind,
};
use ops_core::{Error, ErrorKind, Result};

use super::{code, connect, error_code, float, grantee, require_process, truncate};
use crate::MariaDbEngine;
use crate::conn;

/// The processlist `STATE` of a session waiting for a metadata lock on a table.
const MDL_WAIT: &str = "Waiting for table metadata lock";

/// One row of the processlist, as read.
struct Process {
    id: i64,
    user: Option<String>,
    host: Option<String>,
    db: Option<String>,
    command: String,
    seconds: Option<f64>,
    state: Option<String>,
    info: Option<String>,
}

/// Every session of the server, the asking one marked [`SessionKind::Own`].
///
/// # Errors
/// [`ErrorKind::PermissionDenied`] naming `GRANT PROCESS` without that privilege;
/// connection errors.
pub(crate) async fn load(c: &mut Conn, engine: &MariaDbEngine) -> Result<Vec<SessionInfo>> {
    require_process(c, engine, "list other accounts' sessions").await?;
    let own = i64::try_from(conn::number(
        conn::query_rows(c, "SELECT CONNECTION_ID()")
            .await?
            .first()
            .ok_or_else(|| Error::internal("SELECT CONNECTION_ID() returned no row"))?,
        0,
    )?)
    .map_err(|_| Error::internal("connection id out of range"))?;
    let processes = processlist(c).await?;
    // Open transactions: age, and whether a sleeping session holds one.
    let trx_rows = conn::query_rows(
        c,
        "SELECT trx_mysql_thread_id, \
         TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6)) / 1000000, trx_state \
         FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id <> 0",
    )
    .await
    .map_err(|e| e.during("reading information_schema.INNODB_TRX"))?;
    let mut trx: BTreeMap<i64, (f64, String)> = BTreeMap::new();
    for r in &trx_rows {
        let id = conn::number(r, 0)? as i64;
        let age = float(r, 1)?.unwrap_or(0.0).max(0.0);
        trx.insert(id, (age, conn::opt_text(r, 2)?.unwrap_or_default()));
    }
    let mut blocked = row_lock_waits(c).await;
    let mdl = metadata_lock_waits(c, &processes).await;
    for (waiter, holders) in &mdl.blocked_by {
        blocked.entry(*waiter).or_default().extend(holders);
    }
    let programs = program_names(c).await;

    let mut out = Vec::with_capacity(processes.len());
    for p in processes {
        let kind = kind_of(&p, own);
        let command = p.command.to_ascii_lowercase();
        let open = trx.get(&p.id);
        let state = match command.as_str() {
            "sleep" if open.is_some() => "idle in transaction".to_owned(),
            "sleep" => "idle".to_owned(),
            _ => command.clone(),
        };
        let running = !matches!(command.as_str(), "sleep" | "daemon" | "binlog dump");
        let mut wait = p.state.clone().filter(|s| !s.is_empty());
        if open.is_some_and(|(_, s)| s == "LOCK WAIT") {
            wait = Some("row lock (InnoDB)".to_owned());
        }
        if let Some(note) = mdl.notes.get(&p.id) {
            wait = Some(note.clone());
        }
        let blocked_by: Vec<i64> = blocked
            .get(&p.id)
            .map(|b| b.iter().copied().filter(|b| *b != p.id).collect())
            .unwrap_or_default();
        out.push(SessionInfo {
            id: p.id,
            kind,
            user: p.user.clone(),
            database: p.db.clone(),
            application: programs.get(&p.id).cloned(),
            client: p.host.clone(),
            state,
            wait,
            query: p.info.as_deref().map(|q| truncate(q, 1000)),
            query_seconds: if running { p.seconds } else { None },
            transaction_seconds: open.map(|(age, _)| *age),
            state_seconds: p.seconds,
            blocked_by,
        });
    }
    Ok(out)
}

/// The processlist; `TIME_MS` where the server has it (MariaDB), whole seconds
/// otherwise (MySQL).
async fn processlist(c: &mut Conn) -> Result<Vec<Process>> {
    let sql = |time: &str| {
        format!(
            "SELECT ID, USER, HOST, DB, COMMAND, {time}, STATE, LEFT(INFO, 1000) \
             FROM information_schema.PROCESSLIST ORDER BY ID"
        )
    };
    let rows = match conn::query_rows(c, &sql("TIME_MS / 1000")).await {
        Err(e) if error_code(&e) == Some(code::BAD_FIELD) => {
            conn::query_rows(c, &sql("TIME")).await
        }
        other => other,
    }
    .map_err(|e| e.during("reading information_schema.PROCESSLIST"))?;
    rows.iter()
        .map(|r| {
            Ok(Process {
                id: conn::number(r, 0)? as i64,
                user: conn::opt_text(r, 1)?,
                host: conn::opt_text(r, 2)?.filter(|h| !h.is_empty()),
                db: conn::opt_text(r, 3)?,
                command: conn::opt_text(r, 4)?.unwrap_or_default(),
                seconds: float(r, 5)?.map(|s| s.max(0.0)),
                state: conn::opt_text(r, 6)?,
                info: conn::opt_text(r, 7)?,
            })
        })
        .collect()
}

/// Own, replication, system or client.
fn kind_of(p: &Process, own: i64) -> SessionKind {
    if p.id == own {
        return SessionKind::Own;
    }
    let command = p.command.as_str();
    let user = p.user.as_deref().unwrap_or_default();
    if command.starts_with("Binlog Dump")
        || command.starts_with("Slave_")
        || command.starts_with("Replica_")
        || command == "Register Slave"
    {
        return SessionKind::Replication;
    }
    if user == "system user" {
        // Replica threads (MySQL shows them as Connect / Query of `system user`,
        // with a replication state) are replication, the rest are the server's.
        let state = p.state.as_deref().unwrap_or_default().to_ascii_lowercase();
        if state.contains("master") || state.contains("source") || state.contains("relay log") {
            return SessionKind::Replication;
        }
        return SessionKind::System;
    }
    if matches!(user, "event_scheduler" | "DELAYED" | "system user")
        || matches!(command, "Daemon" | "Delayed insert")
    {
        return SessionKind::System;
    }
    SessionKind::Client
}

/// Waiter → the sessions holding the row locks it waits for. A server without the
/// tables (or a reading error) gives no edges: the sessions still show, their
/// `wait` says `row lock`.
async fn row_lock_waits(c: &mut Conn) -> BTreeMap<i64, BTreeSet<i64>> {
    let mariadb = "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id \
                   FROM information_schema.INNODB_LOCK_WAITS w \
                   JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
                   JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id";
    let mysql = "SELECT r.trx_mysql_thread_id, b.trx_mysql_thread_id \
                 FROM performance_schema.data_lock_waits w \
                 JOIN information_schema.INNODB_TRX r \
                   ON r.trx_id = w.REQUESTING_ENGINE_TRANSACTION_ID \
                 JOIN information_schema.INNODB_TRX b \
                   ON b.trx_id = w.BLOCKING_ENGINE_TRANSACTION_ID";
    let rows = match conn::query_rows(c, mariadb).await {
        Err(e) if error_code(&e) == Some(code::UNKNOWN_TABLE) => conn::query_rows(c, mysql).await,
        other => other,
    };
    let mut out: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    match rows {
        Ok(rows) => {
            for r in &rows {
                if let (Ok(w), Ok(b)) = (conn::number(r, 0), conn::number(r, 1)) {
                    out.entry(w as i64).or_default().insert(b as i64);
                }
            }
        }
        Err(e) => tracing::debug!("row lock waits are unknown: {e}"),
    }
    out
}

/// Who waits for a metadata lock held by whom.
#[derive(Default)]
struct MdlWaits {
    blocked_by: BTreeMap<i64, BTreeSet<i64>>,
    /// The `wait` text of each waiter.
    notes: BTreeMap<i64, String>,
}

/// The holders of the metadata locks that sessions in [`MDL_WAIT`] wait for, from
/// `information_schema.METADATA_LOCK_INFO` (the `metadata_lock_info` plugin; it lists
/// granted locks only, so a waiter's holders are the other sessions holding a lock
/// on a table its statement names). Without the plugin the waiter's `wait` says how
/// to install it.
async fn metadata_lock_waits(c: &mut Conn, processes: &[Process]) -> MdlWaits {
    let mut out = MdlWaits::default();
    let waiters: Vec<&Process> = processes
        .iter()
        .filter(|p| p.state.as_deref() == Some(MDL_WAIT))
        .collect();
    if waiters.is_empty() {
        return out;
    }
    let held = match table_locks(c).await {
        Ok(held) => held,
        Err(e) => {
            let why = if error_code(&e) == Some(code::UNKNOWN_TABLE) {
                "the holder is unknown: install the metadata_lock_info plugin to see it \
                 (INSTALL SONAME 'metadata_lock_info')"
                    .to_owned()
            } else {
                format!("the holder is unknown: {e}")
            };
            for w in waiters {
                out.notes.insert(w.id, format!("{MDL_WAIT} ({why})"));
            }
            return out;
        }
    };
    for w in waiters {
        let text = w.info.as_deref().unwrap_or_default().to_ascii_lowercase();
        let holders: BTreeSet<i64> = held
            .iter()
            .filter(|h| h.thread != w.id && names_table(&text, w.db.as_deref(), &h.db, &h.table))
            .map(|h| h.thread)
            .collect();
        let tables: BTreeSet<String> = held
            .iter()
            .filter(|h| {
                holders.contains(&h.thread) && names_table(&text, w.db.as_deref(), &h.db, &h.table)
            })
            .map(|h| format!("{}.{}", h.db, h.table))
            .collect();
        let note = if tables.is_empty() {
            MDL_WAIT.to_owned()
        } else {
            format!(
                "{MDL_WAIT} on {}",
                tables.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        out.notes.insert(w.id, note);
        out.blocked_by.insert(w.id, holders);
    }
    out
}

/// A granted metadata lock on a table.
pub(crate) struct HeldLock {
    pub(crate) thread: i64,
    pub(crate) mode: String,
    pub(crate) db: String,
    pub(crate) table: String,
}

/// The granted table metadata locks (`metadata_lock_info` plugin).
///
/// # Errors
/// [`code::UNKNOWN_TABLE`] when the plugin is not installed.
pub(crate) async fn table_locks(c: &mut Conn) -> Result<Vec<HeldLock>> {
    let rows = conn::query_rows(
        c,
        "SELECT THREAD_ID, LOCK_MODE, TABLE_SCHEMA, TABLE_NAME \
         FROM information_schema.METADATA_LOCK_INFO \
         WHERE LOCK_TYPE = 'Table metadata lock' AND THREAD_ID <> CONNECTION_ID()",
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HeldLock {
                thread: conn::number(r, 0)? as i64,
                mode: conn::opt_text(r, 1)?.unwrap_or_default(),
                db: conn::opt_text(r, 2)?.unwrap_or_default(),
                table: conn::opt_text(r, 3)?.unwrap_or_default(),
            })
        })
        .collect()
}

/// Whether statement `text` (lower case), run with default database `default_db`,
/// names table `db.table`: the table's name as a word, and either the database's name
/// too or the table in the default database.
fn names_table(text: &str, default_db: Option<&str>, db: &str, table: &str) -> bool {
    let has_word = |word: &str| {
        let word = word.to_ascii_lowercase();
        if word.is_empty() {
            return false;
        }
        let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
        text.match_indices(&word).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            !before.is_some_and(part) && !after.is_some_and(part)
        })
    };
    has_word(table) && (default_db == Some(db) || has_word(db))
}

/// `program_name` of each connection, from `performance_schema.session_connect_attrs`
/// (empty when performance_schema is off or the client sent none).
async fn program_names(c: &mut Conn) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    let rows = conn::query_rows(
        c,
        "SELECT PROCESSLIST_ID, ATTR_VALUE FROM performance_schema.session_connect_attrs \
         WHERE ATTR_NAME = 'program_name'",
    )
    .await;
    match rows {
        Ok(rows) => {
            for r in &rows {
                if let (Ok(id), Ok(Some(name))) = (conn::number(r, 0), conn::opt_text(r, 1)) {
                    out.insert(id as i64, name);
                }
            }
        }
        Err(e) => tracing::debug!("no connection attributes: {e}"),
    }
    out
}

/// Ends the sessions that pass `filter`; see `Maintenance::end_sessions`.
pub(crate) async fn end(
    engine: &MariaDbEngine,
    filter: &SessionFilter,
    options: &EndOptions,
) -> Result<EndReport> {
    filter.check_for_ending()?;
    let mut c = connect(engine, "").await?;
    let result = end_on(&mut c, engine, filter, options).await;
    super::close(c).await;
    result
}

async fn end_on(
    c: &mut Conn,
    engine: &MariaDbEngine,
    filter: &SessionFilter,
    options: &EndOptions,
) -> Result<EndReport> {
    let all = load(c, engine).await?;
    let chosen = filter.select(&all);
    let endable: Vec<&SessionInfo> = chosen.iter().filter(|s| s.kind.may_end()).collect();
    if !options.dry_run && !endable.is_empty() {
        check_may_kill(c, engine, &endable).await?;
    }
    let mut outcomes: Vec<Ended> = Vec::with_capacity(chosen.len());
    for s in &chosen {
        let outcome = if !s.kind.may_end() {
            Ended::Refused
        } else if options.dry_run {
            if options.mode == EndMode::Terminate {
                Ended::WouldTerminate
            } else {
                Ended::WouldCancel
            }
        } else {
            match kill(c, engine, "QUERY", s.id).await {
                Ok(true) => Ended::Cancelled,
                Ok(false) => Ended::Gone,
                Err(e) => return Err(partial(e, &chosen, &outcomes)),
            }
        };
        outcomes.push(outcome);
    }
    if options.mode == EndMode::Terminate
        && !options.dry_run
        && outcomes.contains(&Ended::Cancelled)
    {
        tokio::time::sleep(options.grace).await;
        let still: BTreeSet<i64> = match conn::query_rows(
            c,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()",
        )
        .await
        {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| conn::number(r, 0).ok().map(|n| n as i64))
                .collect(),
            Err(e) => return Err(partial(e, &chosen, &outcomes)),
        };
        for i in 0..chosen.len() {
            if outcomes[i] != Ended::Cancelled {
                continue;
            }
            let id = chosen[i].id;
            // A session that went away after its query was cancelled (or between the
            // look and the KILL: "Unknown thread id") is recorded as gone, and the
            // others are still ended.
            outcomes[i] = if !still.contains(&id) {
                Ended::Gone
            } else {
                match kill(c, engine, "CONNECTION", id).await {
                    Ok(true) => Ended::Terminated,
                    Ok(false) => Ended::Gone,
                    Err(e) => return Err(partial(e, &chosen, &outcomes)),
                }
            };
        }
    }
    let mut report = EndReport::default();
    for (s, outcome) in chosen.into_iter().zip(outcomes) {
        report.sessions.push(EndedSession {
            session: s,
            outcome,
        });
    }
    Ok(report)
}

/// `e`, saying which sessions were ended before it: the report is lost with the
/// error, so its message carries what was done.
fn partial(e: Error, chosen: &[SessionInfo], outcomes: &[Ended]) -> Error {
    let done: Vec<String> = chosen
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o, Ended::Cancelled | Ended::Terminated))
        .map(|(s, o)| {
            let what = if *o == Ended::Terminated {
                "terminated"
            } else {
                "query cancelled"
            };
            format!("{} ({what})", s.id)
        })
        .collect();
    if done.is_empty() {
        return e;
    }
    let message = format!(
        "{}; before this, sessions were already ended: {}",
        e.message(),
        done.join(", ")
    );
    e.with_message(message)
}

/// Fails, before anything is killed, when this account may not end one of
/// `targets`: MariaDB lets an account kill its own sessions (same user name) and,
/// with `CONNECTION ADMIN` (10.5+) or `SUPER`, anyone's. The account's global
/// privileges, its active role's included, come from `SHOW GRANTS`; when they cannot
/// be read the KILLs go ahead and the server judges each.
async fn check_may_kill(
    c: &mut Conn,
    engine: &MariaDbEngine,
    targets: &[&SessionInfo],
) -> Result<()> {
    let me = conn::query_string(c, "SELECT SUBSTRING_INDEX(USER(), '@', 1)").await?;
    let others: Vec<&&SessionInfo> = targets
        .iter()
        .filter(|s| s.user.as_deref() != Some(me.as_str()))
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let grants = match conn::query_strings(c, "SHOW GRANTS").await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!("the account's grants are unknown, the server will judge: {e}");
            return Ok(());
        }
    };
    if grants.iter().any(|g| may_kill_others(g)) {
        return Ok(());
    }
    let list = others
        .iter()
        .take(10)
        .map(|s| format!("{} (user {})", s.id, s.user.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ");
    let more = others.len().saturating_sub(10);
    Err(Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "account {me} may end only its own sessions, and of the sessions chosen {} {} to \
             other accounts: {list}{}; nothing was ended. GRANT CONNECTION ADMIN ON *.* TO {} \
             (MariaDB 10.5+; SUPER on older servers, CONNECTION_ADMIN on MySQL 8), or choose \
             only this account's sessions",
            others.len(),
            if others.len() == 1 {
                "belongs"
            } else {
                "belong"
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            grantee(engine)
        ),
    )
    .with_context("code", code::KILL_DENIED))
}

/// Whether a line of `SHOW GRANTS` gives a global privilege that kills other
/// accounts' sessions.
fn may_kill_others(grant: &str) -> bool {
    let Some(rest) = grant.strip_prefix("GRANT ") else {
        return false;
    };
    let Some(end) = rest.find(" ON *.* TO ") else {
        return false;
    };
    rest[..end].split(", ").any(|p| {
        let p = p.trim();
        [
            "ALL PRIVILEGES",
            "ALL",
            "SUPER",
            "CONNECTION ADMIN",
            "CONNECTION_ADMIN",
        ]
        .iter()
        .any(|k| p.eq_ignore_ascii_case(k))
    })
}

/// `KILL QUERY` or `KILL CONNECTION`; false when the session is gone.
async fn kill(c: &mut Conn, engine: &MariaDbEngine, what: &str, id: i64) -> Result<bool> {
    match conn::exec(c, &format!("KILL {what} {id}")).await {
        Ok(()) => Ok(true),
        Err(e) if error_code(&e) == Some(code::NO_SUCH_THREAD) => Ok(false),
        Err(e)
            if matches!(
                error_code(&e),
                Some(code::KILL_DENIED | code::SPECIFIC_ACCESS_DENIED)
            ) =>
        {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "connection {id} belongs to another account and this one may not end it \
                     ({}): GRANT CONNECTION ADMIN ON *.* TO {} (MariaDB 10.5+; SUPER on older \
                     servers, CONNECTION_ADMIN on MySQL 8)",
                    e.message(),
                    grantee(engine)
                ),
            )
            .with_context("code", code::KILL_DENIED))
        }
        Err(e) => Err(e.during(format!("KILL {what} {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: i64, user: &str, command: &str, state: &str) -> Process {
        Process {
            id,
            user: Some(user.into()),
            host: None,
            db: None,
            command: command.into(),
            seconds: None,
            state: Some(state.into()),
            info: None,
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(&p(1, "app", "Query", ""), 1), SessionKind::Own);
        assert_eq!(kind_of(&p(2, "app", "Query", ""), 1), SessionKind::Client);
        assert_eq!(
            kind_of(&p(3, "repl", "Binlog Dump", ""), 1),
            SessionKind::Replication
        );
        assert_eq!(
            kind_of(&p(4, "system user", "Slave_IO", ""), 1),
            SessionKind::Replication
        );
        assert_eq!(
            kind_of(&p(5, "system user", "Daemon", "InnoDB purge worker"), 1),
            SessionKind::System
        );
        assert_eq!(
            kind_of(&p(6, "event_scheduler", "Daemon", ""), 1),
            SessionKind::System
        );
    }

    #[test]
    fn grants_that_kill_other_sessions() {
        assert!(may_kill_others(
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"
        ));
        assert!(may_kill_others(
            "GRANT PROCESS, CONNECTION ADMIN ON *.* TO `ops`@`%` IDENTIFIED BY PASSWORD '*AB'"
        ));
        assert!(may_kill_others("GRANT SUPER ON *.* TO `r1`"));
        assert!(!may_kill_others(
            "GRANT PROCESS, SLAVE MONITOR ON *.* TO `watcher`@`%`"
        ));
        assert!(!may_kill_others(
            "GRANT ALL PRIVILEGES ON `app`.* TO `app`@`%`"
        ));
        assert!(!may_kill_others("GRANT `r1` TO `w`@`%`"));
    }

    #[test]
    fn table_names_match_as_words() {
        assert!(names_table("alter table `t` force", Some("d"), "d", "t"));
        assert!(names_table(
            "select * from d.orders where 1",
            None,
            "d",
            "orders"
        ));
        assert!(!names_table(
            "select * from orders2",
            Some("d"),
            "d",
            "orders"
        ));
        assert!(!names_table("alter table t force", Some("x"), "d", "t"));
    }
}
