# Shared helpers for the bench/ scripts. Source it; it defines functions only.
#
# Conventions: every measured command runs under GNU time (`measure`), which records
# wall seconds, user and system CPU seconds and peak RSS; results are collected as
# "name value" lines so that medians and ratios are computed in one place.

# shellcheck shell=bash

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bench_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# bench_need CMD PACKAGE: the command exists, else a message naming the Debian package.
bench_need() {
	command -v "$1" >/dev/null 2>&1 || bench_die "$1 not found: apt-get install -y $2"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; racy only in theory).
bench_free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return
	local p
	for _ in $(seq 1 200); do
		p=$((20000 + RANDOM % 40000))
		if ! ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return
		fi
	done
	bench_die "no free port found"
}

# bench_measure OUTFILE CMD...: runs CMD under GNU time; OUTFILE gets
# "wall user sys maxrss_kib" (RSS is the largest of the process and its descendants).
# CMD's stdout/stderr pass through. Fails when CMD fails.
bench_measure() {
	local out=$1
	shift
	/usr/bin/time -f '%e %U %S %M' -o "$out" "$@"
}

# Median of the numbers given as arguments (mean of the middle two for an even count).
bench_median() {
	printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
		if (NR == 0) { print "nan"; exit }
		if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

# Bytes of a file or directory tree.
bench_bytes() { du -sb "$1" | cut -f1; }

# Human-readable bytes (MB = 10^6 bytes, as du -b and most tools print them).
bench_mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b/1e6 }'; }

# bench_ratio A B: A/B with three decimals.
bench_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.3f\n", a/b }'; }

# bench_verdict VALUE LIMIT: PASS when VALUE <= LIMIT, else MISS.
bench_verdict() { awk -v v="$1" -v l="$2" 'BEGIN { print (v != "nan" && v <= l) ? "PASS" : "MISS" }'; }

# The user to run database servers as when we are root.
bench_server_user() {
	if [ "$(id -u)" = 0 ]; then echo nobody; else id -un; fi
}

# bench_as_server_user CMD...: runs CMD as that user (directly when not root).
bench_as_server_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u nobody -- "$@"
	else
		"$@"
	fi
}

# CPU seconds (user+system) used so far by process PID, its live children, and its
# reaped children (a server's finished backends are accounted to the postmaster).
bench_tree_cpu() {
	local pid=$1 hz total=0 p
	hz=$(getconf CLK_TCK)
	for p in "$pid" $(pgrep -P "$pid" 2>/dev/null); do
		[ -r "/proc/$p/stat" ] || continue
		# Fields after the ")" of comm: utime is 14, stime 15, cutime 16, cstime 17.
		total=$(awk -v t="$total" -v self="$([ "$p" = "$pid" ] && echo 1 || echo 0)" '{
			sub(/^.*\) /, ""); n = split($0, f, " ")
			# f[1] is field 3 (state), so field k is f[k-2].
			s = f[12] + f[13]; if (self) s += f[14] + f[15]
			print t + s }' "/proc/$p/stat" 2>/dev/null || echo "$total")
	done
	awk -v t="$total" -v hz="$hz" 'BEGIN { printf "%.2f\n", t/hz }'
}

# CPU seconds the whole machine has been busy (all cores; idle and iowait excluded).
bench_machine_busy() {
	awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat
}

# bench_start_pg PG_BIN DATADIR PORT [SETTING ...]: initdb into DATADIR (as the server
# user when root) and start a PostgreSQL on 127.0.0.1:PORT with its socket in DATADIR,
# each SETTING ("name = value") appended to postgresql.conf. Stop it with
# bench_stop_pg PG_BIN DATADIR.
bench_start_pg() {
	local bin=$1 data=$2 port=$3
	shift 3
	install -d -m 700 "$data"
	[ "$(id -u)" = 0 ] && chown "$(bench_server_user)": "$data"
	bench_as_server_user "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$data.initdb.log" 2>&1 ||
		{ cat "$data.initdb.log" >&2; bench_die "initdb failed"; }
	{
		printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$port" "$data"
		for setting in "$@"; do printf '%s\n' "$setting"; done
	} >>"$data/postgresql.conf"
	bench_as_server_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 120 start >/dev/null
}

# bench_stop_pg PG_BIN DATADIR: stops a server bench_start_pg started, if it runs.
bench_stop_pg() {
	if [ -f "$2/postmaster.pid" ]; then
		bench_as_server_user "$1/pg_ctl" -D "$2" -m immediate stop >/dev/null 2>&1 || true
	fi
}
