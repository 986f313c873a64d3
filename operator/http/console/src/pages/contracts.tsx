import { useState } from "preact/hooks";
import { get, post } from "../api";
import { ErrorBox, Json, Loading, Table, When, usePoll } from "../ui";

export function Contracts() {
  const { data, error } = usePoll(() => get("/v1/control/contracts"), [], 5000);
  return (
    <section>
      <h2>Contracts</h2>
      <ErrorBox error={error} />
      {!data ? (
        <Loading what="contracts" />
      ) : (
        <Table head={["Kind", "Name", "Active", "Latest", "Awaiting activation", "Activated"]} empty="no contract published yet">
          {data.contracts.map((c: any) => (
            <tr key={`${c.kind}/${c.name}`}>
              <td>{c.kind}</td>
              <td>
                <a href={`#/contracts/${c.kind}/${c.name}`}>{c.name}</a>
              </td>
              <td>{c.active_revision ?? <span class="muted">none</span>}</td>
              <td>{c.latest_revision}</td>
              <td>
                {c.pending.length === 0
                  ? "—"
                  : c.pending.map((p: any) => `r${p.revision}: ${p.approvers.length}/${data.required_approvals}`).join(", ")}
              </td>
              <td>
                <When at={c.activated_at} />
              </td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  );
}

export function Contract({ kind, name }: { kind: string; name: string }) {
  const base = `/v1/control/contracts/${encodeURIComponent(kind)}/${encodeURIComponent(name)}`;
  const history = usePoll(() => get(`${base}/history`), [kind, name]);
  const overview = usePoll(() => get("/v1/control/contracts"), [kind, name]);
  const [from, setFrom] = useState<number | null>(null);
  const [to, setTo] = useState<number | null>(null);
  const [diff, setDiff] = useState<string | null>(null);
  const [body, setBody] = useState<unknown>(null);
  const [error, setError] = useState<Error | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const mine = overview.data?.contracts.find((c: any) => c.kind === kind && c.name === name);
  const required = overview.data?.required_approvals ?? 0;
  const act = async (what: string, fn: () => Promise<unknown>) => {
    setError(null);
    setNotice(null);
    try {
      await fn();
      setNotice(what);
      history.reload();
      overview.reload();
    } catch (e) {
      setError(e as Error);
    }
  };
  const revs: any[] = history.data?.revisions ?? [];
  return (
    <section>
      <h2>
        {kind}/{name}
      </h2>
      <ErrorBox error={history.error || overview.error || error} />
      {notice && <p class="notice" role="status">{notice}</p>}
      <h3>Awaiting activation</h3>
      <Table head={["Revision", "Published", "By", "Approvals", ""]} empty="nothing newer than the active revision">
        {(mine?.pending ?? []).map((p: any) => (
          <tr key={p.revision_id}>
            <td>r{p.revision}</td>
            <td><When at={p.published_at} /></td>
            <td>{p.published_by}</td>
            <td>
              {p.approvers.length}/{required} {p.approvers.length ? `(${p.approvers.join(", ")})` : ""}
            </td>
            <td>
              <div class="actions">
              <button class="small" onClick={() => act(`approved r${p.revision}`, () => post(`/v1/control/revisions/${p.revision_id}/approvals`))}>
                Approve
              </button>
              <button
                class="small primary"
                disabled={p.approvers.length < required}
                onClick={() => act(`activated r${p.revision}`, () => post(`/v1/control/revisions/${p.revision_id}/activate`))}
              >
                Activate
              </button>
              </div>
            </td>
          </tr>
        ))}
      </Table>
      <h3>History</h3>
      {!history.data ? (
        <Loading what="history" />
      ) : (
        <>
          <Table head={["Revision", "Hash", "Published", "By", "Diff from", "to", ""]}>
            {[...revs].reverse().map((r: any) => (
              <tr key={r.revision_id} class={r.revision_id === history.data.active_revision_id ? "current" : ""}>
                <td>
                  r{r.revision} {r.revision_id === history.data.active_revision_id && <b>active</b>}
                </td>
                <td class="mono">{r.body_hash.slice(0, 19)}…</td>
                <td><When at={r.published_at} /></td>
                <td>{r.published_by}</td>
                <td><input type="radio" name="from" class={`from-r${r.revision}`} checked={from === r.revision} onChange={() => setFrom(r.revision)} /></td>
                <td><input type="radio" name="to" class={`to-r${r.revision}`} checked={to === r.revision} onChange={() => setTo(r.revision)} /></td>
                <td>
                  <button class="small" onClick={() => act("", async () => setBody((await get(`${base}/revisions/${r.revision}`)).body))}>
                    body
                  </button>
                </td>
              </tr>
            ))}
          </Table>
          <button
            id="show-diff"
            disabled={from === null || to === null}
            onClick={() => act("", async () => setDiff((await get(`${base}/diff?from=${from}&to=${to}`)).diff))}
          >
            Show diff
          </button>
          {diff !== null && <pre class="diff">{diff || "(no difference)"}</pre>}
          {body !== null && <Json value={body} />}
          <h3>Activations</h3>
          <Table head={["When", "Revision", "Rollback", "Approvers", "By"]}>
            {[...history.data.activations].reverse().map((a: any) => (
              <tr key={a.activation_id}>
                <td><When at={a.activated_at} /></td>
                <td>r{a.revision}</td>
                <td>{a.is_rollback ? "yes" : "no"}</td>
                <td>{(a.approvers ?? []).join(", ")}</td>
                <td>{a.activated_by}</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </section>
  );
}
