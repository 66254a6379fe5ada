import { useEffect, useMemo, useState, type FormEvent } from "react";
import { api, type Column, type Dataset, type QueryResult } from "../api";
import { CopyButton, Empty, Loading, ProblemView, ResultChart, ResultTable, groupNames, useAction, useApi } from "../ui";

const OPS = ["eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "is_null"] as const;
type Op = (typeof OPS)[number];
const FNS = ["count", "sum", "avg", "min", "max"] as const;

/** The operators the query language takes on a column of each type. */
function opsFor(col: Column | undefined): readonly Op[] {
  switch (col?.type) {
    case "string":
      return ["eq", "ne", "in", "contains", "is_null"];
    case "boolean":
      return ["eq", "ne", "is_null"];
    case "timestamp":
      return ["gte", "lt", "gt", "lte", "eq", "is_null"];
    default:
      return ["eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"];
  }
}
type Fn = (typeof FNS)[number];
const BUCKETS = ["minute", "hour", "day", "week", "month"] as const;

interface FilterDraft {
  column: string;
  op: Op;
  value: string;
}
interface AggDraft {
  fn: Fn;
  column: string;
}

function literal(col: Column | undefined, raw: string): unknown {
  const v = raw.trim();
  if (!col) return v;
  if (col.type === "boolean") return v !== "false";
  // A datetime-local value is the browser's local time: sent as RFC 3339 in UTC.
  if (col.type === "timestamp") {
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? v : d.toISOString();
  }
  if (col.type === "integer" || col.type === "number" || col.type === "decimal") {
    const n = Number(v);
    return v !== "" && Number.isFinite(n) ? n : v;
  }
  return v;
}

/** The query as the API takes it, from the builder's fields. */
export function buildQuery(
  ds: Dataset,
  filters: FilterDraft[],
  groupBy: string[],
  bucket: { column: string; bucket: string } | null,
  aggs: AggDraft[],
  limit: number,
): Record<string, unknown> {
  const col = (n: string) => ds.columns.find((c) => c.name === n);
  const conds = filters
    .filter((f) => f.column)
    .map((f) => {
      if (f.op === "is_null") return { column: f.column, op: f.op };
      if (f.op === "in") return { column: f.column, op: f.op, value: f.value.split(",").map((x) => literal(col(f.column), x)) };
      return { column: f.column, op: f.op, value: literal(col(f.column), f.value) };
    });
  const group: unknown[] = [];
  if (bucket) group.push({ column: bucket.column, bucket: bucket.bucket });
  group.push(...groupBy);
  const aggregates = aggs.map((a) => (a.fn === "count" ? { fn: "count" } : { fn: a.fn, column: a.column }));
  const q: Record<string, unknown> = { dataset: ds.name };
  if (conds.length === 1) q.filter = conds[0];
  if (conds.length > 1) q.filter = { and: conds };
  if (group.length) q.group_by = group;
  if (aggregates.length) q.aggregates = aggregates;
  if (bucket) q.order_by = [{ by: `${bucket.column}_${bucket.bucket}`, dir: "asc" }];
  q.limit = limit;
  return q;
}

export function QueryBuilder() {
  const list = useApi<{ datasets: Dataset[] }>("/v1/datasets");
  const [name, setName] = useState("");
  const ds = list.data?.datasets.find((d) => d.name === name);
  useEffect(() => {
    if (!name && list.data?.datasets.length) setName(list.data.datasets[0].name);
  }, [list.data, name]);
  const [filters, setFilters] = useState<FilterDraft[]>([]);
  const [groupBy, setGroupBy] = useState<string[]>([]);
  const [bucketCol, setBucketCol] = useState("");
  const [bucket, setBucket] = useState("day");
  const [aggs, setAggs] = useState<AggDraft[]>([{ fn: "count", column: "" }]);
  const [limit, setLimit] = useState(100);
  const [result, setResult] = useState<{ result: QueryResult; groupBy: string[] }>();
  const { error, busy: running, run: act } = useAction();
  useEffect(() => {
    setFilters([]);
    setGroupBy([]);
    setBucketCol("");
    setAggs([{ fn: "count", column: "" }]);
    setResult(undefined);
  }, [name]);
  const query = useMemo(
    () => (ds ? buildQuery(ds, filters, groupBy, bucketCol ? { column: bucketCol, bucket } : null, aggs, limit) : null),
    [ds, filters, groupBy, bucketCol, bucket, aggs, limit],
  );
  const json = JSON.stringify(query, null, 2);
  const run = async (e: FormEvent) => {
    e.preventDefault();
    const ok = await act(async () => {
      // The result with the grouping it was asked with (the form may change after).
      const groupBy = groupNames(query?.group_by);
      setResult({ result: await api<QueryResult>("/v1/query", { body: query }), groupBy });
    });
    if (!ok) setResult(undefined);
  };
  if (list.error) return <ProblemView error={list.error} />;
  if (!list.data) return <Loading what="datasets" />;
  if (list.data.datasets.length === 0) return <Empty>No datasets to query yet.</Empty>;
  const columns = ds?.columns ?? [];
  const numeric = columns.filter((c) => ["integer", "number", "decimal"].includes(c.type));
  const groupable = columns.filter((c) => ["string", "boolean", "integer"].includes(c.type));
  const timestamps = columns.filter((c) => c.type === "timestamp");
  return (
    <>
      <h1>Query</h1>
      <form className="card query-form" onSubmit={(e) => void run(e)} aria-label="Query builder">
        <label>
          Dataset
          <select value={name} onChange={(e) => setName(e.target.value)}>
            {list.data.datasets.map((d) => (
              <option key={d.id}>{d.name}</option>
            ))}
          </select>
        </label>
        <fieldset>
          <legend>Filters</legend>
          {filters.map((f, i) => (
            <div className="row" key={i}>
              <select
                aria-label={`Filter ${i + 1} column`}
                value={f.column}
                onChange={(e) => {
                  const ops = opsFor(columns.find((c) => c.name === e.target.value));
                  setFilters((fs) =>
                    fs.map((x, j) => (j === i ? { column: e.target.value, op: ops.includes(x.op) ? x.op : ops[0], value: "" } : x)),
                  );
                }}
              >
                {columns.map((c) => (
                  <option key={c.name}>{c.name}</option>
                ))}
              </select>
              <select aria-label={`Filter ${i + 1} operator`} value={f.op} onChange={(e) => setFilters((fs) => fs.map((x, j) => (j === i ? { ...x, op: e.target.value as Op } : x)))}>
                {opsFor(columns.find((c) => c.name === f.column)).map((o) => (
                  <option key={o}>{o}</option>
                ))}
              </select>
              {f.op !== "is_null" && (
                <FilterValue
                  i={i}
                  col={columns.find((c) => c.name === f.column)}
                  op={f.op}
                  value={f.value}
                  onChange={(value) => setFilters((fs) => fs.map((x, j) => (j === i ? { ...x, value } : x)))}
                />
              )}
              <button type="button" className="secondary" onClick={() => setFilters((fs) => fs.filter((_, j) => j !== i))}>
                Remove
              </button>
            </div>
          ))}
          <button type="button" className="secondary" onClick={() => setFilters((fs) => [...fs, { column: columns[0]?.name ?? "", op: "eq", value: "" }])}>
            Add filter
          </button>
        </fieldset>
        <fieldset>
          <legend>Group by</legend>
          <div className="row wrap">
            {groupable.map((c) => (
              <label className="inline" key={c.name}>
                <input
                  type="checkbox"
                  checked={groupBy.includes(c.name)}
                  onChange={(e) => setGroupBy((g) => (e.target.checked ? [...g, c.name] : g.filter((x) => x !== c.name)))}
                />{" "}
                {c.name}
              </label>
            ))}
          </div>
          {timestamps.length > 0 && (
            <div className="row">
              <label>
                Time bucket
                <select value={bucketCol} onChange={(e) => setBucketCol(e.target.value)}>
                  <option value="">none</option>
                  {timestamps.map((c) => (
                    <option key={c.name}>{c.name}</option>
                  ))}
                </select>
              </label>
              {bucketCol && (
                <label>
                  by
                  <select value={bucket} onChange={(e) => setBucket(e.target.value)}>
                    {BUCKETS.map((b) => (
                      <option key={b}>{b}</option>
                    ))}
                  </select>
                </label>
              )}
            </div>
          )}
        </fieldset>
        <fieldset>
          <legend>Aggregates</legend>
          {aggs.map((a, i) => (
            <div className="row" key={i}>
              <select
                aria-label={`Aggregate ${i + 1} function`}
                value={a.fn}
                onChange={(e) => setAggs((as) => as.map((x, j) => (j === i ? { fn: e.target.value as Fn, column: x.column || numeric[0]?.name || "" } : x)))}
              >
                {FNS.filter((f) => f === "count" || numeric.length > 0).map((f) => (
                  <option key={f}>{f}</option>
                ))}
              </select>
              {a.fn !== "count" && (
                <select aria-label={`Aggregate ${i + 1} column`} value={a.column} onChange={(e) => setAggs((as) => as.map((x, j) => (j === i ? { ...x, column: e.target.value } : x)))}>
                  {numeric.map((c) => (
                    <option key={c.name}>{c.name}</option>
                  ))}
                </select>
              )}
              <button type="button" className="secondary" onClick={() => setAggs((as) => as.filter((_, j) => j !== i))}>
                Remove
              </button>
            </div>
          ))}
          <button
            type="button"
            className="secondary"
            onClick={() => setAggs((as) => [...as, numeric.length ? { fn: "sum", column: numeric[0].name } : { fn: "count", column: "" }])}
          >
            Add aggregate
          </button>
        </fieldset>
        <label>
          Row limit
          <input type="number" min={1} max={10000} value={limit} onChange={(e) => setLimit(Number(e.target.value) || 100)} className="narrow" />
        </label>
        <details open>
          <summary>Query JSON (what POST /v1/query receives)</summary>
          <pre data-testid="query-json">{json}</pre>
          <CopyButton text={json} label="Copy JSON" />
        </details>
        <button type="submit" disabled={running}>
          {running ? "Running…" : "Run query"}
        </button>
      </form>
      <ProblemView error={error} />
      {result && (
        <section className="card" aria-label="Result">
          <h2>Result</h2>
          <ResultChart result={result.result} groupBy={result.groupBy} />
          <ResultTable result={result.result} />
        </section>
      )}
    </>
  );
}

/** The value of a filter, as the column's type takes it. */
function FilterValue({ i, col, op, value, onChange }: { i: number; col?: Column; op: Op; value: string; onChange: (v: string) => void }) {
  const label = `Filter ${i + 1} value`;
  if (col?.type === "boolean") {
    return (
      <select aria-label={label} value={value || "true"} onChange={(e) => onChange(e.target.value)}>
        <option>true</option>
        <option>false</option>
      </select>
    );
  }
  if (col?.type === "timestamp") {
    return <input aria-label={label} type="datetime-local" value={value} onChange={(e) => onChange(e.target.value)} />;
  }
  const numeric = col && ["integer", "number", "decimal"].includes(col.type);
  return (
    <input
      aria-label={label}
      value={value}
      inputMode={numeric && op !== "in" ? "decimal" : undefined}
      placeholder={op === "in" ? "a, b, c" : "value"}
      onChange={(e) => onChange(e.target.value)}
    />
  );
}
