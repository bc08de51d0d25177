// Drives the Commerce Layer sandbox with Commerce Layer's official JavaScript SDK, as an
// integration would: @commercelayer/js-auth for the token, @commercelayer/sdk for the API,
// @commercelayer/sdk-utils for webhook signatures. Run by tests/test_js_sdk.py:
//
//   node --require ./resolve-sandbox.cjs sdk-checks.mjs
//
// It prints one JSON line per check, {"check": NAME, "ok": true, ...what it saw} or
// {"check": NAME, "ok": false, "error": {...}}; the pytest test asserts the values. A check that
// throws does not stop the others. Nothing secret is printed (no token, no shared secret).
//
// Environment: CL_DOMAIN ("sandbox.test:PORT", the TLS front), CL_CLIENT_ID, CL_CLIENT_SECRET,
// SANDBOX_CONTROL_URL (the sandbox's own /_sandbox control API, for the one thing Commerce
// Layer's API cannot do: shortening the token lifetime), HOOK_PORT (where this script's webhook
// receiver listens), SEEDED_HOOK_SECRET, SCENARIO (JSON: the ids the checks use),
// CL_FALLBACK_ORGANIZATION (see client_from_token).

import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";

import { authenticate, jwtDecode } from "@commercelayer/js-auth";
// The bundled client (`cl.orders...`, one adapter and token per client), the SDK README's default.
// ApiError itself is in the SDK's typings but not among its ESM runtime exports (7.12.1): the
// SDK's own predicates (CommerceLayerStatic.isApiError, client.isApiError) identify it.
import { CommerceLayerStatic } from "@commercelayer/sdk";
import { CommerceLayer } from "@commercelayer/sdk/bundle";
import { checkSignature, webhooks as hookUtils } from "@commercelayer/sdk-utils";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const DOMAIN = env("CL_DOMAIN");
const CLIENT_ID = env("CL_CLIENT_ID");
const CLIENT_SECRET = env("CL_CLIENT_SECRET");
const CONTROL = env("SANDBOX_CONTROL_URL");
const HOOK_PORT = Number(env("HOOK_PORT"));
const SEEDED_HOOK_SECRET = env("SEEDED_HOOK_SECRET");
const S = JSON.parse(env("SCENARIO"));
const FALLBACK_ORGANIZATION = env("CL_FALLBACK_ORGANIZATION");

const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

function describe(err) {
  const out = { name: err?.name, message: err?.message };
  if (err?.name === "ApiError") {
    Object.assign(out, {
      isApiError: CommerceLayerStatic.isApiError(err),
      clientIsApiError: cl ? cl.isApiError(err) : null,
      type: err.type,
      status: err.status,
      code: err.code,
      errors: err.errors,
    });
  } else if (err?.type) {
    out.type = err.type;
  }
  if (err?.source?.message) out.source = err.source.message;
  if (err?.cause?.code || err?.cause?.message) out.cause = err.cause.code || err.cause.message;
  return out;
}

const state = {}; // what later checks need from earlier ones

async function check(name, fn) {
  try {
    emit({ check: name, ok: true, ...(await fn()) });
  } catch (err) {
    emit({ check: name, ok: false, error: describe(err) });
  }
}

// The checks that expect an error: the SDK's error as data, or a note that none came.
async function expectError(fn) {
  try {
    const value = await fn();
    return { thrown: false, value: value?.id ?? null };
  } catch (err) {
    return { thrown: true, error: describe(err) };
  }
}

const ids = (list) => Array.from(list, (r) => r.id);
const related = (r) => (r == null ? r : { id: r.id, type: r.type, attributes: Object.keys(r).length > 2 });
// A payment source's card: what makes two payment source records pay with the same card.
const card = (ps) =>
  ps == null
    ? ps
    : {
        id: ps.id,
        type: ps.type,
        last4: ps.payment_instrument?.card_last_digits ?? null,
        paymentMethodId: ps.payment_method?.id ?? null,
      };

// -- the webhook receiver -------------------------------------------------------------------

