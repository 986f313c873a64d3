import { get } from "../api";
import { Badge, ErrorBox, Loading, Table, When, usePoll } from "../ui";

export function Gateway() {
  // Live: new calls and denials appear within three seconds.
  const { data, error } = usePoll(() => get("/v1/platform/gateway"), [], 3000);
  if (!data) return <section><h2>Gateway</h2><ErrorBox error={error} />{!error && <Loading what="gateway" />}</section>;
  const providers = [...new Set<string>(data.tools.map((t: any) => t.provider))];
  return (
    <section>
      <h2>Gateway</h2>
      <ErrorBox error={error} />
      <h3>Tools by provider</h3>
      {providers.length === 0 && <p class="muted">No MCP gateway contract is active.</p>}
      {providers.map((p) => (
        <div key={p}>
          <h4>{p}</h4>
          <Table head={["Tool", "Upstream", "Risk", "Approval", "Enabled", "Environments", "Granted to"]}>
            {data.tools
              .filter((t: any) => t.provider === p)
              .map((t: any) => (
                <tr key={t.exposed_name}>
                  <td class="mono">{t.exposed_name}</td>
                  <td>{t.upstream_name}</td>
                  <td><Badge value={t.risk} /></td>
                  <td>{t.requires_approval ? "required" : "—"}</td>
                  <td>{t.enabled ? "yes" : "no"}</td>
                  <td>{t.environments.join(", ")}</td>
                  <td>{t.grants.map((g: any) => `${g.agent} (${g.environments.join(", ")})`).join("; ") || "nobody"}</td>
                </tr>
              ))}
          </Table>
        </div>
      ))}
      <h3>Denials by code</h3>
      <Table head={["Code", "Count", "Last"]} empty="no denial">
        {data.denials_by_code.map((d: any) => (
          <tr key={d.code} class="denial" data-code={d.code}>
            <td class="mono">{d.code}</td>
            <td>{d.count}</td>
            <td><When at={d.last_at} /></td>
          </tr>
        ))}
      </Table>
      <h3>Recent calls</h3>
      <Table head={["When", "Agent", "Tool", "Decision", "Code", "Result", "Latency", "Run"]} empty="no call yet">
        {data.recent_calls.map((c: any) => (
          <tr key={c.call_id}>
            <td><When at={c.at} /></td>
            <td>{c.agent}</td>
            <td class="mono">{c.tool}</td>
            <td><Badge value={c.decision} /></td>
            <td class="mono">{c.code ?? ""}</td>
            <td>{c.result_status}</td>
            <td>{Math.round(c.latency_us / 1000)} ms</td>
            <td>{c.run_id ? <a href={`#/runs/${c.run_id}`}>run</a> : "—"}</td>
          </tr>
        ))}
      </Table>
    </section>
  );
}
