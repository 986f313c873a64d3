#!/usr/bin/env bash
# Out-of-process gateway benchmark (issue 18): `wrk` against `awooop mcp-fixture` directly,
# then through `awooop up`'s `/mcp` to the same fixture process, with everything on (run-token
# authentication, signed session, the five gates, schema validation, credential injection,
# redaction, truncation, the call audit in PostgreSQL). Prints direct and gateway requests/s,
# their ratio and p50/p99 (wrk's coordinated-omission-corrected percentiles: see run_wrk) with
# the longest request, the CPU time `awooop up` spent per gateway call and the system
# (kernel) share of it, the load average, and the audit row count (every call audited).
#
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench-gateway-wrk.sh
#
# Settings (environment): AWOOOP_BIN (default ./target/release/awooop, built with
# `--features bench` for `mcp-fixture`), DURATION (10s), THREADS (2), CONNECTIONS (32),
# SIZE (1024: the `blob` result in bytes), TEXT (ascii: one repeated byte; cjk: Traditional
# Chinese, which the redaction rules must scan as fast as ASCII), FIXTURE_BIN (the binary whose
# `mcp-fixture` serves the calls; default AWOOOP_BIN: set it to compare an older gateway on a
# fixture that knows TEXT=cjk), FX_PORT (18090), API_PORT (18080), PERF_OUT (a
# file: `perf record -e cpu-clock -g` of `awooop up` during the first gateway run; with
# PERF_SYSTEM=1 of the whole machine), KEEP_WORK (set: keep the work folder with the processes'
# logs, printed on exit), PERF_STAT (perf event names, comma-separated: their counts in
# `awooop up` per call of the first gateway run, e.g. context-switches,syscalls:sys_enter_futex). Needs wrk
# (`apt-get install -y wrk`), curl and psql. AUTH=apikey authenticates the gateway calls with a runner API key. It creates and drops its own database
# (`awooop_wrk_<pid>`) on the server of DATABASE_URL and its own state folder.
#
# CALLGRIND_OUT=<file> runs `awooop up` under `valgrind --tool=callgrind` instead and measures
# the instructions it executes per gateway call (counted, not timed: repeatable on a busy
# machine, unlike the rates): after the warm-up the counters are zeroed, one gateway run of
# DURATION (use CONNECTIONS=4 THREADS=1; the process runs ~50x slower) is counted, and the last
# line is `calls= up_instructions= up_instr_per_call=` (the rest of the script is skipped).
# Read the profile with `callgrind_annotate <file>.1`. Needs valgrind.
#
# NGINX=1 also measures the same calls through nginx (`apt-get install -y nginx-light`), a C reverse
# proxy with keep-alive connections to the fixture and nothing else: the cost of the extra hop
# alone out of process, the ceiling any gateway in front of the fixture works under. Adds
# `nginx_rps= nginx_ratio= nginx_p50_ms= nginx_p99_ms= nginx_cpu_us_per_call=` to the last line.
#
# Each request carries its own JSON-RPC id (a Lua counter per wrk thread); one MCP session
# per target is initialized with curl first and shared by every connection (what an agent
# with many parallel calls does). A response that is not a successful result of SIZE bytes
# counts as bad; any bad response fails the script. Lines tagged `agentgateway` in
# docs/benchmarks.md were measured with this same harness pointed at agentgateway's MCP route.
set -euo pipefail

BIN=${AWOOOP_BIN:-./target/release/awooop}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
SIZE=${SIZE:-1024}
TEXT=${TEXT:-ascii}
case "$TEXT" in ascii|cjk) ;; *) echo "error: TEXT must be ascii or cjk" >&2; exit 2 ;; esac
FIXTURE_BIN=${FIXTURE_BIN:-$BIN}
[ -x "$FIXTURE_BIN" ] || { echo "error: FIXTURE_BIN $FIXTURE_BIN not found" >&2; exit 2; }
FX_PORT=${FX_PORT:-18090}
API_PORT=${API_PORT:-18080}
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL server URL (the script creates its own database there)}"

