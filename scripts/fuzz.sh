#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time: `redactor` (the redaction engine) and
# `request_parsing` (JSON-RPC and HTTP request parsing, credential parsers). Their bodies live
# in operator/src/fuzz_targets.rs; fuzz/ holds the cargo-fuzz (libFuzzer) wrappers.
#
#   scripts/fuzz.sh                     # each target FUZZ_SECONDS (default 60) with libFuzzer
#   FUZZ_ENGINE=stable scripts/fuzz.sh  # the stable seeded harness only
#
# Engine: libFuzzer through `cargo +nightly fuzz run` when a nightly toolchain is installed
# (cargo-fuzz is installed with `cargo install --locked` when missing); a crash fails the
# script and leaves the input in fuzz/artifacts/<target>/. Without nightly (cargo-fuzz needs
# `-Z` flags), or with FUZZ_ENGINE=stable, the same target bodies run on stable Rust through a
# seeded pseudo-random harness (`cargo test --lib fuzz_targets`, AWOOOP_FUZZ_ITERATIONS inputs
# per target, default 20000), so CI always exercises them.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
TARGETS=(redactor request_parsing)

stable() {
  echo "fuzz: stable seeded harness (${AWOOOP_FUZZ_ITERATIONS:-20000} inputs per target)" >&2
  AWOOOP_FUZZ_ITERATIONS="${AWOOOP_FUZZ_ITERATIONS:-20000}" \
    cargo test --locked --lib -p awooop fuzz_targets -- --nocapture
}

if [ "${FUZZ_ENGINE:-auto}" = stable ] || ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  stable
  exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

for t in "${TARGETS[@]}"; do
  echo "fuzz: libFuzzer, target $t, ${SECONDS_PER_TARGET}s" >&2
  mkdir -p "fuzz/corpus/$t"
  # -s none: no sanitizer (safe Rust; libFuzzer's own crash detection is enough), which also
  # keeps the instrumented build of the whole crate affordable.
  cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=4096
done
