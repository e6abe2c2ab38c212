#!/usr/bin/env bash
# dbops against pg_dump / pg_restore on the same data in the same run.
#
# Starts its own throwaway PostgreSQL (initdb into a temporary directory, a free
# loopback port, as `nobody` when run as root), loads sysbench and pgbench tables,
# measures every tool RUNS times (median reported, all runs shown), checks that every
# restore is correct, churns the pgbench tables and measures a second backup, and
# prints ratios against the targets with PASS/MISS. Nothing outside its temporary
# directory is touched; the system's own server is never used. See bench/README.md.
#
# Environment:
#   SCALE=1          multiplies the data (sysbench rows per table and pgbench scale)
#   RUNS=3           timed runs per measurement
#   JOBS=2           parallelism given to every tool that has it
#   TABLES=8         sysbench tables (TABLE_SIZE rows each, default 250000 × SCALE)
#   PGBENCH_SCALE    pgbench -i -s (default 10 × SCALE)
#   CHURN            pgbench arguments for the churn (default "-c 4 -T 20")
#   SYSBENCH_CHURN   sysbench oltp_write_only arguments for a second churn and a third
#                    backup, for information (default "--time=10"; empty: skip)
#   QUIET_WAIT=60    seconds to wait for a quiet machine before each timed run
#   PROFILE=0        1: afterwards, extra untimed runs under perf and a phase sampler
#   PG_BIN           PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_DIR        where the temporary directory goes (default $TMPDIR or /tmp)
#   KEEP=0           1: keep the temporary directory (and stop the server) at the end
#   DBOPS_BIN        use this dbops binary instead of building the tree
#   INIT_ARGS        extra `dbops init` options for the measured repositories, to try a
#                    setting (e.g. "--compression-level 1"); default none
#   DBOPS_PASSWORD   repository password (a fixed bench password by default)
#   ENCRYPTION=1     0: measure --no-encryption repositories (encrypted is what users run)
#   S3=1             0: skip the restore from the S3-API server (moto on loopback)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

SCALE=${SCALE:-1}
RUNS=${RUNS:-3}
JOBS=${JOBS:-2}
TABLES=${TABLES:-8}
TABLE_SIZE=${TABLE_SIZE:-$((250000 * SCALE))}
PGBENCH_SCALE=${PGBENCH_SCALE:-$((10 * SCALE))}
CHURN=${CHURN:--c 4 -T 20}
PROFILE=${PROFILE:-0}
QUIET_WAIT=${QUIET_WAIT:-60}
SYSBENCH_CHURN=${SYSBENCH_CHURN---time=10}
read -r -a INIT_OPTS <<<"${INIT_ARGS:-}"
ENCRYPTION=${ENCRYPTION:-1}
S3=${S3:-1}
if [ "$ENCRYPTION" = 0 ]; then INIT_OPTS+=(--no-encryption); fi
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
KEEP=${KEEP:-0}
export DBOPS_PASSWORD=${DBOPS_PASSWORD:-dbops-bench-password}
unset DBOPS_REPO DBOPS_PASSWORD_FILE

# Server settings: the same for every tool measured. fsync and full_page_writes stay
# on (a restore that skips durability would not be a fair restore benchmark).
SERVER_SETTINGS=(
	"shared_buffers = 512MB"
	"maintenance_work_mem = 256MB"
	"max_wal_size = 4GB"
	"checkpoint_timeout = 30min"
	"synchronous_commit = off"
)

for tool in initdb pg_ctl postgres psql pg_dump pg_restore pgbench createdb dropdb; do
	[ -x "$PG_BIN/$tool" ] || bench_die "$PG_BIN/$tool missing: apt-get install -y postgresql-15 postgresql-client-15 (or set PG_BIN)"
done
bench_need sysbench sysbench
bench_need zstd zstd
bench_need jq jq
[ -x /usr/bin/time ] || bench_die "/usr/bin/time missing: apt-get install -y time"
[ "$PROFILE" = 0 ] || bench_need perf linux-perf
[ "$S3" = 0 ] || bench_need moto_server "python3-pip, then: pip install 'moto[server]'"

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

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/dbops-bench-pg.XXXXXX")
chmod 755 "$WORK"
PGDATA_DIR=$WORK/pgdata
PIDS_TO_STOP=()

