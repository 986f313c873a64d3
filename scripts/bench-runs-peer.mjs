// The peer figure for `awooop bench runs --peer`: graphile-worker 0.17.3 draining N no-op jobs
// with its documented throughput settings (local queue of 500, batched completion), on a
// scratch database of the same PostgreSQL. Called by scripts/bench-runs-peer.sh, which
// installs the package into .tools/graphile (gitignored).
//
// Timing mirrors ours: from the moment the worker starts until every job's completion has
// COMMITTED (the jobs table is empty), not merely until the task functions returned.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve(process.env.GRAPHILE_DIR, "package.json"));
const { run, runMigrations } = require("graphile-worker");
const pg = require("pg");

const url = process.env.PEER_DATABASE_URL;
const n = Number(process.env.PEER_JOBS || 20000);
const concurrency = Number(process.env.PEER_CONCURRENCY || 10);
const preset = {
  worker: {
    connectionString: url,
    concurrentJobs: concurrency,
    maxPoolSize: concurrency + 2,
    pollInterval: 2000,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
const quiet = () => () => {};
const logger = new (require("graphile-worker").Logger)(quiet);

await runMigrations({ connectionString: url, logger });
const client = new pg.Client({ connectionString: url });
await client.connect();
// The perfTest of graphile-worker's own repository enqueues the same way (one add_job each).
await client.query(
  "select graphile_worker.add_job('noop', json_build_object('id', i)) from generate_series(1, $1::int) i",
  [n],
);
await client.query("analyze graphile_worker._private_jobs");
// Its transport (node-postgres uses TLS only when told to), printed as `peer_tls` for `bench runs --peer`.
const { rows: tls } = await client.query(
  "select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false) as on",
);

let ran = 0;
const start = process.hrtime.bigint();
const runner = await run({ preset, logger, taskList: { noop: async () => { ran++; } } });
for (;;) {
  const { rows } = await client.query("select count(*)::int as c from graphile_worker._private_jobs");
  if (rows[0].c === 0) break;
  if (Number(process.hrtime.bigint() - start) / 1e9 > 120) throw new Error(`timed out, ${rows[0].c} jobs left`);
  await new Promise((r) => setTimeout(r, 5));
}
const secs = Number(process.hrtime.bigint() - start) / 1e9;
await runner.stop();
await client.end();
if (ran !== n) throw new Error(`ran ${ran} of ${n} jobs`);
console.log(`peer=graphile-worker@0.17.3 peer_jobs=${n} peer_concurrency=${concurrency} peer_local_queue=500 peer_tls=${tls[0].on ? "on" : "off"} peer_seconds=${secs.toFixed(3)} peer_jobs_per_sec=${(n / secs).toFixed(0)}`);
