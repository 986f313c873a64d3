import { useState } from "preact/hooks";
import { get } from "../api";
import { Badge, ErrorBox, Json, Loading, Table, When, micros, terminal, usePoll } from "../ui";

const STATES = ["", "queued", "running", "waiting_approval", "retrying", "succeeded", "failed", "cancelled", "timed_out"];

export function Runs() {
  const [state, setState] = useState("");
  const [agent, setAgent] = useState("");
  const q = new URLSearchParams({ limit: "50" });
  if (state) q.set("state", state);
  if (agent.trim()) q.set("agent", agent.trim());
  const qs = q.toString();
  // Live: the list refreshes every two seconds.
  const { data, error } = usePoll(() => get(`/v1/platform/runs?${qs}`), [qs], 2000);
  return (
    <section>
      <h2>Runs</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          State{" "}
          <select id="state-filter" value={state} onChange={(e) => setState((e.target as HTMLSelectElement).value)}>
            {STATES.map((s) => (
              <option key={s} value={s}>
                {s || "any"}
              </option>
            ))}
          </select>
        </label>
        <label>
          Agent <input id="agent-filter" value={agent} onInput={(e) => setAgent((e.target as HTMLInputElement).value)} />
        </label>
      </form>
      <ErrorBox error={error} />
      {!data ? (
        <Loading what="runs" />
      ) : (
        <Table head={["Run", "Agent", "State", "Mode", "Created", "Finished", "Error"]} empty="no run matches">
          {data.runs.map((r: any) => (
            <tr key={r.run_id} data-run={r.run_id}>
              <td class="mono">
                <a href={`#/runs/${r.run_id}`}>{r.run_id}</a>
              </td>
              <td>{r.agent}</td>
              <td><Badge value={r.state} /></td>
              <td>{r.mode}</td>
              <td><When at={r.created_at} /></td>
              <td><When at={r.finished_at} /></td>
              <td>{r.error_code ?? ""}</td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  );
}

function Detail({ e }: { e: any }) {
  const d = e.detail ?? {};
  switch (e.kind) {
    case "model":
      return (
        <span>
          {d.tokens ?? d.reserved_tokens} tokens, {micros(d.cost_micros)} ({d.state})
        </span>
      );
    case "tool":
      return (
        <span>
          <Badge value={d.decision} /> {d.code ?? ""} {d.result} {d.latency_us !== undefined ? `${Math.round(d.latency_us / 1000)} ms` : ""}
        </span>
      );
    case "step":
      return (
        <details>
          <summary>
            <Badge value={d.status} /> {d.error_code ?? ""}
          </summary>
          <Json value={d.output} />
        </details>
      );
    default:
      return (
        <details>
          <summary>details</summary>
          <Json value={d} />
        </details>
      );
  }
}

export function Run({ id }: { id: string }) {
  const [done, setDone] = useState(false);
  // Live while the run is not finished: poll every second, then stop.
  const { data, error } = usePoll(
    async () => {
      const t = await get(`/v1/platform/runs/${encodeURIComponent(id)}/timeline`);
      if (terminal(t.state)) setDone(true);
      return t;
    },
    [id, done],
    done ? 0 : 1000,
  );
  return (
    <section>
      <h2>
        Run <span class="mono">{id}</span>
      </h2>
      <ErrorBox error={error} />
      {!data ? (
        !error && <Loading what="run" />
      ) : (
        <>
          <dl class="facts">
            <dt>State</dt>
            <dd id="run-state" data-state={data.state}>
              <Badge value={data.state} /> {!terminal(data.state) && <span class="live">live</span>}
            </dd>
            <dt>Agent</dt>
            <dd>{data.agent}</dd>
            <dt>Mode</dt>
            <dd>{data.mode}</dd>
            <dt>Trace id</dt>
            <dd class="mono" id="trace-id">{data.trace_id}</dd>
            <dt>Created</dt>
            <dd><When at={data.created_at} /></dd>
            <dt>Finished</dt>
            <dd><When at={data.finished_at} /></dd>
          </dl>
          <h3>Timeline</h3>
          <Table head={["When", "Kind", "What", "Detail"]}>
            {data.events.map((e: any, i: number) => (
              <tr key={i} class={`ev ev-${e.kind}`}>
                <td><When at={e.at} /></td>
                <td><Badge value={e.kind} /></td>
                <td>{e.title}</td>
                <td><Detail e={e} /></td>
              </tr>
            ))}
          </Table>
          {data.output && (
            <>
              <h3>Output</h3>
              <Json value={data.output} />
            </>
          )}
        </>
      )}
    </section>
  );
}
