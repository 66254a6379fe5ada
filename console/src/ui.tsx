// Shared pieces: loading, empty and error states, a data hook, a table and the result chart.
import { Component, useCallback, useEffect, useState, type ErrorInfo, type ReactNode } from "react";
import { Bar, BarChart, CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { ApiError, api, type QueryResult } from "./api";

export function ProblemView({ error }: { error: unknown }) {
  if (!error) return null;
  const p =
    error instanceof ApiError
      ? error.problem
      : { status: 0, code: "error", title: "Something went wrong", detail: String(error), request_id: undefined, errors: undefined };
  const forbidden = p.status === 403;
  return (
    <div role="alert" className={`problem${forbidden ? " forbidden" : ""}`} data-code={p.code}>
      <strong>{forbidden ? "Not allowed: " : ""}{p.title}</strong> <span className="detail">{p.detail}</span>
      {p.errors && p.errors.length > 0 && (
        <ul>
          {p.errors.slice(0, 10).map((e, i) => (
            <li key={i}>
              {e.path ? <code>{e.path}</code> : null} {e.message}
            </li>
          ))}
        </ul>
      )}
      <div className="muted small">
        <code>{p.code}</code>
        {p.request_id ? <> · request id <code className="request-id">{p.request_id}</code></> : null}
      </div>
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      Loading {what}…
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty">{children}</p>;
}

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/** GETs `path` (null: nothing yet) and reloads when it changes. What another path answered is
 * never returned as this one's: the answer is kept with the path it is for. */
export function useApi<T>(path: string | null): Loaded<T> {
  const [state, setState] = useState<{ path: string | null; data?: T; error: unknown }>({ path: null, error: null });
  const [loading, setLoading] = useState(path !== null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (path === null) return;
    const ctl = new AbortController();
    setLoading(true);
    api<T>(path, { signal: ctl.signal })
      .then((data) => {
        if (!ctl.signal.aborted) setState({ path, data, error: null });
      })
      .catch((error) => {
        if (!ctl.signal.aborted) setState({ path, error });
      })
      .finally(() => {
        if (!ctl.signal.aborted) setLoading(false);
      });
    return () => ctl.abort();
  }, [path, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  const mine = state.path === path;
  return {
    data: mine ? state.data : undefined,
    error: mine ? state.error : null,
    loading: path !== null && (loading || !mine),
    reload,
  };
}

/** What a form or button does: `run` clears the last error, runs the action and keeps what it
 * throws (shown with `<ProblemView error={error} />`), and says whether it succeeded; `busy`
 * while it runs. */
export function useAction(): { error: unknown; busy: boolean; run: (action: () => Promise<void>) => Promise<boolean> } {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = useCallback(async (action: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await action();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  }, []);
  return { error, busy, run };
}

export function formatCell(v: unknown): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function ResultTable({ result, caption }: { result: QueryResult; caption?: string }) {
  if (result.rows.length === 0) return <Empty>No rows match.</Empty>;
  return (
    <div className="table-wrap">
      <table className="result-table">
        {caption && <caption>{caption}</caption>}
        <thead>
          <tr>
            {result.columns.map((c) => (
              <th key={c.name} scope="col">
                {c.name}
                <span className="muted small"> {c.type}</span>
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {result.rows.map((row, i) => (
            <tr key={i}>
              {row.map((v, j) => (
                <td key={j} className={typeof v === "number" ? "num" : undefined}>
                  {formatCell(v)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
      {result.truncated && <p className="muted small">Only the first {result.row_count} rows are shown.</p>}
    </div>
  );
}

const NUMERIC = new Set(["integer", "number", "decimal"]);
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
const MAX_SERIES = 12;

/** The output names of a query's `group_by` (a column's name, or a bucket's `as` or
 * `<column>_<bucket>`), as its result names them. */
export function groupNames(groupBy: unknown): string[] {
  if (!Array.isArray(groupBy)) return [];
  return groupBy.map((g) =>
    typeof g === "string" ? g : ((g as { as?: string }).as ?? `${(g as { column: string }).column}_${(g as { bucket: string }).bucket}`),
  );
}

/**
 * The result as a chart. The axis is the time bucket among the group keys (a line), else the
 * first group key (bars); the other group keys split the measures into series (EU / sum_amount,
 * US / sum_amount, ...). Without group keys, the non-numeric columns are taken as them. Null
 * when there is nothing to draw.
 */
export function ResultChart({ result, groupBy }: { result: QueryResult; groupBy?: string[] }) {
  const cols = result.columns.map((c, i) => ({ ...c, i }));
  const dims = groupBy?.length ? cols.filter((c) => groupBy.includes(c.name)) : cols.filter((c) => !NUMERIC.has(c.type));
  const measures = cols.filter((c) => NUMERIC.has(c.type) && !dims.some((d) => d.i === c.i));
  if (measures.length === 0 || result.rows.length === 0) return null;
  const axis = dims.find((d) => d.type === "timestamp") ?? dims[0];
  const others = dims.filter((d) => d !== axis);
  const timeAxis = axis?.type === "timestamp";
  const points = new Map<string, Record<string, unknown>>();
  const series: string[] = [];
  result.rows.forEach((r, n) => {
    const x = axis ? formatCell(r[axis.i]) : String(n + 1);
    const point = points.get(x) ?? { __x: x };
    points.set(x, point);
    const split = others.map((d) => formatCell(r[d.i])).join(" / ");
    for (const m of measures) {
      const name = split ? (measures.length > 1 ? `${split} · ${m.name}` : split) : m.name;
      if (!series.includes(name)) series.push(name);
      const v = r[m.i];
      point[name] = typeof v === "number" ? v : v === null ? null : Number(v);
    }
  });
  let data = [...points.values()];
  if (timeAxis) data = data.sort((a, b) => String(a.__x).localeCompare(String(b.__x)));
  const shown = series.slice(0, MAX_SERIES);
  const chart = timeAxis ? (
    <LineChart data={data}>
      <CartesianGrid strokeDasharray="3 3" />
      <XAxis dataKey="__x" tickFormatter={(x: string) => x.slice(0, 16).replace("T", " ")} />
      <YAxis />
      <Tooltip />
      <Legend />
      {shown.map((name, k) => (
        <Line key={name} dataKey={name} stroke={PALETTE[k % PALETTE.length]} dot={false} connectNulls isAnimationActive={false} />
      ))}
    </LineChart>
  ) : (
    <BarChart data={data}>
      <CartesianGrid strokeDasharray="3 3" />
      <XAxis dataKey="__x" />
      <YAxis />
      <Tooltip />
      <Legend />
      {shown.map((name, k) => (
        <Bar key={name} dataKey={name} fill={PALETTE[k % PALETTE.length]} isAnimationActive={false} />
      ))}
    </BarChart>
  );
  return (
    <figure className="chart" aria-label={`Chart of ${shown.join(", ")}`} data-points={data.length} data-series={shown.length}>
      <ResponsiveContainer width="100%" height={320}>
        {chart}
      </ResponsiveContainer>
      {series.length > shown.length && (
        <figcaption className="muted small">
          The first {shown.length} of {series.length} series are drawn; the table has them all.
        </figcaption>
      )}
    </figure>
  );
}

export function When({ at }: { at: string | null | undefined }) {
  if (!at) return <span className="muted">—</span>;
  const d = new Date(at);
  return <time dateTime={at} title={at}>{d.toLocaleString()}</time>;
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      className="secondary"
      onClick={() =>
        void navigator.clipboard?.writeText(text).then(
          () => {
            setDone(true);
            setTimeout(() => setDone(false), 1500);
          },
          () => setDone(false),
        )
      }
    >
      {done ? "Copied" : label}
    </button>
  );
}

/** A table's header row: one column heading each (an empty one for a column of buttons). */
export function Head({ cols }: { cols: string[] }) {
  return (
    <thead>
      <tr>
        {cols.map((c, i) => (
          <th key={i} scope="col">
            {c}
          </th>
        ))}
      </tr>
    </thead>
  );
}

/** Shows what went wrong instead of a blank page when a page fails to render. */
export class ErrorBoundary extends Component<{ children: ReactNode }, { error: unknown }> {
  state = { error: null as unknown };
  static getDerivedStateFromError(error: unknown) {
    return { error };
  }
  componentDidCatch(error: unknown, info: ErrorInfo) {
    console.warn("page failed to render", error, info.componentStack);
  }
  render() {
    if (this.state.error) {
      return (
        <div role="alert" className="problem">
          <strong>This page failed to show.</strong> {String(this.state.error)}{" "}
          <button className="secondary" onClick={() => this.setState({ error: null })}>
            Try again
          </button>
        </div>
      );
    }
    return this.props.children;
  }
}

/** The cursors of the pages a list went through (the last is the page shown). */
export interface Cursors {
  current: string | undefined;
  depth: number;
  back: () => void;
  forward: (cursor: string) => void;
  reset: () => void;
}

export function useCursors(): Cursors {
  const [stack, setStack] = useState<string[]>([]);
  return {
    current: stack.at(-1),
    depth: stack.length,
    back: () => setStack((s) => s.slice(0, -1)),
    forward: (cursor) => setStack((s) => [...s, cursor]),
    reset: () => setStack([]),
  };
}

/** Back and forth through a list's pages; `next` is the cursor the API gave for the next one. */
export function Pager({ cursors, next, labels = ["Previous", "Next"] }: { cursors: Cursors; next: string | null | undefined; labels?: [string, string] }) {
  return (
    <div className="row">
      <button className="secondary" disabled={cursors.depth === 0} onClick={cursors.back}>
        {labels[0]}
      </button>
      <button className="secondary" disabled={!next} onClick={() => next && cursors.forward(next)}>
        {labels[1]}
      </button>
    </div>
  );
}
