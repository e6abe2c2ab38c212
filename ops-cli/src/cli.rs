//! Command-line arguments. The forms here are a contract that scripts and checks drive;
//! change them only by adding.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// dbops: consistent, compressed, encrypted, de-duplicated backups of PostgreSQL and
/// MariaDB, with verification by restore.
#[derive(Debug, Parser)]
#[command(name = "dbops", version, about, long_about = None)]
pub struct Cli {
    /// Repository URL: a path, file:///path, memory://, s3://bucket/prefix, gs://…, az://…
    #[arg(long, global = true, env = "DBOPS_REPO", value_name = "URL")]
    pub repo: Option<String>,

    /// Config file (TOML): the deployment's repositories, databases, notifications and
    /// jobs (see docs/OPERATIONS.md); also `repo`, `password_file` and `[retention]`
    /// for one-shot commands. Flags win over it.
    #[arg(long, global = true, env = "DBOPS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// File holding the repository password (else DBOPS_PASSWORD).
    #[arg(long, global = true, env = "DBOPS_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Key file written by `dbops key save-local` (else DBOPS_KEY_FILE): opens the
    /// repository without the password's memory-hard derivation, for commands started
    /// once per WAL segment. Owner-only files only.
    #[arg(long, global = true, env = "DBOPS_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Local cache of the repository's index and manifests (default: DBOPS_CACHE_DIR,
    /// else $XDG_CACHE_HOME/dbops, else ~/.cache/dbops). Only a cache: the repository
    /// is the truth, and a missing, stale or damaged cache is rebuilt.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Use no local cache: read the index and manifests from the repository.
    #[arg(long, global = true, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// How long to wait for a repository lock held by another process (e.g. 30s, 10m,
    /// 1h) before giving up with exit code 4. Default: 10m for backup and copy, which
    /// must not be lost to a prune that happens to run; no wait for the others.
    #[arg(long, global = true, value_name = "DURATION", env = "DBOPS_LOCK_WAIT")]
    pub lock_wait: Option<String>,