cleanup() {
	local rc=$?
	set +e
	for p in "${PIDS_TO_STOP[@]+"${PIDS_TO_STOP[@]}"}"; do kill "$p" 2>/dev/null; done
	if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
		bench_as_server_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 ||
			bench_as_server_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1
	fi
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

cp "$DBOPS_BIN" "$WORK/dbops"
DBOPS=$WORK/dbops

# ---------------------------------------------------------------------------
# The throwaway server.

PORT=$(bench_free_port)
SERVER_USER=$(bench_server_user)
install -d -m 700 "$PGDATA_DIR"
[ "$(id -u)" = 0 ] && chown nobody: "$PGDATA_DIR"
bench_log "initdb into $PGDATA_DIR (as $SERVER_USER), port $PORT"
bench_as_server_user "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 ||
	{ cat "$WORK/initdb.log" >&2; bench_die "initdb failed"; }
{
	echo "listen_addresses = '127.0.0.1'"
	echo "port = $PORT"
	echo "unix_socket_directories = '$PGDATA_DIR'"
	echo "max_connections = 50"
	printf '%s\n' "${SERVER_SETTINGS[@]}"
} >>"$PGDATA_DIR/postgresql.conf"
bench_as_server_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 120 start >/dev/null ||
	{ tail -20 "$PGDATA_DIR/server.log" >&2; bench_die "the server did not start"; }
POSTMASTER=$(head -1 "$PGDATA_DIR/postmaster.pid")

# Every client reaches the server by TCP as postgres; nothing from the caller's libpq
# environment may redirect it.
unset PGSERVICE PGPASSFILE PGPASSWORD PGDATABASE PGOPTIONS PGSSLMODE
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
URL_BASE="postgres://postgres@127.0.0.1:$PORT"
DB=sbtest

q() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"; }

# ---------------------------------------------------------------------------
# Data.

bench_log "loading sysbench: $TABLES tables × $TABLE_SIZE rows"
q -d postgres -c "CREATE DATABASE $DB"
sysbench oltp_read_write --db-driver=pgsql --pgsql-host=127.0.0.1 --pgsql-port="$PORT" \
	--pgsql-user=postgres --pgsql-db="$DB" --tables="$TABLES" --table-size="$TABLE_SIZE" \
	--threads="$JOBS" prepare >"$WORK/sysbench.log" 2>&1 ||
	{ tail -20 "$WORK/sysbench.log" >&2; bench_die "sysbench prepare failed"; }
bench_log "loading pgbench -i -s $PGBENCH_SCALE"
"$PG_BIN/pgbench" -i -q -s "$PGBENCH_SCALE" "$DB" >"$WORK/pgbench-init.log" 2>&1 ||
	{ tail -20 "$WORK/pgbench-init.log" >&2; bench_die "pgbench -i failed"; }
q -d "$DB" -c "VACUUM ANALYZE"
q -d postgres -c "CHECKPOINT"

# Tables, biggest first (the order every parallel reference takes them in).
mapfile -t TABLE_LIST < <(q -d "$DB" -c "
	SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
	  JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
	 ORDER BY pg_relation_size(c.oid) DESC, 1")
DB_BYTES=$(q -d "$DB" -c "SELECT pg_database_size('$DB')")
TABLE_BYTES=$(q -d "$DB" -c "SELECT sum(pg_table_size(c.oid)) FROM pg_class c
	JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'")
INDEX_BYTES=$(q -d "$DB" -c "SELECT sum(pg_indexes_size(c.oid)) FROM pg_class c
	JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'")
ROWS=$(q -d "$DB" -c "SELECT sum(n_live_tup) FROM pg_stat_user_tables")
# Warm-up (untimed): every tool then finds the same warm caches. Counts COPY bytes.
COPY_BYTES=$(for t in "${TABLE_LIST[@]}"; do q -d "$DB" -c "COPY $t TO STDOUT"; done | wc -c)
bench_log "database $(bench_mb "$DB_BYTES") on disk, ${#TABLE_LIST[@]} tables, $ROWS rows, $(bench_mb "$COPY_BYTES") of COPY text"

# ---------------------------------------------------------------------------
# Correctness: a fingerprint of a database that a restore must reproduce exactly:
# per table the row count and an order-independent hash of every row's text; every
# index and constraint definition; every sequence value.

fingerprint() {
	local db=$1 t sql=""
	for t in "${TABLE_LIST[@]}"; do
		sql+="SELECT '$t', count(*), coalesce(sum(hashtext(x::text)::numeric), 0) FROM $t x;"
	done
	sql+="SELECT 'index', tablename, indexname, indexdef FROM pg_indexes
	       WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2, 3;
	      SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid)
	        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 2, 3;
	      SELECT 'sequence', schemaname, sequencename, last_value FROM pg_sequences ORDER BY 2, 3;"
	q -d "$db" -c "$sql"
}

# check_restore DB WHAT: DB must match the source's fingerprint, else the bench fails.
check_restore() {
	local db=$1 what=$2
	fingerprint "$db" >"$WORK/fp.$db"
	if ! diff -u "$WORK/fp.source" "$WORK/fp.$db" >"$WORK/fp.diff"; then
		head -40 "$WORK/fp.diff" >&2
		bench_die "$what restored into $db differs from the source (above): the benchmark is void"
	fi
	bench_log "$what: restore verified ($(grep -c '^[^|]*\.[^|]*|' "$WORK/fp.$db") tables: rows and row hashes, indexes, constraints, sequences)"
}

fingerprint "$DB" >"$WORK/fp.source"

# ---------------------------------------------------------------------------
# The S3-API server (moto on loopback) and a repository there, holding a backup of the
# same database (taken untimed): restores from it are timed beside the local ones.

S3_REPO=s3://bench/repo
if [ "$S3" = 1 ]; then
	S3_PORT=$(bench_free_port)
	moto_server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
	PIDS_TO_STOP+=($!)
	for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$S3_PORT/" >/dev/null 2>&1 && break; sleep 0.2; done
	export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
	export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
	curl -fs -X PUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null || bench_die "moto_server did not start (see $WORK/moto.log)"
	bench_log "S3-API server (moto) on 127.0.0.1:$S3_PORT: a backup into $S3_REPO (untimed)"
	"$DBOPS" --repo "$S3_REPO" -q init "${INIT_OPTS[@]}" >/dev/null
	"$DBOPS" --repo "$S3_REPO" -q backup "$URL_BASE/$DB" --jobs "$JOBS" >/dev/null
fi

# ---------------------------------------------------------------------------
# Measuring.

declare -A WALL USR SYS RSS SRV OTH EXTRA SEEN
RESULT_ORDER=()

# Before every timed run: written-back page cache and a checkpoint, so that no run
# pays for the previous one's writes.
# Other engineers' builds share this machine: wait (up to QUIET_WAIT seconds) until the
# machine was less than 30 % busy (of one core) for a whole second, so runs start
# quiet; what still ran meanwhile is reported as "others CPU".
settle() {
	sync
	q -d postgres -c "CHECKPOINT"
	local waited=0 b0 b1
	while [ "$waited" -lt "$QUIET_WAIT" ]; do
		b0=$(bench_machine_busy)
		sleep 1
		b1=$(bench_machine_busy)
		awk -v a="$b0" -v b="$b1" 'BEGIN { exit !(b - a < 0.3) }' && return 0
		waited=$((waited + 1))
	done
	bench_log "machine still busy after ${QUIET_WAIT}s: measuring anyway"
}

# timed NAME CMD...: one run of CMD; appends wall/user/sys/rss and server CPU to NAME.
timed() {
	local name=$1 before after
	shift
	settle
	local busy0 busy1 wall usr sys rss srv oth
	busy0=$(bench_machine_busy)
	before=$(bench_tree_cpu "$POSTMASTER")
	bench_measure "$WORK/time.out" "$@" || bench_die "$name failed: $*"
	sleep 0.3 # the postmaster reaps the finished backends (their CPU moves to it)
	after=$(bench_tree_cpu "$POSTMASTER")
	busy1=$(bench_machine_busy)
	read -r wall usr sys rss <"$WORK/time.out"
	srv=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')
	# CPU used by anything else on the machine meanwhile (other builds, tests, apt).
	oth=$(awk -v a="$busy0" -v b="$busy1" -v c="$usr" -v d="$sys" -v e="$srv" 'BEGIN { x = b - a - c - d - e; printf "%.2f", x < 0 ? 0 : x }')
	if [ -z "${SEEN[$name]:-}" ]; then
		SEEN[$name]=1
		RESULT_ORDER+=("$name")
	fi
	WALL[$name]+="$wall "
	USR[$name]+="$usr "
	SYS[$name]+="$sys "
	RSS[$name]+="$rss "
	SRV[$name]+="$srv "
	OTH[$name]+="$oth "
	bench_log "$name: ${wall}s wall, client ${usr}u+${sys}s, server ${srv}s CPU, others ${oth}s CPU, RSS $((rss / 1024)) MiB"
}

med() { # med ARRAY NAME
	local -n arr=$1
	# shellcheck disable=SC2086
	bench_median ${arr[$2]}
}

export PG_BIN DB JOBS
copy_parallel() {
	printf '%s\n' "${TABLE_LIST[@]}" |
		xargs -P "$JOBS" -I{} "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "COPY {} TO STDOUT" >/dev/null
}
copy_serial() {
	local t
	for t in "${TABLE_LIST[@]}"; do
		"$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "COPY $t TO STDOUT"
	done >/dev/null
}
copy_serial_zstd() {
	local t
	for t in "${TABLE_LIST[@]}"; do
		"$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "COPY $t TO STDOUT"
	done | zstd -3 -T"$JOBS" -q -c | wc -c >"$WORK/zstd.size"
}
export -f copy_parallel copy_serial copy_serial_zstd
export TABLE_LIST_STR="${TABLE_LIST[*]}" WORK

# The references are pipelines, run under GNU time through bash -c with the functions
# exported; the table list travels as a string (the names here hold no spaces).
REF=(bash -c 'TABLE_LIST=($TABLE_LIST_STR); "$0"')

# Each run takes every tool in turn, so that noise from other work on the machine
# spreads over all tools rather than hitting one of them.
BACKUP="dbops backup --jobs $JOBS"
RESTORE="dbops restore --jobs $JOBS"
S3_RESTORE="dbops restore --jobs $JOBS from S3 (moto)"
for i in $(seq 1 "$RUNS"); do
	bench_log "--- run $i/$RUNS"
	timed "raw COPY (1 stream)" "${REF[@]}" copy_serial
	timed "raw COPY ($JOBS streams)" "${REF[@]}" copy_parallel
	timed "COPY | zstd -3 -T$JOBS" "${REF[@]}" copy_serial_zstd
	EXTRA["COPY | zstd -3 -T$JOBS"]=$(cat "$WORK/zstd.size")

	rm -f "$WORK/dump.fc"
	timed "pg_dump -Fc" "$PG_BIN/pg_dump" -Fc -f "$WORK/dump.fc" "$DB"
	EXTRA["pg_dump -Fc"]=$(bench_bytes "$WORK/dump.fc")

	rm -rf "$WORK/dump.fd"
	timed "pg_dump -Fd -j $JOBS" "$PG_BIN/pg_dump" -Fd -j "$JOBS" -f "$WORK/dump.fd" "$DB"
	EXTRA["pg_dump -Fd -j $JOBS"]=$(bench_bytes "$WORK/dump.fd")

	# dbops: a fresh encrypted repository each run (the last one is kept for the churn).
	repo=$WORK/repo.$i
	if [ "$i" -gt 1 ]; then rm -rf "$WORK/repo.$((i - 1))"; fi
	"$DBOPS" --repo "$repo" -q --json init "${INIT_OPTS[@]}" >"$WORK/init.json"
	timed "$BACKUP" "$DBOPS" --repo "$repo" -q --json backup "$URL_BASE/$DB" --jobs "$JOBS" >"$WORK/backup1.json"
	EXTRA[$BACKUP]=$(bench_bytes "$repo")

	q -d postgres -c "CREATE DATABASE pgr_$i TEMPLATE template0"
	timed "pg_restore -j $JOBS" "$PG_BIN/pg_restore" -j "$JOBS" --exit-on-error -d "pgr_$i" "$WORK/dump.fd"
	if [ "$i" = 1 ]; then check_restore "pgr_$i" "pg_restore -j $JOBS"; fi
	q -d postgres -c "DROP DATABASE pgr_$i"

	timed "$RESTORE" "$DBOPS" --repo "$repo" -q restore latest "$URL_BASE/dbr_$i" --create --jobs "$JOBS" >>"$WORK/restore.log"
	if [ "$i" = 1 ]; then check_restore "dbr_$i" "dbops restore"; fi
	q -d postgres -c "DROP DATABASE dbr_$i"

	if [ "$S3" = 1 ]; then
		timed "$S3_RESTORE" "$DBOPS" --repo "$S3_REPO" -q restore latest "$URL_BASE/dbs_$i" --create --jobs "$JOBS" >>"$WORK/restore.log"
		if [ "$i" = 1 ]; then check_restore "dbs_$i" "dbops restore from S3"; fi
		q -d postgres -c "DROP DATABASE dbs_$i"
	fi
done
REPO=$WORK/repo.$RUNS
FIRST_STORED_DU=$(bench_bytes "$REPO")
FIRST_STORED_JSON=$(jq -r .stats.stored_bytes "$WORK/backup1.json")
FIRST_PLAIN_JSON=$(jq -r .stats.bytes "$WORK/backup1.json")
rm -f "$WORK/dump.fc"

if [ "$ENCRYPTION" = 1 ]; then
	bench_log "--- dbops backup --no-encryption (one run, for information)"
	env -u DBOPS_PASSWORD "$DBOPS" --repo "$WORK/repo.plain" -q init --no-encryption "${INIT_OPTS[@]}" >/dev/null
	PLAIN="dbops backup --jobs $JOBS, --no-encryption"
else
	bench_log "--- dbops backup, encrypted (one run, for information)"
	ENC_OPTS=()
	for o in "${INIT_OPTS[@]}"; do [ "$o" = --no-encryption ] || ENC_OPTS+=("$o"); done
	"$DBOPS" --repo "$WORK/repo.plain" -q init "${ENC_OPTS[@]}" >/dev/null
	PLAIN="dbops backup --jobs $JOBS, encrypted"
fi
timed "$PLAIN" "$DBOPS" --repo "$WORK/repo.plain" -q --json backup "$URL_BASE/$DB" --jobs "$JOBS" >/dev/null
EXTRA[$PLAIN]=$(bench_bytes "$WORK/repo.plain")
rm -rf "$WORK/repo.plain"

# ---------------------------------------------------------------------------
# Churn, then a second backup into the same repository.

bench_log "--- churn: pgbench -n $CHURN"
# shellcheck disable=SC2086
"$PG_BIN/pgbench" -n $CHURN "$DB" >"$WORK/churn.log" 2>&1 ||
	{ tail -20 "$WORK/churn.log" >&2; bench_die "pgbench churn failed"; }
CHURN_TX=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$WORK/churn.log")
CHURN_TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/churn.log" | awk 'NR == 1')
CHURN_ACCOUNTS=$(q -d "$DB" -c "SELECT count(DISTINCT aid) FROM pgbench_history")
ACCOUNTS=$(q -d "$DB" -c "SELECT count(*) FROM pgbench_accounts")
fingerprint "$DB" >"$WORK/fp.source"

SECOND="dbops backup after churn (same repo)"
before_du=$(bench_bytes "$REPO")
timed "$SECOND" "$DBOPS" --repo "$REPO" -q --json backup "$URL_BASE/$DB" --jobs "$JOBS" >"$WORK/backup2.json"
SECOND_DU=$(($(bench_bytes "$REPO") - before_du))
EXTRA[$SECOND]=$SECOND_DU
SECOND_NEW=$(jq -r .stats.new_bytes "$WORK/backup2.json")
SECOND_STORED=$(jq -r .stats.stored_bytes "$WORK/backup2.json")
SECOND_PLAIN=$(jq -r .stats.bytes "$WORK/backup2.json")

AFTER="dbops restore of the second backup"
timed "$AFTER" "$DBOPS" --repo "$REPO" -q restore latest "$URL_BASE/dbr_churn" --create --jobs "$JOBS" >>"$WORK/restore.log"
check_restore dbr_churn "dbops restore of the backup after churn"
q -d postgres -c "DROP DATABASE dbr_churn"

# For information: pgbench's rows are mostly blank padding and compress ~20×, so the
# stored-bytes ratio above says little about de-duplication. sysbench's rows are
# random digits (compress ~2.5×): a write churn on them, then a third backup.
if [ -n "$SYSBENCH_CHURN" ]; then
	bench_log "--- churn: sysbench oltp_write_only $SYSBENCH_CHURN"
	before_rows=$(q -d "$DB" -c "SELECT sum(n_tup_upd + n_tup_ins + n_tup_del) FROM pg_stat_user_tables WHERE relname LIKE 'sbtest%'")
	# shellcheck disable=SC2086
	sysbench oltp_write_only --db-driver=pgsql --pgsql-host=127.0.0.1 --pgsql-port="$PORT" \
		--pgsql-user=postgres --pgsql-db="$DB" --tables="$TABLES" --table-size="$TABLE_SIZE" \
		--threads="$JOBS" $SYSBENCH_CHURN run >"$WORK/sysbench-churn.log" 2>&1 ||
		{ tail -20 "$WORK/sysbench-churn.log" >&2; bench_die "sysbench churn failed"; }
	sleep 1 # statistics reach pg_stat_user_tables asynchronously
	SB_CHANGES=$(($(q -d "$DB" -c "SELECT sum(n_tup_upd + n_tup_ins + n_tup_del) FROM pg_stat_user_tables WHERE relname LIKE 'sbtest%'") - before_rows))
	SB_TX=$(sed -n 's/^ *transactions: *\([0-9]*\).*/\1/p' "$WORK/sysbench-churn.log")
	THIRD="dbops backup after sysbench churn (same repo)"
	before_du=$(bench_bytes "$REPO")
	timed "$THIRD" "$DBOPS" --repo "$REPO" -q --json backup "$URL_BASE/$DB" --jobs "$JOBS" >"$WORK/backup3.json"
	THIRD_DU=$(($(bench_bytes "$REPO") - before_du))
	EXTRA[$THIRD]=$THIRD_DU
fi

# ---------------------------------------------------------------------------
# Profiling (PROFILE=1): untimed extra runs. perf samples the whole machine (both
# cores, idle included), so the split between dbops, the server and idle is visible;
# a sampler of pg_stat_activity splits restores into COPY and index/constraint phases.

# sample_activity DB OUT: polls pg_stat_activity every 0.2 s until $WORK/sampling goes.
sample_activity() {
	local db=$1 out=$2
	touch "$WORK/sampling"
	(
		while [ -e "$WORK/sampling" ]; do
			echo "SELECT extract(epoch FROM clock_timestamp())::numeric(20,2),
			        CASE WHEN query ~* '^\\s*COPY .* FROM STDIN' THEN 'COPY FROM STDIN (load)'
			             WHEN query ~* '^\\s*COPY ' THEN 'COPY TO STDOUT (dump)'
			             WHEN query ~* '^\\s*CREATE (UNIQUE )?INDEX' THEN 'CREATE INDEX'
			             WHEN query ~* 'ADD CONSTRAINT' THEN 'ADD CONSTRAINT (PK/FK)'
			             ELSE 'other: ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 40) END
			   FROM pg_stat_activity WHERE datname = '$db' AND state = 'active' AND pid <> pg_backend_pid();"
			sleep 0.2
		done
	) | q -d postgres -F $'\t' >"$out" 2>/dev/null &
	SAMPLER=$!
	PIDS_TO_STOP+=("$SAMPLER")
}
stop_sampling() {
	rm -f "$WORK/sampling"
	wait "$SAMPLER" 2>/dev/null || true
}
# phases OUT START END: seconds (from START) during which each kind of statement ran.
phases() {
	awk -F'\t' -v t0="$2" -v t1="$3" '
		{ k = $2
		  if (!(k in first)) { first[k] = $1; order[++n] = k }
		  last[k] = $1; samples[k]++ }
		END {
		  printf "    wall %.1f s\n", t1 - t0
		  for (i = 1; i <= n; i++) { k = order[i]
		    printf "    %-34s from %5.1f s to %5.1f s (%d samples)\n", k, first[k] - t0, last[k] - t0, samples[k] } }' "$1"
}
# Thread names of dbops (tokio names its workers; older versions truncated differently).
DBOPS_COMMS=dbops,tokio-rt-worker,tokio-runtime-w
# perf_summary DATA: CPU split by process and, within dbops, by component.
perf_summary() {
	local data=$1
	echo "    CPU samples by process (both cores; swapper = idle):"
	perf report -i "$data" --stdio --no-children --sort comm 2>/dev/null |
		awk '/^ +[0-9.]+%/ && n++ < 8 { printf "      %-8s %s\n", $1, $2 }'
	echo "    dbops samples by component (share of all samples):"
	perf report -i "$data" --stdio --no-children --comms "$DBOPS_COMMS" \
		--sort dso,sym 2>/dev/null |
		awk '/^ +[0-9.]+%/ {
			p = $1; sub(/%/, "", p); line = $0
			if (line ~ /ZSTD|zstd|HUF_|FSE_/) k = "zstd compress/decompress"
			else if (line ~ /fastcdc|FastCDC/) k = "chunker (FastCDC)"
			else if (line ~ /blake3/) k = "hashing (BLAKE3)"
			else if (line ~ /chacha|poly1305|Poly1305|ChaCha|aead/) k = "encryption (XChaCha20-Poly1305)"
			else if (line ~ /memmove|memcpy|memset|memchr/) k = "memcpy/memchr (libc)"
			else if (line ~ /argon2|Argon2/) k = "key derivation (Argon2id, once per command)"
			else if (line ~ /\[kernel|\[k\]/) k = "kernel (syscalls, page faults, net)"
			else if (line ~ /tokio_postgres|postgres_protocol|bytes::/) k = "postgres protocol / buffers"
			else if (line ~ /tokio|mio|parking_lot|futures/) k = "async runtime"
			else if (line ~ /malloc|free|_int_|cfree|realloc/) k = "allocator"
			else k = "other"
			share[k] += p; total += p }
		END { for (k in share) printf "      %6.2f%%  %s\n", share[k], k | "sort -rn"; close("sort -rn")
		      printf "      %6.2f%%  total dbops\n", total }'
	echo "    top dbops symbols:"
	perf report -i "$data" --stdio --no-children --comms "$DBOPS_COMMS" --sort dso,sym 2>/dev/null |
		awk '/^ +[0-9.]+%/ && n++ < 15 { print "      " $0 }'
}

if [ "$PROFILE" = 1 ]; then
	bench_log "--- profiling (untimed)"
	PROFILE_OUT=$WORK/profile.txt
	: >"$PROFILE_OUT"
	settle
	"$DBOPS" --repo "$WORK/repo.prof" -q init "${INIT_OPTS[@]}" >/dev/null
	sample_activity "$DB" "$WORK/act.backup"
	t0=$(date +%s.%N)
	perf record -q -a -F 499 -o "$WORK/perf.backup" -- "$DBOPS" --repo "$WORK/repo.prof" -q backup "$URL_BASE/$DB" --jobs "$JOBS" >/dev/null 2>&1
	t1=$(date +%s.%N)
	stop_sampling
	{
		echo "  dbops backup (perf -a, 499 Hz):"
		phases "$WORK/act.backup" "$t0" "$t1"
		perf_summary "$WORK/perf.backup"
	} >>"$PROFILE_OUT"

	settle
	sample_activity dbr_prof "$WORK/act.restore"
	t0=$(date +%s.%N)
	perf record -q -a -F 499 -o "$WORK/perf.restore" -- "$DBOPS" --repo "$WORK/repo.prof" -q restore latest "$URL_BASE/dbr_prof" --create --jobs "$JOBS" >/dev/null 2>&1
	t1=$(date +%s.%N)
	stop_sampling
	{
		echo "  dbops restore (perf -a, 499 Hz):"
		phases "$WORK/act.restore" "$t0" "$t1"
		perf_summary "$WORK/perf.restore"
	} >>"$PROFILE_OUT"
	q -d postgres -c "DROP DATABASE dbr_prof"

	settle
	q -d postgres -c "CREATE DATABASE pgr_prof TEMPLATE template0"
	sample_activity pgr_prof "$WORK/act.pgr"
	t0=$(date +%s.%N)
	perf record -q -a -F 499 -o "$WORK/perf.pgr" -- "$PG_BIN/pg_restore" -j "$JOBS" -d pgr_prof "$WORK/dump.fd" >/dev/null 2>&1
	t1=$(date +%s.%N)
	stop_sampling
	{
		echo "  pg_restore -j $JOBS (perf -a, 499 Hz):"
		phases "$WORK/act.pgr" "$t0" "$t1"
		echo "    CPU samples by process (both cores; swapper = idle):"
		perf report -i "$WORK/perf.pgr" --stdio --no-children --sort comm 2>/dev/null |
			awk '/^ +[0-9.]+%/ && n++ < 6 { printf "      %-8s %s\n", $1, $2 }'
	} >>"$PROFILE_OUT"
	q -d postgres -c "DROP DATABASE pgr_prof"
	rm -rf "$WORK/repo.prof"
fi

# ---------------------------------------------------------------------------
# Report.

cpu_count=$(nproc)
cpu_model=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | awk 'NR == 1')
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
server_version=$(q -d postgres -c "SHOW server_version")

row() { # row NAME: one line of the results table
	local n=$1 size=""
	[ -n "${EXTRA[$n]:-}" ] && size=$(bench_mb "${EXTRA[$n]}")
	local rss_mib
	rss_mib=$(awk -v k="$(med RSS "$n")" 'BEGIN { printf "%.0f", k / 1024 }')
	printf '| %-46s | %7.2f | %-22s | %6.2f | %6.2f | %6.2f | %6s MiB | %12s |\n' \
		"$n" "$(med WALL "$n")" "${WALL[$n]% }" \
		"$(awk -v u="$(med USR "$n")" -v s="$(med SYS "$n")" 'BEGIN { print u + s }')" \
		"$(med SRV "$n")" "$(med OTH "$n")" "$rss_mib" "$size"
}

B=$(med WALL "$BACKUP")
R=$(med WALL "$RESTORE")
FC=$(med WALL "pg_dump -Fc")
FD=$(med WALL "pg_dump -Fd -j $JOBS")
RAW=$(med WALL "raw COPY ($JOBS streams)")
RAW1=$(med WALL "raw COPY (1 stream)")
PGR=$(med WALL "pg_restore -j $JOBS")
FC_SIZE=${EXTRA["pg_dump -Fc"]}
STORED=${EXTRA[$BACKUP]}
RSS_B=$(awk -v k="$(printf '%s\n' ${RSS[$BACKUP]} | sort -n | tail -1)" 'BEGIN { printf "%.0f", k / 1024 }')
RSS_R=$(awk -v k="$(printf '%s\n' ${RSS[$RESTORE]} | sort -n | tail -1)" 'BEGIN { printf "%.0f", k / 1024 }')
bmin() { # bmin ARRAY NAME: the best (smallest) run
	local -n arr=$1
	# shellcheck disable=SC2086
	printf '%s\n' ${arr[$2]} | sort -g | awk 'NR == 1'
}
target() { # target TEXT VALUE LIMIT [BEST-RUN VALUE]
	local best="" bv=""
	if [ -n "${4:-}" ]; then best=$4; bv=$(bench_verdict "$4" "$3"); fi
	printf '| %-56s | %8s | %7s | %s | %8s | %s |\n' "$1" "$2" "$3" "$(bench_verdict "$2" "$3")" "$best" "$bv"
}
timeratio() { # timeratio A B: ratio of the best runs of A and B
	bench_ratio "$(bmin WALL "$1")" "$(bmin WALL "$2")"
}

echo
echo "## dbops vs pg_dump / pg_restore (PostgreSQL $server_version), SCALE=$SCALE, RUNS=$RUNS, JOBS=$JOBS"
echo
echo "- machine: $cpu_count × $cpu_model, $mem RAM; $(uname -sr); dbops: $BUILD_NOTE"
echo "- server: own initdb (UTF8, C locale) on 127.0.0.1:$PORT as $SERVER_USER; defaults except: $(IFS=';'; echo "${SERVER_SETTINGS[*]}" | sed 's/;/, /g'); fsync and full_page_writes on; wal_level replica"
echo "- data: sysbench $TABLES × $TABLE_SIZE rows + pgbench -s $PGBENCH_SCALE in one database: ${#TABLE_LIST[@]} tables, $ROWS rows, $(bench_mb "$COPY_BYTES") COPY text, $(bench_mb "$TABLE_BYTES") heap + $(bench_mb "$INDEX_BYTES") indexes ($(bench_mb "$DB_BYTES") database)"
echo "- method: warm caches (one untimed COPY pass first); each run takes every tool in turn; sync + CHECKPOINT + up to ${QUIET_WAIT}s waiting for an idle machine before every timed run; wall = median of $RUNS; CPU = median user+sys of the client processes (dbops with its pg_dump/pg_restore children); server CPU = all PostgreSQL processes; others = CPU used meanwhile by anything else on this shared machine (noise); RSS = largest single process; restores go into a fresh database each run and the first of each tool is checked against the source (per table: row count and a hash of every row; indexes, constraints, sequence values)"
echo "- repository: local directory, $([ "$ENCRYPTION" = 1 ] && echo "encrypted (XChaCha20-Poly1305, password)" || echo "NOT encrypted (ENCRYPTION=0)")$([ "$S3" = 1 ] && echo "; and the same kind of repository on an S3-API server (moto on loopback, in-memory, Python: its CPU shows as others CPU)"), init options: ${INIT_ARGS:-defaults} ($(jq -r '(.config // .) | "chunks \(.chunker.avg // "?") B average, zstd level \(.compression.level // "?")"' "$WORK/init.json" 2>/dev/null || echo '?')); pg_dump -Fc at its default compression"
echo
echo "| measurement | median s | runs s | client CPU s | server CPU s | others CPU s | peak RSS | size |"
echo "|---|---:|---|---:|---:|---:|---:|---:|"
for n in "${RESULT_ORDER[@]}"; do row "$n"; done
echo
echo "Second backup after churn (pgbench -n $CHURN: $CHURN_TX transactions, ${CHURN_TPS:-?} tps, $CHURN_ACCOUNTS of $ACCOUNTS accounts updated = $(awk -v a="$CHURN_ACCOUNTS" -v b="$ACCOUNTS" 'BEGIN { printf "%.2f", 100 * a / b }') %):"
echo "dbops read $(bench_mb "$SECOND_PLAIN"), new chunks $(bench_mb "$SECOND_NEW") plain (stats.new_bytes), $(bench_mb "$SECOND_STORED") stored (stats.stored_bytes), repository grew by $(bench_mb "$SECOND_DU") (du); first backup stored $(bench_mb "$FIRST_STORED_JSON") (stats.stored_bytes; $(bench_mb "$FIRST_STORED_DU") du) of $(bench_mb "$FIRST_PLAIN_JSON") read."
echo "Share of plain bytes that were new chunks: first $(bench_ratio "$(jq -r .stats.new_bytes "$WORK/backup1.json")" "$FIRST_PLAIN_JSON"), after pgbench churn $(bench_ratio "$SECOND_NEW" "$SECOND_PLAIN") (pgbench_accounts rows are mostly blank padding: new plain bytes compress ~20×, so stored bytes stay small)."
if [ -n "$SYSBENCH_CHURN" ]; then
	echo
	echo "For information, a write churn on the sysbench tables (sysbench oltp_write_only $SYSBENCH_CHURN: $SB_TX transactions, $SB_CHANGES rows updated, inserted or deleted of $((TABLES * TABLE_SIZE))), then a third backup:"
	echo "new chunks $(bench_mb "$(jq -r .stats.new_bytes "$WORK/backup3.json")") of $(bench_mb "$(jq -r .stats.bytes "$WORK/backup3.json")") plain ($(bench_ratio "$(jq -r .stats.new_bytes "$WORK/backup3.json")" "$(jq -r .stats.bytes "$WORK/backup3.json")")), $(bench_mb "$(jq -r .stats.stored_bytes "$WORK/backup3.json")") stored = $(bench_ratio "$(jq -r .stats.stored_bytes "$WORK/backup3.json")" "$FIRST_STORED_JSON") of the first backup's stored bytes; repository grew by $(bench_mb "$THIRD_DU")."
fi
echo
echo "Time ratios use the medians; the last two columns use each tool's best run instead (noise only ever adds time: where the verdicts differ, the result is within the noise of this machine)."
echo
echo "| target | measured | limit | verdict | best runs | verdict |"
echo "|---|---:|---:|---|---:|---|"
target "backup time / pg_dump -Fc time" "$(bench_ratio "$B" "$FC")" 0.2 "$(timeratio "$BACKUP" "pg_dump -Fc")"
target "backup time / pg_dump -Fd -j $JOBS time" "$(bench_ratio "$B" "$FD")" 0.2 "$(timeratio "$BACKUP" "pg_dump -Fd -j $JOBS")"
target "backup time / raw COPY (1 stream) time" "$(bench_ratio "$B" "$RAW1")" 2.0 "$(timeratio "$BACKUP" "raw COPY (1 stream)")"
target "backup time / raw COPY ($JOBS streams) time (stricter)" "$(bench_ratio "$B" "$RAW")" 2.0 "$(timeratio "$BACKUP" "raw COPY ($JOBS streams)")"
target "stored bytes (du of repo) / pg_dump -Fc size" "$(bench_ratio "$STORED" "$FC_SIZE")" 1.0
target "restore time / pg_restore -j $JOBS time" "$(bench_ratio "$R" "$PGR")" 0.7 "$(timeratio "$RESTORE" "pg_restore -j $JOBS")"
if [ "$S3" = 1 ]; then
	target "restore from S3 time / local restore time" "$(bench_ratio "$(med WALL "$S3_RESTORE")" "$R")" 1.3 "$(timeratio "$S3_RESTORE" "$RESTORE")"
	target "peak RSS of dbops restore from S3, MiB (max of runs)" "$(awk -v k="$(printf '%s\n' ${RSS[$S3_RESTORE]} | sort -n | tail -1)" 'BEGIN { printf "%.0f", k / 1024 }')" 200
fi
target "peak RSS of dbops backup, MiB (max of runs)" "$RSS_B" 200
target "peak RSS of dbops restore, MiB (max of runs)" "$RSS_R" 200
target "peak RSS of dbops restore after churn, MiB" "$(awk -v k="${RSS[$AFTER]% }" 'BEGIN { printf "%.0f", k / 1024 }')" 200
target "second backup stored / first stored (du delta)" "$(bench_ratio "$SECOND_DU" "$FIRST_STORED_DU")" 0.10
target "second backup stored / first stored (stats.stored_bytes)" "$(bench_ratio "$SECOND_STORED" "$FIRST_STORED_JSON")" 0.10
echo
echo "RSS flatness: compare the peak RSS rows with a run at another SCALE (SCALE=4 RUNS=1 bench/pg.sh)."
if [ "$PROFILE" = 1 ]; then
	echo
	echo "### Profile (untimed runs)"
	echo
	echo '```'
	cat "$PROFILE_OUT"
	echo '```'
fi
