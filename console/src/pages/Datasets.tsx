import { useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { api, type Column, type ColumnType, type Dataset, type StoredRecord } from "../api";
import { useAuth } from "../auth";
import { Empty, Head, Loading, Pager, ProblemView, When, formatCell, useAction, useApi, useCursors } from "../ui";

export function Datasets() {
  const { can } = useAuth();
  const list = useApi<{ datasets: Dataset[] }>("/v1/datasets");
  return (
    <>
      <h1>Datasets</h1>
      <ProblemView error={list.error} />
      {list.loading && !list.data && <Loading what="datasets" />}
      {list.data &&
        (list.data.datasets.length === 0 ? (
          <Empty>No datasets yet.{can("manage_datasets") ? " Create one below." : ""}</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Name", "Columns", "Searchable text", "Time column", "Created"]} />
              <tbody>
                {list.data.datasets.map((d) => (
                  <tr key={d.id}>
                    <td>
                      <Link to={`/datasets/${encodeURIComponent(d.name)}`}>{d.name}</Link>
                    </td>
                    <td>{d.columns.length}</td>
                    <td>{d.text_columns.join(", ") || "—"}</td>
                    <td>{d.time_column ?? "—"}</td>
                    <td>
                      <When at={d.created_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
      {can("manage_datasets") && <CreateDataset onCreated={list.reload} />}
    </>
  );
}

const TYPES: ColumnType[] = ["string", "integer", "number", "decimal", "boolean", "timestamp"];

interface ColumnDraft extends Column {
  text: boolean;
}

function CreateDataset({ onCreated }: { onCreated: () => void }) {
  const navigate = useNavigate();
  const [name, setName] = useState("");
  const [columns, setColumns] = useState<ColumnDraft[]>([{ name: "", type: "string", required: false, text: false }]);
  const [timeColumn, setTimeColumn] = useState("");
  const { error, busy, run } = useAction();
  const set = (i: number, patch: Partial<ColumnDraft>) =>
    setColumns((cs) => cs.map((c, j) => (j === i ? { ...c, ...patch } : c)));
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    await run(async () => {
      const cols = columns.filter((c) => c.name.trim() !== "");
      const body = {
        name: name.trim(),
        columns: cols.map(({ name, type, required, scale }) => ({
          name: name.trim(),
          type,
          ...(required ? { required: true } : {}),
          ...(type === "decimal" ? { scale: scale ?? 2 } : {}),
        })),
        text_columns: cols.filter((c) => c.text && c.type === "string").map((c) => c.name.trim()),
        ...(timeColumn ? { time_column: timeColumn } : {}),
      };
      const created = await api<Dataset>("/v1/datasets", { body });
      onCreated();
      navigate(`/datasets/${encodeURIComponent(created.name)}`);
    });
  };
  const timestamps = columns.filter((c) => c.type === "timestamp" && c.name.trim());
  return (
    <section className="card">
      <h2>Create a dataset</h2>
      <form onSubmit={(e) => void submit(e)} aria-label="Create a dataset">
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required pattern="[a-z][a-z0-9_]*" placeholder="orders" />
        </label>
        <fieldset>
          <legend>Columns</legend>
          {columns.map((c, i) => (
            <div className="row column-draft" key={i}>
              <input aria-label={`Column ${i + 1} name`} value={c.name} placeholder="column name" onChange={(e) => set(i, { name: e.target.value })} />
              <select aria-label={`Column ${i + 1} type`} value={c.type} onChange={(e) => set(i, { type: e.target.value as ColumnType })}>
                {TYPES.map((t) => (
                  <option key={t}>{t}</option>
                ))}
              </select>
              {c.type === "decimal" && (
                <input
                  aria-label={`Column ${i + 1} scale`}
                  type="number"
                  min={0}
                  max={9}
                  value={c.scale ?? 2}
                  onChange={(e) => set(i, { scale: Number(e.target.value) })}
                  className="narrow"
                />
              )}
              <label className="inline">
                <input type="checkbox" checked={!!c.required} onChange={(e) => set(i, { required: e.target.checked })} /> required
              </label>
              {c.type === "string" && (
                <label className="inline">
                  <input type="checkbox" checked={c.text} onChange={(e) => set(i, { text: e.target.checked })} /> searchable text
                </label>
              )}
              <button type="button" className="secondary" aria-label={`Remove column ${i + 1}`} onClick={() => setColumns((cs) => cs.filter((_, j) => j !== i))}>
                Remove
              </button>
            </div>
          ))}
          <button type="button" className="secondary" onClick={() => setColumns((cs) => [...cs, { name: "", type: "string", required: false, text: false }])}>
            Add column
          </button>
        </fieldset>
        <label>
          Time column
          <select value={timeColumn} onChange={(e) => setTimeColumn(e.target.value)}>
            <option value="">none</option>
            {timestamps.map((c) => (
              <option key={c.name}>{c.name.trim()}</option>
            ))}
          </select>
        </label>
        <ProblemView error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create dataset"}
        </button>
      </form>
    </section>
  );
}

interface RecordPage {
  records: StoredRecord[];
  next_after: string | null;
}

export function DatasetDetail() {
  const { dataset = "" } = useParams();
  const { can } = useAuth();
  const navigate = useNavigate();
  const ds = useApi<Dataset>(`/v1/datasets/${encodeURIComponent(dataset)}?include=record_count`);
  const pages = useCursors();
  const cursor = pages.current;
  const page = useApi<RecordPage>(
    `/v1/datasets/${encodeURIComponent(dataset)}/records?limit=25${cursor ? `&after=${encodeURIComponent(cursor)}` : ""}`,
  );
  const [key, setKey] = useState("");
  const [confirming, setConfirming] = useState(false);
  const [deleteError, setDeleteError] = useState<unknown>(null);
  const remove = async () => {
    setDeleteError(null);
    try {
      await api(`/v1/datasets/${encodeURIComponent(dataset)}`, { method: "DELETE" });
      navigate("/datasets");
    } catch (e) {
      setDeleteError(e);
    }
  };
  return (
    <>
      <p className="crumbs">
        <Link to="/datasets">Datasets</Link> /
      </p>
      <h1>{dataset}</h1>
      <ProblemView error={ds.error} />
      {ds.loading && !ds.data && <Loading what="the dataset" />}
      {ds.data && (
        <section className="card">
          <h2>Schema</h2>
          <p>
            <strong data-testid="record-count">{ds.data.record_count ?? "?"}</strong> records · created <When at={ds.data.created_at} />
          </p>
          <div className="table-wrap">
          <table>
            <Head cols={["Column", "Type", "Required", "Notes"]} />
            <tbody>
              {ds.data.columns.map((c) => (
                <tr key={c.name}>
                  <td>{c.name}</td>
                  <td>
                    {c.type}
                    {c.type === "decimal" ? `(${c.scale})` : ""}
                  </td>
                  <td>{c.required ? "yes" : "no"}</td>
                  <td className="muted">
                    {[
                      ds.data!.text_columns.includes(c.name) ? "searchable text" : "",
                      ds.data!.time_column === c.name ? "time column" : "",
                    ]
                      .filter(Boolean)
                      .join(", ")}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          </div>
          {ds.data.rollups && ds.data.rollups.length > 0 && (
            <p className="muted small">
              Rollups: {ds.data.rollups.map((r) => `${r.bucket}${r.dimensions.length ? ` by ${r.dimensions.join(", ")}` : ""}`).join("; ")}
            </p>
          )}
          {can("manage_datasets") &&
            (confirming ? (
              <div className="danger-zone" role="group" aria-label="Confirm delete">
                <p>Delete {dataset} and all its records? This cannot be undone.</p>
                <button className="danger" onClick={() => void remove()}>
                  Delete forever
                </button>{" "}
                <button className="secondary" onClick={() => setConfirming(false)}>
                  Cancel
                </button>
              </div>
            ) : (
              <button className="danger" onClick={() => setConfirming(true)}>
                Delete dataset
              </button>
            ))}
          <ProblemView error={deleteError} />
        </section>
      )}
      <section className="card">
        <h2>Records</h2>
        <form
          className="row"
          aria-label="Find a record by key"
          onSubmit={(e) => {
            e.preventDefault();
            if (key.trim()) navigate(`/datasets/${encodeURIComponent(dataset)}/records/${encodeURIComponent(key.trim())}`);
          }}
        >
          <input aria-label="Record key" placeholder="record key" value={key} onChange={(e) => setKey(e.target.value)} />
          <button type="submit">Open</button>
        </form>
        <ProblemView error={page.error} />
        {page.loading && !page.data && <Loading what="records" />}
        {page.data &&
          (page.data.records.length === 0 ? (
            <Empty>{pages.depth ? "No more records." : "No records yet. Ingest some with POST /v1/datasets/{dataset}/records."}</Empty>
          ) : (
            <RecordsTable dataset={dataset} columns={ds.data?.columns ?? []} records={page.data.records} />
          ))}
        <Pager cursors={pages} next={page.data?.next_after} />
      </section>
    </>
  );
}

function RecordsTable({ dataset, columns, records }: { dataset: string; columns: Column[]; records: StoredRecord[] }) {
  const shown = columns.slice(0, 6);
  return (
    <div className="table-wrap">
      <table className="records-table">
        <thead>
          <tr>
            <th scope="col">Key</th>
            <th scope="col">Version</th>
            {shown.map((c) => (
              <th key={c.name} scope="col">
                {c.name}
              </th>
            ))}
            <th scope="col">Updated</th>
          </tr>
        </thead>
        <tbody>
          {records.map((r) => (
            <tr key={r.key}>
              <td>
                <Link to={`/datasets/${encodeURIComponent(dataset)}/records/${encodeURIComponent(r.key)}`}>{r.key}</Link>
              </td>
              <td className="num">{r.version}</td>
              {shown.map((c) => (
                <td key={c.name} className={typeof r.data[c.name] === "number" ? "num" : undefined}>
                  {formatCell(r.data[c.name])}
                </td>
              ))}
              <td>
                <When at={r.updated_at} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
