//! The server's globals: roles, memberships, role settings and tablespaces, which live
//! outside every database (what `pg_dumpall --globals-only` writes).
//!
//! They are read from the catalogs and stored as JSON lines, one object per line, in
//! four streams (`globals/roles`, `globals/memberships`, `globals/role_settings`,
//! `globals/tablespaces`), so that a restore creates them object by object and leaves
//! alone what the target already has. Password hashes are read only when asked for,
//! from `pg_authid`, which only a superuser may read; they never reach a log, an error
//! or `Debug`.
//!
//! A restore of some databases only (`databases` non-empty) creates the roles those
//! databases need: the roles their schema archives name (owners, grantees, grantors,
//! policies, user mappings: read from the SQL pg_restore would run, as the scratch
//! restore does), their owners, and the roles those are members of, transitively;
//! no tablespaces (their directories belong to the old server's file system).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use ops_core::{
    DumpSink, Error, ErrorKind, GlobalsOptions, GlobalsPhase, GlobalsReport, GlobalsRestoreOptions,
    Result, StreamRole, StreamSource, StreamSpec,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::config::ConnConfig;
use crate::errors::{column, query_error};
use crate::session::{quote_ident, quote_literal};
use crate::{restore, roles, tools};

const ROLES: &str = "globals/roles";
const MEMBERSHIPS: &str = "globals/memberships";
const ROLE_SETTINGS: &str = "globals/role_settings";
const TABLESPACES: &str = "globals/tablespaces";
/// Meta key of the schema stream: the database's own properties (see [`DatabaseProperties`]).
pub(crate) const DATABASE_PROPERTIES_META: &str = "database_properties";

/// One role, as `CREATE ROLE` takes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Role {
    name: String,
    superuser: bool,
    inherit: bool,
    createrole: bool,
    createdb: bool,
    login: bool,
    replication: bool,
    bypassrls: bool,
    connection_limit: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    /// The password hash (SCRAM or MD5), only with role passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| "******"))
            .finish_non_exhaustive()
    }
}

impl Role {
    /// `CREATE ROLE … WITH …` in pg_dumpall's words.
    fn create_sql(&self) -> String {
        let flag = |on: bool, word: &str| {
            if on {
                word.to_owned()
            } else {
                format!("NO{word}")
            }
        };
        let mut sql = format!(
            "CREATE ROLE {} WITH {} {} {} {} {} {} {}",
            quote_ident(&self.name),
            flag(self.superuser, "SUPERUSER"),
            flag(self.inherit, "INHERIT"),
            flag(self.createrole, "CREATEROLE"),
            flag(self.createdb, "CREATEDB"),
            flag(self.login, "LOGIN"),
            flag(self.replication, "REPLICATION"),
            flag(self.bypassrls, "BYPASSRLS"),
        );
        if self.connection_limit != -1 {
            sql.push_str(&format!(" CONNECTION LIMIT {}", self.connection_limit));
        }
        if let Some(p) = &self.password {
            sql.push_str(&format!(" PASSWORD {}", quote_literal(p)));
        }
        if let Some(v) = &self.valid_until {
            sql.push_str(&format!(" VALID UNTIL {}", quote_literal(v)));
        }
        sql
    }
}

/// `GRANT role TO member`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Membership {
    role: String,
    member: String,
    admin_option: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grantor: Option<String>,
    /// PostgreSQL 16+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inherit_option: Option<bool>,
    /// PostgreSQL 16+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set_option: Option<bool>,
}

impl Membership {
    fn grant_sql(&self, granted_by: bool) -> String {
        let mut sql = format!(
            "GRANT {} TO {}",
            quote_ident(&self.role),
            quote_ident(&self.member)
        );
        let mut with = Vec::new();
        if self.inherit_option.is_some() || self.set_option.is_some() {
            with.push(format!("ADMIN {}", self.admin_option));
            if let Some(i) = self.inherit_option {
                with.push(format!("INHERIT {i}"));
            }
            if let Some(s) = self.set_option {
                with.push(format!("SET {s}"));
            }
        } else if self.admin_option {
            with.push("ADMIN OPTION".to_owned());
        }
        if !with.is_empty() {
            sql.push_str(&format!(" WITH {}", with.join(", ")));
        }
        if granted_by && let Some(g) = &self.grantor {
            sql.push_str(&format!(" GRANTED BY {}", quote_ident(g)));
        }
        sql
    }

    fn describe(&self) -> String {
        format!("membership of {} in {}", self.member, self.role)
    }
}

