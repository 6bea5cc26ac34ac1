// audit_validate.mjs -- checks audit log lines against docs/audit.schema.json
// (JSON Schema draft 2020-12) with ajv, so a spec can prove that every line a
// test run wrote is what the schema promises.
//
// usage: node tests/audit_validate.mjs FILE...
// Every line of every FILE must be one JSON object that the schema accepts;
// an empty file is an error (a test that expected records got none). Prints
// "audit_validate: N lines valid" and exits 0, or prints each failing line
// with ajv's errors and exits 1.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "peers", "package.json"));
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const schema = JSON.parse(readFileSync(join(here, "..", "docs", "audit.schema.json"), "utf8"));
const ajv = new Ajv2020({ allErrors: true, strict: true });
addFormats(ajv);
const validate = ajv.compile(schema);

let lines = 0, bad = 0;
for (const file of process.argv.slice(2)) {
  const text = readFileSync(file, "utf8");
  if (text.length === 0) {
    console.log(`audit_validate: ${file} is empty`);
    bad++;
    continue;
  }
  if (!text.endsWith("\n")) {
    console.log(`audit_validate: ${file} does not end with a newline`);
    bad++;
  }
  for (const line of text.replace(/\n$/, "").split("\n")) {
    lines++;
    let record;
    try {
      record = JSON.parse(line);
    } catch (e) {
      console.log(`audit_validate: ${file}: not JSON (${e.message}): ${line}`);
      bad++;
      continue;
    }
    if (!validate(record)) {
      console.log(`audit_validate: ${file}: ${JSON.stringify(validate.errors)}: ${line}`);
      bad++;
    }
  }
}
console.log(bad ? `audit_validate: ${bad} of ${lines} lines invalid` : `audit_validate: ${lines} lines valid`);
process.exit(bad ? 1 : 0);
