// Who is signed in. Locally the runner hands out dev tokens (GET /local/sign-in, dev-only); in
// AWS the console signs in with Auth0 Universal Login (authorization code + PKCE, through
// Auth0's SPA SDK), tokens held in memory only. Staff (the dev sign-in's staff, or a token of
// the staff organization) get the support view; anyone else is who GET /v1/me says.
import { createAuth0Client, type Auth0Client } from "@auth0/auth0-spa-js";
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { ApiError, api, configureApi, setImpersonation, type Impersonation, type Me, type Permission } from "./api";

export type ConsoleConfig =
  | { auth: "local"; apiBase?: string }
  | {
      auth: "auth0";
      domain: string;
      clientId: string;
      audience: string;
      apiBase: string;
      /** The support staff's organization: its people get the support view. */
      staffOrg?: string;
      organization?: string;
    };

export type Identity =
  | { kind: "tenant"; me: Me }
  | { kind: "staff" }
  | { kind: "impersonating"; me: Me; session: Impersonation };

export interface DevIdentity {
  id: string;
  label: string;
  kind: "tenant" | "staff";
  tenant?: string;
  role: string;
  token: string;
}

interface AuthState {
  config: ConsoleConfig;
  identity: Identity | null;
  /** The label of the dev identity, locally. */
  devLabel: string | null;
  /** The signed-in person's id (the token's `sub`). */
  subject: string | null;
  can: (p: Permission) => boolean;
  signInDev: (who: DevIdentity) => Promise<void>;
  signInAuth0: () => Promise<void>;
  signOut: () => Promise<void>;
  startImpersonation: (s: Impersonation) => Promise<void>;
  stopImpersonation: () => void;
  refresh: () => Promise<void>;
}

const AuthContext = createContext<AuthState | null>(null);

// Locally the dev token lives in this tab's sessionStorage (it is a dev-only token for a local
// runner); with Auth0 nothing is stored: the SDK keeps tokens in memory.
const DEV_TOKEN = "tenantry.dev.token";
const DEV_LABEL = "tenantry.dev.label";
const DEV_KIND = "tenantry.dev.kind";
const SESSION = "tenantry.impersonation";

/** Who and which organization a token was issued for (read, not verified: the API verifies
 * it; the console only picks its view with them). */
function tokenClaims(token: string): { sub: string | null; org: string | null } {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload)) as { sub?: unknown; org_id?: unknown };
    return {
      sub: typeof claims.sub === "string" ? claims.sub : null,
      org: typeof claims.org_id === "string" ? claims.org_id : null,
    };
  } catch {
    return { sub: null, org: null };
  }
}

async function resolveIdentity(session: Impersonation | null, staff: boolean, fallBack = true): Promise<Identity | null> {
  setImpersonation(session);
  // Staff act in a tenant only through a session; without one, theirs is the support view.
  if (staff && !session) return { kind: "staff" };
  try {
    const me = await api<Me>("/v1/me");
    return session ? { kind: "impersonating", me, session } : { kind: "tenant", me };
  } catch (e) {
    if (e instanceof ApiError && e.problem.code === "staff_token_not_accepted") return { kind: "staff" };
    if (!fallBack) setImpersonation(null);
    if (fallBack && session && e instanceof ApiError && (e.problem.status === 401 || e.problem.status === 403)) {
      // The session ended or expired while the page was away: back to the support view.
      sessionStorage.removeItem(SESSION);
      return resolveIdentity(null, staff);
    }
    throw e;
  }
}

function storedSession(): Impersonation | null {
  const raw = sessionStorage.getItem(SESSION);
  if (!raw) return null;
  try {
    return JSON.parse(raw) as Impersonation;
  } catch {
    return null;
  }
}

