// Preloaded with `node --require ./resolve-sandbox.cjs`: names under the sandbox's domain
// resolve to 127.0.0.1, inside this node process only.
//
// Commerce Layer's SDK and js-auth build their URLs themselves, `https://<slug>.<domain>/api`
// and `https://auth.<domain>/oauth/token`; neither takes a base URL. `domain` may carry a port
// (both pass it through `new URL`), so CL_DOMAIN="sandbox.test:PORT" reaches nginx's free loopback
// port with no port rewriting: only the name needs resolving. Overriding `dns.lookup` (which
// `net`/`tls`, and so Node's built-in fetch, call for every connection) for that one domain is the
// least invasive way: no /etc/hosts, no extra npm package (undici's dispatcher would need one),
// no change to the SDK's requests; TLS still checks the certificate against the real name.
// Every other name goes to the system resolver unchanged.
"use strict";

const dns = require("node:dns");

const domain = (process.env.CL_DOMAIN || "").split(":")[0].toLowerCase();
if (!domain) throw new Error("resolve-sandbox.cjs: CL_DOMAIN is not set");

const systemLookup = dns.lookup;

dns.lookup = function lookup(hostname, options, callback) {
  if (typeof options === "function") {
    callback = options;
    options = {};
  } else if (typeof options === "number") {
    options = { family: options };
  }
  const name = String(hostname).toLowerCase().replace(/\.$/, "");
  if (name !== domain && !name.endsWith(`.${domain}`)) {
    return systemLookup.call(this, hostname, options, callback);
  }
  if (options && options.all) {
    process.nextTick(callback, null, [{ address: "127.0.0.1", family: 4 }]);
  } else {
    process.nextTick(callback, null, "127.0.0.1", 4);
  }
  return {};
};
