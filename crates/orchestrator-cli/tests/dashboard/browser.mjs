// Debian's Chromium under Playwright, with the flags a root user on a
// closed network needs, and the frame every driver script runs in.
// Playwright gives every launch a fresh, empty user data directory.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

export async function launch() {
  return chromium.launch({
    executablePath: process.env.ORCH_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

// A page that records script errors and failed loads in `problems`.
export async function open(browser, problems) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
  return page;
}

export const T = { timeout: 30_000 };

// Runs `body(page, args, seen)` in a fresh browser: `args` are the
// script's arguments by `names` (one of them ARTIFACT_DIR).
// Prints `seen` (with the page's problems) as one JSON line; on a failure
// prints what was seen so far, keeps a screenshot and exits non-zero.
export async function drive(script, names, body) {
  const values = process.argv.slice(2);
  if (values.length !== names.length || values.some((v) => !v)) {
    console.error(`usage: node ${script} ${names.join(" ")}`);
    process.exit(2);
  }
  const args = Object.fromEntries(names.map((n, i) => [n, values[i]]));
  const artifacts = args.ARTIFACT_DIR;
  mkdirSync(artifacts, { recursive: true });
  const browser = await launch();
  const seen = {};
  const problems = [];
  let page;
  try {
    page = await open(browser, problems);
    await body(page, args, seen, problems);
    seen.problems = problems;
    console.log(JSON.stringify(seen));
  } catch (e) {
    console.error(`${script} failed: ${e.message}\nseen so far: ${JSON.stringify(seen)}\nproblems: ${problems.join("; ")}`);
    process.exitCode = 1;
    const shot = join(artifacts, `${script.replace(/\.mjs$/, "")}-failure.png`);
    await page?.screenshot({ path: shot, fullPage: true }).catch(() => {});
  } finally {
    await browser.close();
  }
}