export function AuthProvider({ config, children }: { config: ConsoleConfig; children: ReactNode }) {
  const [identity, setIdentity] = useState<Identity | null>(null);
  const [devLabel, setDevLabel] = useState<string | null>(null);
  const [auth0, setAuth0] = useState<Auth0Client | null>(null);
  const [staff, setStaff] = useState(false);
  const [subject, setSubject] = useState<string | null>(null);
  const [ready, setReady] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const load = useCallback(async (isStaff: boolean) => {
    try {
      setIdentity(await resolveIdentity(storedSession(), isStaff));
      setError(null);
    } catch (e) {
      setIdentity(null);
      setError(e instanceof ApiError ? e : new ApiError({ status: 0, code: "error", title: "Error", detail: String(e) }));
    }
  }, []);

  useEffect(() => {
    let cancelled = false;
    (async () => {
      if (config.auth === "local") {
        const token = sessionStorage.getItem(DEV_TOKEN);
        configureApi(config.apiBase ?? "", token ? async () => token : null);
        if (token) {
          const isStaff = sessionStorage.getItem(DEV_KIND) === "staff";
          setSubject(tokenClaims(token).sub);
          setDevLabel(sessionStorage.getItem(DEV_LABEL));
          setStaff(isStaff);
          await load(isStaff);
        }
      } else {
        const client = await createAuth0Client({
          domain: config.domain,
          clientId: config.clientId,
          cacheLocation: "memory",
          useRefreshTokens: false,
          authorizationParams: {
            audience: config.audience,
            redirect_uri: window.location.origin,
            ...(config.organization ? { organization: config.organization } : {}),
          },
        });
        // Known before any failure below, so that signing out again also leaves Auth0's session.
        setAuth0(client);
        const params = new URLSearchParams(window.location.search);
        if (params.has("error")) {
          // Auth0 refused the sign-in (not a member of the organization, say): say why, in
          // Auth0's words, cut short (the text came in a link).
          window.history.replaceState({}, "", window.location.pathname);
          const why = (params.get("error_description") ?? params.get("error") ?? "").slice(0, 200);
          throw new Error(`Auth0 refused the sign-in: ${why}`);
        }
        if (params.has("code") && params.has("state")) {
          try {
            await client.handleRedirectCallback();
          } finally {
            // A used or stale code is never tried again on reload.
            window.history.replaceState({}, "", window.location.pathname);
          }
        }
        if (cancelled) return;
        if (await client.isAuthenticated()) {
          const token = async () => (await client.getTokenSilently()) ?? "";
          configureApi(config.apiBase, token);
          const claims = tokenClaims(await token());
          const isStaff = !!config.staffOrg && claims.org === config.staffOrg;
          setSubject(claims.sub);
          setStaff(isStaff);
          await load(isStaff);
        }
      }
      if (!cancelled) setReady(true);
    })().catch((e) => {
      setError(new ApiError({ status: 0, code: "sign_in_failed", title: "Sign-in failed", detail: String(e) }));
      setReady(true);
    });
    return () => {
      cancelled = true;
    };
  }, [config, load]);

  const state = useMemo<AuthState>(() => {
    const me = identity && identity.kind !== "staff" ? identity.me : null;
    return {
      config,
      identity,
      devLabel,
      subject,
      can: (p) => !!me?.principal.permissions.includes(p),
      signInDev: async (who) => {
        sessionStorage.setItem(DEV_TOKEN, who.token);
        sessionStorage.setItem(DEV_LABEL, who.label);
        sessionStorage.setItem(DEV_KIND, who.kind);
        sessionStorage.removeItem(SESSION);
        setDevLabel(who.label);
        setSubject(tokenClaims(who.token).sub);
        setStaff(who.kind === "staff");
        configureApi(config.apiBase ?? "", async () => who.token);
        await load(who.kind === "staff");
      },
      signInAuth0: async () => {
        const params = new URLSearchParams(window.location.search);
        const invitation = params.get("invitation");
        const organization = params.get("organization");
        await auth0?.loginWithRedirect({
          authorizationParams: {
            ...(invitation ? { invitation } : {}),
            ...(organization ? { organization } : {}),
          },
        });
      },
      signOut: async () => {
        sessionStorage.removeItem(DEV_TOKEN);
        sessionStorage.removeItem(DEV_LABEL);
        sessionStorage.removeItem(DEV_KIND);
        sessionStorage.removeItem(SESSION);
        setImpersonation(null);
        setStaff(false);
        setSubject(null);
        setIdentity(null);
        setDevLabel(null);
        if (auth0) await auth0.logout({ logoutParams: { returnTo: window.location.origin } });
        else configureApi(config.apiBase ?? "", null);
      },
      startImpersonation: async (s) => {
        // The session must work before the console switches to it: a refusal (not this staff
        // member's session, ended, support access off) is shown where it was asked for.
        const identity = await resolveIdentity(s, staff, false);
        sessionStorage.setItem(SESSION, JSON.stringify(s));
        setIdentity(identity);
      },
      stopImpersonation: () => {
        sessionStorage.removeItem(SESSION);
        setImpersonation(null);
        setIdentity({ kind: "staff" });
      },
      refresh: () => load(staff),
    };
  }, [config, identity, devLabel, auth0, load, staff, subject]);

  if (!ready) return <p className="page-loading" role="status">Loading…</p>;
  return (
    <AuthContext.Provider value={state}>
      {error && !identity ? <StartupError error={error} /> : children}
    </AuthContext.Provider>
  );
}

function StartupError({ error }: { error: ApiError }) {
  const { signOut } = useAuth();
  return (
    <main className="signin">
      <div role="alert" className="problem">
        <strong>{error.problem.title}</strong> {error.problem.detail}
        {error.problem.request_id && <div className="muted">request id {error.problem.request_id}</div>}
      </div>
      <button onClick={() => void signOut().then(() => window.location.reload())}>Sign in again</button>
    </main>
  );
}

export function useAuth(): AuthState {
  const ctx = useContext(AuthContext);
  if (!ctx) throw new Error("useAuth outside AuthProvider");
  return ctx;
}
