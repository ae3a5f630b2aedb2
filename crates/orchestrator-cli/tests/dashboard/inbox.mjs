// The inbox, clicked through as a user would, after a login with the admin
// token (a wrong one first, refused): answers a question by its
// choice, skips a failed stage, rejects an approval with feedback, sees the
// step come back for approval with a new checkpoint, and approves it.
//
// usage: node inbox.mjs BASE_URL ADMIN_TOKEN RUN_ID ARTIFACT_DIR
// Prints one JSON line of what it saw; exits non-zero on the first failure.
import { drive, T } from "./browser.mjs";
import { join } from "node:path";

await drive("inbox.mjs", ["BASE_URL", "ADMIN_TOKEN", "RUN_ID", "ARTIFACT_DIR"], async (page, args, seen, problems) => {
  const { BASE_URL: base, ADMIN_TOKEN: token, RUN_ID: runId, ARTIFACT_DIR: artifacts } = args;
  await page.goto(`${base}/ui/`);
  await page.locator("#token").fill("not-the-token");
  await page.locator("form.login button").click();
  await page.locator("#login-error", { hasText: "not accepted" }).waitFor(T);
  seen.wrong_token_refused = true;
  // The browser logs the refused request as an error: it was meant.
  problems.splice(0, problems.length, ...problems.filter((p) => !p.includes("401")));
  await page.locator("#token").fill(token);
  await page.locator("form.login button").click();
  await page.locator('nav a[data-view="inbox"]').click();
  const question = page.locator("#inbox [data-question]");
  const decision = page.locator(`#inbox [data-item="${runId}/flaky"]`);
  const approval = page.locator(`#inbox [data-item="${runId}/draft"]`);
  await question.waitFor(T);
  await decision.waitFor(T);
  await approval.waitFor(T);
  seen.items = await page.locator("#inbox > *").count();
  // The step's words are quoted under a label, not said in the page's voice.
  seen.question_quoted = await question
    .locator(".step-said", { hasText: "The step asks:" })
    .locator("blockquote.step-text", { hasText: "Which database?" })
    .count();
  // Steps are numbered as everywhere else (the CLI, commits, bundles): from 0.
  seen.approval_text = await approval.textContent();
  // The approval shows the change it would accept, file by file.
  const file = approval.locator('details.file[data-file="draft.md"]');
  await file.waitFor(T);
  await file.locator("summary").click();
  seen.approval_patch = await file.locator("pre.patch").textContent();
  seen.error_quoted = await decision
    .locator(".step-said", { hasText: "What was reported:" })
    .locator("blockquote.step-text")
    .count();
  seen.badge = (await page.locator("#inbox-count").textContent()).trim();
  await page.screenshot({ path: join(artifacts, "dashboard-inbox.png"), fullPage: true });

  await question.locator('button[data-action="answer"]', { hasText: "postgres" }).click();
  await question.waitFor({ state: "detached", ...T });
  await decision.locator('button[data-action="skip"]').click();
  await decision.waitFor({ state: "detached", ...T });

  // Rejecting needs feedback; the step runs again and comes back with a
  // new checkpoint commit.
  const before = await approval.locator("code[data-commit]").textContent();
  await approval.locator("textarea").fill("say v2, please");
  await approval.locator('button[data-action="reject"]').click();
  await page
    .locator(`#inbox [data-item="${runId}/draft"] code[data-commit]`)
    .filter({ hasNotText: before })
    .waitFor(T);
  seen.commit_changed = true;
  await approval.locator('button[data-action="approve"]').click();
  await page.locator("main", { hasText: "Nothing waits for you." }).waitFor(T);
  seen.badge_after = await page.locator("#inbox-count").isHidden();
});
