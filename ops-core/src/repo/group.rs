//! Backup groups: which backups form one series.
//!
//! One repository serves many databases, so retention, "the newest complete backup is
//! always kept", `latest` and freshness are judged per group, never across the whole
//! repository: nothing done for one database may touch another's backups. A group is
//! (engine, server, database) by default; [`GroupBy`] picks other fields, as restic's
//! `--group-by` does.
//!
//! The server is named by its stable identity where the manifest records one
//! (PostgreSQL's system identifier, MySQL's `server_uuid`), so the same server reached
//! as `localhost` and as `127.0.0.1` is one series; otherwise by its address as given
//! (host and port). Manifests written before identities were recorded fall back to
//! their address, and join the identified series of the same address and database
//! when exactly one identity was seen there. Everything here is pure: manifests and
//! `now` in, decisions out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::retention::{RetentionDecision, RetentionPolicy};
use crate::{Error, ErrorKind, Result};

use super::manifest::Manifest;

/// The fields that decide which backups form one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupBy {
    /// The database server: its identity where known, else its address (with the engine).
    pub server: bool,
    /// The database server's address as given (host and port, with the engine).
    pub host: bool,
    /// The database name.
    pub database: bool,
    /// The backup's set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    /// Server and database: one series per database of one server.
    fn default() -> Self {
        Self {
            server: true,
            host: false,
            database: true,
            tags: false,
        }
    }
}

impl GroupBy {
    /// Parses a comma-separated list of `server`, `host`, `database`, `tags`; an empty
    /// string makes the whole repository one group.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming an unknown field.
    pub fn parse(text: &str) -> Result<Self> {
        let mut g = Self {
            server: false,
            host: false,
            database: false,
            tags: false,
        };
        for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match field {
                "server" => g.server = true,
                "host" => g.host = true,
                "database" => g.database = true,
                "tags" | "tag" => g.tags = true,
                other => {
                    return Err(Error::invalid(format!(
                        "unknown group field '{other}': use a comma-separated list of server, host, database and tags"
                    )));
                }
            }
        }
        Ok(g)
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = [
            (self.server, "server"),
            (self.host, "host"),
            (self.database, "database"),
            (self.tags, "tags"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if fields.is_empty() {
            f.write_str("(everything one group)")
        } else {
            f.write_str(&fields.join(","))
        }
    }
}

/// One group's key: the fields [`GroupBy`] selected, the others `None`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupGroup {
    /// Engine (with `server` or `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Server identity, or the address where none is recorded (with `server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Address as given, host:port (with `host`, or with `server` for display).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Database name (with `database`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Tags (with `tags`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeSet<String>>,
    /// Whole-server backups (with `database`): every database of a server is one
    /// series of its own, apart from the series of its databases backed up alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_databases: bool,
    /// The table filter of partial backups (with `database`): a backup of some tables
    /// is a series of its own, so it is never the `latest` of the full backups, nor
    /// counted by their retention rules in place of a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

impl fmt::Display for BackupGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.all_databases {
            parts.push("all databases".to_owned());
        } else if let Some(db) = &self.database {
            parts.push(format!("database {db}"));
        }
        if let Some(filter) = &self.partial {
            parts.push(format!("({filter})"));
        }
        match (&self.engine, &self.host, &self.server) {
            (Some(e), Some(h), Some(s)) if s != h => parts.push(format!("on {e} {h} ({s})")),
            (Some(e), Some(h), _) => parts.push(format!("on {e} {h}")),
            (Some(e), None, Some(s)) => parts.push(format!("on {e} {s}")),
            _ => {}
        }
        if let Some(tags) = &self.tags {
            parts.push(if tags.is_empty() {
                "no tags".to_owned()
            } else {
                format!(
                    "tags {}",
                    tags.iter().cloned().collect::<Vec<_>>().join(",")
                )
            });
        }
        if parts.is_empty() {
            f.write_str("all backups")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// The database server's address as the backup's source URL gives it: `host:port`
/// (the engine's default port when none is given), or the socket directory.
pub fn source_address(manifest: &Manifest) -> String {
    let default_port = match manifest.engine.as_str() {
        "postgresql" => 5432,
        "mariadb" | "mysql" => 3306,
        _ => 0,
    };
    let Ok(url) = url::Url::parse(&manifest.source) else {
        return manifest.source.clone();
    };
    let query_host = url
        .query_pairs()
        .find(|(k, _)| k == "host" || k == "socket")
        .map(|(_, v)| v.into_owned());
    match url.host_str().filter(|h| !h.is_empty()) {
        Some(h) => format!("{h}:{}", url.port().unwrap_or(default_port)),
        None => query_host.unwrap_or_else(|| "local socket".to_owned()),
    }
}

/// Computes every manifest's group, in input order.
pub fn groups_of(manifests: &[Manifest], by: &GroupBy) -> Vec<BackupGroup> {
    // Identities seen per (engine, address, database), for manifests without one.
    let mut seen: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for m in manifests {
        if let Some(id) = &m.server_id {
            seen.entry((m.engine.clone(), source_address(m), m.database.clone()))
                .or_default()
                .insert(id.clone());
        }
    }
    manifests
        .iter()
        .map(|m| {
            let address = source_address(m);
            let server = m.server_id.clone().or_else(|| {
                seen.get(&(m.engine.clone(), address.clone(), m.database.clone()))
                    .filter(|ids| ids.len() == 1)
                    .and_then(|ids| ids.first().cloned())
            });
            BackupGroup {
                engine: (by.server || by.host).then(|| m.engine.clone()),
                server: by.server.then(|| server.unwrap_or_else(|| address.clone())),
                host: by.host.then_some(address),
                database: by.database.then(|| m.database.clone()),
                tags: by.tags.then(|| m.tags.clone()),
                all_databases: by.database && m.is_server(),
                partial: (by.database && !m.filter.is_empty()).then(|| m.filter.to_string()),
            }
        })
        .collect()
}

/// Which backups a command acts on. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BackupFilter {
    /// Only backups of this database.
    pub database: Option<String>,
    /// Only backups of this engine (`postgresql`, `mariadb`).
    pub engine: Option<String>,
    /// Only backups of the server at this address (`host:port`, as given).
    pub host: Option<String>,
    /// Only backups carrying every one of these tags.
    pub tags: BTreeSet<String>,
}

impl BackupFilter {
    /// Only backups of `database`.
    #[must_use]
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Only backups of `engine`.
    #[must_use]
    pub fn with_engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// Only backups of the server at `host` (`host:port`).
    #[must_use]
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Only backups carrying `tag` (every tag added must be present).
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// True when `m` passes.
    pub fn matches(&self, m: &Manifest) -> bool {
        self.database.as_ref().is_none_or(|d| *d == m.database)
            && self.engine.as_ref().is_none_or(|e| *e == m.engine)
            && self.host.as_ref().is_none_or(|h| {
                let address = source_address(m);
                *h == address || address.split(':').next() == Some(h.as_str())
            })
            && self.tags.iter().all(|t| m.tags.contains(t))
    }
}

impl fmt::Display for BackupFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = &self.database {
            parts.push(format!("database {d}"));
        }
        if let Some(e) = &self.engine {
            parts.push(format!("engine {e}"));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if !self.tags.is_empty() {
            parts.push(format!(
                "tags {}",
                self.tags.iter().cloned().collect::<Vec<_>>().join(",")
            ));
        }
        f.write_str(&parts.join(", "))
    }
}

