// Removes build output (dist/ and build/) before a fresh build.
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
for (const dir of ["dist", "build"]) rmSync(join(root, dir), { recursive: true, force: true });
