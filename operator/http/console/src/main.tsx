import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { current, signIn, signOut, type Session } from "./api";
import { ErrorBox } from "./ui";
import { Projects } from "./pages/projects";
import { Contracts, Contract } from "./pages/contracts";
import { Runs, Run } from "./pages/runs";
import { Approvals } from "./pages/approvals";
import { Gateway } from "./pages/gateway";
import { Budgets } from "./pages/budgets";
import { Channels } from "./pages/channels";

// Hash routes (`#/runs/<id>`): the server serves one page, and a route never reaches it.
function useRoute(): string[] {
  const parse = () => location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [route, setRoute] = useState(parse());
  useEffect(() => {
    const on = () => setRoute(parse());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

const NAV: [string, string][] = [
  ["projects", "Project"],
  ["contracts", "Contracts"],
  ["runs", "Runs"],
  ["approvals", "Approvals"],
  ["gateway", "Gateway"],
  ["budgets", "Budgets"],
  ["channels", "Channels"],
];

function SignIn({ onDone }: { onDone: (s: Session) => void }) {
  const [token, setToken] = useState("");
  const [project, setProject] = useState("");
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    try {
      onDone(await signIn(token, project));
      setToken("");
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>AwoooP console</h1>
      <form onSubmit={submit} autocomplete="off">
        <label>
          API key or admin token
          <input
            id="token"
            type="password"
            value={token}
            onInput={(e) => setToken((e.target as HTMLInputElement).value)}
            required
          />
        </label>
        <label>
          Project <span class="muted">(admin token only; optional)</span>
          <input id="project" value={project} onInput={(e) => setProject((e.target as HTMLInputElement).value)} />
        </label>
        <button id="sign-in" type="submit" disabled={busy}>
          Sign in
        </button>
        <ErrorBox error={error} />
        <p class="muted small">
          The credential stays in this page's memory only (no cookie, no storage): reloading the page signs you out.
        </p>
      </form>
    </main>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>(current());
  const route = useRoute();
  if (!session) return <SignIn onDone={setSession} />;
  const [page, ...rest] = route.length ? route : ["runs"];
  let body;
  if (!session.projectId) body = <Projects onSession={setSession} />;
  else if (page === "projects") body = <Projects onSession={setSession} />;
  else if (page === "contracts" && rest.length >= 2) body = <Contract kind={rest[0]} name={rest[1]} />;
  else if (page === "contracts") body = <Contracts />;
  else if (page === "runs" && rest[0]) body = <Run id={rest[0]} />;
  else if (page === "runs") body = <Runs />;
  else if (page === "approvals") body = <Approvals />;
  else if (page === "gateway") body = <Gateway />;
  else if (page === "budgets") body = <Budgets />;
  else if (page === "channels") body = <Channels />;
  else body = <p>Unknown page.</p>;
  return (
    <>
      <header>
        <strong>AwoooP</strong>
        <nav>
          {NAV.map(([href, label]) => (
            <a key={href} href={`#/${href}`} class={page === href ? "active" : ""}>
              {label}
            </a>
          ))}
        </nav>
        <span class="who" id="who">
          {session.projectId ? `project ${session.projectId}` : "no project"}
          {session.admin ? " (admin)" : ""}
        </span>
        <button
          id="sign-out"
          class="link"
          onClick={() => {
            signOut();
            setSession(null);
          }}
        >
          Sign out
        </button>
      </header>
      <main key={session.projectId}>{body}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
