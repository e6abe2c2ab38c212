#!/usr/bin/env bash
# Peak memory of `dbops backup` of a ~1 GB PostgreSQL database into S3 (a moto S3-API
# server on loopback), and the same backup at a quarter and at the full size, so that
# "memory does not grow with database size" is measured, not assumed.
#
#   bench/s3.sh                 # ~1 GB (SIZE_MB=1000)
#   SIZE_MB=2000 bench/s3.sh    # larger
#
# Prints the peak RSS of each backup, the ratio of the two, and PASS/MISS against the
# 200 MB target. Needs: PostgreSQL server binaries, moto_server (pip install
# 'moto[server]'), GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MB=${SIZE_MB:-1000}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
bench_need moto_server 'python3-pip && pip install moto[server]'
[ -x /usr/bin/time ] || bench_die "/usr/bin/time not found: apt-get install -y time"
[ -x "$PG_BIN/initdb" ] || bench_die "PostgreSQL server not found: apt-get install -y postgresql"

cargo build --release -q -p ops-cli
WORK=$(mktemp -d /tmp/dbops-s3-bench.XXXXXX)
chmod 755 "$WORK"
PGDATA_DIR=$WORK/pg
cleanup() {
	local rc=$?
	[ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true
	bench_stop_pg "$PG_BIN" "$PGDATA_DIR"
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT

PORT=$(bench_free_port)
bench_start_pg "$PG_BIN" "$PGDATA_DIR" "$PORT" "max_wal_size = 4GB" "synchronous_commit = off"
unset PGSERVICE PGPASSFILE PGPASSWORD PGDATABASE PGOPTIONS PGSSLMODE
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At "$@"; }

S3_PORT=$(bench_free_port)
moto_server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$S3_PORT/" >/dev/null 2>&1 && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
curl -fs -X PUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null
export DBOPS_PASSWORD=bench

# Two databases: a quarter and the full size; rows of ~200 bytes of varied text.
make_db() { # make_db NAME MB
	local rows=$(($2 * 1000 * 1000 / 200))
	psql -c "CREATE DATABASE $1"
	psql -d "$1" -c "CREATE TABLE big (id bigint PRIMARY KEY, a text, b text, n numeric)" \
		-c "INSERT INTO big SELECT g, md5(g::text) || md5((g*7)::text), repeat(md5((g % 1000)::text), 3), g * 1.5 FROM generate_series(1, $rows) g" \
		-c "CREATE TABLE other AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, $((rows / 4))) g"
	bench_log "$1: $(psql -d "$1" -c "SELECT pg_size_pretty(pg_database_size('$1'))")"
}
make_db small $((SIZE_MB / 4))
make_db large "$SIZE_MB"

DBOPS=target/release/dbops
"$DBOPS" --repo s3://bench/repo init --kdf-memory-mib 64 >/dev/null
rss_of() { # rss_of DB -> prints "wall rss_kib"
	/usr/bin/time -f '%e %M' -o "$WORK/time" "$DBOPS" --repo s3://bench/repo -q backup "postgres://postgres@127.0.0.1:$PORT/$1" --jobs 2 >/dev/null
	cat "$WORK/time"
}
read -r small_wall small_rss < <(rss_of small)
read -r large_wall large_rss < <(rss_of large)
"$DBOPS" --repo s3://bench/repo verify --all --read-data >/dev/null

printf '\n## dbops backup to S3 (moto on loopback): peak memory\n\n'
printf '| database | wall s | peak RSS |\n|---|---:|---:|\n'
printf '| small (~%s MB) | %s | %s MiB |\n' $((SIZE_MB / 4)) "$small_wall" $((small_rss / 1024))
printf '| large (~%s MB) | %s | %s MiB |\n' "$SIZE_MB" "$large_wall" $((large_rss / 1024))
printf '\n| target | measured | limit | verdict |\n|---|---:|---:|---|\n'
printf '| peak RSS, large, MiB | %s | 200 | %s |\n' $((large_rss / 1024)) "$(bench_verdict $((large_rss / 1024)) 200)"
ratio=$(bench_ratio "$large_rss" "$small_rss")
printf '| RSS large / small (data 4x) | %s | 1.25 | %s |\n' "$ratio" "$(bench_verdict "$ratio" 1.25)"
