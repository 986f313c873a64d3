import { useState } from "preact/hooks";
import { get, post } from "../api";
import { Badge, ErrorBox, Json, Loading, When, usePoll } from "../ui";

// Runs paused in `waiting_approval`, each with what it is waiting for (the waiting step's
// request, redacted by the API) and the tool calls it made so far; approve or reject resumes
// or fails it (`POST /v1/platform/runs/{id}/approval`, approver role).
async function pending() {
  const list = await get("/v1/platform/runs?state=waiting_approval&limit=50");
  return Promise.all(
    list.runs.map(async (r: any) => {
      const t = await get(`/v1/platform/runs/${r.run_id}/timeline`);
      const waiting = [...t.events].reverse().find((e: any) => e.kind === "step" && e.detail?.status === "waiting");
      const tools = t.events.filter((e: any) => e.kind === "tool");
      return { run: r, waiting, tools };
    }),
  );
}

export function Approvals() {
  const { data, error, reload } = usePoll(pending, [], 3000);
  const [notice, setNotice] = useState<string | null>(null);
  const [actError, setActError] = useState<Error | null>(null);
  const decide = async (id: string, approved: boolean) => {
    setActError(null);
    try {
      await post(`/v1/platform/runs/${id}/approval`, { approved });
      setNotice(`${approved ? "approved" : "rejected"} run ${id}`);
      reload();
    } catch (e) {
      setActError(e as Error);
    }
  };
  return (
    <section>
      <h2>Approvals</h2>
      <ErrorBox error={error || actError} />
      {notice && <p class="notice" role="status">{notice}</p>}
      {!data ? (
        <Loading what="pending approvals" />
      ) : data.length === 0 ? (
        <p class="muted" id="no-approvals">Nothing is waiting for approval.</p>
      ) : (
        data.map(({ run, waiting, tools }) => (
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
              <button class="primary approve" onClick={() => decide(run.run_id, true)}>
                Approve
              </button>
              <button class="danger reject" onClick={() => decide(run.run_id, false)}>
                Reject
              </button>
            </div>
          </article>
        ))
      )}
    </section>
  );
}
