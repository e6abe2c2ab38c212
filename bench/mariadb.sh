#!/usr/bin/env bash
# dbops against mariadb-dump, mydumper and myloader on the same data in the same run.
#
# Starts its own throwaway MariaDB (mariadb-install-db into a temporary directory, a
# free loopback port, as `nobody` when run as root), loads sysbench tables, measures
# every tool RUNS times (median reported, all runs shown), checks that every restore
# reproduces the source, and prints ratios against the targets with PASS/MISS.
# Nothing outside its temporary directory is touched; the system's own server (:3306)
# is never used.
#
# Environment:
#   TABLES=8          sysbench tables
#   TABLE_SIZE=500000 rows per table
#   RUNS=3            timed runs per measurement
#   JOBS=2            parallelism given to every tool that has it
#   BUFFER_POOL=2G    innodb_buffer_pool_size of the bench server
#   BINLOG=0          1: run the server with the binary log on (all tools pay for it;
#                     myloader skips it unless -e, so the default is off)
#   BENCH_DIR         where the temporary directory goes (default $TMPDIR or /tmp)
#   KEEP=0            1: keep the temporary directory at the end
#   DBOPS_BIN         use this dbops binary instead of building the tree
#   ENCRYPTION=1      0: measure --no-encryption repositories (encrypted is what users run)
#   DBOPS_PASSWORD    repository password (a fixed bench password by default)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

TABLES=${TABLES:-8}
TABLE_SIZE=${TABLE_SIZE:-500000}
RUNS=${RUNS:-3}
JOBS=${JOBS:-2}
BUFFER_POOL=${BUFFER_POOL:-2G}
BINLOG=${BINLOG:-0}
KEEP=${KEEP:-0}
ENCRYPTION=${ENCRYPTION:-1}
BENCH_PASSWORD=${DBOPS_PASSWORD:-dbops-bench-password}
unset DBOPS_REPO DBOPS_PASSWORD DBOPS_PASSWORD_FILE
INIT_OPTS=()
if [ "$ENCRYPTION" = 1 ]; then
	export DBOPS_PASSWORD=$BENCH_PASSWORD
else
	INIT_OPTS+=(--no-encryption)
fi

MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
[ -x "$MARIADBD" ] || bench_die "mariadbd not found: apt-get install -y mariadb-server"
bench_need mariadb-install-db mariadb-server
bench_need mariadb mariadb-client
bench_need mariadb-dump mariadb-client
bench_need sysbench sysbench
bench_need mydumper mydumper
bench_need myloader mydumper
bench_need gzip gzip
[ -x /usr/bin/time ] || bench_die "/usr/bin/time missing: apt-get install -y time"

# ---------------------------------------------------------------------------
# Build (once) and freeze the binary: other builds in the tree must not swap it mid-run.

if [ -n "${DBOPS_BIN:-}" ]; then
	[ -x "$DBOPS_BIN" ] || bench_die "DBOPS_BIN=$DBOPS_BIN is not an executable"
else
	bench_log "building dbops (cargo build --release -p ops-cli)"
	(cd "$ROOT" && cargo build --release -p ops-cli --quiet)
	DBOPS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dbops
	[ -x "$DBOPS_BIN" ] || bench_die "no $DBOPS_BIN after the build"
fi

WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/dbops-bench-mariadb.XXXXXX")
chmod 755 "$WORK"
DATADIR=$WORK/data
SERVER_PID=

