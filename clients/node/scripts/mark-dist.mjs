// Marks each build output folder with the module format Node must load it as:
// dist/esm and build/ are ES modules, dist/cjs is CommonJS.
import { existsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const targets = process.argv[2] === "build"
  ? [["build", "module"]]
  : [["dist/esm", "module"], ["dist/cjs", "commonjs"]];
for (const [dir, type] of targets) {
  const path = join(root, dir);
  if (!existsSync(path)) throw new Error(`${dir} does not exist: run the tsc build first`);
  writeFileSync(join(path, "package.json"), JSON.stringify({ type }, null, 2) + "\n");
}