    /// Print one JSON document on stdout and nothing else there.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
    /// Back up a database; prints the backup id.
    Backup(BackupArgs),
    /// List backups, grouped by database.
    List(ListArgs),
    /// Show one backup in detail.
    Show(ShowArgs),
    /// Check backups: structure, every byte (--read-data), or by restoring (--restore).
    Verify(VerifyArgs),
    /// Restore a backup into a database.
    Restore(RestoreArgs),
    /// Forget backups by retention rules (keep or forget each, with the reasons).
    Forget(ForgetArgs),
    /// Remove data that no backup references (after `forget`).
    Prune(PruneArgs),
    /// Copy backups into another repository (only the chunks it lacks are sent).
    Copy(CopyArgs),
    /// Remove stale locks (left by crashed processes), or all locks with --all.
    Unlock(UnlockArgs),
    /// Manage the repository's passwords: several can open it; a lost password that is
    /// the only one means lost backups.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Archive one WAL file into the repository, as PostgreSQL's archive_command
    /// (`dbops wal-push %p`). Exit 0 only once it is stored (or spooled, with --spool).
    WalPush(WalPushArgs),
    /// Fetch one archived WAL file, as PostgreSQL's restore_command
    /// (`dbops wal-fetch %f %p`). Exit 0 found, 1 not in the archive, 255 any other
    /// failure (PostgreSQL then stops recovery rather than end it early).
    WalFetch(WalFetchArgs),
    /// Stream WAL from a server over the replication protocol (pg_receivewal, with a
    /// replication slot) into the repository, until stopped.
    WalReceive(WalReceiveArgs),
    /// Stream a MariaDB server's binary logs into the repository, until stopped;
    /// resumes where the archive ends.
    BinlogArchive(BinlogArchiveArgs),
    /// Run jobs from the config once, now, and exit with their result (for cron,
    /// systemd timers and Kubernetes CronJobs).
    Run(RunArgs),
    /// Run the config's schedule until stopped: SIGTERM or SIGINT stop it cleanly
    /// (running jobs get `shutdown_grace`), SIGHUP reloads the config.
    Daemon(DaemonArgs),
    /// Run the health checks (all, or the named checks or services) concurrently; exit
    /// 0 ok, 1 warning, 2 critical, 3 unknown (Nagios).
    Health(HealthArgs),
    /// List the config's jobs with their next run times.
    Jobs(JobsArgs),
    /// Show the run history, newest first.
    History(HistoryArgs),
    /// Print the Prometheus metrics (from the run history; with --health, the health
    /// checks' too), as `dbops daemon --listen` serves them.
    Metrics(MetricsArgs),
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Report on a live database, read-only: sizes, bloat, indexes, activity, locks,
    /// queries, vacuum.
    Inspect(InspectArgs),
    /// Vacuum, analyze, reindex, optimize, check or repair tables; heavy locks are
    /// taken in short tries up to --lock-wait (default 60s), never queued in front of
    /// the application. Exit 3 when check finds damage, 4 when a lock was not taken.
    Maintain(MaintainArgs),
    /// List the server's sessions; with --cancel or --terminate and --yes, end them.
    Sessions(SessionsArgs),
    /// Run the config's integrity checks (queries that must return no rows); exit 0
    /// pass, 1 warning, 2 error, 3 could not run.
    Integrity(IntegrityArgs),
    /// Move rows matching --where from a table into an archive table, in batches of
    /// one transaction each; safe to kill and run again.
    Archive(ArchiveArgs),
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to report: sizes, bloat, indexes, activity, locks, queries, vacuum.
    #[arg(value_name = "WHAT")]
    pub what: String,
    /// Database URL, or the name of a [databases.NAME] in the config.
    #[arg(value_name = "DB_URL")]
    pub database: String,
    /// Only this table, name or schema.name (repeatable).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// What counts as a long-running query (activity).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub longer_than: String,
    /// At most this many rows per list.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
}

/// `maintain`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// vacuum, analyze, reindex, optimize, check or repair.
    #[arg(value_name = "ACTION")]
    pub action: String,
    /// Database URL, or the name of a [databases.NAME] in the config.
    #[arg(value_name = "DB_URL")]
    pub database: String,
    /// Only this table, name or schema.name (repeatable); default every table.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Print the statements that would run; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// vacuum: VACUUM FULL (rewrites the table under an exclusive lock).
    #[arg(long)]
    pub full: bool,
    /// vacuum: also ANALYZE.
    #[arg(long)]
    pub analyze: bool,
    /// reindex: REINDEX CONCURRENTLY (no write lock for the rebuild).
    #[arg(long)]
    pub concurrently: bool,
}

/// `sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// Database URL, or the name of a [databases.NAME] in the config.
    #[arg(value_name = "DB_URL")]
    pub database: String,
    /// Only sessions older than this (e.g. 5m): a running query by its start, a
    /// session idle in a transaction by the transaction's start; idle sessions
    /// only with --state idle, by their time idle.
    #[arg(long, value_name = "DURATION")]
    pub longer_than: Option<String>,
    /// Only sessions in this state (active, idle, "idle in transaction", …).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Only sessions of this user.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only sessions of this application.
    #[arg(long, value_name = "NAME")]
    pub application: Option<String>,
    /// Only sessions that block others and wait for no one.
    #[arg(long)]
    pub root_blockers: bool,
    /// Sessions of every database of the server, not only the one the URL names.
    #[arg(long)]
    pub all_databases: bool,
    /// With --cancel or --terminate and no other condition: really every client
    /// session (refused without it).
    #[arg(long)]
    pub all: bool,
    /// Cancel the sessions' running queries.
    #[arg(long, conflicts_with = "terminate")]
    pub cancel: bool,
    /// Cancel, then end the sessions still there after --grace.
    #[arg(long)]
    pub terminate: bool,
    /// Really act (without it, --cancel and --terminate print what they would end).
    #[arg(long)]
    pub yes: bool,
    /// Time between cancel and terminate.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub grace: String,
}

