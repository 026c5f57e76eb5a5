// Validates Istio resources against Istio's own CRD schemas, as compiled into
// the npm package @kubernetes-models/istio (generated from Istio's
// crd-all.gen.yaml; the version is pinned in package-lock.json beside this
// file). Called by validate.py, not by hand:
//
//   STSGATE_NODE_MODULES=.tools/validate/node/node_modules node istio_crd_validate.mjs < docs.json
//
// stdin: a JSON array of resources. stdout: a JSON array, one entry per
// resource, {"ok": true} or {"ok": false, "error": "..."}. Exit status 0 when
// every resource could be checked (valid or not), 2 when the package is missing.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.STSGATE_NODE_MODULES;
const pkg = modules && join(modules, "@kubernetes-models", "istio");
if (!pkg || !existsSync(join(pkg, "package.json"))) {
  console.error(`istio_crd_validate: @kubernetes-models/istio not found under ${modules}: run scripts/install-tools.sh`);
  process.exit(2);
}

const docs = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const doc of docs) {
  results.push(await check(doc));
}
process.stdout.write(JSON.stringify(results));

async function check(doc) {
  const apiVersion = String(doc?.apiVersion ?? "");
  const kind = String(doc?.kind ?? "");
  const slash = apiVersion.indexOf("/");
  if (slash < 0 || !/^[A-Za-z]+$/.test(kind)) {
    return { ok: false, error: `not an Istio resource: apiVersion ${JSON.stringify(apiVersion)}, kind ${JSON.stringify(kind)}` };
  }
  const file = join(pkg, apiVersion.slice(0, slash), apiVersion.slice(slash + 1), `${kind}.js`);
  if (!existsSync(file)) {
    return { ok: false, error: `no Istio CRD schema for ${apiVersion} ${kind} in @kubernetes-models/istio` };
  }
  const mod = await import(pathToFileURL(file).href);
  const Model = mod[kind];
  try {
    new Model(doc).validate();
    return { ok: true };
  } catch (e) {
    return { ok: false, error: String(e?.message ?? e) };
  }
}
