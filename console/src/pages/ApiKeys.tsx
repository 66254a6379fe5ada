import { useState, type FormEvent } from "react";
import { api } from "../api";
import { CopyButton, Empty, Loading, ProblemView, When, useAction, useApi, Head } from "../ui";

interface ApiKey {
  key_id: string;
  prefix: string;
  name: string;
  scopes: string[];
  created_at: string;
  last_used_at?: string | null;
  revoked_at?: string | null;
}

export function ApiKeys() {
  const keys = useApi<{ api_keys: ApiKey[] }>("/v1/api-keys");
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(["read"]);
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const { error, run } = useAction();
  const create = async (e: FormEvent) => {
    e.preventDefault();
    await run(async () => {
      const k = await api<{ name: string; key: string }>("/v1/api-keys", { body: { name: name.trim(), scopes } });
      setCreated(k);
      setName("");
      keys.reload();
    });
  };
  const revoke = async (id: string) => {
    await run(async () => {
      await api(`/v1/api-keys/${id}`, { method: "DELETE" });
      keys.reload();
    });
  };
  return (
    <>
      <h1>API keys</h1>
      {created && (
        <div className="notice ok" role="status" data-testid="new-key">
          <p>
            Key <strong>{created.name}</strong> created. Copy it now: it is shown only once.
          </p>
          <pre>{created.key}</pre>
          <CopyButton text={created.key} label="Copy key" /> <button className="secondary" onClick={() => setCreated(null)}>Done</button>
        </div>
      )}
      <form className="card" onSubmit={(e) => void create(e)} aria-label="Create an API key">
        <h2>Create a key</h2>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={200} placeholder="nightly-etl" />
        </label>
        <fieldset>
          <legend>Scopes</legend>
          {[
            ["read", "read: read datasets and records, run queries and asks"],
            ["ingest", "ingest: write and delete records"],
          ].map(([s, label]) => (
            <label className="inline" key={s}>
              <input
                type="checkbox"
                checked={scopes.includes(s)}
                onChange={(e) => setScopes((xs) => (e.target.checked ? [...xs, s] : xs.filter((x) => x !== s)))}
              />{" "}
              {label}
            </label>
          ))}
        </fieldset>
        <button type="submit" disabled={scopes.length === 0}>
          Create key
        </button>
      </form>
      <ProblemView error={error} />
      {keys.error ? <ProblemView error={keys.error} /> : null}
      {!keys.data && !keys.error && <Loading what="keys" />}
      {keys.data &&
        (keys.data.api_keys.length === 0 ? (
          <Empty>No API keys.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <Head cols={["Name", "Prefix", "Scopes", "Created", "State", ""]} />
              <tbody>
                {keys.data.api_keys.map((k) => (
                  <tr key={k.key_id}>
                    <td>{k.name}</td>
                    <td>
                      <code>{k.prefix}</code>
                    </td>
                    <td>{k.scopes.join(", ")}</td>
                    <td>
                      <When at={k.created_at} />
                    </td>
                    <td>{k.revoked_at ? <span className="badge">revoked</span> : <span className="badge good">active</span>}</td>
                    <td>
                      {!k.revoked_at && (
                        <button className="danger" onClick={() => void revoke(k.key_id)} aria-label={`Revoke ${k.name}`}>
                          Revoke
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ))}
    </>
  );
}
