import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

// The backend serves clients/web/sdk/otako.js, compiled into its binary, so
// the Rust build needs no npm: that committed copy must be what tsc builds
// from src/ now (`npm test` builds first).
test("the chat page's committed SDK copy matches a fresh tsc build", async () => {
  const built = await readFile(new URL("../../dist/otako.js", import.meta.url), "utf8");
  const committed = await readFile(new URL("../../../web/sdk/otako.js", import.meta.url), "utf8");
  assert.ok(
    built === committed,
    "clients/web/sdk/otako.js is stale: run `npm run sync-web` in clients/js and commit it",
  );
});
