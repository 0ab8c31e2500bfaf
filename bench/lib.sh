# bench/lib.sh - shell helpers shared by the bench/ scripts; sourced, never run.
#
# The sourcing script sets, before calling anything here:
#   BENCH_NAME  its name, for messages ("bench/run")
#   AMESH       the amesh binary
#   PORT        the port of the amesh node it starts
#   REDIS_PORT  the port of the Redis it starts (only for start_redis)
# then calls bench_init, which makes the work directory $WORK and sets the
# traps: on exit, however the script ends, every process started through
# run, start_node or start_redis is killed and $WORK is removed (kept, with
# its logs and data, when BENCH_KEEP is set).
#
# Processes run in the background and are waited for (run), so that a signal
# to the script is handled at once (bash defers traps until a foreground
# child ends) and cleanup can kill the child.
# shellcheck shell=bash

bench_usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

note() { echo "$BENCH_NAME: $*" >&2; }

PIDS=()
WORK=""

bench_cleanup() {
    local p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        kill "$p" 2>/dev/null || true
    done
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
    if [ -n "$WORK" ] && [ -n "${BENCH_KEEP:-}" ]; then
        note "kept the work directory (logs, data): $WORK"
    elif [ -n "$WORK" ]; then
        rm -rf "$WORK"
    fi
}