/// `integrity`.
#[derive(Debug, Args)]
pub struct IntegrityArgs {
    /// Only these checks ([checks.NAME]); all when none.
    #[arg(value_name = "CHECK")]
    pub checks: Vec<String>,
    /// Only the checks of this [databases.NAME].
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
}

/// `archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Database URL, or the name of a [databases.NAME] in the config.
    #[arg(value_name = "DB_URL")]
    pub database: String,
    /// Source table, name or schema.name (needs a primary key).
    #[arg(long, value_name = "TABLE")]
    pub table: String,
    /// SQL condition on the source's rows, e.g. "created_at < now() - interval '2 years'".
    #[arg(long = "where", value_name = "PREDICATE")]
    pub predicate: String,
    /// Archive table (created like the source when missing).
    #[arg(long, value_name = "TABLE")]
    pub into: String,
    /// Rows per batch (one transaction each).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub batch: u64,
    /// Count the rows that would move; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Sleep between batches.
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub pause: String,
    /// Stop after this many rows.
    #[arg(long, value_name = "N")]
    pub max_rows: Option<u64>,
    /// Wait while a replica lags more than this.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub max_replication_lag: String,
    /// Wait while another transaction has been open longer than this.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub max_transaction_age: String,
    /// Give up (rows moved so far stay moved) after waiting this long in one go
    /// for the replica or the old transaction.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub max_wait: String,
}

/// `config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the config and print it resolved (defaults filled in), every secret
    /// redacted.
    Check,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The jobs to run, by name (in this order).
    #[arg(value_name = "JOB", required = true)]
    pub jobs: Vec<String>,
}

/// `daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Serve /metrics and /health on this address (overrides `listen` in the config).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
}

/// `health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Only these checks or services (by name); all when none.
    #[arg(value_name = "CHECK")]
    pub checks: Vec<String>,
}

/// `metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Also run the health checks and include their status and values.
    #[arg(long)]
    pub health: bool,
}

/// `jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// How many next run times to show per job.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub next: usize,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this job's runs.
    #[arg(value_name = "JOB")]
    pub job: Option<String>,
    /// How many runs to show.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub last: usize,
}

/// `key …`. The new password comes from --new-password-file, DBOPS_NEW_PASSWORD, or
/// a prompt on the terminal.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the passwords' key files (never the keys).
    List,
    /// Add a password.
    Add(NewPasswordArgs),
    /// Remove a password by its key id (not the one in use, never the last).
    Remove(RemoveKeyArgs),
    /// Change the password in use (add the new one, remove the old one).
    Passwd(NewPasswordArgs),
    /// Write the unwrapped key to a local owner-only file, for --key-file (wal-push and
    /// wal-fetch run once per segment). Whoever reads that file reads every backup.
    SaveLocal(SaveLocalKeyArgs),
}

/// `wal-push`.
#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file (`%p`: relative to the data directory, where PostgreSQL runs the
    /// command).
    #[arg(value_name = "PATH", required_unless_present = "drain")]
    pub path: Option<PathBuf>,
    /// The data directory, whose global/pg_control names the cluster (default: the
    /// current directory, as under archive_command).
    #[arg(long, value_name = "DIR", env = "PGDATA")]
    pub pgdata: Option<PathBuf>,
    /// Asynchronous mode: copy the file into this local spool directory (fsynced) and
    /// return; a background uploader started on demand sends the spool to the
    /// repository with --jobs uploads at once. Weaker: until uploaded, the WAL lives
    /// on this host's disk only.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Uploads at once from the spool.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Refuse to spool more than this many bytes (PostgreSQL then keeps its WAL and
    /// retries): e.g. 4G, 512M.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub spool_max: String,
    /// Run as the spool's uploader until the spool stays empty (started by wal-push
    /// --spool itself).
    #[arg(long, requires = "spool", hide = true)]
    pub drain: bool,
}

