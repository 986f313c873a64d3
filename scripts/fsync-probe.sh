#!/usr/bin/env bash
# The tail of the disk's flush latency under PostgreSQL's data directory (docs/benchmarks.md,
# "channels (session 8)"). A webhook is answered only after its COMMIT's WAL flush, so one slow
# fdatasync delays every answer waiting behind it: on a disk whose flushes stall for hundreds of
# milliseconds now and then, `answer_p99_ms` of `awooop bench channels` measures the disk.
#
#   scripts/fsync-probe.sh [SECONDS] [DIR]   (default: 10, PostgreSQL's data directory or /tmp)
#
# Writes 8 KiB and calls fdatasync every 2 ms, like a lightly loaded WAL; prints one key=value line.
set -euo pipefail
secs=${1:-10}
dir=${2:-$(psql "${PGURL:-postgres://postgres@127.0.0.1:5432}/postgres" -Atc 'SHOW data_directory' 2>/dev/null || echo /tmp)}
[ -w "$dir" ] || dir=/tmp
python3 - "$secs" "$dir" <<'PY'
import os, sys, time
secs, d = float(sys.argv[1]), sys.argv[2]
fn = os.path.join(d, f"awooop_fsync_probe_{os.getpid()}.tmp")
fd = os.open(fn, os.O_WRONLY | os.O_CREAT, 0o600)
lat, buf, i, end = [], b"x" * 8192, 0, time.time() + secs
try:
    while time.time() < end:
        os.pwrite(fd, buf, (i % 128) * 8192)
        i += 1
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        time.sleep(0.002)
finally:
    os.close(fd)
    os.unlink(fn)
lat.sort()
n = len(lat)
q = lambda p: lat[min(n - 1, int(n * p))] * 1e3
print(f"dir={d} flushes={n} p50_ms={q(.5):.3f} p99_ms={q(.99):.3f} p999_ms={q(.999):.3f} "
      f"max_ms={lat[-1]*1e3:.1f} over_10ms={sum(x > .01 for x in lat)} over_100ms={sum(x > .1 for x in lat)}")
PY
