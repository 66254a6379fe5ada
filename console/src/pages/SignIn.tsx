import { useEffect, useState } from "react";
import { api } from "../api";
import { useAuth, type DevIdentity } from "../auth";
import { Loading, ProblemView } from "../ui";

export function SignIn() {
  const { config } = useAuth();
  return (
    <main className="signin">
      <h1>Tenantry console</h1>
      {config.auth === "local" ? <DevSignIn /> : <Auth0SignIn />}
    </main>
  );
}

function Auth0SignIn() {
  const { signInAuth0 } = useAuth();
  return (
    <>
      <p>Sign in with your organization's account.</p>
      <button onClick={() => void signInAuth0()}>Sign in</button>
    </>
  );
}

/** The local runner's demo people and the staff user, with dev tokens (dev-only). */
function DevSignIn() {
  const { signInDev } = useAuth();
  const [who, setWho] = useState<DevIdentity[]>();
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    api<{ identities: DevIdentity[] }>("/local/sign-in").then((r) => setWho(r.identities), setError);
  }, []);
  if (error) return <ProblemView error={error} />;
  if (!who) return <Loading what="demo accounts" />;
  const tenants = [...new Set(who.filter((w) => w.kind === "tenant").map((w) => w.tenant))];
  return (
    <>
      <p className="dev-label block">
        Local runner: dev-only sign-in. These tokens are signed with the key in <code>dev/</code> and are
        accepted only by this runner.
      </p>
      {tenants.map((t) => (
        <section key={t} className="card">
          <h2>{t}</h2>
          <div className="row">
            {who
              .filter((w) => w.tenant === t)
              .map((w) => (
                <button key={w.id} onClick={() => void signInDev(w).catch(setError)}>
                  Sign in as {w.role}
                </button>
              ))}
          </div>
        </section>
      ))}
      <section className="card">
        <h2>Support staff</h2>
        <div className="row">
          {who
            .filter((w) => w.kind === "staff")
            .map((w) => (
              <button key={w.id} onClick={() => void signInDev(w).catch(setError)}>
                Sign in as staff ({w.role})
              </button>
            ))}
        </div>
      </section>
    </>
  );
}