/// `wal-fetch`.
#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The file PostgreSQL asks for (`%f`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write it (`%p`).
    #[arg(value_name = "PATH")]
    pub dest: PathBuf,
    /// The data directory, whose global/pg_control names the cluster (default: the
    /// current directory, as under restore_command).
    #[arg(long, value_name = "DIR", env = "PGDATA")]
    pub pgdata: Option<PathBuf>,
    /// Look in this spool directory of wal-push --spool first.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
}

/// `wal-receive`.
#[derive(Debug, Args)]
pub struct WalReceiveArgs {
    /// The server (a role with REPLICATION).
    #[arg(value_name = "PG_URL")]
    pub url: String,
    /// Replication slot (created if missing), so the server keeps WAL until received.
    #[arg(long, default_value = "dbops", value_name = "NAME")]
    pub slot: String,
    /// Local directory for the segment being received (pg_receivewal's target).
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// Stop after this long (e.g. 30s; for tests and one-shot runs).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

/// `binlog-archive`.
#[derive(Debug, Args)]
pub struct BinlogArchiveArgs {
    /// The server (a user with REPLICATION SLAVE and BINLOG MONITOR).
    #[arg(value_name = "MARIADB_URL")]
    pub url: String,
    /// Stop after this long (e.g. 30s; for tests and one-shot runs).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

/// `key save-local`.
#[derive(Debug, Args)]
pub struct SaveLocalKeyArgs {
    /// Where to write the key (created owner-only; never over an existing file).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Where a new password comes from.
#[derive(Debug, Args)]
pub struct NewPasswordArgs {
    /// File holding the new password (else DBOPS_NEW_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Argon2id memory in MiB (lower only for tests).
    #[arg(long, default_value_t = 64, value_name = "MIB", hide = true)]
    pub kdf_memory_mib: u32,
}

/// `key remove`.
#[derive(Debug, Args)]
pub struct RemoveKeyArgs {
    /// Key id (or a unique prefix), as `key list` shows it.
    #[arg(value_name = "KEY_ID")]
    pub id: String,
}

/// Which backups a command considers. A repository can hold many databases: `latest`
/// means the newest backup of one database, so name it when there are several.
#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Only backups of this database.
    #[arg(long = "database", id = "filter_database", value_name = "NAME")]
    pub database: Option<String>,
    /// Only backups of this engine (postgresql, mariadb).
    #[arg(long = "engine", id = "filter_engine", value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Only backups of the server at this address (host or host:port, as given).
    #[arg(long = "host", id = "filter_host", value_name = "HOST")]
    pub host: Option<String>,
    /// Only backups with this tag (repeatable: every tag must be present).
    #[arg(long = "tag", id = "filter_tags", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Which backups.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the N newest backups of each group.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
}

/// `prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Say what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repack a pack when more than this percentage of it is unused.
    #[arg(long, default_value_t = 20.0, value_name = "PERCENT")]
    pub max_unused: f64,
    /// Remove packs left by failed backups only when older than this many seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub unindexed_grace: u64,
}

/// `copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source repository URL.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// File with the source repository's password (else DBOPS_FROM_PASSWORD).
    #[arg(long, env = "DBOPS_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Destination repository URL (default: --repo / DBOPS_REPO); its password is
    /// DBOPS_PASSWORD or --password-file.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Backup ids or unique prefixes to copy.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Copy the newest backup (of one group: name the database when there are several).
    #[arg(long, conflicts_with_all = ["all", "ids"])]
    pub latest: bool,
    /// Copy every backup (that passes the filter).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Which backups.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones (only when no dbops process runs).
    #[arg(long)]
    pub all: bool,
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store data unencrypted (required to do so on a remote target).
    #[arg(long)]
    pub no_encryption: bool,
    /// zstd compression level (1 is smaller and faster than 3 on typical table data
    /// at dbops' chunk size; higher levels trade speed for size).
    #[arg(long, default_value_t = 1, value_name = "LEVEL")]
    pub compression_level: i32,
    /// Average chunk size in KiB (min is a quarter, max eight times).
    #[arg(long, default_value_t = 8, value_name = "KIB")]
    pub chunk_size_kib: u32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub pack_size_mib: u32,
    /// Argon2id memory in MiB (lower only for tests).
    #[arg(long, default_value_t = 64, value_name = "MIB", hide = true)]
    pub kdf_memory_mib: u32,
}