/// `ALTER ROLE role [IN DATABASE db] SET …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RoleSetting {
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    /// `name=value`, as `pg_db_role_setting.setconfig` holds them.
    settings: Vec<String>,
}

/// A tablespace other than `pg_default` and `pg_global`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tablespace {
    name: String,
    owner: String,
    location: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    options: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

/// A database's own properties, which `CREATE DATABASE` and `ALTER DATABASE` set and
/// pg_dump leaves out without `--create`: recorded with each backup, applied by a
/// restore that creates the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DatabaseProperties {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `c` (libc), `i` (ICU) or `b` (builtin), PostgreSQL 15+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale_provider: Option<String>,
    /// The ICU or builtin locale, PostgreSQL 15+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub connection_limit: i32,
    /// `ALTER DATABASE … SET` settings, `name=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
}

/// Reads the properties of the connected database.
pub(crate) async fn database_properties(
    client: &Client,
    version_num: i32,
) -> Result<DatabaseProperties> {
    const DOING: &str = "reading the database's properties";
    let locale = if version_num >= 170000 {
        "d.datlocprovider::text, d.datlocale"
    } else if version_num >= 150000 {
        "d.datlocprovider::text, d.daticulocale"
    } else {
        "NULL::text, NULL::text"
    };
    let row = client
        .query_one(
            &format!(
                "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text,
                        d.datctype::text, {locale}, pg_get_userbyid(d.datdba)::text,
                        shobj_description(d.oid, 'pg_database'), d.datconnlimit,
                        (SELECT s.setconfig FROM pg_db_role_setting s
                          WHERE s.setdatabase = d.oid AND s.setrole = 0)
                   FROM pg_database d WHERE d.datname = current_database()"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    Ok(DatabaseProperties {
        encoding: column(&row, 0, DOING)?,
        collate: column(&row, 1, DOING)?,
        ctype: column(&row, 2, DOING)?,
        locale_provider: column(&row, 3, DOING)?,
        locale: column(&row, 4, DOING)?,
        owner: column(&row, 5, DOING)?,
        comment: column(&row, 6, DOING)?,
        connection_limit: column(&row, 7, DOING)?,
        settings: column::<Option<Vec<String>>>(&row, 8, DOING)?.unwrap_or_default(),
    })
}

/// The settings whose value is a list that pg_dump quotes element by element
/// (`variable_is_guc_list_quote`): `SET search_path TO 'a, b'` would make one schema
/// named `a, b`.
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// `name TO value` for a `name=value` setting, as pg_dump writes it.
pub(crate) fn set_clause(setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        split_list(value)
            .iter()
            .map(|v| quote_literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        quote_literal(value)
    };
    Some(format!("{} TO {value}", quote_ident(name)))
}

/// Splits a list setting as the server stores it (`a, "b c"`): elements separated by
/// commas, double-quoted ones with `""` for a quote (PostgreSQL's `SplitGUCList`).
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_owned();
        }
        out.push(item);
        if chars.next() != Some(',') {
            break;
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A connection for statements about the whole server: to the bound database when
/// it exists, else to `postgres`, else to `template1` (a restore's target database
/// may not exist yet).
async fn connect_server(config: &ConnConfig) -> Result<Client> {
    let mut candidates = Vec::new();
    if config.dbname_given {
        candidates.push(config.clone());
    }
    candidates.push(config.with_dbname("postgres"));
    candidates.push(config.with_dbname("template1"));
    let mut last = None;
    for c in candidates {
        // Pinned settings: DateStyle for valid-until times read and written the same way.
        match crate::session::connect_pinned(&c).await {
            Ok(client) => return Ok(client),
            Err(e) if e.kind() == ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::internal("no database to connect to")))
}

/// Every database a whole-server backup takes: all but templates.
pub(crate) async fn databases(config: &ConnConfig) -> Result<Vec<String>> {
    let client = connect_server(config).await?;
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE NOT datistemplate AND datallowconn
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(e, "listing the databases"))?;
    rows.iter()
        .map(|r| column::<String>(r, 0, "listing the databases"))
        .collect()
}

