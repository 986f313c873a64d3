import { get } from "../api";
import { Badge, ErrorBox, Loading, Table, When, usePoll } from "../ui";

export function Channels() {
  const { data, error } = usePoll(() => get("/v1/platform/channels"), [], 5000);
  return (
    <section>
      <h2>Channels</h2>
      <ErrorBox error={error} />
      {!data ? (
        !error && <Loading what="channels" />
      ) : (
        <>
          <h3>Inbound events</h3>
          <Table head={["When", "Channel", "Provider", "Conversation", "Kind", "Text", "Run"]} empty="no event yet">
            {data.events.map((e: any) => (
              <tr key={e.event_id}>
                <td><When at={e.received_at} /></td>
                <td>{e.channel}</td>
                <td>{e.provider}</td>
                <td>{e.conversation}</td>
                <td>{e.kind}</td>
                <td class="clip">{e.text ?? ""}</td>
                <td>{e.run_id ? <a href={`#/runs/${e.run_id}`}>run</a> : "—"}</td>
              </tr>
            ))}
          </Table>
          <h3>Deliveries</h3>
          <Table head={["When", "Channel", "Status", "Attempt", "Part", "HTTP", "Code", "Latency"]} empty="no delivery yet">
            {data.deliveries.map((d: any) => (
              <tr key={d.delivery_id}>
                <td><When at={d.at} /></td>
                <td>{d.channel}</td>
                <td><Badge value={d.status} /></td>
                <td>{d.attempt}</td>
                <td>{d.part}</td>
                <td>{d.http_status ?? "—"}</td>
                <td class="mono">{d.code ?? ""}</td>
                <td>{d.latency_ms} ms</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </section>
  );
}
