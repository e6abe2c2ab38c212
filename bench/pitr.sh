#!/usr/bin/env bash
# dbops's physical backups, WAL archive and point-in-time restore against
# pg_basebackup and pgBackRest, on the same data in the same run (issue 13, item 6).
#
# Starts its own throwaway PostgreSQL (initdb into a temporary directory, a free
# loopback port, as `nobody` when run as root; wal_level=replica, archive_mode=on, the
# archive_command switched per measurement), loads pgbench tables and measures:
#   1. base backup time and stored size: dbops backup --physical, pg_basebackup -Ft -z
#      -X none, pgbackrest backup --type=full (RUNS times, medians);
#   2. a second base backup after light churn (dbops into the same repository,
#      pgbackrest --type=incr), then a third with no writes in between;
#   3. WAL archiving under full pgbench load with each archive_command (dbops sync,
#      dbops --spool, pgbackrest archive-push sync and async), sampling
#      pg_stat_archiver and the .ready backlog every second;
#   4. restore to a point in time T (dbops restore --physical --start against
#      pgbackrest restore --type=time and a server start), both checked against what
#      the source held at T.
# Prints every run, medians, and ratios against the issue's targets with PASS/MISS.
# Nothing outside its temporary directory is touched. See bench/README.md.
#
# Environment:
#   SCALE=1          multiplies the data: pgbench -i -s 50×SCALE (SCALE=0.2: a smoke test)
#   PGBENCH_SCALE    pgbench -i -s, overriding SCALE
#   RUNS=3           timed runs per backup and restore measurement
#   CHURN            pgbench arguments for the churn before the second backup
#                    (default "-c 2 -T 10")
#   LOAD             pgbench arguments for the archiving load (default "-c 4 -j 2")
#   LOAD_SECONDS=60  length of the archiving load
#   KEEPUP_SEGMENTS=4  archiving "keeps up" when the .ready backlog at the end of the
#                    load is at most this many segments (and nothing failed)
#   BURST=1          after each load, a burst: VACUUM FULL pgbench_accounts with
#                    archiving held back, then the time each archiver takes to clear
#                    that backlog (its capacity in segments/s); 0: skip
#   DRAIN_TIMEOUT=900  seconds to wait after the load for the backlog to drain
#   ASYNC_JOBS=4     parallel uploads: dbops wal-push --spool --jobs, pgbackrest
#                    archive-push --process-max with archive-async
#   WRITE_SECONDS=10 pgbench writes before and after the target time of the restore
#   PGBR_COMPRESS=zst  pgbackrest compress-type (zst, gz, lz4, none)
#   PGBR_PROCESS_MAX=1 pgbackrest process-max for backup and restore (pg_basebackup
#                    and dbops backup --physical read one stream)
#   PG_BIN           PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_DIR        where the temporary directory goes (default $TMPDIR or /tmp)
#   KEEP=0           1: keep the temporary directory (servers are stopped anyway)
#   DBOPS_BIN        use this dbops binary instead of building the tree
#   SKIP             space-separated phases to skip: backup churn archive restore
#                    (the restore needs the backup phase's repositories)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

SCALE=${SCALE:-1}
PGBENCH_SCALE=${PGBENCH_SCALE:-$(awk -v s="$SCALE" 'BEGIN { n = int(50 * s + 0.5); print (n < 1 ? 1 : n) }')}
RUNS=${RUNS:-3}
CHURN=${CHURN:--c 2 -T 10}
LOAD=${LOAD:--c 4 -j 2}
LOAD_SECONDS=${LOAD_SECONDS:-60}
KEEPUP_SEGMENTS=${KEEPUP_SEGMENTS:-4}
BURST=${BURST:-1}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}
ASYNC_JOBS=${ASYNC_JOBS:-4}
WRITE_SECONDS=${WRITE_SECONDS:-10}
PGBR_COMPRESS=${PGBR_COMPRESS:-zst}
PGBR_PROCESS_MAX=${PGBR_PROCESS_MAX:-1}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
KEEP=${KEEP:-0}
SKIP=" ${SKIP:-} "
export DBOPS_PASSWORD=${DBOPS_PASSWORD:-dbops-bench-password}
unset DBOPS_REPO DBOPS_PASSWORD_FILE DBOPS_KEY_FILE DBOPS_CONFIG PGDATA

skipped() { [[ "$SKIP" == *" $1 "* ]]; }

# The server: max_wal_size and checkpoint_timeout large enough that no checkpoint
# falls inside a measurement (the load measures archiving, not checkpoints and the
# full-page images after them); synchronous_commit off, so pgbench writes WAL as fast
# as this machine can (the hardest case for the archiver); fsync and
# full_page_writes stay on.
SERVER_SETTINGS=(
	"max_connections = 50"
	"shared_buffers = 256MB"
	"maintenance_work_mem = 256MB"
	"max_wal_size = 8GB"
	"min_wal_size = 1GB"
	"checkpoint_timeout = 30min"
	"synchronous_commit = off"
	"wal_level = replica"
	"max_wal_senders = 10"
	"archive_mode = on"
	"archive_command = ''"
)

for tool in initdb pg_ctl postgres psql pgbench pg_basebackup; do
	[ -x "$PG_BIN/$tool" ] || bench_die "$PG_BIN/$tool missing: apt-get install -y postgresql-15 postgresql-client-15 (or set PG_BIN)"
