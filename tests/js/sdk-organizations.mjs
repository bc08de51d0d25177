// Two organizations through Commerce Layer's official JavaScript SDK: for each token in
// CL_TOKENS (JSON {slug: token}, each issued by that organization), a client built from the token
// alone (the SDK takes the organization from its `organization.slug` claim and calls
// `https://<slug>.<domain>/api`) lists the orders. Prints one JSON line per organization:
// {"slug", "ok": true, "currentOrganization", "ids"} or {"slug", "ok": false, "error"}.
// Run by tests/test_js_sdk.py with `node --require ./resolve-sandbox.cjs sdk-organizations.mjs`.
// Environment: CL_DOMAIN ("sandbox.test:PORT"), CL_TOKENS. Nothing secret is printed.

import { CommerceLayer } from "@commercelayer/sdk/bundle";

const DOMAIN = process.env.CL_DOMAIN;
const TOKENS = JSON.parse(process.env.CL_TOKENS || "{}");

for (const [slug, accessToken] of Object.entries(TOKENS)) {
  try {
    const cl = CommerceLayer({ accessToken, domain: DOMAIN });
    const ids = [];
    for (let page = 1; ; page += 1) {
      const orders = await cl.orders.list({ pageSize: 25, pageNumber: page, sort: { created_at: "asc" } });
      ids.push(...orders.map((o) => o.id));
      if (!orders.hasNextPage()) break;
    }
    process.stdout.write(`${JSON.stringify({ slug, ok: true, currentOrganization: cl.currentOrganization, ids })}\n`);
  } catch (err) {
    const error = { name: err?.name, message: err?.message, status: err?.status, errors: err?.errors };
    process.stdout.write(`${JSON.stringify({ slug, ok: false, error })}\n`);
  }
}
