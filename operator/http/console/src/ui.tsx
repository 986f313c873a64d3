import { useEffect, useState, useCallback } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ApiError } from "./api";

/** Load `fn` now and every `everyMs` (0: once); `reload` forces a fetch. */
export function usePoll<T>(fn: () => Promise<T>, deps: unknown[], everyMs = 0) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<ApiError | Error | null>(null);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const run = async () => {
      try {
        const d = await fn();
        if (live) {
          setData(d);
          setError(null);
        }
      } catch (e) {
        if (live) setError(e as Error);
      }
      if (live && everyMs > 0) timer = window.setTimeout(run, everyMs);
    };
    run();
    return () => {
      live = false;
      if (timer !== undefined) window.clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { data, error, reload, setData };
}

export function ErrorBox({ error }: { error: Error | null }) {
  if (!error) return null;
  const code = error instanceof ApiError ? error.code : "error";
  return (
    <p class="error" role="alert" data-code={code}>
      <b>{code}</b> {error.message}
    </p>
  );
}

export function Loading({ what }: { what: string }) {
  return <p class="muted">Loading {what}…</p>;
}

export function When({ at }: { at?: string | null }) {
  if (!at) return <span class="muted">—</span>;
  const d = new Date(at);
  return <time dateTime={at} title={at}>{d.toLocaleString()}</time>;
}

export function Badge({ value }: { value: string | null | undefined }) {
  const v = value ?? "—";
  return <span class={`badge b-${v.replace(/[^a-z_]/gi, "")}`}>{v}</span>;
}

export function Table({ head, children, empty }: { head: string[]; children: ComponentChildren; empty?: string }) {
  const rows = Array.isArray(children) ? children : [children];
  const none = rows.flat().filter(Boolean).length === 0;
  return (
    <table>
      <thead>
        <tr>{head.map((h) => <th key={h}>{h}</th>)}</tr>
      </thead>
      <tbody>
        {none ? (
          <tr>
            <td colSpan={head.length} class="muted">{empty ?? "nothing yet"}</td>
          </tr>
        ) : (
          children
        )}
      </tbody>
    </table>
  );
}

export function Json({ value }: { value: unknown }) {
  if (value === null || value === undefined) return <span class="muted">—</span>;
  return <pre class="json">{JSON.stringify(value, null, 2)}</pre>;
}

export function Meter({ used, limit }: { used: number; limit: number | null }) {
  if (!limit) return <span>{used}</span>;
  const pct = Math.min(100, Math.round((used / limit) * 100));
  return (
    <span class={pct >= 90 ? "meter hot" : "meter"} title={`${used} of ${limit} (${pct}%)`}>
      <progress value={used} max={limit} />
      <span class="meter-text">
        {used} / {limit} ({pct}%)
      </span>
    </span>
  );
}

export const terminal = (state: string) =>
  ["succeeded", "failed", "cancelled", "timed_out"].includes(state);

export const micros = (m: number | null | undefined) =>
  m === null || m === undefined ? "—" : `$${(m / 1_000_000).toFixed(4)}`;