/// Reads the globals and writes them as four streams.
pub(crate) async fn dump_globals(
    config: &ConnConfig,
    options: &GlobalsOptions,
    sink: Arc<dyn DumpSink>,
) -> Result<()> {
    let client = connect_server(config).await?;
    let version_num: i32 = column(
        &client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| query_error(e, "reading the server version"))?,
        0,
        "reading the server version",
    )?;
    // Everything is read before any stream is opened: a refusal leaves no half.
    let roles = read_roles(&client, options.role_passwords).await?;
    let memberships = read_memberships(&client, version_num).await?;
    let settings = read_role_settings(&client).await?;
    let tablespaces = read_tablespaces(&client).await?;
    write_lines(sink.as_ref(), ROLES, &roles).await?;
    write_lines(sink.as_ref(), MEMBERSHIPS, &memberships).await?;
    write_lines(sink.as_ref(), ROLE_SETTINGS, &settings).await?;
    write_lines(sink.as_ref(), TABLESPACES, &tablespaces).await?;
    Ok(())
}

async fn write_lines<T: Serialize>(sink: &dyn DumpSink, name: &str, items: &[T]) -> Result<()> {
    let mut body = Vec::new();
    for item in items {
        serde_json::to_writer(&mut body, item)
            .map_err(|e| Error::internal(format!("{name} not serializable: {e}")))?;
        body.push(b'\n');
    }
    let spec = StreamSpec::new(name, StreamRole::Auxiliary).with_meta("format", "jsonl-v1");
    let mut writer = sink.open_stream(spec).await?;
    if !body.is_empty() {
        writer.write(Bytes::from(body)).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn read_roles(client: &Client, passwords: bool) -> Result<Vec<Role>> {
    const DOING: &str = "reading the roles";
    let catalog = if passwords {
        let readable: bool = column(
            &client
                .query_one(
                    "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
                    &[],
                )
                .await
                .map_err(|e| query_error(e, DOING))?,
            0,
            DOING,
        )?;
        if !readable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "role password hashes are kept in pg_authid, which only a superuser (or a member \
                 of pg_read_all_data) may read: connect as a superuser to take them, or back \
                 up without role passwords (the roles are then recreated without a password)",
            ));
        }
        "pg_authid"
    } else {
        "pg_roles"
    };
    let password = if passwords {
        "r.rolpassword::text"
    } else {
        "NULL::text"
    };
    let rows = client
        .query(
            &format!(
                "SELECT r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole,
                        r.rolcreatedb, r.rolcanlogin, r.rolreplication, r.rolbypassrls,
                        r.rolconnlimit, r.rolvaliduntil::text, {password},
                        shobj_description(r.oid, 'pg_authid')
                   FROM pg_catalog.{catalog} r
                  WHERE r.rolname !~ '^pg_'
                  ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    rows.iter()
        .map(|r| {
            Ok(Role {
                name: column(r, 0, DOING)?,
                superuser: column(r, 1, DOING)?,
                inherit: column(r, 2, DOING)?,
                createrole: column(r, 3, DOING)?,
                createdb: column(r, 4, DOING)?,
                login: column(r, 5, DOING)?,
                replication: column(r, 6, DOING)?,
                bypassrls: column(r, 7, DOING)?,
                connection_limit: column(r, 8, DOING)?,
                valid_until: column(r, 9, DOING)?,
                password: column(r, 10, DOING)?,
                comment: column(r, 11, DOING)?,
            })
        })
        .collect()
}

async fn read_memberships(client: &Client, version_num: i32) -> Result<Vec<Membership>> {
    const DOING: &str = "reading the role memberships";
    let options = if version_num >= 160000 {
        "m.inherit_option, m.set_option"
    } else {
        "NULL::bool, NULL::bool"
    };
    let rows = client
        .query(
            &format!(
                "SELECT r.rolname::text, u.rolname::text, m.admin_option, g.rolname::text, {options}
                   FROM pg_auth_members m
                   JOIN pg_roles r ON r.oid = m.roleid
                   JOIN pg_roles u ON u.oid = m.member
                   LEFT JOIN pg_roles g ON g.oid = m.grantor
                  WHERE u.rolname !~ '^pg_'
                  ORDER BY 1, 2, 4"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    rows.iter()
        .map(|r| {
            Ok(Membership {
                role: column(r, 0, DOING)?,
                member: column(r, 1, DOING)?,
                admin_option: column(r, 2, DOING)?,
                grantor: column(r, 3, DOING)?,
                inherit_option: column(r, 4, DOING)?,
                set_option: column(r, 5, DOING)?,
            })
        })
        .collect()
}

async fn read_role_settings(client: &Client) -> Result<Vec<RoleSetting>> {
    const DOING: &str = "reading the role settings";
    let rows = client
        .query(
            "SELECT r.rolname::text, d.datname::text, s.setconfig
               FROM pg_db_role_setting s
               JOIN pg_roles r ON r.oid = s.setrole
               LEFT JOIN pg_database d ON d.oid = s.setdatabase
              WHERE s.setrole <> 0 AND (s.setdatabase = 0 OR d.oid IS NOT NULL)
              ORDER BY 1, 2 NULLS FIRST",
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    rows.iter()
        .map(|r| {
            Ok(RoleSetting {
                role: column(r, 0, DOING)?,
                database: column(r, 1, DOING)?,
                settings: column::<Option<Vec<String>>>(r, 2, DOING)?.unwrap_or_default(),
            })
        })
        .collect()
}

async fn read_tablespaces(client: &Client) -> Result<Vec<Tablespace>> {
    const DOING: &str = "reading the tablespaces";
    let rows = client
        .query(
            "SELECT t.spcname::text, pg_get_userbyid(t.spcowner)::text,
                    pg_tablespace_location(t.oid), t.spcoptions,
                    shobj_description(t.oid, 'pg_tablespace')
               FROM pg_tablespace t
              WHERE t.spcname NOT IN ('pg_default', 'pg_global')
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(e, DOING))?;
    rows.iter()
        .map(|r| {
            Ok(Tablespace {
                name: column(r, 0, DOING)?,
                owner: column(r, 1, DOING)?,
                location: column(r, 2, DOING)?,
                options: column::<Option<Vec<String>>>(r, 3, DOING)?.unwrap_or_default(),
                comment: column(r, 4, DOING)?,
            })
        })
        .collect()
}

/// Reads one JSON-lines stream; a backup without it (none of that kind) is empty.
async fn read_lines<T: for<'de> Deserialize<'de>>(
    source: &dyn StreamSource,
    name: &str,
) -> Result<Vec<T>> {
    // Opened by name: the repository lists only the database's own streams.
    let mut stream = match source.open(name).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut body = Vec::new();
    while let Some(piece) = stream.next().await {
        body.extend_from_slice(&piece?);
    }
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line)
                .map_err(|e| Error::corrupt(format!("stream {name} holds a damaged line: {e}")))
        })
        .collect()
}

/// Recreates the globals of `source` on the server of `config`.
pub(crate) async fn restore_globals(
    config: &ConnConfig,
    bin_dir: Option<PathBuf>,
    source: Arc<dyn StreamSource>,
    options: &GlobalsRestoreOptions,
) -> Result<GlobalsReport> {
    let client = connect_server(config).await?;
    let roles: Vec<Role> = read_lines(source.as_ref(), ROLES).await?;
    let memberships: Vec<Membership> = read_lines(source.as_ref(), MEMBERSHIPS).await?;
    let settings: Vec<RoleSetting> = read_lines(source.as_ref(), ROLE_SETTINGS).await?;
    let mut report = GlobalsReport::default();
    match options.phase {
        GlobalsPhase::BeforeDatabases => {
            let wanted = if options.databases.is_empty() {
                None
            } else {
                Some(needed_roles(bin_dir, source.as_ref(), &memberships).await?)
            };
            let wants = |name: &str| wanted.as_ref().is_none_or(|w| w.contains(name));
            let before = existing_roles(&client).await?;
            for role in roles.iter().filter(|r| wants(&r.name)) {
                if before.contains(&role.name) {
                    report.existing.push(format!("role {}", role.name));
                    continue;
                }
                execute(&client, &role.create_sql(), || {
                    format!("creating role {}", role.name)
                })
                .await?;
                if let Some(c) = &role.comment {
                    execute(
                        &client,
                        &format!(
                            "COMMENT ON ROLE {} IS {}",
                            quote_ident(&role.name),
                            quote_literal(c)
                        ),
                        || format!("setting the comment of role {}", role.name),
                    )
                    .await?;
                }
                report.created.push(format!("role {}", role.name));
            }
            // A role that was there is left as it is: no memberships or settings are
            // added to it.
            grant_memberships(&client, &memberships, &before, &wants, &mut report).await?;
            for s in settings
                .iter()
                .filter(|s| s.database.is_none() && wants(&s.role) && !before.contains(&s.role))
            {
                for clause in s.settings.iter().filter_map(|c| set_clause(c)) {
                    execute(
                        &client,
                        &format!("ALTER ROLE {} SET {clause}", quote_ident(&s.role)),
                        || format!("setting a setting of role {}", s.role),
                    )
                    .await?;
                }
                report.created.push(format!("settings of role {}", s.role));
            }
            if options.databases.is_empty() {
                let tablespaces: Vec<Tablespace> = read_lines(source.as_ref(), TABLESPACES).await?;
                create_tablespaces(&client, &tablespaces, &mut report).await?;
            }
        }
        GlobalsPhase::AfterDatabases => {
            // A single database restored under another name takes its settings along.
            let rename: Option<(&str, &str)> = match options.databases.as_slice() {
                [one] if config.dbname_given && config.dbname != *one => {
                    Some((one.as_str(), config.dbname.as_str()))
                }
                _ => None,
            };
            let present = databases(config).await?;
            let roles_now = existing_roles(&client).await?;
            for s in &settings {
                let Some(db) = &s.database else { continue };
                if !options.databases.is_empty() && !options.databases.contains(db) {
                    continue;
                }
                let target = match rename {
                    Some((from, to)) if from == db => to,
                    _ => db.as_str(),
                };
                if !present.iter().any(|d| d == target) || !roles_now.contains(&s.role) {
                    report.warnings.push(format!(
                        "the settings of role {} in database {target} are not restored: the {} \
                         does not exist on the target",
                        s.role,
                        if roles_now.contains(&s.role) {
                            "database"
                        } else {
                            "role"
                        }
                    ));
                    continue;
                }
                let what = format!("settings of role {} in database {target}", s.role);
                let has: bool = column(
                    &client
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s
                               JOIN pg_roles r ON r.oid = s.setrole
                               JOIN pg_database d ON d.oid = s.setdatabase
                              WHERE r.rolname = $1 AND d.datname = $2)",
                            &[&s.role, &target],
                        )
                        .await
                        .map_err(|e| query_error(e, format!("looking up the {what}")))?,
                    0,
                    "looking up role settings",
                )?;
                if has {
                    report.existing.push(what);
                    continue;
                }
                for clause in s.settings.iter().filter_map(|c| set_clause(c)) {
                    execute(
                        &client,
                        &format!(
                            "ALTER ROLE {} IN DATABASE {} SET {clause}",
                            quote_ident(&s.role),
                            quote_ident(target)
                        ),
                        || format!("restoring the {what}"),
                    )
                    .await?;
                }
                report.created.push(what);
            }
        }
    }
    Ok(report)
}

