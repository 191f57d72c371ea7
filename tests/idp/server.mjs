// Auth0-shaped OpenID provider for DefenseClaw tests.
//
// A real oidc-provider (9.13.3) instance configured the way an Auth0 tenant behaves:
// Auth0 endpoint paths, `audience` mapped to a resource indicator (RS256 JWT access
// tokens for the API), the `interval` field, Auth0's 403/429 status codes, `slow_down`
// with `Retry-After`, CIBA in poll mode with Auth0's `iss_sub` login_hint, and
// loopback-only admin endpoints under /__admin/ that approve or deny requests without a
// browser, create users and inject failures.
//
// Usage: node server.mjs [--port N] [--host 127.0.0.1] [--config FILE_OR_JSON]
// Env:   IDP_PORT (or PORT), IDP_HOST, IDP_CONFIG (a file path or inline JSON).
// Prints one JSON line on stdout when ready: {"issuer":"http://127.0.0.1:PORT/",...}.
// All diagnostics go to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

// Keep stdout for the single ready line.
for (const level of ['log', 'info', 'warn', 'debug']) {
  console[level] = (...args) => process.stderr.write(`${args.map(String).join(' ')}\n`);
}

const started = Date.now();
const stage = (what) => process.stderr.write(`idp: ${what} (+${Date.now() - started} ms)\n`);
const { default: Provider, errors } = await import('oidc-provider');
stage('oidc-provider loaded');

// ---------------------------------------------------------------------------------------
// Configuration

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const take = () => {
      i += 1;
      if (i >= argv.length) {
        throw new Error(`missing value for ${arg}`);
      }
      return argv[i];
    };
    if (arg === '--port') out.port = take();
    else if (arg.startsWith('--port=')) out.port = arg.slice(7);
    else if (arg === '--host') out.host = take();
    else if (arg.startsWith('--host=')) out.host = arg.slice(7);
    else if (arg === '--config') out.config = take();
    else if (arg.startsWith('--config=')) out.config = arg.slice(9);
    else throw new Error(`unknown argument ${arg}`);
  }
  return out;
}

function loadConfigSource(source) {
  if (!source) return {};
  const text = source.trim().startsWith('{') ? source : fs.readFileSync(source, 'utf8');
  return JSON.parse(text);
}