bench_init() {
    if [ ! -x "$AMESH" ]; then
        note "no amesh binary at $AMESH (build it, or set AMESH)"
        exit 2
    fi
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/amesh-bench.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Drops a process that has ended from PIDS, so cleanup never signals a
# recycled pid.
forget() {
    local keep=() p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    PIDS=(${keep[@]+"${keep[@]}"})
}

# Runs a command in the background and waits for it. Returns its exit status.
run() {
    "$@" &
    local pid=$!
    PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}

# Ends a background process started here, and forgets it.
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to 10 s for pid $1 to accept connections on port $2.
wait_port() {
    local tries=100
    while [ "$tries" -gt 0 ]; do
        tries=$((tries - 1))
        port_open "$2" && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_node MODE: one node on 127.0.0.1:$PORT with --sync MODE and a fresh
# data directory under $WORK. Sets NODE_PID, NODE_DIR and NODE_CMD (the
# command line, with the data directory as given).
NODE_PID=""
NODE_DIR=""
NODE_CMD=()
start_node() {
    if port_open "$PORT"; then
        note "port $PORT is already in use; set BENCH_PORT"
        exit 1
    fi
    NODE_DIR=$(mktemp -d "$WORK/node.XXXXXX")
    NODE_CMD=("$AMESH" node --bind "127.0.0.1:$PORT" --data "$NODE_DIR/data" --sync "$1"
        --log-level warn)
    "${NODE_CMD[@]}" >"$NODE_DIR/log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    if ! wait_port "$NODE_PID" "$PORT"; then
        note "the node (--sync $1) did not start:"
        cat "$NODE_DIR/log" >&2
        exit 1
    fi
}

# stop_node [LOGCOPY]: ends the node, keeping its log at LOGCOPY if given,
# and removes its data directory.
# shellcheck disable=SC2120 # the argument is optional
stop_node() {
    stop_pid "$NODE_PID"
    if [ $# -ge 1 ]; then
        cp "$NODE_DIR/log" "$1"
    fi
    rm -rf "$NODE_DIR"
}

# json_field FILE NAME: a number from the one-line JSON of amesh bench.
json_field() {
    sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" "$1"
}

# amesh_bench FILE BENCH-ARGS...: `amesh bench --node 127.0.0.1:$PORT --json
# BENCH-ARGS` with its JSON in FILE. Exits the script when no figures came
# out; a non-zero exit with figures (partial: errors, lost connections) is
# reported and returns 1, so the caller can note it.
amesh_bench() {
    local file=$1 rc=0
    shift
    run "$AMESH" bench --node "127.0.0.1:$PORT" --json "$@" >"$file" || rc=$?
    if [ ! -s "$file" ]; then
        note "amesh bench failed (exit $rc): $*"
        exit 1
    fi
    if [ "$rc" -ne 0 ]; then
        note "amesh bench exited $rc (figures partial, see its errors above): $*"
        return 1
    fi
    return 0
}

have_redis() { command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; }

# start_redis: redis-server on 127.0.0.1:$REDIS_PORT, in memory only (no RDB,
# no AOF). Returns 1, with a note, when the port is taken. Sets REDIS_PID
# and REDIS_CMD.
REDIS_PID=""
REDIS_CMD=()
start_redis() {
    if port_open "$REDIS_PORT"; then
        note "port $REDIS_PORT is already in use; set REDIS_PORT"
        return 1
    fi
    REDIS_CMD=(redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no)
    "${REDIS_CMD[@]}" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    if ! wait_port "$REDIS_PID" "$REDIS_PORT"; then
        note "redis-server did not start:"
        cat "$WORK/redis.log" >&2
        exit 1
    fi
}

stop_redis() { stop_pid "$REDIS_PID"; }

# redis_bench FILE ARGS...: `redis-benchmark -p $REDIS_PORT -t incr ARGS`
# with its full output in FILE, then sets from it, in requests/s and us:
#   RB_RPS  the throughput summary
#   RB_P50, RB_P99  from the latency summary (ms with 3 decimals: 1 us steps)
#   RB_P999  the first line at or above 99.9% of the "Latency by percentile
#            distribution" (99.902% in long runs): an upper bound of p99.9,
#            since redis-benchmark prints no exact p99.9
# shellcheck disable=SC2034 # RB_* are the results, read by the caller
redis_bench() {
    local file=$1 lat
    shift
    run redis-benchmark -p "$REDIS_PORT" -t incr "$@" >"$file"
    # Progress lines end in \r, not \n. The awk programs read their input to
    # the end (no early exit): under pipefail, tr killed by SIGPIPE would end
    # the script when the output is larger than a pipe buffer.
    RB_RPS=$(tr '\r' '\n' <"$file" | awk '/throughput summary:/ { print $3 }')
    lat=$(tr '\r' '\n' <"$file" | awk '
        /latency summary/ && !done { getline; n = split($0, h); getline; split($0, v)
            for (i = 1; i <= n; i++) { if (h[i] == "p50") a = v[i]; if (h[i] == "p99") b = v[i] }
            printf "%.1f %.1f\n", a * 1000, b * 1000; done = 1 }')
    RB_P50=${lat% *}
    RB_P99=${lat#* }
    RB_P999=$(tr '\r' '\n' <"$file" | awk '
        /^Latency by percentile distribution/ && !done { on = 1; next }
        on && /^$/ { on = 0; done = 1 }
        on && /^[0-9.]+% <= / { p = $1; sub(/%/, "", p)
            if (p + 0 >= 99.9) { printf "%.1f\n", $3 * 1000; on = 0; done = 1 } }')
    if [ -z "$RB_RPS" ] || [ -z "$RB_P50" ]; then
        note "cannot read the figures of redis-benchmark $* (output in $file)"
        exit 1
    fi
}

# ---- Helpers of bench/membership (usable by any script) ----------------------

# addr_open HOST PORT: true when HOST:PORT accepts TCP connections.
addr_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_addr PID HOST PORT [TENTHS]: waits up to TENTHS x 0.1 s (100: 10 s)
# for pid PID to accept connections on HOST:PORT; fails at once if PID ends.
wait_addr() {
    local tries=${4:-100}
    while [ "$tries" -gt 0 ]; do
        tries=$((tries - 1))
        addr_open "$2" "$3" && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# now: sets NOW to the wall clock in microseconds (no fork).
# shellcheck disable=SC2034 # NOW is read by the caller
NOW=0
# shellcheck disable=SC2034
now() { NOW=${EPOCHREALTIME//[!0-9]/}; }

# us_to_s US [DECIMALS]: microseconds as seconds with DECIMALS (3) decimals,
# rounded.
us_to_s() {
    local d=${2:-3} u=$1 m
    m=$((10 ** (6 - d)))
    u=$(((u + m / 2) / m))
    if [ "$d" -eq 0 ]; then
        echo "$u"
    else
        printf '%d.%0*d\n' $((u / 10 ** d)) "$d" $((u % 10 ** d))
    fi
}

# median VALUE...: the median of the arguments that are numbers (others, such
# as "timeout", are left out); prints nothing when there is none.
median() {
    [ $# -gt 0 ] || return 0
    printf '%s\n' "$@" | awk '/^-?[0-9]+(\.[0-9]+)?$/' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) exit
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
