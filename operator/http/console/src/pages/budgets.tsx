import { get } from "../api";
import { Badge, ErrorBox, Loading, Meter, Table, When, micros, usePoll } from "../ui";

export function Budgets() {
  const { data, error } = usePoll(() => get("/v1/platform/budgets"), [], 5000);
  return (
    <section>
      <h2>Budgets</h2>
      <ErrorBox error={error} />
      {!data ? (
        !error && <Loading what="budgets" />
      ) : (
        <>
          <h3>Spend against limits</h3>
          <Table head={["Scope", "Period", "Tokens (spent + reserved)", "Cost", "Tripped"]} empty="no model call yet">
            {data.ledger.map((l: any) => (
              <tr key={`${l.scope}/${l.period_start}`}>
                <td>{l.scope}</td>
                <td>
                  {l.period} from <When at={l.period_start} />
                </td>
                <td><Meter used={l.spent_tokens + l.reserved_tokens} limit={l.token_limit} /></td>
                <td>
                  {micros(l.spent_micros)}
                  {l.currency_limit_micros !== null ? ` of ${micros(l.currency_limit_micros)}` : ""}
                </td>
                <td>{l.tripped_at ? <When at={l.tripped_at} /> : "—"}</td>
              </tr>
            ))}
          </Table>
          <h3>Breakers</h3>
          <Table head={["Breaker", "State", "Failures", "Open until", "Reason"]} empty="no breaker has tripped">
            {data.breakers.map((b: any) => (
              <tr key={b.breaker}>
                <td>{b.breaker}</td>
                <td><Badge value={b.open ? "open" : "closed"} /></td>
                <td>{b.failures}</td>
                <td><When at={b.open_until} /></td>
                <td>{b.reason ?? ""}</td>
              </tr>
            ))}
          </Table>
          <h3>Recent model calls</h3>
          <Table head={["When", "Agent", "Model", "State", "Tokens", "Cost", "Run"]} empty="no model call yet">
            {data.recent.map((r: any, i: number) => (
              <tr key={i}>
                <td><When at={r.created_at} /></td>
                <td>{r.agent}</td>
                <td>{r.provider}/{r.model}</td>
                <td>{r.state}</td>
                <td>{r.actual_tokens ?? r.reserved_tokens}</td>
                <td>{micros(r.actual_micros)}</td>
                <td>{r.run_id ? <a href={`#/runs/${r.run_id}`}>run</a> : "—"}</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </section>
  );
}
