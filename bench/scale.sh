#!/usr/bin/env bash
# What grows with a repository's history: peak memory of backup, restore and prune,
# and the time of `list`, in a repository whose index holds CHUNKS (10 million)
# chunks, against an empty repository of the same settings, in the same run.
#
# The history is synthetic (examples/synthetic_history: index entries for CHUNKS
# chunks in 8 MiB-sized placeholder packs, written through the library), because what
# is measured is the cost of the index, not of moving data. The database backed up
# and restored is small (1,000 rows), so every difference between the two
# repositories is the index's. Prune runs last: it removes the synthetic packs.
#
#   bench/scale.sh                    # 10 million chunks
#   CHUNKS=1000000 bench/scale.sh     # quicker
#   DBOPS_BIN=… HISTORY_BIN=…          # measure given binaries instead of building
#
# Ends with one line:
#   RESULT rss_backup_ratio=… rss_restore_ratio=… rss_prune_mb=… list_warm_s=… list_cold_s=…
# Needs PostgreSQL server binaries and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

CHUNKS=${CHUNKS:-10000000}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
[ -x /usr/bin/time ] || bench_die "/usr/bin/time not found: apt-get install -y time"
[ -x "$PG_BIN/initdb" ] || bench_die "PostgreSQL server not found: apt-get install -y postgresql"

if [ -z "${DBOPS_BIN:-}" ] || [ -z "${HISTORY_BIN:-}" ]; then
	bench_log "building dbops and the synthetic history tool (release)"
	cargo build --release -q -p ops-cli
	cargo build --release -q -p dbops-examples --example synthetic_history
fi
WORK=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/dbops-scale-bench.XXXXXX")
chmod 755 "$WORK"
# Copies, so that other builds in the tree cannot swap them mid-run.
cp "${DBOPS_BIN:-target/release/dbops}" "$WORK/dbops"
cp "${HISTORY_BIN:-target/release/examples/synthetic_history}" "$WORK/synthetic_history"
DBOPS=$WORK/dbops
PGDATA_DIR=$WORK/pg
cleanup() {
	local rc=$?
	bench_stop_pg "$PG_BIN" "$PGDATA_DIR"
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT

PORT=$(bench_free_port)
bench_start_pg "$PG_BIN" "$PGDATA_DIR" "$PORT"
unset PGSERVICE PGPASSFILE PGPASSWORD PGDATABASE PGOPTIONS PGSSLMODE DBOPS_REPO DBOPS_PASSWORD_FILE DBOPS_CACHE_DIR
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"; }
psql -c "CREATE DATABASE small"
psql -d small -c "CREATE TABLE t (id int PRIMARY KEY, v text)" \
	-c "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g"
DB=postgres://postgres@127.0.0.1:$PORT/small
export DBOPS_PASSWORD=dbops-scale-bench

for r in empty big; do
	"$DBOPS" --repo "$WORK/$r" init --kdf-memory-mib 64 >/dev/null
done
bench_log "writing a synthetic history of $CHUNKS chunks"
bench_measure "$WORK/t.fill" "$WORK/synthetic_history" "$WORK/big" "$CHUNKS" >/dev/null
bench_log "history written in $(cut -d' ' -f1 "$WORK/t.fill") s; index files: $(find "$WORK/big/index" -type f | wc -l), $(bench_mb "$(bench_bytes "$WORK/big/index")")"

# measure NAME REPO CACHE ARGS...: one dbops run under GNU time -> $WORK/t.NAME
measure() {
	local name=$1 repo=$2 cache=$3
	shift 3
	bench_measure "$WORK/t.$name" "$DBOPS" --repo "$WORK/$repo" --cache-dir "$WORK/$cache" -q "$@" >/dev/null
}
wall() { cut -d' ' -f1 "$WORK/t.$1"; }
rss_kib() { cut -d' ' -f4 "$WORK/t.$1"; }

for r in empty big; do
	bench_log "$r: backup with a cold cache, backup with a warm one, restore"
	measure "backup_cold_$r" "$r" "cache_$r" backup "$DB"
	measure "backup_$r" "$r" "cache_$r" backup "$DB"
	measure "restore_$r" "$r" "cache_$r" restore latest "postgres://postgres@127.0.0.1:$PORT/restored_$r" --create
	measure "list_warm_$r" "$r" "cache_$r" list
	rm -rf "$WORK/cache_cold_$r"
	measure "list_cold_$r" "$r" "cache_cold_$r" list
done
bench_log "big: prune (removes the synthetic packs)"
measure prune_big big cache_big prune --unindexed-grace 0
"$DBOPS" --repo "$WORK/big" --no-cache verify --all --read-data >/dev/null
cache_mb=$(bench_mb "$(bench_bytes "$WORK/cache_big")")

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k/1024 }'; }
printf '\n## dbops in a repository of %s chunks vs an empty one (same settings, same run)\n\n' "$CHUNKS"
printf '| run | empty: wall s | empty: peak RSS MiB | %s chunks: wall s | %s chunks: peak RSS MiB |\n|---|---:|---:|---:|---:|\n' "$CHUNKS" "$CHUNKS"
for m in backup_cold backup restore list_warm list_cold; do
	printf '| %s | %s | %s | %s | %s |\n' "$m" "$(wall "${m}_empty")" "$(mib "$(rss_kib "${m}_empty")")" \
		"$(wall "${m}_big")" "$(mib "$(rss_kib "${m}_big")")"
done
printf '| prune | | | %s | %s |\n' "$(wall prune_big)" "$(mib "$(rss_kib prune_big)")"
printf '\nlocal index cache of the big repository: %s\n' "$cache_mb"

rss_backup_ratio=$(bench_ratio "$(rss_kib backup_cold_big)" "$(rss_kib backup_cold_empty)")
rss_restore_ratio=$(bench_ratio "$(rss_kib restore_big)" "$(rss_kib restore_empty)")
printf '\n| target | measured | limit | verdict |\n|---|---:|---:|---|\n'
printf '| peak RSS backup (cold cache), big / empty | %s | 1.25 | %s |\n' "$rss_backup_ratio" "$(bench_verdict "$rss_backup_ratio" 1.25)"
printf '| peak RSS restore, big / empty | %s | 1.25 | %s |\n' "$rss_restore_ratio" "$(bench_verdict "$rss_restore_ratio" 1.25)"
printf '| peak RSS backup, big, MiB | %s | 200 | %s |\n' "$(mib "$(rss_kib backup_cold_big)")" "$(bench_verdict "$(mib "$(rss_kib backup_cold_big)")" 200)"
printf '| peak RSS restore, big, MiB | %s | 200 | %s |\n' "$(mib "$(rss_kib restore_big)")" "$(bench_verdict "$(mib "$(rss_kib restore_big)")" 200)"
printf '| list, warm cache, s | %s | 1 | %s |\n' "$(wall list_warm_big)" "$(bench_verdict "$(wall list_warm_big)" 0.999)"
printf '\nRESULT rss_backup_ratio=%s rss_restore_ratio=%s rss_prune_mb=%s list_warm_s=%s list_cold_s=%s\n' \
	"$rss_backup_ratio" "$rss_restore_ratio" "$(mib "$(rss_kib prune_big)")" "$(wall list_warm_big)" "$(wall list_cold_big)"
