// A stand-in for the part of Keycloak's admin REST API that the directory sync reads (and that the tests
// use to change the realm): users, groups, realm and client role members, each user's effective roles (their
// own and their groups'), and groups' realm roles, under /admin/realms/REALM.
// No Keycloak server can run on these machines; the shapes are Keycloak's (UserRepresentation,
// GroupRepresentation, paging with `first` and `max`), the calls are the ones python-keycloak makes.
//
// Callers present an access token of a service-account client (client credentials grant at the realm's
// token endpoint). A client given "read" may read (Keycloak's realm-management `view-users`); "write" may
// also disable, delete and move users between groups (`manage-users`); anyone else gets 401 or 403. As in
// Keycloak, GET /clients lists a client only to a caller who may view it (`view-clients`, added to either as
// "read+view-clients"): `view-users` lets the call through (it includes `query-users`) with an empty list.
import { createHash, createPublicKey, verify } from "node:crypto";

const uuidOf = (text) => {
  const hex = createHash("sha1").update(text).digest("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
};

function parentsOf(path) {
  const parts = path.split("/").filter(Boolean);
  return parts.map((_, index) => `/${parts.slice(0, index + 1).join("/")}`);
}

export function serviceClients(specs) {
  // "--service-client ID:SECRET:read|write[+view-clients]", repeatable.
  return specs.map((spec) => {
    const [clientId, secret, rights = ""] = spec.split(":");
    const [access, ...more] = rights.split("+");
    if (!clientId || !secret || !["read", "write"].includes(access) || more.some((right) => right !== "view-clients")) {
      throw new Error(`--service-client ${spec}: expected ID:SECRET:read|write[+view-clients]`);
    }
    return { clientId, secret, access, viewClients: more.includes("view-clients") };
  });
}

export function adminApi({ realm, users, provider, signingKey, clients, clientId }) {
  const prefix = `/admin/realms/${realm}`;
  const access = new Map(clients.map((client) => [client.clientId, client.access]));
  const viewsClients = new Set(clients.filter((client) => client.viewClients).map((client) => client.clientId));
  const publicKey = createPublicKey({ key: signingKey, format: "jwk" });
  const groups = new Map(); // path -> {id, name, path}
  for (const user of users.values()) {
    for (const path of user.groups ?? []) for (const parent of parentsOf(path)) addGroup(parent);
  }
  function addGroup(path) {
    if (!groups.has(path)) groups.set(path, { id: uuidOf(path), name: path.split("/").pop(), path });
  }
  const groupById = (id) => [...groups.values()].find((group) => group.id === id);
  const clientUuid = uuidOf(`client:${clientId}`);
  const groupRoles = new Map(); // path -> Set of realm roles mapped to the group (and so to its subgroups)

  // A user's effective realm roles, as Keycloak puts them into tokens and lists them under
  // /users/ID/role-mappings/realm/composite: their own and those of every group they are in or under.
  function effectiveRealmRoles(user) {
    const roles = new Set(user.realm_roles ?? []);
    for (const path of user.groups ?? []) {
      for (const parent of parentsOf(path)) for (const role of groupRoles.get(parent) ?? []) roles.add(role);
    }
    return [...roles].sort();
  }
  const roleOf = (name, containerId) => ({ id: uuidOf(`role:${containerId}:${name}`), name, composite: false, containerId });

  const represent = (user) => ({
    id: user.sub,
    username: user.username,
    enabled: user.enabled !== false,
    email: user.email,
    firstName: (user.name ?? "").split(" ")[0],
    lastName: (user.name ?? "").split(" ").slice(1).join(" "),
  });

  async function callerAccess(req) {
    const header = req.headers.authorization ?? "";
    const token = header.startsWith("Bearer ") ? header.slice(7) : "";
    if (!token) return null;
    let client = null;
    const parts = token.split(".");
    if (parts.length === 3) {
      // A JWT access token: signed by the realm's key, unexpired.
      const signed = verify("RSA-SHA256", Buffer.from(`${parts[0]}.${parts[1]}`), publicKey, Buffer.from(parts[2], "base64url"));
      const claims = signed ? JSON.parse(Buffer.from(parts[1], "base64url")) : null;
      if (claims && claims.exp > Date.now() / 1000) client = claims.client_id ?? claims.azp;
    } else {
      const found = await provider.ClientCredentials.find(token);
      if (found && !found.isExpired) client = found.clientId;
    }
    return client === null ? null : { granted: access.get(client) ?? "none", viewClients: viewsClients.has(client) };
  }

  function page(items, query) {
    const first = Math.max(0, Number(query.get("first") ?? 0) || 0);
    const max = Number(query.get("max") ?? -1);
    return max >= 0 ? items.slice(first, first + max) : items.slice(first);
  }

  function send(res, status, body) {
    res.statusCode = status;
    res.setHeader("Content-Type", "application/json");
    res.end(body === undefined ? "" : JSON.stringify(body));
  }

  async function readJson(req) {
    let body = "";
    for await (const chunk of req) body += chunk;
    return body ? JSON.parse(body) : {};
  }

  const routes = [
    ["GET", /^\/users$/, "read", (m, q) => [200, page([...users.values()].map(represent), q)]],
    ["GET", /^\/users\/([^/]+)$/, "read", (m) => (users.has(m[1]) ? [200, represent(users.get(m[1]))] : [404, { error: "User not found" }])],
    [
      "GET", /^\/users\/([^/]+)\/groups$/, "read",
      (m, q) => (users.has(m[1]) ? [200, page((users.get(m[1]).groups ?? []).map((path) => groups.get(path)), q)] : [404, { error: "User not found" }]),
    ],
    [
      "GET", /^\/group-by-path\/(.+)$/, "read",
      (m) => {
        const path = `/${decodeURIComponent(m[1]).replace(/^\/+/, "")}`;
        return groups.has(path) ? [200, groups.get(path)] : [404, { error: "Group path does not exist" }];
      },
    ],
    [
      "GET", /^\/groups\/([^/]+)\/members$/, "read",
      (m, q) => {
        const group = groupById(m[1]);
        if (!group) return [404, { error: "Could not find group by id" }];
        return [200, page([...users.values()].filter((user) => (user.groups ?? []).includes(group.path)).map(represent), q)];
      },
    ],
    [
      "GET", /^\/roles\/([^/]+)\/users$/, "read",
      (m, q) => {
        const role = decodeURIComponent(m[1]);
        const holders = [...users.values()].filter((user) => (user.realm_roles ?? []).includes(role));
        return holders.length || role.startsWith("default-roles") ? [200, page(holders.map(represent), q)] : [404, { error: "Could not find role" }];
      },
    ],
    [
      "GET", /^\/users\/([^/]+)\/role-mappings\/realm\/composite$/, "read",
      (m) => (users.has(m[1]) ? [200, effectiveRealmRoles(users.get(m[1])).map((name) => ({ ...roleOf(name, realm), clientRole: false }))] : [404, { error: "User not found" }]),
    ],
    [
      "GET", /^\/users\/([^/]+)\/role-mappings\/clients\/([^/]+)\/composite$/, "read",
      (m) => {
        if (!users.has(m[1])) return [404, { error: "User not found" }];
        if (m[2] !== clientUuid) return [404, { error: "Could not find client" }];
        const roles = users.get(m[1]).client_roles?.[clientId] ?? [];
        return [200, roles.map((name) => ({ ...roleOf(name, clientUuid), clientRole: true }))];
      },
    ],
    [
      "GET", /^\/clients$/, "read",
      (m, q, req, caller) => [200, caller.viewClients && q.get("clientId") === clientId ? [{ id: clientUuid, clientId }] : []],
    ],
    [
      "GET", /^\/clients\/([^/]+)\/roles\/([^/]+)\/users$/, "read",
      (m, q) => {
        if (m[1] !== clientUuid) return [404, { error: "Could not find client" }];
        const role = decodeURIComponent(m[2]);
        return [200, page([...users.values()].filter((user) => (user.client_roles?.[clientId] ?? []).includes(role)).map(represent), q)];
      },
    ],
    [
      "PUT", /^\/users\/([^/]+)$/, "write",
      async (m, q, req) => {
        const user = users.get(m[1]);
        if (!user) return [404, { error: "User not found" }];
        const body = await readJson(req);
        if ("enabled" in body) user.enabled = Boolean(body.enabled);
        return [204];
      },
    ],
    ["DELETE", /^\/users\/([^/]+)$/, "write", (m) => (users.delete(m[1]) ? [204] : [404, { error: "User not found" }])],
    [
      "PUT", /^\/users\/([^/]+)\/groups\/([^/]+)$/, "write",
      (m) => {
        const user = users.get(m[1]);
        const group = groupById(m[2]);
        if (!user || !group) return [404, { error: "Not found" }];
        user.groups = [...new Set([...(user.groups ?? []), group.path])];
        return [204];
      },
    ],
    [
      "DELETE", /^\/users\/([^/]+)\/groups\/([^/]+)$/, "write",
      (m) => {
        const user = users.get(m[1]);
        const group = groupById(m[2]);
        if (!user || !group) return [404, { error: "Not found" }];
        user.groups = (user.groups ?? []).filter((path) => path !== group.path);
        return [204];
      },
    ],
    [
      "POST", /^\/groups\/([^/]+)\/role-mappings\/realm$/, "write",
      async (m, q, req) => {
        const group = groupById(m[1]);
        if (!group) return [404, { error: "Could not find group by id" }];
        const held = groupRoles.get(group.path) ?? new Set();
        for (const role of await readJson(req)) held.add(role.name);
        groupRoles.set(group.path, held);
        return [204];
      },
    ],
    [
      "DELETE", /^\/groups\/([^/]+)\/role-mappings\/realm$/, "write",
      async (m, q, req) => {
        const group = groupById(m[1]);
        if (!group) return [404, { error: "Could not find group by id" }];
        for (const role of await readJson(req)) groupRoles.get(group.path)?.delete(role.name);
        return [204];
      },
    ],
  ];

  return {
    prefix,
    effectiveRealmRoles,
    async handle(req, res) {
      const url = new URL(req.url, "http://stand-in");
      const path = url.pathname.slice(prefix.length);
      const caller = await callerAccess(req);
      if (caller === null) return send(res, 401, { error: "HTTP 401 Unauthorized" });
      const { granted } = caller;
      for (const [method, pattern, needs, answer] of routes) {
        const match = path.match(pattern);
        if (!match || method !== req.method) continue;
        if (granted !== "write" && (granted !== "read" || needs !== "read")) return send(res, 403, { error: "HTTP 403 Forbidden" });
        const [status, body] = await answer(match, url.searchParams, req, caller);
        return send(res, status, body);
      }
      return send(res, 404, { error: "HTTP 404 Not Found" });
    },
  };
}