async fn execute(client: &Client, sql: &str, doing: impl Fn() -> String) -> Result<()> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| query_error(e, doing()))
}

async fn existing_roles(client: &Client) -> Result<BTreeSet<String>> {
    let rows = client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| query_error(e, "listing the target's roles"))?;
    rows.iter()
        .map(|r| column::<String>(r, 0, "listing the target's roles"))
        .collect()
}

/// Grants the memberships of the roles created: with their grantor where the server
/// takes it (a grantor must hold the admin option first, so the grants are tried
/// again while some succeed), else without, with a warning.
async fn grant_memberships(
    client: &Client,
    memberships: &[Membership],
    before: &BTreeSet<String>,
    wants: &(dyn Fn(&str) -> bool + Sync),
    report: &mut GlobalsReport,
) -> Result<()> {
    let mut todo: Vec<&Membership> = memberships
        .iter()
        .filter(|m| wants(&m.member) && !before.contains(&m.member))
        .collect();
    let now = existing_roles(client).await?;
    todo.retain(|m| {
        if now.contains(&m.role) {
            true
        } else {
            report.warnings.push(format!(
                "{} is not restored: role {} does not exist",
                m.describe(),
                m.role
            ));
            false
        }
    });
    loop {
        let mut failed = Vec::new();
        for m in &todo {
            let with_grantor = m.grantor.as_ref().is_some_and(|g| now.contains(g));
            if client
                .batch_execute(&m.grant_sql(with_grantor))
                .await
                .is_ok()
            {
                report.created.push(m.describe());
            } else {
                failed.push(*m);
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if failed.len() == todo.len() {
            for m in failed {
                client
                    .batch_execute(&m.grant_sql(false))
                    .await
                    .map_err(|e| query_error(e, format!("restoring the {}", m.describe())))?;
                report.created.push(m.describe());
                if let Some(g) = &m.grantor {
                    report.warnings.push(format!(
                        "the {} is recorded as granted by the restoring user, not by {g}",
                        m.describe()
                    ));
                }
            }
            return Ok(());
        }
        todo = failed;
    }
}

async fn create_tablespaces(
    client: &Client,
    tablespaces: &[Tablespace],
    report: &mut GlobalsReport,
) -> Result<()> {
    let rows = client
        .query("SELECT spcname::text FROM pg_tablespace", &[])
        .await
        .map_err(|e| query_error(e, "listing the target's tablespaces"))?;
    let present: BTreeSet<String> = rows
        .iter()
        .map(|r| column::<String>(r, 0, "listing tablespaces"))
        .collect::<Result<_>>()?;
    for t in tablespaces {
        let what = format!("tablespace {}", t.name);
        if present.contains(&t.name) {
            report.existing.push(what);
            continue;
        }
        let sql = format!(
            "CREATE TABLESPACE {} OWNER {} LOCATION {}",
            quote_ident(&t.name),
            quote_ident(&t.owner),
            quote_literal(&t.location)
        );
        if let Err(e) = client.batch_execute(&sql).await {
            report.warnings.push(format!(
                "{what} is not created (create its directory {} on the target, owned by the \
                 server's user, and create it by hand): {}",
                t.location,
                query_error(e, "creating it")
            ));
            continue;
        }
        if !t.options.is_empty() {
            execute(
                client,
                &format!(
                    "ALTER TABLESPACE {} SET ({})",
                    quote_ident(&t.name),
                    t.options.join(", ")
                ),
                || format!("setting the options of {what}"),
            )
            .await?;
        }
        if let Some(c) = &t.comment {
            execute(
                client,
                &format!(
                    "COMMENT ON TABLESPACE {} IS {}",
                    quote_ident(&t.name),
                    quote_literal(c)
                ),
                || format!("setting the comment of {what}"),
            )
            .await?;
        }
        report.created.push(what);
    }
    Ok(())
}

/// The roles the databases in `source` need: those their schema archives name, their
/// owners, and the roles those are members of, transitively.
async fn needed_roles(
    bin_dir: Option<PathBuf>,
    source: &dyn StreamSource,
    memberships: &[Membership],
) -> Result<BTreeSet<String>> {
    let schemas: Vec<StreamSpec> = source
        .streams()
        .iter()
        .filter(|s| s.role == StreamRole::Schema)
        .cloned()
        .collect();
    let mut needed = BTreeSet::new();
    if schemas.is_empty() {
        return Ok(needed);
    }
    let (pg_restore, _) = tools::resolve_program("pg_restore", bin_dir).await?;
    for spec in schemas {
        if let Some(props) = spec.meta.get(DATABASE_PROPERTIES_META)
            && let Ok(p) = serde_json::from_str::<DatabaseProperties>(props)
        {
            needed.insert(p.owner);
        }
        let staged = tempfile::Builder::new()
            .prefix("dbops-schema-")
            .tempfile()
            .map_err(|e| Error::io("creating a temporary file for the schema archive", e))?;
        restore::stage(source, &spec.name, staged.path()).await?;
        let script = restore::schema_script(&pg_restore, staged.path(), None, false).await?;
        needed.extend(roles::needed_roles(&script).into_iter().map(|r| r.name));
    }
    let by_member: BTreeMap<&str, Vec<&str>> =
        memberships.iter().fold(BTreeMap::new(), |mut map, m| {
            map.entry(m.member.as_str())
                .or_default()
                .push(m.role.as_str());
            map
        });
    let mut todo: Vec<String> = needed.iter().cloned().collect();
    while let Some(r) = todo.pop() {
        for group in by_member.get(r.as_str()).into_iter().flatten() {
            if needed.insert((*group).to_owned()) {
                todo.push((*group).to_owned());
            }
        }
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_quoted_element_by_element() {
        assert_eq!(
            set_clause("search_path=app, \"my schema\", public").as_deref(),
            Some("\"search_path\" TO 'app', 'my schema', 'public'")
        );
        assert_eq!(
            set_clause("work_mem=64MB").as_deref(),
            Some("\"work_mem\" TO '64MB'")
        );
        assert_eq!(
            set_clause("statement_timeout=it's").as_deref(),
            Some("\"statement_timeout\" TO 'it''s'")
        );
    }

    #[test]
    fn debug_never_shows_a_password_hash() {
        let role = Role {
            name: "app".into(),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login: true,
            replication: false,
            bypassrls: false,
            connection_limit: -1,
            valid_until: None,
            password: Some("SCRAM-SHA-256$4096:secrethash".into()),
            comment: None,
        };
        let shown = format!("{role:?}");
        assert!(!shown.contains("secrethash"), "{shown}");
        assert!(role.create_sql().contains("PASSWORD 'SCRAM"));
        assert!(
            role.create_sql()
                .starts_with("CREATE ROLE \"app\" WITH NOSUPERUSER INHERIT")
        );
    }
}
