#!/usr/bin/env bash
# Before/after figures of the workspace split (issue 10), measured in the same minutes:
#   1. release benchmarks `awooop bench contracts|runs|gateway --quick`, old and new binary
#      alternated, ROUNDS rounds;
#   2. compile time of a one-line change in the gateway's service code (`cargo build --bin
#      awooop`) and of the pure unit tests (`cargo test --lib` of the old crate vs `cargo test
#      -p awooop-core --lib`), old and new alternated, RUNS runs each (report the median).
# Each figure line carries the 1-minute load average before and after it, because on a shared
# machine the load decides the figure more than the code does.
#
# Usage (from anywhere; nothing is written inside this worktree):
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379 \
#     scripts/split-figures.sh [PRE_COMMIT] [NOW_COMMIT]
# Defaults: 060b128 (the last commit before "Split into a workspace of crates, step 1") and HEAD.
# Work directories (override with WORK=…): $WORK/pre-split, $WORK/now-split (detached git
# worktrees, never committed to), target dirs $WORK/target-{pre,now}-{rel,dbg}.
# Steps can be skipped: SKIP_BENCH=1, SKIP_COMPILE=1.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PRE=${1:-060b128}
NOW=${2:-$(git -C "$repo" rev-parse HEAD)}
WORK=${WORK:-/work}
ROUNDS=${ROUNDS:-2}
RUNS=${RUNS:-3}
out=${OUT:-$WORK/split-figures.txt}
: "${DATABASE_URL:?set DATABASE_URL}" "${REDIS_URL:?set REDIS_URL}"
export RUST_LOG=error

load() { cut -d' ' -f1 /proc/loadavg; }
log() { echo "$*" | tee -a "$out"; }

worktree() { # dir commit
  [ -d "$1" ] || git -C "$repo" worktree add --detach "$1" "$2" >/dev/null
}
worktree "$WORK/pre-split" "$PRE"
worktree "$WORK/now-split" "$NOW"
log "# $(date -u) pre=$PRE now=$NOW nproc=$(nproc) $(uptime)"

if [ -z "${SKIP_BENCH:-}" ]; then
  # Before the split there was no `bench` feature: the benchmarks were in the default binary.
  (cd "$WORK/pre-split" && CARGO_TARGET_DIR=$WORK/target-pre-rel nice cargo build --release --locked --bin awooop)
  (cd "$WORK/now-split" && CARGO_TARGET_DIR=$WORK/target-now-rel nice cargo build --release --locked --features bench --bin awooop)
  for r in $(seq 1 "$ROUNDS"); do
    for b in contracts runs gateway; do
      for side in pre now; do
        l0=$(load)
        last=$("$WORK/target-$side-rel/release/awooop" bench "$b" --quick 2>/dev/null | tail -1)
        log "bench $b $side round=$r load=$l0->$(load) | $last"
      done
    done
  done
fi

if [ -z "${SKIP_COMPILE:-}" ]; then
  pre_gw=$WORK/pre-split/operator/src/gateway/service.rs
  now_gw=$WORK/now-split/operator/gateway/src/service.rs
  pre_rs=$WORK/pre-split/operator/src/runtime/state.rs
  now_rs=$WORK/now-split/operator/core/src/run_state.rs
  timed() { # label dir target-dir command…
    local label=$1 dir=$2 tgt=$3 l0 s
    shift 3
    l0=$(load)
    s=$(date +%s.%N)
    (cd "$dir" && CARGO_TARGET_DIR=$tgt nice "$@" >/dev/null 2>&1)
    log "$label $(echo "$(date +%s.%N) - $s" | bc) s load=$l0->$(load)"
  }
  # Warm both target dirs first (not timed).
  (cd "$WORK/pre-split" && CARGO_TARGET_DIR=$WORK/target-pre-dbg nice cargo build --locked --bin awooop && CARGO_TARGET_DIR=$WORK/target-pre-dbg nice cargo test --locked --lib --no-run)
  (cd "$WORK/now-split" && CARGO_TARGET_DIR=$WORK/target-now-dbg nice cargo build --locked --bin awooop && CARGO_TARGET_DIR=$WORK/target-now-dbg nice cargo test --locked -p awooop-core --lib --no-run)
  # Gateway runs first: a core edit would make the next gateway build rebuild everything.
  for i in $(seq 1 "$RUNS"); do
    sed -i "s/\"upstream timed out[^\"]*\"/\"upstream timed out $i\"/" "$pre_gw"
    timed "gateway-one-line pre run=$i" "$WORK/pre-split" "$WORK/target-pre-dbg" cargo build --locked --bin awooop
    sed -i "s/\"upstream timed out[^\"]*\"/\"upstream timed out $i\"/" "$now_gw"
    timed "gateway-one-line now run=$i" "$WORK/now-split" "$WORK/target-now-dbg" cargo build --locked --bin awooop
  done
  for i in $(seq 1 "$RUNS"); do
    sed -i "s/\"unknown run state[^\"]*\"/\"unknown run state $i\"/" "$pre_rs"
    timed "unit-tests-one-line pre run=$i" "$WORK/pre-split" "$WORK/target-pre-dbg" cargo test --locked --lib --no-run
    sed -i "s/\"unknown run state[^\"]*\"/\"unknown run state $i\"/" "$now_rs"
    timed "unit-tests-one-line now run=$i" "$WORK/now-split" "$WORK/target-now-dbg" cargo test --locked -p awooop-core --lib --no-run
  done
  git -C "$WORK/pre-split" checkout -- .
  git -C "$WORK/now-split" checkout -- .
fi
log "# done $(date -u) $(uptime)"
