// The package as npm would ship it: the files `npm pack` puts in the tarball, one module
// with no imports, and types a strict TypeScript consumer compiles against.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const T = { timeout: 60_000 };

test("npm pack ships the module, its types, package.json and the README, nothing else", T, () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" });
  const [pack] = JSON.parse(out);
  assert.equal(pack.name, "tidings-client");
  const files = pack.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "dist/tidings.d.ts", "dist/tidings.js", "package.json"]);
  const manifest = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
  assert.equal(manifest.dependencies, undefined, "no runtime dependency");
  assert.equal(manifest.exports["."].default, "./dist/tidings.js");
  assert.equal(manifest.exports["."].types, "./dist/tidings.d.ts");
});

test("the module imports nothing, so a page can load it alone", T, async () => {
  const source = fs.readFileSync(path.join(root, "dist/tidings.js"), "utf8");
  assert.doesNotMatch(source, /^\s*import\s/m);
  assert.doesNotMatch(source, /\brequire\(/);
  const mod = await import("tidings-client");
  assert.deepEqual(Object.keys(mod).sort(), ["Job", "Subscription", "Tidings", "TidingsError", "idAfter"]);
});

test("a strict TypeScript consumer compiles against the types", T, () => {
  const tsc = path.join(root, "node_modules/.bin/tsc");
  execFileSync(
    tsc,
    ["-p", "test/tsconfig.json"],
    { cwd: root, encoding: "utf8" },
  );
});