NGINX_PORT=${NGINX_PORT:-18095}
tools=(wrk curl psql)
[ -n "${NGINX:-}" ] && tools+=(nginx)
[ -n "${CALLGRIND_OUT:-}" ] && tools+=(valgrind callgrind_control)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (wrk: apt-get install -y wrk)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "error: $BIN not found (cargo build --release --features bench, or set AWOOOP_BIN)" >&2; exit 2; }

WORK=$(mktemp -d)
DB="awooop_wrk_$$"
BASE_URL=${DATABASE_URL%/*}
export DATABASE_URL="$BASE_URL/$DB"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    psql -q "$BASE_URL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    if [ -n "${KEEP_WORK:-}" ]; then echo "work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
psql -q "$BASE_URL/postgres" -c "CREATE DATABASE $DB" >/dev/null

export AWOOOP_STATE_DIR="$WORK/state"
export FX_KEY=wrk-bench-secret-5c1d0e9a
export AWOOOP_GATEWAY_ENV_CREDENTIALS=awoooi:FX_KEY
# High enough never to refuse a benchmark call, on so that its counting is measured.
export AWOOOP_GATEWAY_RATE_PER_MINUTE=2000000000
export RUST_LOG=${RUST_LOG:-warn}

"$FIXTURE_BIN" mcp-fixture --listen "127.0.0.1:$FX_PORT" >"$WORK/fixture.log" 2>&1 &
PIDS+=($!)
UP_WRAP=()
if [ -n "${CALLGRIND_OUT:-}" ]; then
    rm -f "$CALLGRIND_OUT" "$CALLGRIND_OUT".*
    UP_WRAP=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CALLGRIND_OUT")
fi
"${UP_WRAP[@]}" "$BIN" up --listen "127.0.0.1:$API_PORT" >"$WORK/up.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
for _ in $(seq 1 3000); do
    curl -fs "http://127.0.0.1:$API_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$API_PORT/healthz" >/dev/null || { echo "error: awooop up did not start:" >&2; tail -20 "$WORK/up.log" >&2; exit 1; }

mkdir -p "$WORK/contracts"
cat >"$WORK/contracts/gw.json" <<EOF
# awooop: project=awoooi kind=mcp_gateway name=default
{"credential_refs": [{"name": "fx-key", "source": {"env": {"var": "FX_KEY"}}}],
 "providers": [{"name": "fx", "transport": {"type": "streamable_http", "url": "http://127.0.0.1:$FX_PORT/mcp"},
   "credentials": [{"credential": "fx-key", "inject": {"type": "header", "name": "X-Key", "prefix": ""}}]}],
 "tools": [{"provider": "fx", "name": "blob", "risk": "read_only", "environments": ["dev"],
   "input_schema": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0, "maximum": 65536},
                                                    "text": {"enum": ["ascii", "cjk"]}},
                    "required": ["size"], "additionalProperties": false},
   "max_result_chars": 65536}],
 "grants": [{"agent": "wrk", "tools": ["fx__blob"], "environments": ["dev"]}]}
EOF
cat >"$WORK/contracts/agent.json" <<'EOF'
# awooop: project=awoooi kind=agent name=wrk
{"display_name": "wrk", "context_domain": "bench", "tools": ["fx__blob"],
 "safety": {"max_risk": "read_only", "max_steps": 1, "max_tokens_per_run": 1, "timeout_seconds": 60},
 "executor": {"type": "scripted", "steps": [{"type": "output", "key": "done", "template": "ok"}]}}
EOF
"$BIN" apply -q -f "$WORK/contracts/gw.json" -f "$WORK/contracts/agent.json"
# AUTH=token (default): a per-run bearer token; AUTH=apikey: a runner API key with the agent and
# environment headers (verified against PostgreSQL, the verdict cached for the gateway's TTL).
EXTRA_H=()
case "${AUTH:-token}" in
    token) TOKEN=$("$BIN" token mint --project awoooi --agent wrk --env dev) ;;
    apikey)
        TOKEN=$("$BIN" apikey create -o name --project awoooi --principal wrk --roles runner --agents wrk --envs dev)
        EXTRA_H=(-H "x-awooop-agent: wrk" -H "x-awooop-environment: dev")
        export WRK_AGENT=wrk WRK_ENV=dev ;;
    *) echo "error: AUTH must be token or apikey" >&2; exit 2 ;;
esac

# initialize + notifications/initialized; prints the session id.
session() {
    local url=$1 auth=$2 sid
    sid=$(curl -fsS -D - -o /dev/null "$url" -H "authorization: $auth" "${EXTRA_H[@]}" \
        -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}' |
        tr -d '\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
    [ -n "$sid" ] || { echo "error: no session id from $url" >&2; exit 1; }
    curl -fsS -o /dev/null "$url" -H "authorization: $auth" "${EXTRA_H[@]}" -H "mcp-session-id: $sid" \
        -H 'mcp-protocol-version: 2025-11-25' -H 'content-type: application/json' \
        -H 'accept: application/json, text/event-stream' \
        -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
    echo "$sid"
}

cat >"$WORK/call.lua" <<'EOF'
-- One tools/call per request, each with its own JSON-RPC id; counts responses that are not
-- a successful result (HTTP 200 with "isError":false).
local threads = {}
local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end
function init(args)
  n = 0
  bad = 0
  tool = os.getenv("WRK_TOOL")
  size = os.getenv("SIZE")
  text = os.getenv("TEXT")
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/json"
  wrk.headers["accept"] = "application/json, text/event-stream"
  wrk.headers["authorization"] = os.getenv("WRK_AUTH")
  wrk.headers["mcp-session-id"] = os.getenv("WRK_SID")
  if os.getenv("WRK_AGENT") then
    wrk.headers["x-awooop-agent"] = os.getenv("WRK_AGENT")
    wrk.headers["x-awooop-environment"] = os.getenv("WRK_ENV")
  end
  wrk.headers["mcp-protocol-version"] = "2025-11-25"
end
function request()
  n = n + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":{"size":%s,"text":"%s"}}}',
    tid * 1000000000 + n, tool, size, text)
  return wrk.format(nil, nil, nil, body)
end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"isError":false', 1, true) then
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("BAD=%d\n", total))
end
EOF

# wrk --latency output → "rps p50_ms p99_ms bad requests max_ms"
#
# Reading wrk's latencies: wrk 4 "corrects" its histogram for coordinated omission
# (stats_correct): a request that took k times the mean interval between a connection's
# requests also adds samples at every multiple of that interval below it, as if an open-loop
# client had kept sending during the wait. One stall of the server therefore turns into
# thousands of samples: a single 300 ms stall in a 3 s run at 55,000 requests/s put the p99 at
# 300 ms. Its p99 is a statement about the longest stalls, not about 1 % of the requests; the
# max is printed beside it, and a note when the mean latency times the rate (requests in
# flight, by Little's law) exceeds the connections wrk holds.
run_wrk() {
    local url=$1 auth=$2 sid=$3 tool=$4
    WRK_AUTH="$auth" WRK_SID="$sid" WRK_TOOL="$tool" SIZE="$SIZE" TEXT="$TEXT" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/call.lua" "$url" >"$WORK/wrk.out"
    awk -v conns="$CONNECTIONS" -v url="$url" '
      function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
      $1=="Latency" && $2!="Distribution" {avg=ms($2); max=ms($4)}
      $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)} $1=="Requests/sec:" {rps=$2}
      /^BAD=/ {split($0, a, "="); bad=a[2]}
      /Non-2xx/ {non2xx=$NF}
      $2=="requests" && $3=="in" {n=$1}
      END {
        inflight = rps * avg / 1000
        if (inflight > 1.5 * conns)
          printf "note: %s: mean latency x rate = %.0f requests in flight with %d connections: the latencies carry wrk'"'"'s correction of a stall (max %.1f ms)\n", url, inflight, conns, max > "/dev/stderr"
        printf "%.0f %.3f %.3f %d %d %.3f\n", rps, p50, p99, bad+non2xx, n, max
      }' "$WORK/wrk.out"
}

DIRECT_URL="http://127.0.0.1:$FX_PORT/mcp"
GW_URL="http://127.0.0.1:$API_PORT/mcp"
DSID=$(session "$DIRECT_URL" "$FX_KEY")
GSID=$(session "$GW_URL" "Bearer $TOKEN")
if [ -n "${NGINX:-}" ]; then
    mkdir -p "$WORK/nginx/logs"
    cat >"$WORK/nginx/nginx.conf" <<NGINXCONF
worker_processes 2;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    upstream fixture { server 127.0.0.1:$FX_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://fixture;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINXCONF
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break; sleep 0.1; done
    NGINX_URL="http://127.0.0.1:$NGINX_PORT/mcp"
    NSID=$(session "$NGINX_URL" "$FX_KEY")
fi
# Warm-up (connections, caches), then direct, gateway, gateway, direct (ABBA) and the mean.
DURATION_SAVE=$DURATION
DURATION=2s
run_wrk "$DIRECT_URL" "$FX_KEY" "$DSID" blob >/dev/null
run_wrk "$GW_URL" "Bearer $TOKEN" "$GSID" fx__blob >/dev/null
DURATION=$DURATION_SAVE
sleep 1
if [ -n "${CALLGRIND_OUT:-}" ]; then
    # Instrument, zero, count one gateway run, dump (to $CALLGRIND_OUT.1).
    callgrind_control -i on "$UP_PID" >/dev/null 2>&1
    sleep 1
    callgrind_control -z "$UP_PID" >/dev/null 2>&1
    read -r g1 gp50a gp99a gbad1 gn1 _ < <(run_wrk "$GW_URL" "Bearer $TOKEN" "$GSID" fx__blob)
    callgrind_control -d "$UP_PID" >/dev/null 2>&1
    dump=$(ls -t "$CALLGRIND_OUT".* | head -1)
    instr=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    echo "gateway under callgrind: $g1 req/s, $gn1 calls, bad $gbad1; profile $dump" >&2
    [ "$gbad1" -eq 0 ] || { echo "error: $gbad1 responses were not successful results" >&2; exit 1; }
    awk -v n="$gn1" -v i="$instr" -v size="$SIZE" 'BEGIN { printf "size=%d calls=%d up_instructions=%d up_instr_per_call=%.0f\n", size, n, i, i / n }'
    exit 0
fi
before=$(psql -qtA "$DATABASE_URL" -c "SELECT count(*) FROM mcp_call_audit")
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
read -r d1 dp50a dp99a dbad1 _ dmax1 < <(run_wrk "$DIRECT_URL" "$FX_KEY" "$DSID" blob)
if [ -n "${PERF_OUT:-}" ]; then
    # Profile `awooop up` during the first gateway run (software clock: no hardware counters
    # needed). Read it with `perf report -i $PERF_OUT --no-children --sort dso,symbol`.
    # PERF_SYSTEM=1: the whole machine instead (wrk, the fixture, PostgreSQL too; read it
    # with `--sort comm` for where the CPU goes between the processes).
    if [ -n "${PERF_SYSTEM:-}" ]; then target=(-a); else target=(-p "$UP_PID"); fi
    perf record -q -e cpu-clock -F 999 -g -o "$PERF_OUT" "${target[@]}" 2>/dev/null &
    PERF_PID=$!
fi
if [ -n "${PERF_STAT:-}" ]; then
    # Event counts of `awooop up` during the first gateway run, e.g.
    # PERF_STAT=context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait
    perf stat -x, -e "$PERF_STAT" -o "$WORK/perf-stat.csv" -p "$UP_PID" 2>/dev/null &
    STAT_PID=$!
fi
# CPU time of `awooop up` (user + system, clock ticks) across both gateway runs: its cost per
# call, which a busy or slower machine changes less than the rates.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$UP_PID/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$UP_PID/stat"; }
CPU_BEFORE=$(cpu_ticks)
SYS_BEFORE=$(sys_ticks)
read -r g1 gp50a gp99a gbad1 gn1 gmax1 < <(run_wrk "$GW_URL" "Bearer $TOKEN" "$GSID" fx__blob)
if [ -n "${PERF_PID:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
if [ -n "${STAT_PID:-}" ]; then
    kill -INT "$STAT_PID"; wait "$STAT_PID" || true
    awk -F, -v n="$gn1" '$1 ~ /^[0-9]+$/ { printf "perf stat: %s %.2f per call (%d in %d calls)\n", $3, $1 / n, $1, n }' "$WORK/perf-stat.csv" >&2
fi
read -r g2 gp50b gp99b gbad2 gn2 gmax2 < <(run_wrk "$GW_URL" "Bearer $TOKEN" "$GSID" fx__blob)
CPU_AFTER=$(cpu_ticks)
SYS_AFTER=$(sys_ticks)
read -r d2 dp50b dp99b dbad2 _ dmax2 < <(run_wrk "$DIRECT_URL" "$FX_KEY" "$DSID" blob)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
NGINX_FIELDS=""
if [ -n "${NGINX:-}" ]; then
    # nginx's own CPU per call (master and workers, user + system): the same measure as
    # up_cpu_us_per_call, for the proxy that does nothing but the hop.
    nginx_ticks() {
        local master t=0 p
        master=$(cat "$WORK/nginx/nginx.pid")
        for p in "$master" $(pgrep -P "$master"); do
            t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
        done
        echo "$t"
    }
    NGINX_CPU_BEFORE=$(nginx_ticks)
    read -r n1 np50a np99a nbad1 nn1 _ < <(run_wrk "$NGINX_URL" "$FX_KEY" "$NSID" blob)
    read -r n2 np50b np99b nbad2 nn2 _ < <(run_wrk "$NGINX_URL" "$FX_KEY" "$NSID" blob)
    NGINX_CPU_AFTER=$(nginx_ticks)
    echo "nginx:   $n1 / $n2 req/s, p50 $np50a / $np50b ms, p99 $np99a / $np99b ms, bad $nbad1 / $nbad2" >&2
    [ "$((nbad1 + nbad2))" -eq 0 ] || { echo "error: bad responses through nginx" >&2; exit 1; }
    NGINX_FIELDS=$(awk -v n1="$n1" -v n2="$n2" -v d1="$d1" -v d2="$d2" -v a="$np50a" -v b="$np50b" -v c="$np99a" -v e="$np99b" \
        -v ticks="$((NGINX_CPU_AFTER - NGINX_CPU_BEFORE))" -v hz="$(getconf CLK_TCK)" -v calls="$((nn1 + nn2))" \
        'BEGIN { printf " nginx_rps=%.0f nginx_ratio=%.2f nginx_p50_ms=%.3f nginx_p99_ms=%.3f nginx_cpu_us_per_call=%.0f", (n1 + n2) / 2, (n1 + n2) / (d1 + d2), (a + b) / 2, (c + e) / 2, ticks / hz * 1e6 / calls }')
fi

# IDLE_PROBE="0.5 2 7": after the runs, for each pause (seconds), sleep, then time one gateway
# call (curl, a new connection) and one more right after it: what the first call after a quiet
# spell costs (expired snapshot, idle pool connections, parked threads) against a warm one. The
# same pauses then probe the fixture directly (idle_direct_*): the part of a first call's cost
# that is this machine's and the fixture's, not the gateway's.
IDLE_FIELDS=""
if [ -n "${IDLE_PROBE:-}" ]; then
    call_ms() { # url, authorization, session, tool
        curl -fsS -o /dev/null -w '%{time_total}\n' "$1" -H "authorization: $2" "${EXTRA_H[@]}" \
            -H "mcp-session-id: $3" -H 'mcp-protocol-version: 2025-11-25' \
            -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
            -d "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"$4\",\"arguments\":{\"size\":$SIZE}}}" |
            awk '{printf "%.1f", $1 * 1000}'
    }
    probe() { # url, authorization, session, tool: "firsts warms"
        local firsts="" warms=""
        for pause in $IDLE_PROBE; do
            sleep "$pause"
            firsts="$firsts,$(call_ms "$@")"
            warms="$warms,$(call_ms "$@")"
        done
        echo "${firsts#,} ${warms#,}"
    }
    read -r gfirsts gwarms < <(probe "$GW_URL" "Bearer $TOKEN" "$GSID" fx__blob)
    read -r dfirsts dwarms < <(probe "$DIRECT_URL" "$FX_KEY" "$DSID" blob)
    IDLE_FIELDS=" idle_s=$(echo "$IDLE_PROBE" | tr ' ' ,) idle_first_ms=$gfirsts idle_warm_ms=$gwarms idle_direct_first_ms=$dfirsts idle_direct_warm_ms=$dwarms"
fi

# Every gateway call must be audited: wait for the batched writer, then count.
sleep 1
after=$(psql -qtA "$DATABASE_URL" -c "SELECT count(*) FROM mcp_call_audit")

echo "direct:  $d1 / $d2 req/s, p50 $dp50a / $dp50b ms, p99 $dp99a / $dp99b ms, max $dmax1 / $dmax2 ms, bad $dbad1 / $dbad2" >&2
echo "gateway: $g1 / $g2 req/s, p50 $gp50a / $gp50b ms, p99 $gp99a / $gp99b ms, max $gmax1 / $gmax2 ms, bad $gbad1 / $gbad2" >&2
echo "gateway requests completed: $((gn1 + gn2)); audit rows written meanwhile: $((after - before)) (wrk may leave calls in flight at its end: rows >= requests); load $LOAD_BEFORE -> $LOAD_AFTER" >&2
bad=$((dbad1 + dbad2 + gbad1 + gbad2))
awk -v d1="$d1" -v d2="$d2" -v g1="$g1" -v g2="$g2" \
    -v dp50="$dp50a" -v dp50b="$dp50b" -v dp99="$dp99a" -v dp99b="$dp99b" \
    -v gp50="$gp50a" -v gp50b="$gp50b" -v gp99="$gp99a" -v gp99b="$gp99b" \
    -v dmax1="$dmax1" -v dmax2="$dmax2" -v gmax1="$gmax1" -v gmax2="$gmax2" \
    -v rows="$((after - before))" -v bad="$bad" -v size="$SIZE" -v load1="${LOAD_BEFORE%% *}" -v extra="$NGINX_FIELDS$IDLE_FIELDS" \
    -v ticks="$((CPU_AFTER - CPU_BEFORE))" -v systicks="$((SYS_AFTER - SYS_BEFORE))" -v hz="$(getconf CLK_TCK)" -v calls="$((gn1 + gn2))" 'BEGIN {
  d = (d1 + d2) / 2; g = (g1 + g2) / 2
  printf "size=%d direct_rps=%.0f gateway_rps=%.0f ratio=%.2f direct_p50_ms=%.3f direct_p99_ms=%.3f direct_max_ms=%.3f gateway_p50_ms=%.3f gateway_p99_ms=%.3f gateway_max_ms=%.3f up_cpu_us_per_call=%.0f up_sys_share=%.2f audit_rows=%d bad=%d load1=%s%s\n",
    size, d, g, g / d, (dp50 + dp50b) / 2, (dp99 + dp99b) / 2, (dmax1 > dmax2 ? dmax1 : dmax2), (gp50 + gp50b) / 2, (gp99 + gp99b) / 2, (gmax1 > gmax2 ? gmax1 : gmax2), ticks * 1e6 / hz / calls, systicks / ticks, rows, bad, load1, extra
}'
[ "$bad" -eq 0 ] || { echo "error: $bad responses were not successful results" >&2; exit 1; }
[ "$((after - before))" -ge "$((gn1 + gn2))" ] || { echo "error: fewer audit rows than gateway calls" >&2; exit 1; }
