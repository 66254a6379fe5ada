// Shared pieces: loading, empty and error states, a data hook, a table and the result chart.
import { useCallback, useEffect, useState, type ReactNode } from "react";
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

/** GETs `path` (null: nothing yet) and reloads when it changes. */
export function useApi<T>(path: string | null): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(path !== null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (path === null) return;
    const ctl = new AbortController();
    setLoading(true);
    api<T>(path, { signal: ctl.signal })
      .then((d) => {
        setData(d);
        setError(null);
      })
      .catch((e) => {
        if (!(e instanceof DOMException && e.name === "AbortError")) {
          setError(e);
          setData(undefined);
        }
      })
      .finally(() => {
        if (!ctl.signal.aborted) setLoading(false);
      });
    return () => ctl.abort();
  }, [path, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload };
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
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2"];

/**
 * The result as a chart: the first non-numeric column is the axis (a time bucket draws a line,
 * anything else bars), every numeric column a series. Null when there is nothing to draw.
 */
export function ResultChart({ result }: { result: QueryResult }) {
  const axis = result.columns.findIndex((c) => !NUMERIC.has(c.type));
  const series = result.columns.map((c, i) => ({ ...c, i })).filter((c) => NUMERIC.has(c.type) && c.i !== axis);
  if (series.length === 0 || result.rows.length === 0) return null;
  const timeAxis = axis >= 0 && result.columns[axis].type === "timestamp";
  const rows = result.rows.map((r, n) => {
    const point: Record<string, unknown> = { __x: axis >= 0 ? formatCell(r[axis]) : String(n + 1) };
    for (const s of series) point[s.name] = typeof r[s.i] === "number" ? r[s.i] : Number(r[s.i]);
    return point;
  });
  const data = timeAxis ? [...rows].sort((a, b) => String(a.__x).localeCompare(String(b.__x))) : rows;
  const chart = timeAxis ? (
    <LineChart data={data}>
      <CartesianGrid strokeDasharray="3 3" />
      <XAxis dataKey="__x" tickFormatter={(x: string) => x.slice(0, 16).replace("T", " ")} />
      <YAxis />
      <Tooltip />
      <Legend />
      {series.map((s, k) => (
        <Line key={s.name} dataKey={s.name} stroke={PALETTE[k % PALETTE.length]} dot={false} isAnimationActive={false} />
      ))}
    </LineChart>
  ) : (
    <BarChart data={data}>
      <CartesianGrid strokeDasharray="3 3" />
      <XAxis dataKey="__x" />
      <YAxis />
      <Tooltip />
      <Legend />
      {series.map((s, k) => (
        <Bar key={s.name} dataKey={s.name} fill={PALETTE[k % PALETTE.length]} isAnimationActive={false} />
      ))}
    </BarChart>
  );
  return (
    <figure className="chart" aria-label={`Chart of ${series.map((s) => s.name).join(", ")}`} data-points={data.length}>
      <ResponsiveContainer width="100%" height={320}>
        {chart}
      </ResponsiveContainer>
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
