import { useState } from "preact/hooks";
import { get, post } from "../api";
import { Badge, ErrorBox, Json, Loading, When, usePoll } from "../ui";

// Two kinds of pending decision:
// - tool-call approval requests (`GET /v1/platform/approvals?state=pending`): the call, its
//   arguments redacted (`preview`), the dry-run evidence, M-of-N progress; decided with
//   `POST /v1/platform/approvals/{id}/decisions` (approver role);
// - runs paused at a scripted `wait_approval` step (no request row): the waiting step's
//   request and the tool calls the run made before it; decided with
//   `POST /v1/platform/runs/{id}/approval`.
async function pending() {
  const [requests, runs] = await Promise.all([
    get("/v1/platform/approvals?state=pending&limit=50"),
    get("/v1/platform/runs?state=waiting_approval&limit=50"),
  ]);
  const byRequest = new Set<string>(requests.approvals.map((a: any) => a.run_id));
  const waits = await Promise.all(
    runs.runs
      .filter((r: any) => !byRequest.has(r.run_id))
      .map(async (r: any) => {
        const t = await get(`/v1/platform/runs/${r.run_id}/timeline`);
        const waiting = [...t.events].reverse().find((e: any) => e.kind === "step" && e.detail?.status === "waiting");
        const tools = t.events.filter((e: any) => e.kind === "tool");
        return { run: r, waiting, tools };
      }),
  );
  return { requests: requests.approvals as any[], waits };
}

export function Approvals() {
  const { data, error, reload } = usePoll(pending, [], 3000);
  const [notice, setNotice] = useState<string | null>(null);
  const [actError, setActError] = useState<Error | null>(null);
  const act = async (what: string, fn: () => Promise<unknown>) => {
    setActError(null);
    try {
      await fn();
      setNotice(what);
      reload();
    } catch (e) {
      setActError(e as Error);
    }
  };
  const decideRun = (id: string, approved: boolean) =>
    act(`${approved ? "approved" : "rejected"} run ${id}`, () => post(`/v1/platform/runs/${id}/approval`, { approved }));
  const decideRequest = (id: string, decision: "approve" | "reject") =>
    act(`${decision === "approve" ? "approved" : "rejected"} request ${id}`, () =>
      post(`/v1/platform/approvals/${id}/decisions`, { decision }),
    );
  return (
    <section>
      <h2>Approvals</h2>
      <ErrorBox error={error || actError} />
      {notice && <p class="notice" role="status">{notice}</p>}
      {!data ? (
        <Loading what="pending approvals" />
      ) : data.requests.length + data.waits.length === 0 ? (
        <p class="muted" id="no-approvals">Nothing is waiting for approval.</p>
      ) : (
        <>
          {data.requests.map((q) => (
            <article class="card request" key={q.request_id} data-request={q.request_id} data-run={q.run_id}>
              <h3>
                <span class="mono">{q.tool}</span> for <a href={`#/runs/${q.run_id}`}>{q.agent}</a>{" "}
                <Badge value={q.kind} />
              </h3>
              <p>
                {q.reason} · requested <When at={q.created_at} />, expires <When at={q.expires_at} /> · trace{" "}
                <span class="mono">{q.trace_id}</span>
              </p>
              <h4>Arguments (redacted)</h4>
              <Json value={q.preview} />
              <p class="small muted mono">{q.args_sha256}</p>
              <h4>Dry-run evidence</h4>
              {q.evidence ? <Json value={q.evidence} /> : <p class="muted">none declared for this tool</p>}
              <h4>
                Approvals {(q.decisions ?? []).filter((d: any) => d.decision === "approve").length}/{q.required_approvals}
                {q.approvers?.length ? <span class="muted small"> (eligible: {q.approvers.join(", ")})</span> : null}
              </h4>
              <ul>
                {(q.decisions ?? []).map((d: any, i: number) => (
                  <li key={i}>
                    {d.approver} {d.decision} via {d.via} <When at={d.decided_at} />
                  </li>
                ))}
              </ul>
              <div class="actions">
                <button class="primary approve" onClick={() => decideRequest(q.request_id, "approve")}>
                  Approve
                </button>
                <button class="danger reject" onClick={() => decideRequest(q.request_id, "reject")}>
                  Reject
                </button>
              </div>
            </article>
          ))}
          {data.waits.map(({ run, waiting, tools }) => (
            <article class="card approval" key={run.run_id} data-run={run.run_id}>
              <h3>
                <a href={`#/runs/${run.run_id}`}>{run.agent}</a> <span class="mono small">{run.run_id}</span>
              </h3>
              <p>
                Waiting since <When at={waiting?.at ?? run.created_at} />, mode <Badge value={run.mode} />, trace{" "}
                <span class="mono">{run.trace_id}</span>
              </p>
              <h4>Request</h4>
              <p>
                Step <b>{waiting?.title ?? "?"}</b>
              </p>
              <Json value={waiting?.detail?.output ?? null} />
              <h4>Evidence: tool calls so far</h4>
              {tools.length === 0 ? (
                <p class="muted">none</p>
              ) : (
                <ul>
                  {tools.map((t: any, i: number) => (
                    <li key={i}>
                      {t.title}: <Badge value={t.detail.decision} /> {t.detail.code ?? ""} {t.detail.result}
                    </li>
                  ))}
                </ul>
              )}
              <div class="actions">
                <button class="primary approve" onClick={() => decideRun(run.run_id, true)}>
                  Approve
                </button>
                <button class="danger reject" onClick={() => decideRun(run.run_id, false)}>
                  Reject
                </button>
              </div>
            </article>
          ))}
        </>
      )}
    </section>
  );
}
