import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API to a local runner (scripts/run-local) so the console can be
// developed with hot reload; `npm run build` writes dist/, which the runner serves at /.
const api = process.env.TENANTRY_API ?? "http://127.0.0.1:3000";

export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", sourcemap: true, chunkSizeWarningLimit: 1200 },
  server: {
    proxy: Object.fromEntries(
      ["/v1", "/admin/v1", "/local", "/config.json"].map((p) => [p, { target: api }]),
    ),
  },
});