const deliveries = []; // {path, headers, body}
let createdHookAnswers = 0;
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    deliveries.push({ path: req.url, headers: req.headers, body });
    // The webhook made through the SDK fails its first delivery: its circuit opens
    // (the scenario sets circuit_threshold 1, max_retries 0) and is then reset through the SDK.
    const fail = req.url === "/hooks/created" && createdHookAnswers++ === 0;
    res.writeHead(fail ? 500 : 204).end();
  });
});
await new Promise((resolve) => receiver.listen(HOOK_PORT, "127.0.0.1", resolve));

async function waitFor(predicate, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// -- token and client -------------------------------------------------------------------------

const credentials = { clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, domain: DOMAIN };
let cl;

await check("token", async () => {
  const auth = await authenticate("client_credentials", credentials);
  if (auth.errors) return { errors: auth.errors };
  state.token = auth.accessToken;
  const { header, payload } = jwtDecode(auth.accessToken);
  return {
    tokenType: auth.tokenType,
    expiresIn: auth.expiresIn,
    scope: auth.scope,
    expiresIsDate: auth.expires instanceof Date,
    header: { alg: header.alg, typ: header.typ },
    payload,
  };
});

await check("token_refused", async () => {
  const auth = await authenticate("client_credentials", { ...credentials, clientSecret: "wrong-secret" });
  return { accessToken: auth.accessToken ?? null, errors: auth.errors ?? null };
});

await check("client_from_token", async () => {
  // The organization comes from the token: CommerceLayer() throws "Undefined 'organization'
  // parameter" when the token is not a JWT carrying organization.slug.
  try {
    cl = CommerceLayer({ accessToken: state.token, domain: DOMAIN });
  } catch (err) {
    // This check has failed; the others still run, with the organization given explicitly
    // (CL_FALLBACK_ORGANIZATION), so that one missing feature does not hide the rest.
    cl = CommerceLayer({ accessToken: state.token, domain: DOMAIN, organization: FALLBACK_ORGANIZATION });
    throw err;
  }
  return { currentOrganization: cl.currentOrganization };
});

// -- orders -------------------------------------------------------------------------------------

await check("orders_list", async () => {
  const page = await cl.orders.list({
    filters: { customer_id_eq: S.customer },
    include: ["customer"],
    sort: { created_at: "asc" },
    pageSize: 2,
  });
  const all = await cl.orders.list({ filters: { customer_id_eq: S.customer }, pageSize: 25 });
  return {
    ids: ids(page),
    recordCount: page.recordCount,
    pageCount: page.pageCount,
    hasNextPage: page.hasNextPage(),
    customerEmails: page.map((o) => o.customer?.email ?? null),
    allIds: ids(all),
  };
});

const ORDER_INCLUDE = [
  "customer",
  "market",
  "line_items",
  "payment_source",
  "available_customer_payment_sources.payment_source",
];

await check("orders_retrieve_include", async () => {
  const o = await cl.orders.retrieve(S.save_order, { include: ORDER_INCLUDE });
  return {
    id: o.id,
    status: o.status,
    customer: o.customer ? { id: o.customer.id, email: o.customer.email } : null,
    market: o.market ? { id: o.market.id, code: o.market.code } : null,
    lineItems: (o.line_items ?? []).map((li) => ({ id: li.id, sku_code: li.sku_code, quantity: li.quantity })),
    paymentSource: o.payment_source ? { id: o.payment_source.id, type: o.payment_source.type } : null,
    wallet: (o.available_customer_payment_sources ?? []).map((w) => ({
      id: w.id,
      name: w.name ?? null,
      paymentSource: related(w.payment_source),
      last4: w.payment_source?.payment_instrument?.card_last_digits ?? null,
    })),
    notIncluded: { shipments: o.shipments === undefined, payment_method: o.payment_method === undefined },
  };
});

await check("document_shape", async () => {
  // The raw JSON:API document behind an SDK call: links and top-level meta are not on the
  // denormalized resource.
  const reader = cl.addRawResponseReader({ headers: true });
  try {
    await cl.orders.retrieve(S.save_order, { include: ["customer"] });
  } finally {
    cl.removeRawResponseReader();
  }
  const doc = reader.rawResponse;
  const rels = doc.data.relationships;
  return {
    topMeta: doc.meta ?? null,
    selfLink: doc.data.links?.self ?? null,
    customerRelatedLink: rels.customer?.links?.related ?? null,
    customerLinkage: rels.customer?.data ?? null,
    marketHasData: "data" in (rels.market ?? {}),
    lineItemsHasData: "data" in (rels.line_items ?? {}),
    includedTypes: (doc.included ?? []).map((r) => r.type),
    contentType: reader.headers?.["content-type"] ?? null,
  };
});

await check("related_available_customer_payment_sources", async () => {
  const list = await cl.orders.available_customer_payment_sources(S.save_order, { include: ["payment_source"] });
  return {
    ids: ids(list),
    recordCount: list.recordCount,
    paymentSources: list.map((w) => related(w.payment_source)),
  };
});

await check("related_customer", async () => {
  const c = await cl.orders.customer(S.save_order);
  return { id: c.id, type: c.type, email: c.email };
});

await check("related_market", async () => {
  const m = await cl.orders.market(S.save_order);
  return { id: m.id, type: m.type, code: m.code };
});

await check("related_line_items", async () => {
  const list = await cl.orders.line_items(S.save_order);
  return { ids: ids(list), recordCount: list.recordCount, skuCodes: list.map((li) => li.sku_code) };
});

await check("customer_payment_sources", async () => {
  const list = await cl.customers.customer_payment_sources(S.customer);
  return { ids: ids(list), recordCount: list.recordCount };
});

// -- the wallet: save on one order, reuse on another order of the same customer -----------------

await check("wallet_save", async () => {
  const before = ids(await cl.customers.customer_payment_sources(S.customer));
  const o = await cl.orders.update(
    { id: S.save_order, _save_payment_source_to_customer_wallet: true },
    { include: ["payment_source", "available_customer_payment_sources"] },
  );
  const after = await cl.customers.customer_payment_sources(S.customer, { include: ["payment_source"] });
  const added = after.filter((w) => !before.includes(w.id));
  state.savedEntry = added.length === 1 ? added[0].id : null;
  return {
    before,
    after: ids(after),
    added: added.map((w) => ({ id: w.id, name: w.name, paymentSource: related(w.payment_source) })),
    orderPaymentSource: o.payment_source?.id ?? null,
    orderWallet: ids(o.available_customer_payment_sources ?? []),
  };
});

await check("wallet_reuse", async () => {
  if (!state.savedEntry) throw new Error("no entry saved by wallet_save");
  const saved = await cl.orders.retrieve(S.save_order, { include: ["payment_source"] });
  const before = await cl.orders.retrieve(S.reuse_order, { include: ["payment_source"] });
  const o = await cl.orders.update(
    { id: S.reuse_order, _customer_payment_source_id: state.savedEntry },
    { include: ["payment_source"] },
  );
  const again = await cl.orders.retrieve(S.reuse_order, { include: ["payment_source"] });
  return {
    entry: state.savedEntry,
    saved: card(saved.payment_source),
    before: card(before.payment_source),
    answer: card(o.payment_source),
    reread: card(again.payment_source),
  };
});

// -- errors surface as the SDK's ApiError -------------------------------------------------------

await check("error_not_found", async () => expectError(() => cl.orders.retrieve(S.missing_order)));

await check("error_invalid_include", async () =>
  expectError(() => cl.orders.retrieve(S.save_order, { include: ["no_such_relationship"] })),
);

await check("error_validation", async () =>
  expectError(() => cl.orders.update({ id: S.reuse_order, _customer_payment_source_id: S.other_wallet_entry })),
);

// -- webhooks: create, signed deliveries, circuit reset -----------------------------------------

await check("webhook_create", async () => {
  const hook = await cl.webhooks.create({
    name: "sdk-created",
    topic: "orders.place",
    callback_url: `http://127.0.0.1:${HOOK_PORT}/hooks/created`,
    include_resources: ["customer", "line_items"],
  });
  state.hook = hook;
  return {
    id: hook.id,
    topic: hook.topic,
    callbackUrl: hook.callback_url,
    includeResources: hook.include_resources,
    circuitState: hook.circuit_state,
    circuitFailureCount: hook.circuit_failure_count,
    sharedSecretLength: typeof hook.shared_secret === "string" ? hook.shared_secret.length : null,
  };
});

function verify(delivery, secret, otherSecret) {
  const tampered = delivery.body.replace(`"${S.draft_order}"`, `"${S.reuse_order}"`);
  let parsed = null;
  try {
    const order = hookUtils.parse.orders(delivery.body);
    parsed = { id: order.id, status: order.status, customerEmail: order.customer?.email ?? null };
  } catch (err) {
    parsed = { error: err.message };
  }
  return {
    topicHeader: delivery.headers["x-commercelayer-topic"] ?? null,
    contentType: delivery.headers["content-type"] ?? null,
    valid: checkSignature(delivery.body, delivery.headers, secret),
    tamperedBodyChanged: tampered !== delivery.body,
    tampered: checkSignature(tampered, delivery.headers, secret).ok,
    wrongSecret: checkSignature(delivery.body, delivery.headers, otherSecret).ok,
    signatureOnly: checkSignature(delivery.body, delivery.headers["x-commercelayer-signature"], secret).ok,
    parsed,
  };
}

await check("webhook_deliveries", async () => {
  if (!state.hook) throw new Error("no webhook created by webhook_create");
  const placed = await cl.orders._place(S.draft_order);
  await waitFor(
    () => deliveries.some((d) => d.path === "/hooks/seeded") && deliveries.some((d) => d.path === "/hooks/created"),
    "a delivery to each webhook",
  );
  const seeded = deliveries.find((d) => d.path === "/hooks/seeded");
  const created = deliveries.find((d) => d.path === "/hooks/created");
  return {
    placedStatus: placed.status,
    seeded: verify(seeded, SEEDED_HOOK_SECRET, state.hook.shared_secret),
    created: verify(created, state.hook.shared_secret, SEEDED_HOOK_SECRET),
  };
});

await check("webhook_reset_circuit", async () => {
  if (!state.hook) throw new Error("no webhook created by webhook_create");
  const open = await waitFor(async () => {
    const h = await cl.webhooks.retrieve(state.hook.id);
    return h.circuit_state === "open" ? h : null;
  }, "the circuit to open", 5_000);
  const reset = await cl.webhooks.update({ id: state.hook.id, _reset_circuit: true });
  const reread = await cl.webhooks.retrieve(state.hook.id);
  return {
    open: { state: open.circuit_state, failures: open.circuit_failure_count },
    answer: { state: reset.circuit_state, failures: reset.circuit_failure_count },
    reread: { state: reread.circuit_state, failures: reread.circuit_failure_count },
  };
});

// -- token expiry: a short-lived token, refused after exp, refreshed by the SDK -----------------

async function setTokenTtl(seconds) {
  const r = await fetch(`${CONTROL}/config`, {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token_ttl: seconds }),
  });
  if (!r.ok) throw new Error(`PUT /_sandbox/config answered ${r.status}`);
}