const DEFAULT_CONFIG = {
  audience: 'https://defenseclaw.local/api',
  api_scopes: ['read:status', 'skills:write', 'audit:read', 'admin', 'block:approve'],
  clients: [
    { client_id: 'defenseclaw-cli', type: 'native' },
    {
      client_id: 'defenseclawd',
      type: 'confidential',
      client_secret: 'defenseclawd-test-secret',
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  users: [
    { sub: 'auth0|operator1', email: 'operator1@example.com', name: 'Operator One', push_enrolled: true },
    { sub: 'auth0|operator2', email: 'operator2@example.com', name: 'Operator Two', push_enrolled: true },
    { sub: 'auth0|nopush', email: 'nopush@example.com', name: 'No Push', push_enrolled: false },
  ],
  device_interval: 5,
  device_ttl: 900,
  ciba_interval: 5,
  ciba_max_expiry: 300,
  // Auth0 answers access_denied for an expired CIBA request; "expired_token" is the CIBA spec's code.
  ciba_expired_error: 'access_denied',
  access_token_ttl: 3600,
  id_token_ttl: 3600,
  refresh_token_ttl: 30 * 24 * 3600,
  rotate_refresh_tokens: false,
  // true: Auth0's 403/429 status codes on the token endpoint; false: RFC 400s.
  auth0_status: true,
  // Added to the interval on every slow_down (Auth0 and RFC 8628: 5 s).
  slow_down_step: 5,
  // Answer slow_down when a client polls faster than the current interval.
  enforce_interval: true,
  // Fixed `kid` for the signing key; default: random per start.
  kid: null,
};

const args = parseArgs(process.argv.slice(2));
const userConfig = loadConfigSource(args.config ?? process.env.IDP_CONFIG);
const cfg = { ...DEFAULT_CONFIG, ...userConfig };
const host = args.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const requestedPort = Number(args.port ?? process.env.IDP_PORT ?? process.env.PORT ?? 0);

const OIDC_SCOPES = ['openid', 'offline_access', 'profile', 'email'];
const CIBA_GRANT = 'urn:openid:params:grant-type:ciba';
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const BINDING_MESSAGE = /^[A-Za-z0-9 +\-_.,:#]{1,64}$/;
const AUTH0_CIBA_DENIED = 'The end-user denied the authorization request or it has been expired';

// ---------------------------------------------------------------------------------------
// Users

const users = new Map();
function putUser(u) {
  if (!u || typeof u.sub !== 'string' || !u.sub) {
    throw new Error('user needs a non-empty string "sub"');
  }
  const user = {
    sub: u.sub,
    email: u.email ?? null,
    email_verified: u.email_verified ?? true,
    name: u.name ?? null,
    push_enrolled: u.push_enrolled ?? true,
  };
  users.set(user.sub, user);
  return user;
}
for (const u of cfg.users) putUser(u);

// ---------------------------------------------------------------------------------------
// Keys: a fresh RS256 key per start.

const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const kid = cfg.kid ?? `idp-${crypto.randomBytes(6).toString('hex')}`;
const privateJwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
stage('signing key generated');

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

function signJwt(header, claims) {
  const h = { alg: 'RS256', typ: 'JWT', kid, ...header };
  const data = `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(claims))}`;
  if (h.alg !== 'RS256') {
    throw new Error('only RS256 is signed here');
  }
  const sig = crypto.sign('sha256', Buffer.from(data), privateKey);
  return `${data}.${b64url(sig)}`;
}

function verifyOwnJwt(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
    if (header.alg !== 'RS256' || header.kid !== kid) return null;
    const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), publicKey,
      Buffer.from(parts[2], 'base64url'));
    if (!ok) return null;
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    const now = Math.floor(Date.now() / 1000);
    if (typeof claims.exp !== 'number' || claims.exp < now) return null;
    return claims;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Clients

function clientMetadata(c) {
  const type = c.type ?? (c.client_secret ? 'confidential' : 'native');
  if (type === 'native') {
    return {
      client_id: c.client_id,
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      grant_types: c.grant_types ?? [DEVICE_GRANT, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
    };
  }
  return {
    client_id: c.client_id,
    client_secret: c.client_secret,
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_post',
    grant_types: c.grant_types ?? [CIBA_GRANT, 'refresh_token', 'client_credentials'],
    response_types: [],
    redirect_uris: [],
    backchannel_token_delivery_mode: 'poll',
  };
}

// ---------------------------------------------------------------------------------------
// Bookkeeping for admin views, slow_down and Auth0 error shapes.

const deviceCodes = new Map(); // user_code -> record
const deviceByCode = new Map(); // device_code -> record
const cibaRequests = new Map(); // auth_req_id -> record
const pollState = new Map(); // device_code | auth_req_id -> { last, interval }
const expiredSent = new Set(); // device codes that already got expired_token once
const requestLog = []; // recent non-admin requests, without secrets
const failures = defaultFailures();

function defaultFailures() {
  return {
    slow_down: 0, // answer the next N device/CIBA polls with slow_down
    error_status: 503, // status for injected errors
    error_count: 0, // next N matching requests fail (-1: until reset)
    error_paths: ['/oauth/token'], // paths that get injected errors ([] or ["*"]: all)
    delay_ms: 0, // delay every non-admin request
    drop_connections: false, // destroy non-admin connections without an answer
  };
}

const nowMs = () => Date.now();
const epoch = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------------------------------
// The provider

let provider;

async function findAccount(_ctx, id) {
  const user = users.get(id);
  if (!user) return undefined;
  return {
    accountId: user.sub,
    async claims() {
      const claims = { sub: user.sub };
      if (user.email !== null) {
        claims.email = user.email;
        claims.email_verified = user.email_verified;
      }
      if (user.name !== null) claims.name = user.name;
      return claims;
    },
  };
}

function buildProvider(issuer) {
  const p = new Provider(issuer, {
    clients: cfg.clients.map(clientMetadata),
    jwks: { keys: [privateJwk] },
    findAccount,
    scopes: OIDC_SCOPES,
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims: false,
    clockTolerance: 120,
    pkce: { required: () => false },
    routes: {
      device_authorization: '/oauth/device/code',
      code_verification: '/activate',
      token: '/oauth/token',
      backchannel_authentication: '/bc-authorize',
      jwks: '/.well-known/jwks.json',
      userinfo: '/userinfo',
      revocation: '/oauth/revoke',
      introspection: '/oauth/introspect',
    },
    ttl: {
      AccessToken: () => cfg.access_token_ttl,
      ClientCredentials: () => cfg.access_token_ttl,
      DeviceCode: () => cfg.device_ttl,
      BackchannelAuthenticationRequest: (ctx) => {
        const requested = Number(ctx?.oidc?.params?.requested_expiry);
        const max = cfg.ciba_max_expiry;
        return Number.isSafeInteger(requested) && requested > 0 ? Math.min(max, requested) : max;
      },
      IdToken: () => cfg.id_token_ttl,
      RefreshToken: () => cfg.refresh_token_ttl,
      Grant: () => cfg.refresh_token_ttl,
      Session: () => 3600,
      Interaction: () => 3600,
    },
    rotateRefreshToken: () => cfg.rotate_refresh_tokens,
    issueRefreshToken: async (_ctx, client, source) => client.grantTypeAllowed('refresh_token')
      && source.scopes.has('offline_access'),
    extraTokenClaims: async (_ctx, token) => {
      if (token.kind !== 'AccessToken' && token.kind !== 'ClientCredentials') return undefined;
      const scopes = String(token.scope ?? '').split(' ').filter((s) => cfg.api_scopes.includes(s));
      return { azp: token.clientId, permissions: scopes };
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true, charset: 'base-20', mask: '****-****' },
      revocation: { enabled: true },
      introspection: { enabled: true },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => (oneOf && oneOf.length ? oneOf[0] : undefined),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => {
          if (resource !== cfg.audience) {
            throw new errors.InvalidTarget(`Service not found: ${resource}`);
          }
          return {
            scope: cfg.api_scopes.join(' '),
            audience: cfg.audience,
            accessTokenTTL: cfg.access_token_ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
      ciba: {
        enabled: true,
        deliveryModes: ['poll'],
        processLoginHint: async (_ctx, loginHint) => {
          let hint;
          try {
            hint = JSON.parse(loginHint);
          } catch {
            throw new errors.InvalidRequest('login_hint must be a JSON object in iss_sub format');
          }
          if (!hint || hint.format !== 'iss_sub' || typeof hint.sub !== 'string') {
            throw new errors.InvalidRequest('login_hint must use the iss_sub format');
          }
          if (hint.iss !== p.issuer) {
            throw new errors.InvalidRequest(`login_hint iss must be ${p.issuer}`);
          }
          const user = users.get(hint.sub);
          if (!user) {
            throw new errors.UnknownUserId('could not identify end-user');
          }
          if (!user.push_enrolled) {
            throw new errors.InvalidRequest('User does not have push notifications enabled (not enrolled in Guardian push)');
          }
          return hint.sub;
        },
        validateBindingMessage: async (_ctx, bindingMessage) => {
          if (typeof bindingMessage !== 'string' || !BINDING_MESSAGE.test(bindingMessage)) {
            throw new errors.InvalidBindingMessage(
              'binding_message is required: 1-64 characters from A-Z a-z 0-9 space + - _ . , : #',
            );
          }
        },
        validateRequestContext: async () => {},
        verifyUserCode: async () => {},
        triggerAuthenticationDevice: async (ctx, request, account, client) => {
          const user = users.get(account.accountId);
          cibaRequests.set(request.jti, {
            auth_req_id: request.jti,
            sub: account.accountId,
            email: user?.email ?? null,
            name: user?.name ?? null,
            client_id: client.clientId,
            binding_message: ctx.oidc.params.binding_message ?? null,
            scope: request.scope,
            resource: request.resource ?? null,
            requested_expiry: ctx.oidc.params.requested_expiry ? Number(ctx.oidc.params.requested_expiry) : null,
            created_at: epoch(),
            expires_at: request.exp,
            status: 'pending',
          });
        },
      },
    },
  });
  p.proxy = false;
  p.on('server_error', (_ctx, err) => {
    process.stderr.write(`idp server_error: ${err?.stack ?? err}\n`);
  });

  // Response shaping after oidc-provider has answered.
  p.use(async (ctx, next) => {
    await next();
    const body = ctx.body;
    if (ctx.path === '/oauth/device/code' && ctx.status === 200 && body?.device_code) {
      body.interval = cfg.device_interval;
      const params = ctx.req.parsedBody ?? {};
      const record = {
        user_code: body.user_code,
        device_code: body.device_code,
        client_id: params.client_id ?? null,
        scope: params.scope ?? null,
        audience: params.resource ?? null,
        created_at: epoch(),
        expires_at: epoch() + body.expires_in,
        status: 'pending',
      };
      deviceCodes.set(body.user_code, record);
      deviceByCode.set(body.device_code, record);
      pollState.set(body.device_code, { last: null, interval: cfg.device_interval });
    } else if (ctx.path === '/bc-authorize' && ctx.status === 200 && body?.auth_req_id) {
      body.interval = cfg.ciba_interval;
      pollState.set(body.auth_req_id, { last: null, interval: cfg.ciba_interval });
      const rec = cibaRequests.get(body.auth_req_id);
      if (rec) rec.expires_at = epoch() + body.expires_in;
    } else if (ctx.path === '/oauth/token' && body && typeof body === 'object') {
      shapeTokenResponse(ctx, body);
    }
  });
  return p;
}

function shapeTokenResponse(ctx, body) {
  const params = ctx.req.parsedBody ?? {};
  const grant = params.grant_type;
  const auth0 = cfg.auth0_status;
  if (ctx.status === 200) {
    if (grant === DEVICE_GRANT) {
      const rec = deviceByCode.get(params.device_code);
      if (rec) rec.status = 'consumed';
    } else if (grant === CIBA_GRANT) {
      const rec = cibaRequests.get(params.auth_req_id);
      if (rec) rec.status = 'consumed';
    }
    return;
  }
  if (!body.error) return;
  if (grant === DEVICE_GRANT) {
    if (body.error === 'expired_token') {
      const rec = deviceByCode.get(params.device_code);
      if (rec && rec.status === 'pending') rec.status = 'expired';
      if (auth0 && expiredSent.has(params.device_code)) {
        body.error = 'invalid_grant';
        body.error_description = 'Invalid or expired device code.';
      }
      expiredSent.add(params.device_code);
    }
    if (auth0 && ['authorization_pending', 'access_denied', 'expired_token', 'invalid_grant'].includes(body.error)) {
      ctx.status = 403;
    }
  } else if (grant === CIBA_GRANT) {
    if (body.error === 'expired_token') {
      const rec = cibaRequests.get(params.auth_req_id);
      if (rec && rec.status === 'pending') rec.status = 'expired';
      if (cfg.ciba_expired_error === 'access_denied') {
        body.error = 'access_denied';
        body.error_description = AUTH0_CIBA_DENIED;
      }
    } else if (body.error === 'access_denied' && auth0) {
      body.error_description = AUTH0_CIBA_DENIED;
    }
    if (auth0 && ['authorization_pending', 'access_denied', 'expired_token'].includes(body.error)) {
      ctx.status = 403;
    }
  } else if (grant === 'refresh_token') {
    if (auth0 && body.error === 'invalid_grant') {
      ctx.status = 403;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Admin endpoints

class AdminError extends Error {
  constructor(status, error, description) {
    super(description);
    this.status = status;
    this.error = error;
  }
}

function pendingDevice() {
  const now = epoch();
  return [...deviceCodes.values()]
    .filter((r) => r.status === 'pending' && r.expires_at > now)
    .map(({ device_code: _hidden, ...rest }) => rest);
}

function pendingCiba() {
  const now = epoch();
  return [...cibaRequests.values()].filter((r) => r.status === 'pending' && r.expires_at > now);
}

function pickCiba(body) {
  const pending = pendingCiba();
  let matches;
  if (body.auth_req_id) {
    const rec = cibaRequests.get(body.auth_req_id);
    if (!rec) throw new AdminError(404, 'unknown_auth_req_id', 'no such CIBA request');
    if (rec.status !== 'pending' || rec.expires_at <= epoch()) {
      throw new AdminError(409, 'not_pending', `CIBA request is ${rec.status === 'pending' ? 'expired' : rec.status}`);
    }
    return rec;
  }
  if (body.binding_message) {
    matches = pending.filter((r) => r.binding_message === body.binding_message);
  } else if (body.sub) {
    matches = pending.filter((r) => r.sub === body.sub);
  } else {
    matches = pending;
  }
  if (matches.length === 0) throw new AdminError(404, 'no_pending_request', 'no matching pending CIBA request');
  if (matches.length > 1) {
    throw new AdminError(409, 'ambiguous', 'several pending CIBA requests match; pass auth_req_id');
  }
  return matches[0];
}

function splitScope(scope) {
  return String(scope ?? '').split(' ').filter(Boolean);
}

async function approveDevice(body) {
  const userCode = String(body.user_code ?? '');
  const normalized = userCode.toUpperCase().replace(/\W/g, '');
  const code = normalized ? await provider.DeviceCode.findByUserCode(normalized, { ignoreExpiration: true }) : undefined;
  if (!code || code.isExpired || code.accountId || code.error || code.consumed) {
    throw new AdminError(404, 'unknown_or_used_user_code', 'unknown, expired or already used user_code');
  }
  const sub = body.sub ?? cfg.users[0]?.sub;
  if (!users.has(sub)) throw new AdminError(404, 'unknown_user', `no user ${sub}`);
  const requested = splitScope(code.params?.scope);
  const resource = code.params?.resource;
  const grant = new provider.Grant({ accountId: sub, clientId: code.clientId });
  const oidcScopes = requested.filter((s) => OIDC_SCOPES.includes(s));
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
  if (resource) {
    const apiScopes = requested.filter((s) => cfg.api_scopes.includes(s));
    grant.addResourceScope(resource, apiScopes.join(' '));
  }
  const grantId = await grant.save();
  Object.assign(code, {
    accountId: sub, grantId, authTime: epoch(), scope: requested.join(' '), amr: ['pwd'],
  });
  if (resource) code.resource = resource;
  await code.save();
  const rec = deviceCodes.get(code.userCode);
  if (rec) {
    rec.status = 'approved';
    rec.sub = sub;
  }
  return { ok: true, user_code: code.userCode, sub };
}

async function denyDevice(body) {
  const normalized = String(body.user_code ?? '').toUpperCase().replace(/\W/g, '');
  const code = normalized ? await provider.DeviceCode.findByUserCode(normalized, { ignoreExpiration: true }) : undefined;
  if (!code || code.isExpired || code.accountId || code.error || code.consumed) {
    throw new AdminError(404, 'unknown_or_used_user_code', 'unknown, expired or already used user_code');
  }
  code.error = 'access_denied';
  code.errorDescription = body.error_description ?? 'User cancelled the confirmation prompt.';
  await code.save();
  const rec = deviceCodes.get(code.userCode);
  if (rec) rec.status = 'denied';
  return { ok: true, user_code: code.userCode };
}

async function approveCiba(body) {
  const rec = pickCiba(body);
  const request = await provider.BackchannelAuthenticationRequest.find(rec.auth_req_id, { ignoreExpiration: true });
  if (!request) throw new AdminError(404, 'unknown_auth_req_id', 'no such CIBA request');
  const requested = splitScope(request.scope);
  const grant = new provider.Grant({ accountId: request.accountId, clientId: request.clientId });
  const oidcScopes = requested.filter((s) => OIDC_SCOPES.includes(s));
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
  const resources = request.resource ? [].concat(request.resource) : [];
  for (const resource of resources) {
    grant.addResourceScope(resource, requested.filter((s) => cfg.api_scopes.includes(s)).join(' '));
  }
  await grant.save();
  await provider.backchannelResult(request, grant, { authTime: epoch(), amr: ['mfa', 'pop'] });
  rec.status = 'approved';
  return { ok: true, auth_req_id: rec.auth_req_id, sub: rec.sub, binding_message: rec.binding_message };
}

async function denyCiba(body) {
  const rec = pickCiba(body);
  const request = await provider.BackchannelAuthenticationRequest.find(rec.auth_req_id, { ignoreExpiration: true });
  if (!request) throw new AdminError(404, 'unknown_auth_req_id', 'no such CIBA request');
  request.error = 'access_denied';
  request.errorDescription = AUTH0_CIBA_DENIED;
  await request.save();
  rec.status = 'denied';
  return { ok: true, auth_req_id: rec.auth_req_id, sub: rec.sub, binding_message: rec.binding_message };
}

function setFailures(body) {
  for (const key of Object.keys(body)) {
    if (!(key in failures)) throw new AdminError(400, 'invalid_request', `unknown failure knob ${key}`);
  }
  Object.assign(failures, body);
  return { ok: true, failures };
}

function signArbitrary(body) {
  const now = epoch();
  const claims = {
    iss: provider.issuer,
    aud: cfg.audience,
    iat: now,
    exp: now + 300,
    ...(body.claims ?? {}),
  };
  for (const [k, v] of Object.entries(claims)) {
    if (v === null) delete claims[k];
  }
  return { token: signJwt(body.header ?? {}, claims) };
}

async function handleAdmin(req, res, path, body) {
  const route = `${req.method} ${path}`;
  switch (route) {
    case 'GET /__admin/health':
      return { ok: true, issuer: provider.issuer };
    case 'GET /__admin/users':
      return [...users.values()];
    case 'POST /__admin/users':
      return { ok: true, user: putUser(body) };
    case 'GET /__admin/device/pending':
      return pendingDevice();
    case 'POST /__admin/device/approve':
      return approveDevice(body);
    case 'POST /__admin/device/deny':
      return denyDevice(body);
    case 'GET /__admin/ciba/pending':
      return pendingCiba();
    case 'GET /__admin/ciba/requests':
      return [...cibaRequests.values()];
    case 'POST /__admin/ciba/approve':
      return approveCiba(body);
    case 'POST /__admin/ciba/deny':
      return denyCiba(body);
    case 'GET /__admin/failures':
      return failures;
    case 'POST /__admin/failures':
      return setFailures(body);
    case 'POST /__admin/failures/reset':
    case 'DELETE /__admin/failures':
      Object.assign(failures, defaultFailures());
      return { ok: true, failures };
    case 'GET /__admin/requests':
      return requestLog;
    case 'POST /__admin/sign':
      return signArbitrary(body);
    default:
      throw new AdminError(404, 'not_found', `no admin route ${route}`);
  }
}

// ---------------------------------------------------------------------------------------
// Front shim: admin routes, failure injection, body normalisation, slow_down, userinfo.

function readRaw(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 256 * 1024) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseBody(req, raw) {
  const cty = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (!raw) return {};
  if (cty === 'application/json') {
    const parsed = JSON.parse(raw);
    return parsed && typeof parsed === 'object' ? parsed : {};
  }
  return { ...querystring.parse(raw) };
}

function sendJson(res, status, value, headers = {}) {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

function isLoopback(addr) {
  return addr === '127.0.0.1' || addr === '::1' || addr === '::ffff:127.0.0.1' || String(addr).startsWith('127.');
}

function logRequest(entry) {
  requestLog.push(entry);
  if (requestLog.length > 500) requestLog.shift();
}

function checkSlowDown(body) {
  const grant = body.grant_type;
  let key;
  if (grant === DEVICE_GRANT) key = body.device_code;
  else if (grant === CIBA_GRANT) key = body.auth_req_id;
  if (!key) return null;
  const state = pollState.get(key);
  if (!state) return null;
  const now = nowMs();
  // The interval counts between polls; the first poll is never too fast.
  const tooFast = cfg.enforce_interval && state.last !== null
    && now - state.last < state.interval * 1000 - 50;
  const forced = failures.slow_down > 0;
  const previousInterval = state.interval;
  state.last = now;
  if (!tooFast && !forced) return null;
  if (forced) failures.slow_down -= 1;
  state.interval += cfg.slow_down_step;
  return {
    status: cfg.auth0_status ? 429 : 400,
    headers: { 'retry-after': String(state.interval) },
    body: {
      error: 'slow_down',
      error_description: `You are polling faster than the specified interval of ${previousInterval} seconds.`,
      interval: state.interval,
    },
  };
}

function userinfoFromJwt(req) {
  const authz = String(req.headers.authorization ?? '');
  const m = /^Bearer\s+(.+)$/i.exec(authz);
  if (!m || m[1].split('.').length !== 3) return undefined; // let oidc-provider handle opaque tokens
  const claims = verifyOwnJwt(m[1]);
  if (!claims || claims.iss !== provider.issuer || claims.aud !== cfg.audience) return null;
  const user = users.get(claims.sub);
  if (!user) return null;
  const out = { sub: user.sub };
  if (user.email !== null) {
    out.email = user.email;
    out.email_verified = user.email_verified;
  }
  if (user.name !== null) out.name = user.name;
  return out;
}

const OIDC_POST_PATHS = new Set(['/oauth/token', '/oauth/device/code', '/bc-authorize', '/oauth/revoke', '/oauth/introspect']);

async function handle(req, res, callback) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;

  if (path.startsWith('/__admin/')) {
    if (!isLoopback(req.socket.remoteAddress)) {
      sendJson(res, 403, { error: 'forbidden', error_description: 'admin endpoints are loopback only' });
      return;
    }
    try {
      const raw = req.method === 'GET' ? '' : await readRaw(req);
      let body;
      try {
        body = parseBody(req, raw);
      } catch {
        throw new AdminError(400, 'invalid_request', 'body is not valid JSON or form data');
      }
      sendJson(res, 200, await handleAdmin(req, res, path, body));
    } catch (err) {
      if (err instanceof AdminError) {
        sendJson(res, err.status, { error: err.error, error_description: err.message });
      } else {
        process.stderr.write(`idp admin error: ${err?.stack ?? err}\n`);
        sendJson(res, 500, { error: 'server_error', error_description: String(err?.message ?? err) });
      }
    }
    return;
  }

  const entry = { method: req.method, path, at_ms: nowMs(), status: null };
  logRequest(entry);
  // Record the status when the response is handed over (not on 'finish', which can run
  // after the client has already seen the answer and asked the admin API).
  const end = res.end;
  res.end = function endAndRecord(...endArgs) {
    entry.status = res.statusCode;
    return end.apply(this, endArgs);
  };

  if (failures.drop_connections) {
    entry.status = 'dropped';
    req.socket.destroy();
    return;
  }
  if (failures.delay_ms > 0) await sleep(failures.delay_ms);

  const pathMatches = failures.error_paths.length === 0 || failures.error_paths.includes('*')
    || failures.error_paths.includes(path);
  if (failures.error_count !== 0 && pathMatches) {
    if (failures.error_count > 0) failures.error_count -= 1;
    if (req.method !== 'GET') await readRaw(req).catch(() => '');
    const status = failures.error_status;
    sendJson(res, status, status >= 500
      ? { error: 'temporarily_unavailable', error_description: 'injected failure' }
      : { error: 'too_many_requests', error_description: 'injected failure' });
    return;
  }

  if (path === '/userinfo' && req.method === 'GET') {
    const info = userinfoFromJwt(req);
    if (info === null) {
      sendJson(res, 401, { error: 'invalid_token', error_description: 'invalid access token' },
        { 'www-authenticate': 'Bearer error="invalid_token"' });
      return;
    }
    if (info) {
      sendJson(res, 200, info);
      return;
    }
  }

  if (req.method === 'POST' && OIDC_POST_PATHS.has(path)) {
    let body;
    try {
      body = parseBody(req, await readRaw(req));
    } catch {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'failed to parse the request body' });
      return;
    }
    if (body.audience !== undefined && body.resource === undefined && path !== '/oauth/revoke') {
      body.resource = body.audience;
    }
    delete body.audience;
    if (path === '/oauth/token') {
      entry.grant_type = body.grant_type ?? null;
      const slow = checkSlowDown(body);
      if (slow) {
        sendJson(res, slow.status, slow.body, slow.headers);
        return;
      }
    }
    const encoded = querystring.stringify(body);
    req.parsedBody = body;
    req.body = encoded;
    req.headers['content-type'] = 'application/x-www-form-urlencoded';
    req.headers['content-length'] = String(Buffer.byteLength(encoded));
    delete req.headers['transfer-encoding'];
  }

  callback(req, res);
}

// ---------------------------------------------------------------------------------------
// Start

let callback = null;
const server = http.createServer((req, res) => {
  if (!callback) {
    sendJson(res, 503, { error: 'temporarily_unavailable', error_description: 'starting' });
    return;
  }
  handle(req, res, callback).catch((err) => {
    process.stderr.write(`idp error: ${err?.stack ?? err}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: 'internal error' });
  });
});
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;

server.on('error', (err) => {
  process.stderr.write(`idp: cannot listen on ${host}:${requestedPort}: ${err.message}\n`);
  process.exit(1);
});
server.listen(requestedPort, host, () => {
  const { port } = server.address();
  stage(`listening on ${host}:${port}`);
  const issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}/`;
  provider = buildProvider(issuer);
  callback = provider.callback();
  const clients = {};
  for (const c of cfg.clients) {
    const meta = clientMetadata(c);
    clients[c.client_id] = {
      type: meta.token_endpoint_auth_method === 'none' ? 'native' : 'confidential',
      token_endpoint_auth_method: meta.token_endpoint_auth_method,
      grant_types: meta.grant_types,
    };
  }
  process.stdout.write(`${JSON.stringify({
    issuer,
    port,
    pid: process.pid,
    admin: `${issuer}__admin/`,
    audience: cfg.audience,
    api_scopes: cfg.api_scopes,
    kid,
    clients,
  })}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}

// With IDP_EXIT_ON_STDIN_CLOSE=1 the server exits when its parent closes stdin (or dies),
// so a killed test run leaves no provider behind.
if (process.env.IDP_EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