done
bench_need jq jq
[ -x /usr/bin/time ] || bench_die "/usr/bin/time missing: apt-get install -y time"
if ! command -v pgbackrest >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || bench_die "pgbackrest not found: apt-get install -y pgbackrest"
	bench_log "installing pgbackrest (apt-get)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; } ||
		bench_die "could not install pgbackrest"
fi
PGBACKREST=$(command -v pgbackrest)

# ---------------------------------------------------------------------------
# Build (once) and freeze the binary: other builds in the tree must not swap it mid-run.

if [ -n "${DBOPS_BIN:-}" ]; then
	[ -x "$DBOPS_BIN" ] || bench_die "DBOPS_BIN=$DBOPS_BIN is not an executable"
	BUILD_NOTE="binary given by DBOPS_BIN=$DBOPS_BIN"
else
	bench_log "building dbops (cargo build --release -p ops-cli)"
	(cd "$ROOT" && cargo build --release -p ops-cli --quiet)
	DBOPS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dbops
	[ -x "$DBOPS_BIN" ] || bench_die "no $DBOPS_BIN after the build"
	BUILD_NOTE="release build of the tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') ($(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified tracked files)"
fi

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/dbops-bench-pitr.XXXXXX")
chmod 755 "$WORK"
PGDATA_DIR=$WORK/pgdata
SERVER_USER=$(bench_server_user)
# Everything the server's archive_command and restore_command touch belongs to the
# server's user, and dbops and pgbackrest run as that user too: as an operator would
# set them up (a repository the archiver writes into must be the archiver's).
OWNED=$WORK/owned
install -d -m 755 "$OWNED"
[ "$(id -u)" = 0 ] && chown "$SERVER_USER": "$OWNED"
as_srv() { bench_as_server_user "$@"; }
# The same as a command prefix, for commands run under GNU time (which cannot run a
# shell function).
AS_SRV=()
[ "$(id -u)" = 0 ] && AS_SRV=(runuser -u "$SERVER_USER" --)

# Background processes of this script (samplers) and servers restored by it, stopped
# on exit whatever happens.
PIDS_TO_STOP=()
SERVERS_TO_STOP=() # data directories started with pg_ctl
DBOPS_SERVERS=()   # pids of servers dbops restore --start left running