/// One group's retention decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDecisions {
    /// The group.
    pub group: BackupGroup,
    /// One decision per backup of the group, oldest first.
    pub decisions: Vec<RetentionDecision>,
}

/// Applies `policy` at `now` to each group of `manifests` separately: a rule counts
/// the backups of one group only, and the newest complete backup of every group is
/// kept. Groups come back in order of their key.
///
/// # Errors
/// [`ErrorKind::Internal`] when the policy returns a decision count unlike its input,
/// or forgets every backup of a group (a policy must keep the newest).
pub fn apply_per_group(
    policy: &dyn RetentionPolicy,
    manifests: &[Manifest],
    by: &GroupBy,
    now: DateTime<Utc>,
) -> Result<Vec<GroupDecisions>> {
    let mut members: BTreeMap<BackupGroup, Vec<&Manifest>> = BTreeMap::new();
    for (m, g) in manifests.iter().zip(groups_of(manifests, by)) {
        members.entry(g).or_default().push(m);
    }
    let mut out = Vec::with_capacity(members.len());
    for (group, mut backups) in members {
        backups.sort_by(|a, b| a.id.cmp(&b.id));
        let summaries: Vec<_> = backups.iter().map(|m| m.summary()).collect();
        let decisions = policy.apply(&summaries, now);
        if decisions.len() != summaries.len() {
            return Err(Error::internal(
                "retention policy returned a decision count unlike its input",
            ));
        }
        if decisions.iter().all(|d| !d.keep) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("retention policy would forget every backup of {group}; refusing"),
            ));
        }
        out.push(GroupDecisions { group, decisions });
    }
    Ok(out)
}

/// The tag of a safety backup: the target's state taken before an in-place restore
/// replaced it. `latest` skips such backups unless a filter asks for the tag, and
/// retention keeps them for a fixed time rather than counting them among their
/// group's backups.
pub const SAFETY_TAG: &str = "safety";

/// Refuses [`SAFETY_TAG`] among the tags of an ordinary backup: such a backup would
/// never be `latest` and would expire as a safety backup.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] saying why.
pub fn ordinary_tags<'a>(tags: impl IntoIterator<Item = &'a String>) -> Result<()> {
    if tags.into_iter().any(|t| t == SAFETY_TAG) {
        return Err(Error::invalid(format!(
            "the tag '{SAFETY_TAG}' marks the backups taken before an in-place restore (never `latest`, kept for the safety retention period): choose another tag"
        )));
    }
    Ok(())
}

/// How a backup is named on a command line: `latest`, `latest:DATABASE`, a full id,
/// a unique prefix of one, or a unique prefix of an id's random suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// The newest backup of one group (the filter must leave exactly one group).
    Latest,
    /// An id, a prefix of one, or a prefix of the random suffix.
    Id(String),
}

