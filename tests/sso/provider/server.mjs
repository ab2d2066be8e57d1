// A stand-in for Keycloak in the tests: npm `oidc-provider` (a certified OpenID Connect server) serving
// Keycloak's paths on loopback, with Keycloak-shaped claims.
//
//   node server.mjs --realm portfolio --client-id portfolio --client-secret s3cret \
//       --redirect-uri http://testserver/login/sso/callback/ [--port 0] [--users users.json]
//
// It listens on 127.0.0.1 (port 0: a free one) and prints one JSON line on stdout once it answers:
// {"issuer": "http://127.0.0.1:PORT/realms/REALM", "port": PORT}. Requests are logged on stderr.
//
// Served, as Keycloak does, under /realms/REALM: .well-known/openid-configuration and
// protocol/openid-connect/{auth,token,certs,userinfo,logout}. One confidential client (client_secret_post,
// PKCE with S256 required). The sign-in page (login-actions/UID) is a plain HTML form with Keycloak's field
// names and ids (username, password, kc-login), so a browser and a plain HTTP client can both fill it in;
// signing in grants the requested scopes at once (a first-party client: no consent page). Service-account
// clients (--service-client) get tokens by client credentials for the admin API stand-in under
// /admin/realms/REALM (admin.mjs), through which tests also disable, delete and regroup users.
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import Provider from "oidc-provider";

import { adminApi, serviceClients } from "./admin.mjs";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.OIDC_PORT ?? "0" },
    realm: { type: "string", default: process.env.OIDC_REALM ?? "portfolio" },
    "client-id": { type: "string", default: process.env.OIDC_CLIENT_ID ?? "portfolio" },
    "client-secret": { type: "string", default: process.env.OIDC_CLIENT_SECRET },
    // Repeatable, or a comma list in OIDC_REDIRECT_URIS.
    "redirect-uri": { type: "string", multiple: true, default: (process.env.OIDC_REDIRECT_URIS ?? "").split(",").filter(Boolean) },
    // Service-account clients (client credentials) and what they may do in the admin API: ID:SECRET:read|write.
    "service-client": { type: "string", multiple: true, default: [] },
    users: { type: "string", default: join(dirname(fileURLToPath(import.meta.url)), "users.json") },
  },
});
if (!args["client-secret"] || args["redirect-uri"].length === 0) {
  console.error("server.mjs: --client-secret and at least one --redirect-uri are required");
  process.exit(2);
}

const realmPath = `/realms/${args.realm}`;
const users = JSON.parse(readFileSync(args.users, "utf8"));
const bySub = new Map(users.map((user) => [user.sub, user]));
// Users disabled or deleted through the admin API can no longer sign in.
const active = (user) => user && user.enabled !== false ? user : undefined;
const byName = (username) => active([...bySub.values()].find((user) => user.username === username));
const services = serviceClients(args["service-client"]);

// What Keycloak's default mappers put into tokens (the `groups` mapper with full paths, realm roles).
function keycloakClaims(user) {
  return {
    sub: user.sub,
    preferred_username: user.username,
    name: user.name,
    email: user.email,
    email_verified: true,
    groups: user.groups,
    realm_access: { roles: user.realm_roles },
  };
}

const signingKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(args.port), "127.0.0.1", resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}${realmPath}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: args["client-id"],
      client_secret: args["client-secret"],
      redirect_uris: args["redirect-uri"],
      post_logout_redirect_uris: args["redirect-uri"].map((uri) => new URL("/", uri).href),
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
    },
    ...services.map((service) => ({
      client_id: service.clientId,
      client_secret: service.secret,
      redirect_uris: [],
      grant_types: ["client_credentials"],
      response_types: [],
      token_endpoint_auth_method: "client_secret_post",
    })),
  ],
  jwks: { keys: [{ ...signingKey, kid: randomUUID(), alg: "RS256", use: "sig" }] },
  cookies: { keys: [randomUUID()] },
  pkce: { required: () => true },
  routes: {
    authorization: "/protocol/openid-connect/auth",
    token: "/protocol/openid-connect/token",
    jwks: "/protocol/openid-connect/certs",
    userinfo: "/protocol/openid-connect/userinfo",
    end_session: "/protocol/openid-connect/logout",
    revocation: "/protocol/openid-connect/revoke",
    introspection: "/protocol/openid-connect/token/introspect",
  },
  scopes: ["openid", "email", "profile", "offline_access"],
  claims: {
    openid: ["sub", "preferred_username", "groups", "realm_access"],
    email: ["email", "email_verified"],
    profile: ["name"],
  },
  // Keycloak puts the user's claims into the ID token of the code flow too.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
  },
  interactions: { url: (ctx, interaction) => `${realmPath}/login-actions/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const user = active(bySub.get(sub));
    return user && { accountId: sub, claims: async () => keycloakClaims(user) };
  },
});

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(res, uid, { username = "", error = "" } = {}) {
  res.statusCode = error ? 401 : 200;
  res.setHeader("Content-Type", "text/html; charset=utf-8");
  res.end(`<!doctype html><html><head><title>Sign in to ${escape(args.realm)}</title></head><body>
<h1 id="kc-page-title">Sign in to your account</h1>
${error ? `<p id="input-error" role="alert">${escape(error)}</p>` : ""}
<form id="kc-form-login" method="post" action="${realmPath}/login-actions/${escape(uid)}">
<label for="username">Username or email</label><input id="username" name="username" value="${escape(username)}" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password">
<input id="kc-login" name="login" type="submit" value="Sign In">
</form></body></html>`);
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function loginActions(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error("interaction mismatch");
  if (req.method === "GET") return loginPage(res, uid);
  const form = await readForm(req);
  const user = byName(form.get("username") ?? "");
  if (!user || user.password !== form.get("password")) {
    return loginPage(res, uid, { username: form.get("username") ?? "", error: "Invalid username or password." });
  }
  const grant = new provider.Grant({ accountId: user.sub, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: user.sub }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

const handle = provider.callback();
const admin = adminApi({
  realm: args.realm,
  users: bySub,
  provider,
  signingKey,
  clients: services,
  clientId: args["client-id"],
});
const loginActionsPath = new RegExp(`^${realmPath}/login-actions/([A-Za-z0-9_-]+)$`);

server.on("request", (req, res) => {
  const started = Date.now();
  res.on("finish", () => console.error(`${req.method} ${req.originalUrl ?? req.url} ${res.statusCode} ${Date.now() - started}ms`));
  const path = req.url.split("?")[0];
  const action = path.match(loginActionsPath);
  if (path.startsWith(`${admin.prefix}/`)) {
    admin.handle(req, res).catch((error) => {
      console.error(error);
      res.statusCode = 500;
      res.end(JSON.stringify({ error: error.message }));
    });
  } else if (action) {
    loginActions(req, res, action[1]).catch((error) => {
      console.error(error);
      res.statusCode = 400;
      res.end(`login failed: ${error.message}`);
    });
  } else if (path === realmPath || path.startsWith(`${realmPath}/`)) {
    // Mounted the way Express mounts it: the provider finds its prefix from originalUrl.
    req.originalUrl = req.url;
    req.url = req.url.slice(realmPath.length) || "/";
    handle(req, res);
  } else {
    res.statusCode = 404;
    res.end("not found");
  }
});

provider.on("server_error", (ctx, error) => console.error("server_error", error));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
console.log(JSON.stringify({ issuer, port }));