/// `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Database URL (postgres://, postgresql://, mariadb://, mysql://). Passwords are
    /// better given by PGPASSWORD / the engine's own environment. Optional with
    /// `--path`: a backup of files alone.
    #[arg(value_name = "DB_URL", required_unless_present = "paths")]
    pub database: Option<String>,
    /// A physical base backup of the whole PostgreSQL cluster (pg_basebackup, one
    /// stream per file, so unchanged files cost nothing the next time), for
    /// point-in-time restores with the WAL archive (wal-push). Needs archive_mode on
    /// and a role with REPLICATION.
    #[arg(long, conflicts_with_all = ["paths", "all_databases", "with_role_passwords", "tables", "exclude_tables", "exclude_table_data", "schemas", "exclude_schemas"])]
    pub physical: bool,
    /// A directory or file to back up beside the database, in the same backup
    /// (repeatable): contents, modes, owners, times, symlinks and hard links.
    #[arg(long = "path", value_name = "DIR")]
    pub paths: Vec<std::path::PathBuf>,
    /// Leave out what matches (repeatable): `*.tmp` matches names at any depth,
    /// `cache/**` paths below a `--path` root; `*` `?` `[a-z]` `**`.
    #[arg(long = "exclude", value_name = "GLOB", requires = "paths")]
    pub excludes: Vec<String>,
    /// Parallel connections, all on one snapshot.
    #[arg(long, short = 'j', default_value_t = 2)]
    pub jobs: usize,
    /// Tag the backup (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Split tables larger than this many MiB into several streams.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub split_mib: u64,
    /// Back up every database of the server (not templates) and its globals (roles,
    /// memberships, role settings, tablespaces; MariaDB users, roles, grants) as one
    /// backup; DB_URL names the server (a database in it is only where dbops
    /// connects). Each database is its own snapshot: none spans databases.
    #[arg(long, requires = "database")]
    pub all_databases: bool,
    /// Store role password hashes with the globals (PostgreSQL: needs a superuser,
    /// who alone may read pg_authid). Without it, roles come back without passwords.
    #[arg(long)]
    pub with_role_passwords: bool,
    /// Only tables matching this pattern (repeatable), as pg_dump's -t: `users`,
    /// `app.log_*`, `"Odd.Name"`; `*` and `?` are wildcards, a name without a schema
    /// matches in every schema. Views, functions and the schema itself are not taken.
    #[arg(long = "table", value_name = "PATTERN", requires = "database")]
    pub tables: Vec<String>,
    /// Leave out tables matching this pattern (repeatable), as pg_dump's -T.
    #[arg(long = "exclude-table", value_name = "PATTERN", requires = "database")]
    pub exclude_tables: Vec<String>,
    /// Take the definition but not the rows of tables matching this pattern
    /// (repeatable): log and session tables.
    #[arg(
        long = "exclude-table-data",
        value_name = "PATTERN",
        requires = "database"
    )]
    pub exclude_table_data: Vec<String>,
    /// Only tables in schemas matching this pattern (repeatable), as pg_dump's -n; on
    /// MariaDB the schema is the database.
    #[arg(
        long = "schema",
        value_name = "PATTERN",
        requires = "database",
        conflicts_with = "tables"
    )]
    pub schemas: Vec<String>,
    /// Leave out tables in schemas matching this pattern (repeatable), as pg_dump's -N.
    #[arg(
        long = "exclude-schema",
        value_name = "PATTERN",
        requires = "database",
        conflicts_with = "tables"
    )]
    pub exclude_schemas: Vec<String>,
}

