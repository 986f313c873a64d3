import { current, get, switchProject, type Session } from "../api";
import { Badge, ErrorBox, Loading, Table, When, usePoll } from "../ui";

export function Projects({ onSession }: { onSession: (s: Session) => void }) {
  const s = current()!;
  const all = usePoll(() => (s.admin ? get<any[]>("/v1/control/projects") : Promise.resolve(null)), [s.admin]);
  const project = usePoll(() => (s.projectId ? get("/v1/control/project") : Promise.resolve(null)), [s.projectId]);
  const migration = usePoll(() => (s.projectId ? get("/v1/control/migration") : Promise.resolve(null)), [s.projectId]);
  return (
    <section>
      {s.admin && (
        <>
          <h2>Projects</h2>
          <ErrorBox error={all.error} />
          {all.data && (
            <Table head={["Project", "Name", "Status", "Mode", "Approvals", ""]}>
              {all.data.map((p) => (
                <tr key={p.project_id}>
                  <td>{p.project_id}</td>
                  <td>{p.display_name}</td>
                  <td>{p.status}</td>
                  <td><Badge value={p.mode} /></td>
                  <td>{p.required_approvals}</td>
                  <td>
                    <button
                      class="small"
                      disabled={p.project_id === s.projectId}
                      onClick={async () => {
                        onSession(await switchProject(p.project_id));
                        location.hash = "#/projects";
                      }}
                    >
                      {p.project_id === s.projectId ? "current" : "open"}
                    </button>
                  </td>
                </tr>
              ))}
            </Table>
          )}
        </>
      )}
      {s.projectId && (
        <>
          <h2>Project {s.projectId}</h2>
          <ErrorBox error={project.error || migration.error} />
          {project.data ? (
            <dl class="facts">
              <dt>Name</dt>
              <dd>{project.data.display_name}</dd>
              <dt>Status</dt>
              <dd>{project.data.status}</dd>
              <dt>Mode</dt>
              <dd id="mode"><Badge value={project.data.mode} /></dd>
              <dt>Approvals to activate</dt>
              <dd>{project.data.required_approvals}</dd>
              <dt>Created</dt>
              <dd><When at={project.data.created_at} /></dd>
            </dl>
          ) : (
            <Loading what="project" />
          )}
          <h3>Migration history</h3>
          {migration.data && (
            <Table head={["When", "From", "To", "Forced", "Reason", "By"]} empty="no mode change yet">
              {[...migration.data.history].reverse().map((h: any, i: number) => (
                <tr key={i}>
                  <td><When at={h.changed_at} /></td>
                  <td><Badge value={h.from_mode} /></td>
                  <td><Badge value={h.to_mode} /></td>
                  <td>{h.forced ? "yes" : "no"}</td>
                  <td>{h.reason ?? ""}</td>
                  <td>{h.changed_by}</td>
                </tr>
              ))}
            </Table>
          )}
        </>
      )}
    </section>
  );
}
