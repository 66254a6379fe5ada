import { defineConfig } from "@playwright/test";

// Drives Debian's chromium (Playwright's own browser download is not used) against a local
// runner that scripts/test-console starts: TENANTRY_CONSOLE_URL is its address.
export default defineConfig({
  testDir: "e2e",
  outputDir: "test-results/playwright",
  timeout: 90_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  use: {
    baseURL: process.env.TENANTRY_CONSOLE_URL ?? "http://127.0.0.1:3000",
    headless: true,
    viewport: { width: 1280, height: 860 },
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      // This machine has no route out: without these, Chromium's background services try
      // (and fail) to reach Google at every start.
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
});