cleanup() {
	local rc=$?
	set +e
	if [ -n "$SERVER_PID" ]; then
		kill "$SERVER_PID" 2>/dev/null
		for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$SERVER_PID" 2>/dev/null
	fi
	if [ "$KEEP" = 1 ]; then bench_log "kept $WORK"; else rm -rf "$WORK"; fi
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
install -d -m 755 "$DATADIR" "$WORK/tmp"
[ "$(id -u)" = 0 ] && chown nobody: "$DATADIR" "$WORK/tmp"
SERVER_SETTINGS=(
	"--innodb-buffer-pool-size=$BUFFER_POOL"
	"--innodb-log-file-size=1G"
	"--innodb-flush-log-at-trx-commit=2"
	"--max-allowed-packet=256M"
	"--local-infile=1"
)
if [ "$BINLOG" = 1 ]; then
	SERVER_SETTINGS+=("--log-bin=$DATADIR/binlog" "--server-id=1" "--sync-binlog=0")
fi
bench_log "mariadb-install-db into $DATADIR (as $SERVER_USER), port $PORT"
bench_as_server_user mariadb-install-db --no-defaults --auth-root-authentication-method=normal \
	--datadir="$DATADIR" --tmpdir="$WORK/tmp" --skip-test-db >"$WORK/install.log" 2>&1 ||
	{ tail -20 "$WORK/install.log" >&2; bench_die "mariadb-install-db failed"; }
bench_as_server_user "$MARIADBD" --no-defaults --datadir="$DATADIR" --tmpdir="$WORK/tmp" \
	--port="$PORT" --bind-address=127.0.0.1 --socket="$DATADIR/mysqld.sock" \
	--pid-file="$DATADIR/mysqld.pid" --log-error="$DATADIR/error.log" --skip-name-resolve \
	"${SERVER_SETTINGS[@]}" >"$WORK/server.out" 2>&1 &
# runuser's pid until the server has written its own (cleanup needs the server's).
SERVER_PID=$!
for _ in $(seq 1 300); do
	mariadb -h127.0.0.1 -P"$PORT" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
	kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$DATADIR/error.log" >&2; bench_die "mariadbd exited"; }
	sleep 0.2
done
# The mariadbd pid for CPU accounting and cleanup (runuser forks).
MYSQLD_PID=$(cat "$DATADIR/mysqld.pid")
SERVER_PID=$MYSQLD_PID

M=(mariadb -h127.0.0.1 -P"$PORT" -uroot)
q() { "${M[@]}" -N -B "$@"; }
URL_BASE="mariadb://root@127.0.0.1:$PORT"
DB=sbtest

# ---------------------------------------------------------------------------
# Data.

bench_log "loading sysbench: $TABLES tables × $TABLE_SIZE rows"
q -e "CREATE DATABASE $DB"
sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$PORT" \
	--mysql-user=root --mysql-db="$DB" --tables="$TABLES" --table-size="$TABLE_SIZE" \
	--threads="$JOBS" prepare >"$WORK/sysbench.log" 2>&1 ||
	{ tail -20 "$WORK/sysbench.log" >&2; bench_die "sysbench prepare failed"; }
q "$DB" -e "$(for i in $(seq 1 "$TABLES"); do printf 'ANALYZE TABLE sbtest%s;' "$i"; done)" >/dev/null
mapfile -t TABLE_LIST < <(q -e "SELECT TABLE_NAME FROM information_schema.TABLES
	WHERE TABLE_SCHEMA = '$DB' ORDER BY DATA_LENGTH DESC, TABLE_NAME")
DB_BYTES=$(q -e "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$DB'")
ROWS=$(q -e "SELECT SUM(TABLE_ROWS) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$DB'")
# Warm-up (untimed), and the size of the plain rows.
SELECT_BYTES=$(for t in "${TABLE_LIST[@]}"; do q --quick "$DB" -e "SELECT * FROM $t"; done | wc -c)
bench_log "database $(bench_mb "$DB_BYTES") on disk, ${#TABLE_LIST[@]} tables, ~$ROWS rows, $(bench_mb "$SELECT_BYTES") of SELECT text"

# ---------------------------------------------------------------------------
# Correctness: per table the row count and an order-independent hash of every row;
# the schema as mariadb-dump prints it.

fingerprint() {
	local db=$1 t sql=""
	for t in "${TABLE_LIST[@]}"; do
		sql+="SELECT '$t', COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, k, c, pad))), 0) FROM $db.$t;"
	done
	q -e "$sql"
	mariadb-dump -h127.0.0.1 -P"$PORT" -uroot --no-data --skip-dump-date --skip-comments "$db" |
		sed 's/ AUTO_INCREMENT=[0-9]*//'
}
fingerprint "$DB" >"$WORK/fp.source"

check_restore() { # check_restore DB WHAT
	fingerprint "$1" >"$WORK/fp.$1"
	if ! diff -u "$WORK/fp.source" "$WORK/fp.$1" >"$WORK/fp.diff"; then
		head -40 "$WORK/fp.diff" >&2
		bench_die "$2 restored into $1 differs from the source (above): the benchmark is void"
	fi
	bench_log "$2: restore verified (rows, row hashes, schema)"
}

# ---------------------------------------------------------------------------
# Measuring.

declare -A WALL USR SYS RSS SRV EXTRA SEEN
RESULT_ORDER=()

settle() {
	sync
	q -e "FLUSH TABLES" >/dev/null
}

srv_cpu() { # CPU seconds used by mariadbd so far
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f\n", (f[12] + f[13]) / hz }' "/proc/$MYSQLD_PID/stat"
}

timed() { # timed NAME CMD...
	local name=$1 before after wall usr sys rss
	shift
	settle
	before=$(srv_cpu)
	bench_measure "$WORK/time.out" "$@" || bench_die "$name failed: $*"
	after=$(srv_cpu)
	read -r wall usr sys rss <"$WORK/time.out"
	if [ -z "${SEEN[$name]:-}" ]; then
		SEEN[$name]=1
		RESULT_ORDER+=("$name")
	fi
	WALL[$name]+="$wall "
	USR[$name]+="$usr "
	SYS[$name]+="$sys "
	RSS[$name]+="$rss "
	SRV[$name]+="$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }') "
	bench_log "$name: ${wall}s wall, client ${usr}u+${sys}s, server $(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }')s CPU, RSS $((rss / 1024)) MiB"
}

med() { # med ARRAY NAME
	local -n arr=$1
	# shellcheck disable=SC2086
	bench_median ${arr[$2]}
}

export PORT DB WORK
export TABLE_LIST_STR="${TABLE_LIST[*]}"
select_all() {
	local t
	for t in $TABLE_LIST_STR; do
		mariadb -h127.0.0.1 -P"$PORT" -uroot --quick -N -B "$DB" -e "SELECT * FROM $t" >/dev/null
	done
}
dump_gzip() {
	mariadb-dump -h127.0.0.1 -P"$PORT" -uroot --single-transaction "$DB" | gzip >"$WORK/dump.sql.gz"
}
load_sql() { # load_sql TARGET_DB
	mariadb -h127.0.0.1 -P"$PORT" -uroot "$1" <"$WORK/dump.sql"
}
export -f select_all dump_gzip load_sql

SELECT_ALL="plain SELECT * of every table"
DUMP="mariadb-dump --single-transaction | gzip"
MYD="mydumper -t $JOBS -c"
MYL="myloader -t $JOBS"
LOAD="mariadb < dump.sql"
BACKUP="dbops backup --jobs $JOBS"
RESTORE="dbops restore --jobs $JOBS"

for i in $(seq 1 "$RUNS"); do
	bench_log "--- references, run $i/$RUNS"
	timed "$SELECT_ALL" bash -c select_all
	timed "$DUMP" bash -c dump_gzip
	EXTRA[$DUMP]=$(bench_bytes "$WORK/dump.sql.gz")

	rm -rf "$WORK/mydumper"
	timed "$MYD" mydumper -h 127.0.0.1 -P "$PORT" -u root -B "$DB" -t "$JOBS" -c -o "$WORK/mydumper"
	EXTRA[$MYD]=$(bench_bytes "$WORK/mydumper")

	timed "$MYL" myloader -h 127.0.0.1 -P "$PORT" -u root -t "$JOBS" -d "$WORK/mydumper" -B "myl_$i"
	if [ "$i" = 1 ]; then check_restore "myl_$i" "$MYL"; fi
	q -e "DROP DATABASE myl_$i"

	gzip -dc "$WORK/dump.sql.gz" >"$WORK/dump.sql"
	q -e "CREATE DATABASE sql_$i"
	timed "$LOAD" bash -c 'load_sql "$0"' "sql_$i"
	if [ "$i" = 1 ]; then check_restore "sql_$i" "$LOAD"; fi
	q -e "DROP DATABASE sql_$i"
	rm -f "$WORK/dump.sql"
done

for i in $(seq 1 "$RUNS"); do
	bench_log "--- dbops backup, run $i/$RUNS"
	repo=$WORK/repo.$i
	if [ "$i" -gt 1 ]; then rm -rf "$WORK/repo.$((i - 1))"; fi
	"$DBOPS" --repo "$repo" init "${INIT_OPTS[@]}" >/dev/null
	timed "$BACKUP" "$DBOPS" --repo "$repo" backup "$URL_BASE/$DB" --jobs "$JOBS" >"$WORK/backup.log"
	EXTRA[$BACKUP]=$(bench_bytes "$repo")
done
REPO=$WORK/repo.$RUNS

for i in $(seq 1 "$RUNS"); do
	bench_log "--- dbops restore, run $i/$RUNS"
	timed "$RESTORE" "$DBOPS" --repo "$REPO" restore latest "$URL_BASE/dbr_$i" --create --jobs "$JOBS" >>"$WORK/restore.log"
	if [ "$i" = 1 ]; then check_restore "dbr_$i" "dbops restore"; fi
	q -e "DROP DATABASE dbr_$i"
done

# ---------------------------------------------------------------------------
# Report.

cpu_count=$(nproc)
cpu_model=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | awk 'NR == 1')
mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
server_version=$(q -e "SELECT VERSION()")
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

row() { # row NAME
	local n=$1 size="" rss_mib
	[ -n "${EXTRA[$n]:-}" ] && size=$(bench_mb "${EXTRA[$n]}")
	rss_mib=$(awk -v k="$(med RSS "$n")" 'BEGIN { printf "%.0f", k / 1024 }')
	printf '| %-40s | %7.2f | %-22s | %6.2f | %6.2f | %6s MiB | %12s |\n' \
		"$n" "$(med WALL "$n")" "${WALL[$n]% }" \
		"$(awk -v u="$(med USR "$n")" -v s="$(med SYS "$n")" 'BEGIN { print u + s }')" \
		"$(med SRV "$n")" "$rss_mib" "$size"
}
target() { # target TEXT VALUE LIMIT ("-": information only)
	local verdict=information
	[ "$3" = - ] || verdict=$(bench_verdict "$2" "$3")
	printf '| %-52s | %8s | %7s | %s |\n' "$1" "$2" "$3" "$verdict"
}
maxrss() { # maxrss NAME: MiB, largest of the runs
	local -n arr=RSS
	# shellcheck disable=SC2086
	awk -v k="$(printf '%s\n' ${arr[$1]} | sort -n | tail -1)" 'BEGIN { printf "%.0f", k / 1024 }'
}

B=$(med WALL "$BACKUP")
R=$(med WALL "$RESTORE")

echo
echo "## dbops vs mariadb-dump / mydumper / myloader (MariaDB $server_version), RUNS=$RUNS, JOBS=$JOBS"
echo
echo "- machine: $cpu_count × $cpu_model, $mem RAM; $(uname -sr); dbops $git_rev, release build"
echo "- server: own mariadb-install-db on 127.0.0.1:$PORT as $SERVER_USER; ${SERVER_SETTINGS[*]}; binlog $([ "$BINLOG" = 1 ] && echo on || echo off)"
echo "- data: sysbench $TABLES × $TABLE_SIZE rows: $(bench_mb "$DB_BYTES") on disk, $(bench_mb "$SELECT_BYTES") of SELECT text"
echo "- method: warm caches (one untimed SELECT pass first); sync + FLUSH TABLES before every timed run; wall = median of $RUNS; CPU = median user+sys of the client processes; server CPU = mariadbd; RSS = largest single client process; restores go into a fresh database and the first of each tool is checked against the source (row counts, row hashes, mariadb-dump --no-data)"
echo "- repository: local directory, $([ "$ENCRYPTION" = 1 ] && echo "encrypted (XChaCha20-Poly1305, password)" || echo "--no-encryption (ENCRYPTION=0)"), default chunking, zstd; mydumper -c is gzip per file; mariadb-dump piped to gzip -6"
echo
echo "| measurement | median s | runs s | client CPU s | server CPU s | peak RSS | size |"
echo "|---|---:|---|---:|---:|---:|---:|"
for n in "${RESULT_ORDER[@]}"; do row "$n"; done
echo
echo "| target | measured | limit | verdict |"
echo "|---|---:|---:|---|"
target "backup time / mariadb-dump | gzip time" "$(bench_ratio "$B" "$(med WALL "$DUMP")")" 0.25
target "backup time / mydumper -t $JOBS -c time" "$(bench_ratio "$B" "$(med WALL "$MYD")")" 0.5
target "backup time / plain SELECT * time" "$(bench_ratio "$B" "$(med WALL "$SELECT_ALL")")" -
target "stored bytes / mariadb-dump | gzip bytes" "$(bench_ratio "${EXTRA[$BACKUP]}" "${EXTRA[$DUMP]}")" -
target "stored bytes / mydumper -c bytes" "$(bench_ratio "${EXTRA[$BACKUP]}" "${EXTRA[$MYD]}")" -
target "restore time / mariadb < dump.sql time" "$(bench_ratio "$R" "$(med WALL "$LOAD")")" 0.4
target "restore time / myloader -t $JOBS time" "$(bench_ratio "$R" "$(med WALL "$MYL")")" 0.8
target "peak RSS of dbops backup, MiB (max of runs)" "$(maxrss "$BACKUP")" 200
target "peak RSS of dbops restore, MiB (max of runs)" "$(maxrss "$RESTORE")" 200