await check("token_expiry", async () => {
  await setTokenTtl(S.short_ttl);
  let auth;
  try {
    auth = await authenticate("client_credentials", credentials);
  } finally {
    await setTokenTtl(7200);
  }
  if (auth.errors) return { errors: auth.errors };
  const { payload } = jwtDecode(auth.accessToken);
  const short = CommerceLayer({ accessToken: auth.accessToken, domain: DOMAIN });
  const fresh = (await short.orders.retrieve(S.save_order)).id;
  const expiredBefore = CommerceLayerStatic.isTokenExpired(auth.accessToken);
  // Both clocks have passed exp: the JWT's (what the SDK reads) and the sandbox's.
  await sleep(Math.max(0, payload.exp * 1000 - Date.now()) + 1200);
  const expiredAfter = CommerceLayerStatic.isTokenExpired(auth.accessToken);
  const expired = await expectError(() => short.orders.retrieve(S.save_order));
  let refreshCalls = 0;
  let refreshedWithOld = false;
  short.config({
    refreshToken: async (old) => {
      refreshCalls += 1;
      refreshedWithOld = old === auth.accessToken;
      return (await authenticate("client_credentials", credentials)).accessToken;
    },
  });
  const refreshed = (await short.orders.retrieve(S.save_order)).id;
  return {
    expiresIn: auth.expiresIn,
    lifetime: payload.exp - payload.iat,
    fresh,
    isTokenExpired: { before: expiredBefore, after: expiredAfter },
    expired,
    refreshed,
    refreshCalls,
    refreshedWithOld,
    tokenReplaced: short.currentAccessToken !== auth.accessToken,
  };
});

receiver.close();
