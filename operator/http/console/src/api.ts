// The one place the console talks to the API. The credential lives in this module's memory
// only: never localStorage, sessionStorage or a cookie, so a reload signs out and no other
// site can borrow it. Every request sends it as `Authorization: Bearer`, which browsers never
// add on their own, so state changes cannot be forged cross-site (see docs/console.md).

export interface Session {
  token: string;
  /** The project an admin token acts on (`X-Awooop-Project`); unset for an API key. */
  project?: string;
  /** The project this session reads (from `GET /v1/control/project`). */
  projectId: string;
  admin: boolean;
}

let session: Session | null = null;

export function current(): Session | null {
  return session;
}

export function signOut(): void {
  session = null;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(
  auth: { token: string; project?: string },
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const headers: Record<string, string> = {
    Authorization: `Bearer ${auth.token}`,
    Accept: "application/json",
  };
  if (auth.project) headers["X-Awooop-Project"] = auth.project;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const text = await resp.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    const code = data && typeof data === "object" && data.code ? data.code : `HTTP ${resp.status}`;
    const msg = data && typeof data === "object" && data.message ? data.message : resp.statusText;
    throw new ApiError(resp.status, code, msg);
  }
  return data as T;
}

export function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  if (!session) return Promise.reject(new ApiError(401, "E-AUTH-001", "not signed in"));
  return call<T>(session, method, path, body);
}

export const get = <T = any>(path: string) => api<T>("GET", path);
export const post = <T = any>(path: string, body: unknown = {}) => api<T>("POST", path, body);

/** Check a credential against the API and keep it for this page's lifetime. */
export async function signIn(token: string, project?: string): Promise<Session> {
  token = token.trim();
  project = project?.trim() || undefined;
  const auth = { token, project };
  let admin = false;
  try {
    // Only the admin token may list every project.
    await call(auth, "GET", "/v1/control/projects");
    admin = true;
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 403) throw e;
  }
  if (admin && !project) {
    session = { token, admin, projectId: "" };
    return session;
  }
  const p = await call<{ project_id: string }>(auth, "GET", "/v1/control/project");
  session = { token, project, admin, projectId: p.project_id };
  return session;
}

/** An admin session switches the project it acts on. */
export async function switchProject(project: string): Promise<Session> {
  if (!session || !session.admin) throw new ApiError(403, "E-AUTH-003", "admin only");
  const auth = { token: session.token, project };
  const p = await call<{ project_id: string }>(auth, "GET", "/v1/control/project");
  session = { ...session, project, projectId: p.project_id };
  return session;
}
