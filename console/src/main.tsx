import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { AuthProvider, type ConsoleConfig } from "./auth";
import "./styles.css";

// The deployment says how to sign in: the local runner serves {"auth":"local"}; a deploy writes
// its Auth0 settings and the API's address (infra/deploy-console).
async function loadConfig(): Promise<ConsoleConfig> {
  const resp = await fetch("/config.json", { headers: { accept: "application/json" } });
  if (!resp.ok) throw new Error(`/config.json: HTTP ${resp.status}`);
  return (await resp.json()) as ConsoleConfig;
}

const root = createRoot(document.getElementById("root")!);
loadConfig().then(
  (config) =>
    root.render(
      <StrictMode>
        <AuthProvider config={config}>
          <App />
        </AuthProvider>
      </StrictMode>,
    ),
  (e) =>
    root.render(
      <main className="signin">
        <div role="alert" className="problem">
          <strong>The console is not configured.</strong> {String(e)}
        </div>
      </main>,
    ),
);