/// `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Backup id, a unique part of it, `latest` or `latest:DATABASE`.
    #[arg(value_name = "ID", default_value = "latest")]
    pub id: String,
    /// Which backups `latest` and ids choose from.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// List every stored file and directory (path, type, mode, owner, size, time).
    #[arg(long)]
    pub files: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Backup id, a unique part of it, `latest` or `latest:DATABASE` (default: latest).
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub id: Option<String>,
    /// Verify every backup (that passes the filter).
    #[arg(long)]
    pub all: bool,
    /// Which backups.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Read every chunk: authenticate, decompress, re-hash.
    #[arg(long)]
    pub read_data: bool,
    /// Restore into a scratch database and compare every table.
    #[arg(long)]
    pub restore: bool,
    /// Scratch database for --restore (created if missing, dropped after if created);
    /// default: a throwaway local server.
    #[arg(long, value_name = "DB_URL", requires = "restore")]
    pub into: Option<String>,
    /// With --restore: leave out ownership (a scratch database given by --into that
    /// lacks the source's roles). The default throwaway server instead gets the roles
    /// and definers the backup needs, and the report names them.
    #[arg(long, requires = "restore")]
    pub no_owner: bool,
    /// Parallel connections / streams.
    #[arg(long, short = 'j', default_value_t = 2)]
    pub jobs: usize,
    /// Check the WAL archive's continuity too (every segment from the oldest base
    /// backup's start to the newest); implied by --all.
    #[arg(long)]
    pub wal: bool,
}

