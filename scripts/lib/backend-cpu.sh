# shellcheck shell=bash
# Shared by the scripts/profile-*-db.sh style profiles: replay prepared statements from psql
# and read the backend's own CPU time from /proc (the machine's load disturbs it far less than
# wall time). Source it; needs psql and a PostgreSQL on this machine.

# backend_cpu_script N PREP BATCH REPS WORK: print a psql script that prepares PREP, runs BATCH
# seven times (custom plans, then the generic one), then REPS more times between two readings
# of the backend's CPU ticks (into WORK/before and WORK/after). BATCH sees `:n` = N.
backend_cpu_script() {
  local n=$1 prep=$2 batch=$3 reps=$4 work=$5
  echo 'SET client_min_messages = warning;'
  echo 'SELECT pg_backend_pid() AS pid \gset'
  echo '\setenv PID :pid'
  echo "\\set n $n"
  cat "$prep"
  for _ in 1 2 3 4 5 6 7; do cat "$batch"; done
  echo "\\! awk '{print \$14+\$15}' /proc/\$PID/stat > $work/before"
  for _ in $(seq "$reps"); do cat "$batch"; done
  echo "\\! awk '{print \$14+\$15}' /proc/\$PID/stat > $work/after"
}

# backend_cpu_ticks WORK: the backend's CPU ticks between the two readings.
backend_cpu_ticks() {
  echo $(( $(cat "$1/after") - $(cat "$1/before") ))
}
