// Drives the web console in a real headless Chromium (Debian's `chromium`, through
// playwright-core; no browser download). Run by tests/integration/console.rs against a real
// `awooop up`; every check throws on failure (exit 1, message on stderr).
//
// Environment:
//   CONSOLE_URL        http://127.0.0.1:PORT of the server
//   KEY_A, KEY_B       API keys of projects alpha and beta
//   RUN_WAIT           a run of alpha waiting for approval
//   RUN_DENIED         a run of alpha that a gateway gate refused
//   DENIED_AGENT       the agent whose runs are denied (a new run is started to see it appear)
//   AWOOOP_TEST_CONSOLE_NODE_MODULES  node_modules holding playwright-core
//   AWOOOP_TEST_CHROMIUM              the browser (default /usr/bin/chromium)
//   CONSOLE_SHOTS      optional: a folder to write PNG screenshots of the main pages into
import { createRequire } from "node:module";
import path from "node:path";
import fs from "node:fs";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(path.join(env("AWOOOP_TEST_CONSOLE_NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");

const base = env("CONSOLE_URL");
const [keyA, keyB] = [env("KEY_A"), env("KEY_B")];
const [runWait, runDenied, deniedAgent] = [env("RUN_WAIT"), env("RUN_DENIED"), env("DENIED_AGENT")];
const shots = process.env.CONSOLE_SHOTS;
if (shots) fs.mkdirSync(shots, { recursive: true });

const step = (s) => console.error(`console.mjs: ${s}`);
const assert = (cond, msg) => {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
};
const T = { timeout: 15000 };

const browser = await chromium.launch({
  executablePath: process.env.AWOOOP_TEST_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
// Every page records CSP violations and script errors; the run fails if there is any.
const problems = [];
async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  return page;
}
async function shot(page, name) {
  if (shots) await page.screenshot({ path: path.join(shots, `${name}.png`) });
}
async function signIn(page, token) {
  await page.fill("#token", token);
  await page.click("#sign-in");
}
// In-page navigation (hash routes): the in-memory session survives, as it does for a user
// clicking links; a reload would sign out.
async function go(page, route) {
  await page.evaluate((h) => {
    location.hash = h;
  }, route);
}
async function api(method, p, token, body) {
  const r = await fetch(base + p, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

try {
  // --- The page and its headers --------------------------------------------------------
  const a = await newPage();
  const resp = await a.goto(`${base}/console`);
  assert(resp.status() === 200, `GET /console answered ${resp.status()}`);
  const csp = resp.headers()["content-security-policy"] ?? "";
  for (const d of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
    assert(csp.includes(d), `CSP lacks ${d}: ${csp}`);
  }
  assert(!csp.includes("unsafe-inline") && !csp.includes("unsafe-eval"), `CSP allows unsafe code: ${csp}`);
  await shot(a, "sign-in");

  // --- Sign in: a wrong key is refused with its code, the right one is kept in memory only
  step("sign in");
  await signIn(a, "awk.alpha.nope.nope");
  await a.waitForSelector('.error[data-code="E-AUTH-002"]', T);
  await signIn(a, keyA);
  await a.waitForSelector("#who:has-text('project alpha')", T);
  const stored = await a.evaluate(() => ({
    local: localStorage.length,
    session: sessionStorage.length,
    cookie: document.cookie,
  }));
  assert(stored.local === 0 && stored.session === 0 && stored.cookie === "", `credential stored: ${JSON.stringify(stored)}`);

  // --- Runs: filter by state ------------------------------------------------------------
  step("runs list and filter");
  await a.waitForSelector(`tr[data-run="${runWait}"]`, T);
  await a.waitForSelector(`tr[data-run="${runDenied}"]`, T);
  await a.selectOption("#state-filter", "waiting_approval");
  await a.waitForSelector(`tr[data-run="${runDenied}"]`, { state: "detached", timeout: 15000 });
  assert(await a.isVisible(`tr[data-run="${runWait}"]`), "the waiting run is filtered out");
  await shot(a, "runs");

  // --- Follow a run: page A shows it waiting, page B approves it, page A turns succeeded
  // without a reload (the timeline polls while the run is live).
  step("follow a run to completion");
  await go(a, `#/runs/${runWait}`);
  await a.waitForSelector('#run-state[data-state="waiting_approval"]', T);
  const trace = (await a.textContent("#trace-id")).trim();
  assert(/^[0-9a-f]{32}$/.test(trace), `trace id ${trace}`);

  const b = await newPage();
  await b.goto(`${base}/console#/approvals`);
  await signIn(b, keyA);
  await b.waitForSelector(`article.approval[data-run="${runWait}"]`, T);
  await shot(b, "approvals");
  await b.click(`article.approval[data-run="${runWait}"] button.approve`);
  await b.waitForSelector(".notice:has-text('approved run')", T);
  await b.waitForSelector(`article.approval[data-run="${runWait}"]`, { state: "detached", timeout: 15000 });

  await a.waitForSelector('#run-state[data-state="succeeded"]', { timeout: 30000 });
  await a.waitForSelector("tr.ev-approval:has-text('run.approve')", T);
  await a.waitForSelector("tr.ev-step:has-text('wait_approval')", T);
  await shot(a, "run-timeline");

  // --- A denial appears on the gateway page while it is open --------------------------
  step("a denial appears");
  await go(a, `#/gateway`);
  const row = "tr.denial";
  await a.waitForSelector(row, T);
  const before = Number(await a.textContent(`${row} td:nth-child(2)`));
  const code = await a.getAttribute(row, "data-code");
  assert(code && code.startsWith("E-"), `denial code ${code}`);
  const created = await api("POST", "/v1/platform/runs", keyA, { agent: deniedAgent, input: {} });
  assert(created.status === 202, `run create ${created.status} ${JSON.stringify(created.body)}`);
  await a.waitForFunction(
    ([sel, n]) => Number(document.querySelector(`${sel} td:nth-child(2)`)?.textContent) > n,
    [`${row}[data-code="${code}"]`, before],
    { timeout: 30000 },
  );
  await shot(a, "gateway");

  // --- Contracts: approve and activate the pending revision of triage ------------------
  step("approve and activate a contract revision");
  await go(a, "#/contracts/agent/triage");
  await a.waitForSelector("td:has-text('0/1')", T);
  await shot(a, "contract");
  await a.click("button:has-text('Approve')");
  await a.waitForSelector(".notice:has-text('approved r2')", T);
  await a.waitForSelector("td:has-text('1/1 (alice)')", T);
  await a.click("button:has-text('Activate')");
  await a.waitForSelector(".notice:has-text('activated r2')", T);
  await a.waitForSelector("tr.current:has-text('r2')", T);
  await a.check("input.from-r1");
  await a.check("input.to-r2");
  await a.click("#show-diff");
  await a.waitForSelector("pre.diff:has-text('Triage v2')", T);

  for (const p of ["contracts", "projects", "budgets", "channels"]) {
    await go(a, `#/${p}`);
    await a.waitForSelector("main h2", T);
    if (p === "projects") await a.waitForSelector("#mode:has-text('shadow')", T);
    if (p === "contracts") await a.waitForSelector("a:has-text('triage')", T);
    await a.waitForTimeout(300);
    await shot(a, p);
  }

  // --- Cross-tenant: a key of beta sees none of alpha ----------------------------------
  step("cross-tenant");
  const c = await newPage();
  await c.goto(`${base}/console#/runs`);
  await signIn(c, keyB);
  await c.waitForSelector("#who:has-text('project beta')", T);
  await c.waitForSelector("td:has-text('no run matches')", T);
  assert((await c.$(`tr[data-run="${runWait}"]`)) === null, "beta sees alpha's run in the list");
  await go(c, `#/runs/${runWait}`);
  await c.waitForSelector('.error[data-code="E-RUN-001"]', T);
  await go(c, `#/gateway`);
  await c.waitForSelector("td:has-text('no denial')", T);
  await go(c, `#/contracts`);
  await c.waitForSelector("td:has-text('no contract published yet')", T);

  assert(problems.length === 0, `browser errors: ${problems.join(" | ")}`);
  console.log(JSON.stringify({ ok: true, trace, denial_code: code }));
} finally {
  await browser.close();
}