/// `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id, a unique part of it, `latest` or `latest:DATABASE`. With several
    /// databases in the repository, `latest` needs `--database NAME`.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Which backups `latest` and ids choose from.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Database to restore into (any name: restoring `shop` as `shop_restore` works).
    /// Optional with `--path-to`: the files alone.
    #[arg(value_name = "DB_URL", required_unless_present_any = ["path_to", "to_datadir"])]
    pub database: Option<String>,
    /// Restore the backup's files below DIR, each under its original absolute path
    /// (`/srv/app/storage` lands in DIR/srv/app/storage).
    #[arg(long, value_name = "DIR")]
    pub path_to: Option<std::path::PathBuf>,
    /// Only this original path and what is below it (repeatable; with `--path-to`).
    #[arg(long = "path", value_name = "PATH", requires = "path_to")]
    pub paths: Vec<std::path::PathBuf>,
    /// Replace files that exist below `--path-to` (else nothing is written).
    #[arg(long, requires = "path_to")]
    pub overwrite: bool,
    /// Create the database (it must not exist).
    #[arg(long)]
    pub create: bool,
    /// Drop what the target holds first (with --table, only those tables).
    #[arg(long)]
    pub clean: bool,
    /// Keep a database created by --create when the restore fails.
    #[arg(long)]
    pub keep_failed: bool,
    /// With --clean: do not back up what the target holds first (by default a
    /// backup tagged `safety` is taken, and a failed restore names it).
    #[arg(long, requires = "clean")]
    pub no_safety_backup: bool,
    /// With --clean: end the sessions connected to the target database first
    /// (without it, connected sessions stop the restore before anything changes).
    #[arg(long, requires = "clean")]
    pub terminate_connections: bool,
    /// Restore only this table, schema.name (repeatable).
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Restore only this schema (repeatable).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub schemas: Vec<String>,
    /// Leave out ownership (for targets without the source's roles).
    #[arg(long)]
    pub no_owner: bool,
    /// Parallel connections.
    #[arg(long, short = 'j', default_value_t = 2)]
    pub jobs: usize,
    /// Rebuild a whole-server backup on the server DB_URL names: globals, then every
    /// database (created), then per-database role settings. A database the server
    /// already has with tables is refused unless --clean.
    #[arg(long, conflicts_with_all = ["create", "tables", "schemas", "source_database"])]
    pub all_databases: bool,
    /// First create the roles the database needs (owners, grantees and the roles
    /// they belong to) from the backup's globals; roles that exist are left alone.
    #[arg(long, conflicts_with = "all_databases")]
    pub with_globals: bool,
    /// Restore this one database out of a whole-server backup.
    #[arg(long, value_name = "NAME")]
    pub source_database: Option<String>,
    /// Restore to this point in time: RFC 3339 (2026-12-03T10:15:00Z, or with an
    /// offset) or PostgreSQL's form (2026-12-03 10:15:00+00). A MariaDB backup is
    /// restored, then the archived binary log is replayed from its position up to
    /// this time (see binlog-archive); a physical PostgreSQL backup recovers to it.
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Restore a physical base backup (backup --physical) into a new data directory
    /// (--to-datadir), with recovery settings that fetch WAL through wal-fetch.
    #[arg(long, requires = "to_datadir")]
    pub physical: bool,
    /// The data directory to create for --physical (must not exist or be empty).
    #[arg(long, value_name = "DIR", requires = "physical")]
    pub to_datadir: Option<std::path::PathBuf>,
    /// --physical: recover to this WAL position (e.g. 0/3000060).
    #[arg(long, value_name = "LSN", requires = "physical", conflicts_with_all = ["target_time", "target_xid", "target_name"])]
    pub target_lsn: Option<String>,
    /// --physical: recover to the commit of this transaction id.
    #[arg(long, value_name = "XID", requires = "physical", conflicts_with_all = ["target_time", "target_name"])]
    pub target_xid: Option<String>,
    /// --physical: recover to this restore point (pg_create_restore_point).
    #[arg(
        long,
        value_name = "NAME",
        requires = "physical",
        conflicts_with = "target_time"
    )]
    pub target_name: Option<String>,
    /// --physical: what the server does at the target: promote (open for writes) or
    /// pause (read-only, to inspect before promoting).
    #[arg(long, value_name = "ACTION", requires = "physical", default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: String,
    /// --physical: start a server on the restored directory (127.0.0.1, a free port)
    /// and wait until recovery reaches the target; prints its URL and leaves it
    /// running.
    #[arg(long, requires = "physical")]
    pub start: bool,
}

/// `forget`. Rules apply to each group (by default: one database of one server)
/// separately; a backup is kept when any rule keeps it; the newest complete backup of
/// every group is always kept.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N most recent hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the N most recent days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N most recent ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N most recent months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the N most recent years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every backup newer than this (e.g. 7d, 2w3d, 36h, 1y6m).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep every backup with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// UTC offset whose days, weeks and months the calendar rules count (e.g. +02:00).
    #[arg(long, value_name = "OFFSET")]
    pub utc_offset: Option<String>,
    /// Say what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Which backups form one series that the rules count: a comma-separated list of
    /// server, host, database, tags ('' makes the whole repository one series).
    #[arg(long, value_name = "FIELDS", default_value = "server,database")]
    pub group_by: String,
    /// Only these backups are considered; others are neither kept nor forgotten.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Prune right after forgetting.
    #[arg(long)]
    pub prune: bool,
    /// How long safety backups (taken before an in-place restore, tag `safety`) are
    /// kept; the rules above do not count them.
    #[arg(long, default_value = "7d", value_name = "DURATION")]
    pub keep_safety: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn arguments_are_consistent() {
        // Catches two arguments with one id (a flattened filter's --database beside a
        // positional DB_URL), which clap only reports when the command is built.
        super::Cli::command().debug_assert();
    }
}
