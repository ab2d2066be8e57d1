// A stand-in for Keycloak in the tests: npm `oidc-provider` (a certified OpenID Connect server) serving
// Keycloak's paths on loopback, with Keycloak-shaped claims.
//
//   node server.mjs --realm portfolio --client-id portfolio --client-secret s3cret \
//       --redirect-uri http://testserver/login/sso/callback/ [--port 0] [--users users.json]
//       [--api-audience portfolio] [--service-client-id ci-runner --service-client-secret s3cret2]
//
// It listens on 127.0.0.1 (port 0: a free one) and prints one JSON line on stdout once it answers:
// {"issuer": "http://127.0.0.1:PORT/realms/REALM", "port": PORT}. Requests are logged on stderr.
//
// Served, as Keycloak does, under /realms/REALM: .well-known/openid-configuration and
// protocol/openid-connect/{auth,token,certs,userinfo,logout}. One confidential client (client_secret_post,
// PKCE with S256 required), sent back-channel logout tokens at --backchannel-logout-uri when one is given.
// The sign-in page (login-actions/UID) is a plain HTML form with Keycloak's field names and ids (username, password, kc-login), so a browser and a plain HTTP client can both fill it in;
// signing in grants the requested scopes at once (a first-party client: no consent page).
//
// Access tokens are JWTs signed by the realm's key, as Keycloak's are: for the API audience (--api-audience,
// the client id by default; Keycloak's audience mapper), with Keycloak's claims (typ "Bearer", azp,
// preferred_username, realm_access). A second confidential client (--service-client-id) has only the
// client_credentials grant: its tokens are a Keycloak service account's (sub a UUID, preferred_username
// service-account-CLIENT). A token for another audience comes with resource=urn:audience:NAME (tests only).
//
// More service-account clients (--service-client ID:SECRET:read|write[+view-clients]) get tokens by client
// credentials for the admin API stand-in under /admin/realms/REALM (admin.mjs), through which tests also
// disable, delete and regroup users; only one with +view-clients sees clients, as in Keycloak.
import { createHash, generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import Provider, { errors } from "oidc-provider";

import { adminApi, serviceClients } from "./admin.mjs";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.OIDC_PORT ?? "0" },
    realm: { type: "string", default: process.env.OIDC_REALM ?? "portfolio" },
    "client-id": { type: "string", default: process.env.OIDC_CLIENT_ID ?? "portfolio" },
    "client-secret": { type: "string", default: process.env.OIDC_CLIENT_SECRET },
    // Repeatable, or a comma list in OIDC_REDIRECT_URIS.
    "redirect-uri": { type: "string", multiple: true, default: (process.env.OIDC_REDIRECT_URIS ?? "").split(",").filter(Boolean) },
    // Service-account clients (client credentials) and what they may do in the admin API:
    // ID:SECRET:read|write[+view-clients].
    "service-client": { type: "string", multiple: true, default: [] },
    users: { type: "string", default: join(dirname(fileURLToPath(import.meta.url)), "users.json") },
    // Where the realm POSTs back-channel logout tokens (the client's backchannel_logout_uri), if anywhere.
    "backchannel-logout-uri": { type: "string", default: process.env.OIDC_BACKCHANNEL_LOGOUT_URI },
    "api-audience": { type: "string", default: process.env.OIDC_API_AUDIENCE },
    "service-client-id": { type: "string", default: process.env.OIDC_SERVICE_CLIENT_ID ?? "ci-runner" },
    "service-client-secret": { type: "string", default: process.env.OIDC_SERVICE_CLIENT_SECRET },
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

// What Keycloak's default mappers put into tokens (the `groups` mapper with full paths, effective realm
// roles: a user's own and their groups').
function keycloakClaims(user) {
  return {
    sub: user.sub,
    preferred_username: user.username,
    name: user.name,
    email: user.email,
    email_verified: true,
    groups: user.groups,
    realm_access: { roles: admin.effectiveRealmRoles(user) },
  };
}

// API access tokens, as Keycloak issues them (see the header). Keycloak has no resource indicators: here
// every token is for the resource urn:audience:AUDIENCE, the API's by default.
const apiAudience = args["api-audience"] ?? args["client-id"];
const resourcePrefix = "urn:audience:";
// A service account's subject is a stable UUID, as Keycloak's service-account user's id is.
const serviceAccountSub = (clientId) => {
  const hex = createHash("sha256").update(`${args.realm}/${clientId}`).digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
};

function accessTokenClaims(token) {
  const common = { typ: "Bearer", azp: token.clientId };
  if (token.kind === "ClientCredentials") {
    return {
      ...common,
      preferred_username: `service-account-${token.clientId}`,
      realm_access: { roles: [`default-roles-${args.realm}`] },
    };
  }
  const user = bySub.get(token.accountId);
  return user ? { ...common, ...keycloakClaims(user) } : common;
}

function withApiTokens(configuration) {
  const serviceClients = args["service-client-secret"]
    ? [
        {
          client_id: args["service-client-id"],
          client_secret: args["service-client-secret"],
          redirect_uris: [],
          response_types: [],
          grant_types: ["client_credentials"],
          token_endpoint_auth_method: "client_secret_post",
        },
      ]
    : [];
  return {
    ...configuration,
    clients: [...configuration.clients, ...serviceClients],
    features: {
      ...configuration.features,
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf ?? `${resourcePrefix}${apiAudience}`,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          if (!indicator.startsWith(resourcePrefix)) throw new errors.InvalidTarget();
          const audience = indicator.slice(resourcePrefix.length);
          return { audience, scope: "openid profile email", accessTokenFormat: "jwt", accessTokenTTL: 300 };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => accessTokenClaims(token),
    formats: {
      customizers: {
        // oidc-provider makes a client's own token's subject the client id; Keycloak, its service account.
        async jwt(ctx, token, jwt) {
          if (token.kind === "ClientCredentials") jwt.payload.sub = serviceAccountSub(token.clientId);
        },
      },
    },
  };
}

const signingKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(args.port), "127.0.0.1", resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}${realmPath}`;

const provider = new Provider(issuer, withApiTokens({
  clients: [
    {
      client_id: args["client-id"],
      client_secret: args["client-secret"],
      redirect_uris: args["redirect-uri"],
      post_logout_redirect_uris: args["redirect-uri"].flatMap((uri) => [new URL("/", uri).href, new URL("/login/", uri).href]),
      ...(args["backchannel-logout-uri"] && { backchannel_logout_uri: args["backchannel-logout-uri"] }),
      ...(args["backchannel-logout-uri"] && { backchannel_logout_session_required: true }),
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
    backchannelLogout: { enabled: true },
    clientCredentials: { enabled: true },
  },
  // Back-channel logout tokens go to the tests' own loopback server: without the SSRF guard, which refuses
  // special-use addresses (loopback among them).
  fetch: (url, options) => globalThis.fetch(url, { ...options, dispatcher: undefined }),
  interactions: { url: (ctx, interaction) => `${realmPath}/login-actions/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const user = active(bySub.get(sub));
    return user && { accountId: sub, claims: async () => keycloakClaims(user) };
  },
}));

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
  if (details.params.resource) grant.addResourceScope(details.params.resource, details.params.scope);
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