cleanup() {
	local rc=$?
	set +e
	for p in "${PIDS_TO_STOP[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${DBOPS_SERVERS[@]}"; do kill -INT "$p" 2>/dev/null; done
	for d in "${SERVERS_TO_STOP[@]}" "$PGDATA_DIR"; do
		if [ -f "$d/postmaster.pid" ]; then
			as_srv "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1 ||
				as_srv "$PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
		fi
	done
	for p in "${DBOPS_SERVERS[@]}"; do
		for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$p" 2>/dev/null
	done
	# A spool uploader or pgbackrest's async archiver may still be finishing: both
	# exit by themselves once their queue is empty; give them a moment before rm.
	sleep 1
	if [ "$KEEP" = 1 ]; then
		bench_log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$DBOPS_BIN" "$OWNED/dbops"
DBOPS=$OWNED/dbops
CACHE=$OWNED/cache
as_srv mkdir -p "$CACHE"

# ---------------------------------------------------------------------------
# The throwaway server.

PORT=$(bench_free_port)
bench_log "initdb into $PGDATA_DIR (as $SERVER_USER), port $PORT"
bench_start_pg "$PG_BIN" "$PGDATA_DIR" "$PORT" "${SERVER_SETTINGS[@]}" ||
	{ tail -20 "$PGDATA_DIR/server.log" >&2; bench_die "the server did not start"; }
POSTMASTER=$(head -1 "$PGDATA_DIR/postmaster.pid")

unset PGSERVICE PGPASSFILE PGPASSWORD PGDATABASE PGOPTIONS PGSSLMODE
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
URL="postgres://postgres@127.0.0.1:$PORT/postgres"
DB=bench

q() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"; }

# ---------------------------------------------------------------------------
# Repositories: dbops (encrypted, key file) and pgBackRest (aes-256-cbc, PGBR_COMPRESS).

# new_dbops_repo DIR KEYFILE: an encrypted repository and its key file (0600), owned by
# the server's user.
new_dbops_repo() {
	as_srv "$DBOPS" --repo "$1" -q init >/dev/null 2>>"$WORK/init.log" ||
		{ cat "$WORK/init.log" >&2; bench_die "dbops init $1 failed"; }
	as_srv "$DBOPS" --repo "$1" -q key save-local "$2" >/dev/null
}
# dbops as the server user, with the key file of the current repository.
dbops() { as_srv "$DBOPS" --repo "$OWNED/repo" --key-file "$OWNED/repo.key" --cache-dir "$CACHE" "$@"; }

PGBR_CONF=$OWNED/pgbackrest.conf
as_srv mkdir -p "$OWNED/pgbr-repo" "$OWNED/pgbr-log" "$OWNED/pgbr-lock" "$OWNED/pgbr-spool"
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$OWNED/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$DBOPS_PASSWORD
compress-type=$PGBR_COMPRESS
process-max=$PGBR_PROCESS_MAX
start-fast=y
log-path=$OWNED/pgbr-log
lock-path=$OWNED/pgbr-lock
spool-path=$OWNED/pgbr-spool
log-level-console=error
log-level-stderr=error
repo1-retention-full=9999999
log-level-file=info
archive-timeout=600

[bench]
pg1-path=$PGDATA_DIR
pg1-port=$PORT
pg1-socket-path=$PGDATA_DIR
pg1-user=postgres
EOF
chmod 600 "$PGBR_CONF"
[ "$(id -u)" = 0 ] && chown "$SERVER_USER": "$PGBR_CONF"
pgbr() { as_srv "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench "$@"; }

# The archive commands measured. The backup and restore phases archive into both
# repositories at once (each tool's backup waits for its WAL in its own archive).
AC_DBOPS="$DBOPS --repo $OWNED/repo --key-file $OWNED/repo.key --no-cache wal-push %p"
AC_DBOPS_SPOOL="$DBOPS --repo $OWNED/repo --key-file $OWNED/repo.key --no-cache wal-push --spool $OWNED/spool --jobs $ASYNC_JOBS %p"
AC_PGBR="$PGBACKREST --config=$PGBR_CONF --stanza=bench archive-push %p"
AC_PGBR_ASYNC="$PGBACKREST --config=$PGBR_CONF --stanza=bench --archive-async --process-max=$ASYNC_JOBS archive-push %p"
AC_BOTH="$AC_DBOPS && $AC_PGBR"

# set_archive_command CMD: reloads the server with CMD as archive_command.
set_archive_command() {
	local quoted=${1//\'/\'\'}
	q -d postgres -c "ALTER SYSTEM SET archive_command = '$quoted'" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	[ "$(q -d postgres -c "SHOW archive_command")" = "$1" ] || bench_die "archive_command did not change"
}

ready_count() { q -d postgres -c "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"; }

# wait_archived [TIMEOUT]: a WAL switch, then until no segment waits for archiving.
wait_archived() {
	local timeout=${1:-300} seg n
	seg=$(q -d postgres -c "SELECT pg_walfile_name(pg_switch_wal())")
	for _ in $(seq 1 $((timeout * 5))); do
		n=$(q -d postgres -c "SELECT (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') || ' ' || coalesce(last_archived_wal >= '$seg', false) FROM pg_stat_archiver")
		[ "$n" = "0 true" ] && return 0
		sleep 0.2
	done
	q -d postgres -c "SELECT * FROM pg_stat_archiver" >&2
	bench_die "WAL up to $seg was not archived within ${timeout}s"
}

# ---------------------------------------------------------------------------
# Data.

bench_log "loading pgbench -i -s $PGBENCH_SCALE"
q -d postgres -c "CREATE DATABASE $DB"
"$PG_BIN/pgbench" -i -q -s "$PGBENCH_SCALE" "$DB" >"$WORK/pgbench-init.log" 2>&1 ||
	{ tail -20 "$WORK/pgbench-init.log" >&2; bench_die "pgbench -i failed"; }
q -d "$DB" -c "VACUUM ANALYZE"
CLUSTER_BYTES=$(q -d postgres -c "SELECT sum(pg_database_size(oid)) FROM pg_database")
DB_BYTES=$(q -d postgres -c "SELECT pg_database_size('$DB')")

new_dbops_repo "$OWNED/repo.1" "$OWNED/repo.1.key"
ln -sfn "$OWNED/repo.1" "$OWNED/repo"
ln -sfn "$OWNED/repo.1.key" "$OWNED/repo.key"
set_archive_command "$AC_BOTH"
pgbr stanza-create >"$WORK/pgbr-stanza.log" 2>&1 ||
	{ cat "$WORK/pgbr-stanza.log" >&2; bench_die "pgbackrest stanza-create failed"; }
pgbr check >"$WORK/pgbr-check.log" 2>&1 ||
	{ cat "$WORK/pgbr-check.log" >&2; bench_die "pgbackrest check failed"; }
q -d postgres -c "CHECKPOINT"
wait_archived
bench_log "cluster $(bench_mb "$CLUSTER_BYTES") (database $DB $(bench_mb "$DB_BYTES")); pgbackrest stanza ready; archiving into both"

# ---------------------------------------------------------------------------
# Measuring.

declare -A WALL SIZE SEEN
RESULT_ORDER=()

# timed NAME CMD...: one run under GNU time, after sync + CHECKPOINT; appends the wall
# time to NAME.
timed() {
	local name=$1 wall rest
	shift
	sync
	q -d postgres -c "CHECKPOINT"
	bench_measure "$WORK/time.out" "$@" || bench_die "$name failed: $*"
	read -r wall rest <"$WORK/time.out"
	if [ -z "${SEEN[$name]:-}" ]; then
		SEEN[$name]=1
		RESULT_ORDER+=("$name")
	fi
	WALL[$name]+="$wall "
	bench_log "$name: ${wall}s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
}
add_size() { SIZE[$1]+="$2 "; }

med() { # med ARRAY NAME
	local -n arr=$1
	# shellcheck disable=SC2086
	bench_median ${arr[$2]:-}
}

# The newest pgbackrest backup: "label stored_bytes db_bytes".
pgbr_last() { pgbr --output=json info | jq -r '.[0].backup[-1] | "\(.label) \(.info.repository.delta) \(.info.size)"'; }

D_FULL="dbops backup --physical"
P_BASE="pg_basebackup -Ft -z -X none"
R_FULL="pgbackrest backup --type=full ($PGBR_COMPRESS)"

if ! skipped backup; then
	for i in $(seq 1 "$RUNS"); do
		bench_log "--- base backups, run $i/$RUNS"
		# dbops: a fresh repository each run (the archive_command follows the symlink);
		# the last one is kept for the second backup and the restore.
		if [ "$i" -gt 1 ]; then
			new_dbops_repo "$OWNED/repo.$i" "$OWNED/repo.$i.key"
			ln -sfn "$OWNED/repo.$i" "$OWNED/repo"
			ln -sfn "$OWNED/repo.$i.key" "$OWNED/repo.key"
			rm -rf "$OWNED/repo.$((i - 1))" "$OWNED/repo.$((i - 1)).key" "$CACHE"
			as_srv mkdir -p "$CACHE"
		fi
		timed "$D_FULL" "${AS_SRV[@]}" "$DBOPS" --repo "$OWNED/repo" --key-file "$OWNED/repo.key" --cache-dir "$CACHE" -q --json backup "$URL" --physical >"$WORK/dbops-full.json"
		add_size "$D_FULL" "$(jq -r .stats.stored_bytes "$WORK/dbops-full.json")"
		DB_FULL_ID=$(jq -r .id "$WORK/dbops-full.json")

		rm -rf "$WORK/basebackup"
		timed "$P_BASE" "$PG_BIN/pg_basebackup" -d "$URL" -Ft -z -X none -c fast -D "$WORK/basebackup"
		add_size "$P_BASE" "$(bench_bytes "$WORK/basebackup")"
		rm -rf "$WORK/basebackup"

		timed "$R_FULL" "${AS_SRV[@]}" "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench backup --type=full
		read -r _ stored _ < <(pgbr_last)
		add_size "$R_FULL" "$stored"
	done
	FULL_STORED_DU=$(bench_bytes "$OWNED/repo/")
	FULL_STORED=$(jq -r .stats.stored_bytes "$WORK/dbops-full.json")
	FULL_PLAIN=$(jq -r .stats.bytes "$WORK/dbops-full.json")
fi

# ---------------------------------------------------------------------------
# 2. A second base backup after light churn, then a third with no writes between.

D_INCR="dbops backup --physical after churn"
R_INCR="pgbackrest backup --type=incr after churn"
D_SAME="dbops backup --physical, unchanged"
R_SAME="pgbackrest backup --type=incr, unchanged"
if ! skipped churn && ! skipped backup; then
	bench_log "--- churn: pgbench -n $CHURN"
	# shellcheck disable=SC2086
	"$PG_BIN/pgbench" -n $CHURN "$DB" >"$WORK/churn.log" 2>&1 ||
		{ tail -20 "$WORK/churn.log" >&2; bench_die "pgbench churn failed"; }
	CHURN_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/churn.log")
	DU0=$(bench_bytes "$OWNED/repo/")
	timed "$D_INCR" "${AS_SRV[@]}" "$DBOPS" --repo "$OWNED/repo" --key-file "$OWNED/repo.key" --cache-dir "$CACHE" -q --json backup "$URL" --physical >"$WORK/dbops-incr.json"
	add_size "$D_INCR" "$(jq -r .stats.stored_bytes "$WORK/dbops-incr.json")"
	INCR_DU=$(($(bench_bytes "$OWNED/repo/") - DU0))
	timed "$R_INCR" "${AS_SRV[@]}" "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench backup --type=incr
	read -r _ stored _ < <(pgbr_last)
	add_size "$R_INCR" "$stored"

	timed "$D_SAME" "${AS_SRV[@]}" "$DBOPS" --repo "$OWNED/repo" --key-file "$OWNED/repo.key" --cache-dir "$CACHE" -q --json backup "$URL" --physical >"$WORK/dbops-same.json"
	add_size "$D_SAME" "$(jq -r .stats.stored_bytes "$WORK/dbops-same.json")"
	timed "$R_SAME" "${AS_SRV[@]}" "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench backup --type=incr
	read -r _ stored _ < <(pgbr_last)
	add_size "$R_SAME" "$stored"
fi

# ---------------------------------------------------------------------------
# 3. WAL archiving under full pgbench load, each archive_command in turn.

declare -A BU_N BU_SECS BU_RATE BU_SPOOL BU_FAIL
declare -A AR_TPS AR_GEN AR_DONE AR_MAX AR_END AR_DRAIN AR_FAIL AR_RATE AR_GENRATE AR_SPOOL AR_OK
ARCHIVERS=()

# sample FILE: every second "t ready archived_count failed_count" until killed.
sample() {
	while :; do
		q -d postgres -c "SELECT extract(epoch FROM clock_timestamp())::numeric(20,1),
			(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
			archived_count, failed_count FROM pg_stat_archiver" -F ' ' >>"$1" 2>/dev/null || true
		sleep 1
	done
}

spooled_files() { find "$OWNED/spool" -mindepth 2 -type f -name '0*' 2>/dev/null | wc -l; }

# archive_run NAME ARCHIVE_COMMAND
archive_run() {
	local name=$1 cmd=$2 f=$WORK/sample.$RANDOM t0 t1 t2 lsn0 lsn1 a0 a1 a_end f0 f1 spid
	bench_log "--- archiving under load: $name"
	ARCHIVERS+=("$name")
	set_archive_command "$cmd"
	wait_archived 600
	q -d postgres -c "CHECKPOINT"
	read -r lsn0 a0 f0 < <(q -d postgres -F ' ' -c "SELECT pg_current_wal_lsn(), archived_count, failed_count FROM pg_stat_archiver")
	: >"$f"
	sample "$f" &
	spid=$!
	PIDS_TO_STOP+=("$spid")
	t0=$(date +%s.%N)
	# shellcheck disable=SC2086
	"$PG_BIN/pgbench" -n $LOAD -T "$LOAD_SECONDS" "$DB" >"$WORK/load.log" 2>&1 ||
		{ tail -20 "$WORK/load.log" >&2; bench_die "pgbench load failed"; }
	t1=$(date +%s.%N)
	read -r lsn1 a_end < <(q -d postgres -F ' ' -c "SELECT pg_current_wal_lsn(), archived_count FROM pg_stat_archiver")
	AR_END[$name]=$(ready_count)
	local waited=0
	while [ "$(ready_count)" != 0 ]; do
		sleep 0.2
		waited=$((waited + 1))
		[ "$waited" -lt $((DRAIN_TIMEOUT * 5)) ] || { bench_log "$name: backlog not drained after ${DRAIN_TIMEOUT}s"; break; }
	done
	t2=$(date +%s.%N)
	AR_DRAIN[$name]=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')
	if [ "$cmd" = "$AC_DBOPS_SPOOL" ]; then
		# wal-push --spool answers once the segment is on the local spool; the repository
		# has it only when the uploader took it off the spool.
		waited=0
		while [ "$(spooled_files)" != 0 ] && [ "$waited" -lt $((DRAIN_TIMEOUT * 5)) ]; do
			sleep 0.2
			waited=$((waited + 1))
		done
		AR_SPOOL[$name]=$(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
		[ "$(spooled_files)" = 0 ] || AR_SPOOL[$name]="not empty after ${DRAIN_TIMEOUT}s"
	fi
	sleep 1
	kill "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	read -r a1 f1 < <(q -d postgres -F ' ' -c "SELECT archived_count, failed_count FROM pg_stat_archiver")
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	AR_TPS[$name]=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$WORK/load.log" | head -1)
	AR_GEN[$name]=$(q -d postgres -c "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / 16777216.0, 1)")
	AR_GENRATE[$name]=$(awk -v g="${AR_GEN[$name]}" -v s="$secs" 'BEGIN { printf "%.2f", g / s }')
	AR_DONE[$name]=$((a_end - a0))
	AR_RATE[$name]=$(awk -v n="$((a_end - a0))" -v s="$secs" 'BEGIN { printf "%.2f", n / s }')
	AR_MAX[$name]=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$f")
	AR_FAIL[$name]=$((f1 - f0))
	AR_OK[$name]=$(awk -v e="${AR_END[$name]}" -v k="$KEEPUP_SEGMENTS" -v f="$((f1 - f0))" 'BEGIN { print (e <= k && f == 0) ? "PASS" : "MISS" }')
	cp "$f" "$WORK/samples.$(echo "$name" | tr -c 'a-z0-9\n' '_')"
	bench_log "$name: pgbench ${AR_TPS[$name]} tps, ${AR_GEN[$name]} segments written (${AR_GENRATE[$name]}/s), ${AR_DONE[$name]} archived during the load (${AR_RATE[$name]}/s), backlog max ${AR_MAX[$name]} / at the end ${AR_END[$name]}, drained ${AR_DRAIN[$name]}s after the load, failed $((f1 - f0)), total archived $((a1 - a0))"
}

# burst_run NAME ARCHIVE_COMMAND: the archiver's capacity. With archiving held back
# (an empty archive_command: PostgreSQL keeps the segments and waits), VACUUM FULL
# pgbench_accounts writes the table anew into WAL; then the archive_command is set
# and the time until no segment waits is its capacity. The load above tells whether
# an archiver keeps up with this machine's pgbench; this tells by how much.
burst_run() {
	local name=$1 cmd=$2 n f0 f1 t0 t1
	set_archive_command ""
	q -d "$DB" -c "VACUUM FULL pgbench_accounts"
	q -d postgres -c "SELECT pg_switch_wal()" >/dev/null
	sleep 1
	n=$(ready_count)
	f0=$(q -d postgres -c "SELECT failed_count FROM pg_stat_archiver")
	# Timed from the reload that sets the command (set_archive_command's settling pause
	# would count against the archiver).
	t0=$(date +%s.%N)
	q -d postgres -c "ALTER SYSTEM SET archive_command = '${cmd//\'/\'\'}'" -c "SELECT pg_reload_conf()" >/dev/null
	local waited=0
	while [ "$(ready_count)" != 0 ]; do
		sleep 0.1
		waited=$((waited + 1))
		[ "$waited" -lt $((DRAIN_TIMEOUT * 10)) ] || { bench_log "$name: burst not archived after ${DRAIN_TIMEOUT}s"; break; }
	done
	t1=$(date +%s.%N)
	if [ "$cmd" = "$AC_DBOPS_SPOOL" ]; then
		waited=0
		while [ "$(spooled_files)" != 0 ] && [ "$waited" -lt $((DRAIN_TIMEOUT * 10)) ]; do
			sleep 0.1
			waited=$((waited + 1))
		done
		BU_SPOOL[$name]=$(awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$n" 'BEGIN { printf "%.1f s (%.2f segments/s)", b - a, n / (b - a) }')
	fi
	f1=$(q -d postgres -c "SELECT failed_count FROM pg_stat_archiver")
	BU_N[$name]=$n
	BU_SECS[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	BU_RATE[$name]=$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { printf "%.2f", n / (b - a) }')
	BU_FAIL[$name]=$((f1 - f0))
	bench_log "$name: burst of $n segments archived in ${BU_SECS[$name]}s (${BU_RATE[$name]} segments/s)${BU_SPOOL[$name]:+, spool empty after ${BU_SPOOL[$name]}}, failed $((f1 - f0))"
}

# measure_archiver NAME ARCHIVE_COMMAND: the load, then the burst.
measure_archiver() {
	archive_run "$1" "$2"
	[ "$BURST" = 0 ] || burst_run "$1" "$2"
}

if ! skipped archive; then
	# Each archiver into a fresh repository of its own kind (dbops: a new repository;
	# pgbackrest: the same stanza, whose archive only gains segments), so that no run
	# finds its segments already stored.
	SAVED_REPO=$(readlink "$OWNED/repo")
	SAVED_KEY=$(readlink "$OWNED/repo.key")
	new_dbops_repo "$OWNED/repo.wal1" "$OWNED/repo.wal1.key"
	ln -sfn "$OWNED/repo.wal1" "$OWNED/repo"
	ln -sfn "$OWNED/repo.wal1.key" "$OWNED/repo.key"
	measure_archiver "dbops wal-push (sync, key file)" "$AC_DBOPS"
	new_dbops_repo "$OWNED/repo.wal2" "$OWNED/repo.wal2.key"
	ln -sfn "$OWNED/repo.wal2" "$OWNED/repo"
	ln -sfn "$OWNED/repo.wal2.key" "$OWNED/repo.key"
	measure_archiver "dbops wal-push --spool --jobs $ASYNC_JOBS" "$AC_DBOPS_SPOOL"
	WAL_STORED_DBOPS=$(bench_bytes "$OWNED/repo.wal2/")
	measure_archiver "pgbackrest archive-push (sync)" "$AC_PGBR"
	measure_archiver "pgbackrest archive-push (async, process-max $ASYNC_JOBS)" "$AC_PGBR_ASYNC"
	ln -sfn "$SAVED_REPO" "$OWNED/repo"
	ln -sfn "$SAVED_KEY" "$OWNED/repo.key"
	rm -rf "$OWNED/repo.wal1" "$OWNED/repo.wal1.key" "$OWNED/repo.wal2" "$OWNED/repo.wal2.key" "$OWNED/spool"
	set_archive_command "$AC_BOTH"
	wait_archived 600
fi

# ---------------------------------------------------------------------------
# 4. Restore to a point in time.

D_PITR="dbops restore --physical --target-time --start"
R_PITR="pgbackrest restore --type=time + start"
TABLES=(pgbench_accounts pgbench_branches pgbench_tellers pgbench_history)
# state_sql: what a restore to T must reproduce (row counts of every pgbench table
# and the sum of the account balances).
STATE_SQL="SELECT (SELECT count(*) FROM pgbench_accounts) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)"
for t in pgbench_branches pgbench_tellers pgbench_history; do STATE_SQL+=" || ' ' || (SELECT count(*) FROM $t)"; done

if ! skipped restore && ! skipped backup; then
	bench_log "--- point in time: base backups, writes, T, writes"
	# Fresh base backups whose WAL both archives hold without a gap (the archiving
	# phase sent each segment to one tool only).
	wait_archived 600
	dbops -q --json backup "$URL" --physical >"$WORK/dbops-pitr.json"
	PITR_ID=$(jq -r .id "$WORK/dbops-pitr.json")
	pgbr backup --type=full >/dev/null
	read -r PGBR_LABEL _ _ < <(pgbr_last)
	"$PG_BIN/pgbench" -n -c 2 -T "$WRITE_SECONDS" "$DB" >"$WORK/write1.log" 2>&1 || bench_die "pgbench writes failed"
	# No writes between here and the second pgbench: the state read now is the state
	# at T, whatever T's precision.
	sleep 0.5
	SOURCE_AT_T=$(q -d "$DB" -c "$STATE_SQL")
	T=$(q -d postgres -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
	sleep 1
	"$PG_BIN/pgbench" -n -c 2 -T "$WRITE_SECONDS" "$DB" >"$WORK/write2.log" 2>&1 || bench_die "pgbench writes failed"
	SOURCE_END=$(q -d "$DB" -c "$STATE_SQL")
	wait_archived 600
	bench_log "T = $T; source at T: $SOURCE_AT_T (accounts, sum(abalance), branches, tellers, history); at the end: $SOURCE_END"
	as_srv mkdir -p "$OWNED/restore"
	LAID=()
	PGBR_LAID=()

	# check_state NAME SOCKET_OR_HOST PORT: the restored server must hold the source's
	# state at T.
	check_state() {
		local got
		got=$("$PG_BIN/psql" -X -At -h "$2" -p "$3" -U postgres -d "$DB" -c "$STATE_SQL")
		[ "$got" = "$SOURCE_AT_T" ] ||
			bench_die "$1 restored to T holds '$got', the source held '$SOURCE_AT_T' at T: the benchmark is void"
		bench_log "$1: restored state matches the source at T ($got)"
	}

	for i in $(seq 1 "$RUNS"); do
		bench_log "--- restore to T, run $i/$RUNS"
		dir=$OWNED/restore/dbops.$i
		timed "$D_PITR" "${AS_SRV[@]}" "$DBOPS" --repo "$OWNED/repo" --key-file "$OWNED/repo.key" --cache-dir "$CACHE" -q --json \
			restore "$PITR_ID" --physical --to-datadir "$dir" --target-time "$T" --target-action promote --start >"$WORK/dbops-restore.json"
		pid=$(jq -r .server.pid "$WORK/dbops-restore.json")
		DBOPS_SERVERS+=("$pid")
		LAID+=($(jq -r .laid_down_seconds "$WORK/dbops-restore.json"))
		rport=$(jq -r .server.url "$WORK/dbops-restore.json" | sed -E 's|.*:([0-9]+)/.*|\1|')
		check_state "$D_PITR" "$(jq -r .server.socket_dir "$WORK/dbops-restore.json")" "$rport"
		[ "$("$PG_BIN/psql" -X -At -h "$(jq -r .server.socket_dir "$WORK/dbops-restore.json")" -p "$rport" -U postgres -d postgres -c "SELECT pg_is_in_recovery()")" = f ] ||
			bench_die "the server dbops restored is still in recovery"
		kill -INT "$pid"
		for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		# dbops keeps the server's log, socket and hba files in a directory of its own
		# beside the data directory's, and leaves it behind when the server stops.
		rdir=$(dirname "$(jq -r .server.log "$WORK/dbops-restore.json")")
		case $rdir in */dbops-recovered-*) rm -rf "$rdir" ;; esac
		rm -rf "$dir"

		dir=$OWNED/restore/pgbr.$i
		rport=$(bench_free_port)
		pgbr_restore() {
			as_srv install -d -m 700 "$dir"
			as_srv "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench restore --pg1-path="$dir" --set="$PGBR_LABEL" \
				--type=time --target="$T" --target-action=promote >/dev/null
			PGBR_LAID+=("$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')")
			# The copy must not answer on the source's port nor archive into its repository.
			printf "port = %s\nunix_socket_directories = '%s'\narchive_mode = off\n" "$rport" "$dir" | as_srv tee -a "$dir/postgresql.conf" >/dev/null
			as_srv "$PG_BIN/pg_ctl" -D "$dir" -l "$OWNED/restore/pgbr.$i.log" -w -t 600 start >/dev/null
			SERVERS_TO_STOP+=("$dir")
			local s
			for _ in $(seq 1 6000); do
				s=$("$PG_BIN/psql" -X -At -h "$dir" -p "$rport" -U postgres -d postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)
				[ "$s" = f ] && return 0
				sleep 0.1
			done
			return 1
		}
		sync
		q -d postgres -c "CHECKPOINT"
		t0=$(date +%s.%N)
		pgbr_restore || { tail -20 "$OWNED/restore/pgbr.$i.log" >&2; bench_die "pgbackrest restore did not reach T"; }
		t1=$(date +%s.%N)
		w=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
		[ -n "${SEEN[$R_PITR]:-}" ] || { SEEN[$R_PITR]=1; RESULT_ORDER+=("$R_PITR"); }
		WALL[$R_PITR]+="$w "
		bench_log "$R_PITR: ${w}s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
		check_state "$R_PITR" "$dir" "$rport"
		as_srv "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null
		rm -rf "$dir"
	done
fi

# ---------------------------------------------------------------------------
# Report.

cpu_count=$(nproc)
cpu_model=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | awk 'NR == 1')
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
server_version=$(q -d postgres -c "SHOW server_version")

row() { # row NAME
	local n=$1 size=""
	[ -n "${SIZE[$n]:-}" ] && size=$(bench_mb "$(med SIZE "$n")")
	printf '| %-52s | %8.2f | %-24s | %12s |\n' "$n" "$(med WALL "$n")" "${WALL[$n]% }" "$size"
}
target() { # target TEXT VALUE LIMIT
	printf '| %-60s | %8s | %6s | %s |\n' "$1" "$2" "$3" "$(bench_verdict "$2" "$3")"
}

echo
echo "## dbops physical backups, WAL archive and PITR vs pg_basebackup / pgBackRest (PostgreSQL $server_version), pgbench -s $PGBENCH_SCALE, RUNS=$RUNS"
echo
echo "- machine: $cpu_count × $cpu_model, $mem RAM; $(uname -sr); load average at the end $(cut -d' ' -f1-3 /proc/loadavg); dbops: $BUILD_NOTE; $("$PGBACKREST" version)"
echo "- server: own initdb on 127.0.0.1:$PORT as $SERVER_USER; $(IFS=';'; echo "${SERVER_SETTINGS[*]}" | sed 's/;/, /g'); archive_command switched per measurement"
echo "- data: pgbench -i -s $PGBENCH_SCALE: cluster $(bench_mb "$CLUSTER_BYTES"), database $(bench_mb "$DB_BYTES")"
echo "- repositories: dbops encrypted (key file, --no-cache for wal-push/wal-fetch); pgBackRest repo1-cipher-type=aes-256-cbc, compress-type=$PGBR_COMPRESS, process-max=$PGBR_PROCESS_MAX; pg_basebackup -z is gzip level default, unencrypted; each tool's archive receives every segment while backups run (archive_command runs both)"
echo
if [ "${#RESULT_ORDER[@]}" -gt 0 ]; then
	echo "| measurement | median s | runs s | stored (median) |"
	echo "|---|---:|---|---:|"
	for n in "${RESULT_ORDER[@]}"; do row "$n"; done
	echo
fi
if ! skipped backup; then
	echo "dbops full base backup (the last run) read $(bench_mb "$FULL_PLAIN"), stored $(bench_mb "$FULL_STORED") (stats.stored_bytes; repository du $(bench_mb "$FULL_STORED_DU") with the WAL archived meanwhile)."
fi
if ! skipped churn && ! skipped backup; then
	echo "After churn (pgbench -n $CHURN: ${CHURN_TX:-?} transactions): dbops new chunks $(bench_mb "$(jq -r .stats.new_bytes "$WORK/dbops-incr.json")") plain of $(bench_mb "$(jq -r .stats.bytes "$WORK/dbops-incr.json")") read, $(bench_mb "$(jq -r .stats.stored_bytes "$WORK/dbops-incr.json")") stored (repository grew $(bench_mb "$INCR_DU") with the WAL); pgbackrest incr stored $(bench_mb "$(med SIZE "$R_INCR")")."
	echo "Unchanged: dbops stored $(bench_mb "$(jq -r .stats.stored_bytes "$WORK/dbops-same.json")") (new $(bench_mb "$(jq -r .stats.new_bytes "$WORK/dbops-same.json")") plain); pgbackrest incr stored $(bench_mb "$(med SIZE "$R_SAME")")."
	echo
fi
if [ "${#ARCHIVERS[@]}" -gt 0 ]; then
	echo "WAL archiving under load: pgbench -n $LOAD -T $LOAD_SECONDS (synchronous_commit off). Backlog = .ready files in pg_wal/archive_status, sampled every second; keeps up = backlog at the end of the load ≤ $KEEPUP_SEGMENTS segments and no failure."
	echo
	echo "| archive_command | pgbench tps | segments written (/s) | archived during load (/s) | backlog max | backlog at end | drained after s | failed | keeps up |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
	for n in "${ARCHIVERS[@]}"; do
		printf '| %s | %s | %s (%s) | %s (%s) | %s | %s | %s | %s | %s |\n' "$n" "${AR_TPS[$n]}" "${AR_GEN[$n]}" "${AR_GENRATE[$n]}" \
			"${AR_DONE[$n]}" "${AR_RATE[$n]}" "${AR_MAX[$n]}" "${AR_END[$n]}" "${AR_DRAIN[$n]}" "${AR_FAIL[$n]}" "${AR_OK[$n]}"
	done
	if [ "$BURST" != 0 ]; then
		echo
		echo "Capacity: a burst (VACUUM FULL pgbench_accounts written with archiving held back), then the time each archive_command takes to clear it, against the rate pgbench wrote WAL above (headroom = capacity / that rate)."
		echo
		echo "| archive_command | burst segments | cleared after s | segments/s | headroom | failed |"
		echo "|---|---:|---:|---:|---:|---:|"
		for n in "${ARCHIVERS[@]}"; do
			printf '| %s | %s | %s | %s | %s | %s |\n' "$n" "${BU_N[$n]}" "${BU_SECS[$n]}" "${BU_RATE[$n]}" \
				"$(bench_ratio "${BU_RATE[$n]}" "${AR_GENRATE[$n]}")" "${BU_FAIL[$n]}"
		done
		for n in "${ARCHIVERS[@]}"; do
			[ -n "${BU_SPOOL[$n]:-}" ] && echo "$n: the burst was in the repository (spool empty) after ${BU_SPOOL[$n]}."
		done
	fi
	echo
	for n in "${ARCHIVERS[@]}"; do
		[ -n "${AR_SPOOL[$n]:-}" ] && echo "$n: the spool was empty (every segment in the repository) ${AR_SPOOL[$n]} s after the load."
	done
	echo
fi
if ! skipped restore && ! skipped backup; then
	echo "Restore to T ($T), ${WRITE_SECONDS}s of pgbench writes each side of it; both restored servers hold the source's state at T (pgbench_accounts count and sum(abalance), branches, tellers, history counts: $SOURCE_AT_T). dbops's time runs from the command's start until it returns with the server promoted (files laid down after $(printf '%.2f' "$(bench_median "${LAID[@]}")") s, median); pgbackrest's from the restore command's start until pg_is_in_recovery() is false (files laid down after $(bench_median "${PGBR_LAID[@]}") s, median)."
	echo
fi
echo "| target | measured | limit | verdict |"
echo "|---|---:|---:|---|"
if ! skipped backup; then
	target "base backup time: dbops / pg_basebackup -Ft -z" "$(bench_ratio "$(med WALL "$D_FULL")" "$(med WALL "$P_BASE")")" 1.2
	printf '| %-60s | %8s | %6s | %s |\n' "base backup time: dbops / pgbackrest full (information)" "$(bench_ratio "$(med WALL "$D_FULL")" "$(med WALL "$R_FULL")")" "" ""
	printf '| %-60s | %8s | %6s | %s |\n' "stored: dbops / pg_basebackup -z (information)" "$(bench_ratio "$(med SIZE "$D_FULL")" "$(med SIZE "$P_BASE")")" "" ""
	printf '| %-60s | %8s | %6s | %s |\n' "stored: dbops / pgbackrest full (information)" "$(bench_ratio "$(med SIZE "$D_FULL")" "$(med SIZE "$R_FULL")")" "" ""
fi
if ! skipped churn && ! skipped backup; then
	printf '| %-60s | %8s | %6s | %s |\n' "after churn, stored: dbops / pgbackrest incr (information)" "$(bench_ratio "$(med SIZE "$D_INCR")" "$(med SIZE "$R_INCR")")" "" ""
	target "unchanged: dbops second backup stored / first" "$(bench_ratio "$(med SIZE "$D_SAME")" "$FULL_STORED")" 0.01
fi
for n in "${ARCHIVERS[@]}"; do
	printf '| %-60s | %8s | %6s | %s |\n' "keeps up: $n (backlog at end)" "${AR_END[$n]}" "$KEEPUP_SEGMENTS" "${AR_OK[$n]}"
done
if ! skipped restore && ! skipped backup; then
	printf '| %-60s | %8s | %6s | %s |\n' "PITR time: dbops / pgbackrest (information)" "$(bench_ratio "$(med WALL "$D_PITR")" "$(med WALL "$R_PITR")")" "" ""
fi