impl Selector {
    /// Parses a selector; `latest:NAME` adds a database filter.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty selector or `latest:` naming a database
    /// other than the filter's.
    pub fn parse(text: &str, filter: &mut BackupFilter) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::invalid(
                "no backup given: name one by id, a unique part of its id, or latest",
            ));
        }
        if text == "latest" {
            return Ok(Self::Latest);
        }
        if let Some(db) = text.strip_prefix("latest:") {
            if let Some(other) = filter.database.as_ref().filter(|d| *d != db) {
                return Err(Error::invalid(format!(
                    "'{text}' names database {db} but the database filter is {other}"
                )));
            }
            filter.database = Some(db.to_owned());
            return Ok(Self::Latest);
        }
        Ok(Self::Id(text.to_owned()))
    }
}

/// The ids among `ids` that `spec` names: exact match first, else those it is a prefix
/// of, else (4 characters or more) those whose random suffix it starts.
pub fn match_ids<'a>(ids: &'a [String], spec: &str) -> Vec<&'a String> {
    if let Some(exact) = ids.iter().find(|i| *i == spec) {
        return vec![exact];
    }
    let prefixed: Vec<&String> = ids.iter().filter(|i| i.starts_with(spec)).collect();
    if !prefixed.is_empty() || spec.len() < 4 {
        return prefixed;
    }
    ids.iter()
        .filter(|i| i.rsplit_once('-').is_some_and(|(_, s)| s.starts_with(spec)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, source: &str, db: &str, server_id: Option<&str>) -> Manifest {
        let at: DateTime<Utc> = "2026-11-20T12:00:00Z".parse().expect("time");
        Manifest {
            format_version: 1,
            id: id.into(),
            engine: "postgresql".into(),
            server_version: "15".into(),
            database: db.into(),
            source: source.into(),
            server_id: server_id.map(Into::into),
            host: "h".into(),
            tool_version: "0".into(),
            started: at,
            finished: at,
            tags: BTreeSet::new(),
            snapshot: BTreeMap::new(),
            warnings: Vec::new(),
            stats: Default::default(),
            streams: Vec::new(),
            databases: Vec::new(),
            filter: Default::default(),
        }
    }

    #[test]
    fn address_defaults_and_sockets() {
        let m = manifest("a", "postgres://u:******@db1/shop", "shop", None);
        assert_eq!(source_address(&m), "db1:5432");
        let m = manifest("a", "postgres://db1:6543/shop", "shop", None);
        assert_eq!(source_address(&m), "db1:6543");
        let m = manifest("a", "postgres:///shop?host=/run/postgresql", "shop", None);
        assert_eq!(source_address(&m), "/run/postgresql");
    }

    #[test]
    fn identity_joins_addresses_and_old_manifests() {
        let ms = vec![
            manifest("1", "postgres://localhost/shop", "shop", None),
            manifest("2", "postgres://localhost/shop", "shop", Some("pg:1")),
            manifest("3", "postgres://127.0.0.1/shop", "shop", Some("pg:1")),
            manifest("4", "postgres://127.0.0.1/other", "other", Some("pg:1")),
            manifest("5", "postgres://db2/shop", "shop", Some("pg:2")),
        ];
        let g = groups_of(&ms, &GroupBy::default());
        assert_eq!(g[0], g[1]);
        assert_eq!(g[1], g[2]);
        assert_ne!(g[2], g[3]);
        assert_ne!(g[2], g[4]);
        let by_host = groups_of(&ms, &GroupBy::parse("host,database").expect("parse"));
        assert_eq!(by_host[0], by_host[1]);
        assert_ne!(by_host[1], by_host[2]);
        let all = groups_of(&ms, &GroupBy::parse("").expect("parse"));
        assert!(all.iter().all(|x| *x == all[0]));
        assert!(GroupBy::parse("host,dayabase").is_err());
    }

    #[test]
    fn ids_match_by_prefix_and_suffix() {
        let ids: Vec<String> = vec![
            "20261120T120000.000Z-f60247".into(),
            "20261120T130000.000Z-da7317".into(),
            "20261121T130000.000Z-da7399".into(),
        ];
        assert_eq!(match_ids(&ids, "20261120T12").len(), 1);
        assert_eq!(match_ids(&ids, "2026112").len(), 3);
        assert_eq!(match_ids(&ids, "f602"), vec![&ids[0]]);
        assert_eq!(match_ids(&ids, "da73").len(), 2);
        assert!(match_ids(&ids, "da7").is_empty());
        assert!(match_ids(&ids, "zzzz").is_empty());
    }

    #[test]
    fn latest_with_database() {
        let mut f = BackupFilter::default();
        assert_eq!(
            Selector::parse("latest:beta", &mut f).expect("parse"),
            Selector::Latest
        );
        assert_eq!(f.database.as_deref(), Some("beta"));
        assert!(Selector::parse("latest:alpha", &mut f).is_err());
    }
}
