// Auth0-shaped OpenID provider for DefenseClaw tests.
//
// A real oidc-provider (9.13.3) instance configured the way an Auth0 tenant behaves:
// Auth0 endpoint paths, `audience` mapped to a resource indicator (RS256 JWT access
// tokens for the API), the `interval` field, Auth0's 403/429 status codes, `slow_down`
// with `Retry-After`, CIBA in poll mode with Auth0's `iss_sub` login_hint, and
// loopback-only admin endpoints under /__admin/ that approve or deny requests without a
// browser, create users and inject failures. Also Auth0's Token Vault grant (exchanging an
// Auth0 refresh or access token for a fake third-party token of a connected account), a
// small My Account API for linking accounts (Connected Accounts) with an auto-consenting
// browser step, and Multi-Resource Refresh Tokens for the My Account audience.
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
  // Connections that can be linked ("*": any name matching CONNECTION_NAME).
  connections: ['github', 'slack', 'google-oauth2'],
  // Multi-Resource Refresh Tokens: a refresh token may be exchanged for a token for another
  // configured API (the My Account API included). Off: the audience is ignored like Auth0 does
  // without a refresh-token policy (a token for the original audience), or, with
  // mrrt_off_error, refused with 403 access_denied.
  mrrt: true,
  mrrt_off_error: false,
  // The browser step of Connected Accounts puts connect_code/state in the fragment, not the query.
  connect_code_in_fragment: false,
  // Lifetime of a Connected Accounts session (s).
  connect_ttl: 300,
  // expires_in of fake provider tokens when the linked account sets none (s).
  provider_token_ttl: 3600,
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
const TOKEN_VAULT_GRANT = 'urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token';
const SUBJECT_REFRESH_TOKEN = 'urn:ietf:params:oauth:token-type:refresh_token';
const SUBJECT_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const FEDERATED_TOKEN_TYPE = 'http://auth0.com/oauth/token-type/federated-connection-access-token';
const MY_ACCOUNT_SCOPES = ['create:me:connected_accounts', 'read:me:connected_accounts', 'delete:me:connected_accounts'];
const CONNECTION_NAME = /^[A-Za-z0-9_-]{1,128}$/;
// Scopes a connection grants when the connect request names none (Auth0: the dashboard's).
const CONNECTION_DEFAULT_SCOPES = {
  github: ['read:user'],
  slack: ['channels:read'],
  'google-oauth2': ['openid', 'email'],
};
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
    grant_types: c.grant_types ?? [CIBA_GRANT, 'refresh_token', 'client_credentials', TOKEN_VAULT_GRANT],
    response_types: [],
    redirect_uris: [],
    backchannel_token_delivery_mode: 'poll',
    // Auth0's Custom API Client link: access tokens for this API may be exchanged at Token Vault.
    resource_server_identifier: c.resource_server_identifier ?? cfg.audience,
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
    hang: false, // read matching requests and never answer them
    // Non-empty: errors, delay, drop and hang only hit /oauth/token requests with these grant types.
    grant_types: [],
  };
}

// Token Vault and Connected Accounts state.
const linkedAccounts = new Map(); // accountKey(sub, connection) -> account
const providerTokens = []; // every fake provider token issued, in order
const connectSessions = new Map(); // auth_session -> Connected Accounts session
const connectTickets = new Map(); // ticket -> the same session
const tokenVault = {
  delay_ms: 0, // wait this long before the grant answers
  exchanges: 0, // answered 200
  failures: 0, // answered an error (not counting injected failures)
  injected: 0, // hit by failure injection before reaching the grant
  in_flight: 0, // inside the grant handler right now
};

const nowMs = () => Date.now();
const epoch = () => Math.floor(Date.now() / 1000);
const randomHex = (bytes) => crypto.randomBytes(bytes).toString('hex');

// ---------------------------------------------------------------------------------------
// The provider

let provider;
let meAudience; // `<issuer>me/`, the My Account API

// Scopes of a resource server (an API identifier), or null for an unknown one.
function resourceScopes(resource) {
  if (resource === cfg.audience) return cfg.api_scopes;
  if (resource === meAudience) return MY_ACCOUNT_SCOPES;
  return null;
}

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
  meAudience = `${issuer}me/`;
  const p = new Provider(issuer, {
    clients: cfg.clients.map(clientMetadata),
    extraClientMetadata: { properties: ['resource_server_identifier'] },
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
      const defined = resourceScopes(token.resourceServer?.audience ?? token.aud) ?? cfg.api_scopes;
      const scopes = String(token.scope ?? '').split(' ').filter((s) => defined.includes(s));
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
        getResourceServerInfo: async (ctx, resource) => {
          const scopes = resourceScopes(resource);
          if (!scopes) {
            throw new errors.InvalidTarget(`Service not found: ${resource}`);
          }
          if (resource === meAudience && ctx?.oidc?.params?.grant_type === 'client_credentials') {
            throw new errors.InvalidTarget('The My Account API cannot be used with client credentials');
          }
          return {
            scope: scopes.join(' '),
            audience: resource,
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
  p.registerGrantType(TOKEN_VAULT_GRANT, tokenVaultGrant, [
    'subject_token', 'subject_token_type', 'requested_token_type', 'connection', 'login_hint', 'scope',
  ]);
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
  if (grant === TOKEN_VAULT_GRANT) {
    shapeTokenVaultResponse(ctx, body);
    return;
  }
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
// Token Vault: the federated connection access token exchange.

// An OAuth error with Auth0's status for it (oidc-provider's own errors are all 400).
class Auth0Error extends errors.CustomOIDCProviderError {
  constructor(status, error, description) {
    super(error, description);
    this.status = status;
    this.statusCode = status;
  }
}

const accountKey = (sub, connection) => `${sub}\n${connection}`;

function shapeTokenVaultResponse(ctx, body) {
  if (ctx.status === 200) {
    tokenVault.exchanges += 1;
    return;
  }
  tokenVault.failures += 1;
  // Auth0 refuses a client without the grant with unauthorized_client: 401 for a public client,
  // 403 for a confidential one. oidc-provider answers 400 invalid_request before the handler.
  const client = ctx.oidc?.client;
  if (body.error === 'invalid_request' && client && !client.grantTypeAllowed(TOKEN_VAULT_GRANT)) {
    const isPublic = client.tokenEndpointAuthMethod === 'none';
    ctx.status = isPublic ? 401 : 403;
    body.error = 'unauthorized_client';
    body.error_description = isPublic
      ? 'Token Vault requires a confidential client; public clients cannot exchange tokens.'
      : `Grant type '${TOKEN_VAULT_GRANT}' not allowed for the client.`;
  }
}

// Who the subject token stands for, after the checks Auth0 does for each subject type.
async function tokenVaultSubject(client, params) {
  if (params.subject_token_type === SUBJECT_REFRESH_TOKEN) {
    const rt = await provider.RefreshToken.find(String(params.subject_token), { ignoreExpiration: true });
    if (!rt || rt.clientId !== client.clientId || rt.isExpired || rt.consumed) {
      throw new Auth0Error(401, 'invalid_grant', 'Unknown or invalid refresh token.');
    }
    return rt.accountId;
  }
  if (params.subject_token_type === SUBJECT_ACCESS_TOKEN) {
    const claims = verifyOwnJwt(params.subject_token);
    if (!claims || claims.iss !== provider.issuer || typeof claims.sub !== 'string' || !claims.sub) {
      throw new Auth0Error(401, 'invalid_grant', 'Invalid access token.');
    }
    const api = client.resource_server_identifier ?? client.resourceServerIdentifier;
    const audiences = [].concat(claims.aud ?? []);
    if (!api || !audiences.includes(api)) {
      throw new Auth0Error(403, 'unauthorized_client',
        'The client is not linked to the API the subject token was issued for (resource_server_identifier).');
    }
    return claims.sub;
  }
  throw new Auth0Error(400, 'invalid_request', `Unsupported subject_token_type: ${params.subject_token_type}`);
}

// Exchanges waiting out the delay; a new delay wakes them to measure against it.
const delayWaiters = new Set();

async function tokenVaultDelay() {
  const start = nowMs();
  while (tokenVault.delay_ms > 0 && nowMs() - start < tokenVault.delay_ms) {
    await new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        delayWaiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, tokenVault.delay_ms - (nowMs() - start));
      delayWaiters.add(wake);
    });
  }
}

async function tokenVaultGrant(ctx) {
  const { client, params } = ctx.oidc;
  tokenVault.in_flight += 1;
  try {
    await tokenVaultDelay();
    if (client.tokenEndpointAuthMethod === 'none') {
      throw new Auth0Error(401, 'unauthorized_client',
        'Token Vault requires a confidential client; public clients cannot exchange tokens.');
    }
    for (const name of ['subject_token', 'subject_token_type', 'requested_token_type', 'connection']) {
      if (!params[name]) throw new Auth0Error(400, 'invalid_request', `Missing required parameter: ${name}`);
    }
    if (params.requested_token_type !== FEDERATED_TOKEN_TYPE) {
      throw new Auth0Error(400, 'invalid_request', `Unsupported requested_token_type: ${params.requested_token_type}`);
    }
    if (!CONNECTION_NAME.test(params.connection)) {
      throw new Auth0Error(400, 'invalid_request', 'Invalid connection name.');
    }
    const sub = await tokenVaultSubject(client, params);
    const account = linkedAccounts.get(accountKey(sub, params.connection));
    if (!account || (params.login_hint && params.login_hint !== account.login_hint)) {
      throw new Auth0Error(401, 'federated_connection_refresh_token_not_found',
        'Federated connection Refresh Token not found.');
    }
    if (account.broken) {
      throw new Auth0Error(401, 'federated_connection_refresh_token_flow_failed',
        'Failed to obtain a new access token from the federated connection: the refresh token was rejected.');
    }
    const token = {
      access_token: `fake-${account.connection}-${randomHex(16)}`,
      sub,
      connection: account.connection,
      client_id: client.clientId,
      subject_token_type: params.subject_token_type,
      scope: account.scopes.join(' '),
      expires_in: account.expires_in ?? cfg.provider_token_ttl,
      at: nowMs(),
    };
    providerTokens.push(token);
    ctx.body = {
      access_token: token.access_token,
      expires_in: token.expires_in,
      scope: token.scope,
      issued_token_type: FEDERATED_TOKEN_TYPE,
      token_type: 'Bearer',
    };
  } finally {
    tokenVault.in_flight -= 1;
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
    const defined = resourceScopes(resource) ?? [];
    grant.addResourceScope(resource, requested.filter((s) => defined.includes(s)).join(' '));
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
    const defined = resourceScopes(resource) ?? [];
    grant.addResourceScope(resource, requested.filter((s) => defined.includes(s)).join(' '));
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
  if (body.grant_types !== undefined && !Array.isArray(body.grant_types)) {
    throw new AdminError(400, 'invalid_request', 'grant_types must be an array');
  }
  Object.assign(failures, body);
  return { ok: true, failures };
}

function connectionEnabled(connection) {
  return CONNECTION_NAME.test(connection)
    && (cfg.connections.includes('*') || cfg.connections.includes(connection));
}

// Scopes from a `scopes` array or a space-separated `scope` string; undefined when neither is given.
function scopesParam(body) {
  if (Array.isArray(body.scopes)) return body.scopes.map(String).filter(Boolean);
  if (body.scope !== undefined && body.scope !== null) return splitScope(body.scope);
  return undefined;
}

const truthy = (v) => v === true || v === 'true' || v === '1' || v === 1;

// Creates or updates the (sub, connection) account; fields not given keep their value.
function putLinkedAccount(sub, connection, fields) {
  const key = accountKey(sub, connection);
  const account = linkedAccounts.get(key) ?? {
    id: `cac_${randomHex(12)}`,
    sub,
    connection,
    scopes: [],
    login_hint: null,
    broken: false,
    expires_in: null,
    created_at: new Date().toISOString(),
  };
  Object.assign(account, fields);
  linkedAccounts.set(key, account);
  return account;
}

function adminAccountTarget(body) {
  const sub = typeof body.sub === 'string' ? body.sub : '';
  const connection = typeof body.connection === 'string' ? body.connection : '';
  if (!sub || !connection) throw new AdminError(400, 'invalid_request', 'sub and connection are required');
  return { sub, connection };
}

function linkAccountAdmin(body) {
  const { sub, connection } = adminAccountTarget(body);
  if (!connectionEnabled(connection)) {
    throw new AdminError(400, 'invalid_request',
      `connection ${connection} is not enabled (enabled: ${cfg.connections.join(', ')})`);
  }
  const fields = {};
  const scopes = scopesParam(body);
  if (scopes !== undefined) fields.scopes = scopes;
  if ('login_hint' in body) fields.login_hint = body.login_hint === null ? null : String(body.login_hint);
  if ('broken' in body) fields.broken = truthy(body.broken);
  if ('expires_in' in body) {
    const ttl = body.expires_in === null ? null : Number(body.expires_in);
    if (ttl !== null && !(Number.isSafeInteger(ttl) && ttl > 0)) {
      throw new AdminError(400, 'invalid_request', 'expires_in must be a positive integer or null');
    }
    fields.expires_in = ttl;
  }
  return { ok: true, account: putLinkedAccount(sub, connection, fields) };
}

function unlinkAccountAdmin(body) {
  const { sub, connection } = adminAccountTarget(body);
  const key = accountKey(sub, connection);
  const account = linkedAccounts.get(key);
  if (!account) throw new AdminError(404, 'unknown_connected_account', `${sub} has no ${connection} account`);
  linkedAccounts.delete(key);
  return { ok: true, account };
}

function setTokenVault(body) {
  const delay = Number(body.delay_ms ?? 0);
  if (!(Number.isSafeInteger(delay) && delay >= 0)) {
    throw new AdminError(400, 'invalid_request', 'delay_ms must be a non-negative integer');
  }
  tokenVault.delay_ms = delay;
  for (const wake of [...delayWaiters]) wake();
  return { ok: true, token_vault: tokenVault };
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
    case 'GET /__admin/key':
      // The public half only: attack tests key HMAC forgeries with it.
      return { kid, alg: 'RS256', public_pem: publicKey.export({ type: 'spki', format: 'pem' }) };
    case 'GET /__admin/connections':
      return [...linkedAccounts.values()];
    case 'POST /__admin/connections':
      return linkAccountAdmin(body);
    case 'DELETE /__admin/connections':
      return unlinkAccountAdmin(body);
    case 'GET /__admin/provider-tokens':
      return providerTokens;
    case 'GET /__admin/token-vault':
      return tokenVault;
    case 'POST /__admin/token-vault':
      return setTokenVault(body);
    default:
      throw new AdminError(404, 'not_found', `no admin route ${route}`);
  }
}

// ---------------------------------------------------------------------------------------
// My Account API (Connected Accounts): bearer JWTs for `<issuer>me/`, RFC 7807 problem JSON.

class Problem extends Error {
  constructor(status, title, detail, validationErrors = undefined) {
    super(detail);
    this.status = status;
    this.title = title;
    this.validationErrors = validationErrors;
  }

  body() {
    const slug = this.title.toLowerCase().replace(/[^a-z0-9]+/g, '_');
    const out = { type: `${provider.issuer}problems/${slug}`, title: this.title, status: this.status, detail: this.message };
    if (this.validationErrors) out.validation_errors = this.validationErrors;
    return out;
  }
}

const invalidField = (field, detail) => new Problem(400, 'Bad Request', detail, [{ field, detail }]);

function sendProblem(res, problem) {
  const headers = { 'content-type': 'application/problem+json' };
  if (problem.status === 401) headers['www-authenticate'] = 'Bearer error="invalid_token"';
  if (problem.status === 403) headers['www-authenticate'] = 'Bearer error="insufficient_scope"';
  sendJson(res, problem.status, problem.body(), headers);
}

// The verified claims of the request's bearer token, which must carry `scope`.
function myAccountClaims(req, scope) {
  const m = /^Bearer\s+(\S+)$/i.exec(String(req.headers.authorization ?? ''));
  if (!m) throw new Problem(401, 'Unauthorized', 'A bearer access token for the My Account API is required.');
  const claims = verifyOwnJwt(m[1]);
  if (!claims || claims.iss !== provider.issuer || typeof claims.sub !== 'string' || !claims.sub) {
    throw new Problem(401, 'Unauthorized', 'Invalid or expired access token.');
  }
  if (![].concat(claims.aud ?? []).includes(meAudience)) {
    throw new Problem(401, 'Unauthorized', `The access token's audience is not ${meAudience}.`);
  }
  if (!splitScope(claims.scope).includes(scope)) {
    throw new Problem(403, 'Forbidden', `Insufficient scope; ${scope} is required.`);
  }
  return claims;
}

async function myAccountBody(req) {
  const cty = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (cty !== 'application/json') {
    throw new Problem(415, 'Unsupported Media Type', 'The request body must be application/json.');
  }
  let body;
  try {
    body = JSON.parse(await readRaw(req));
  } catch {
    throw new Problem(400, 'Bad Request', 'The request body is not valid JSON.');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw new Problem(400, 'Bad Request', 'The request body must be a JSON object.');
  }
  return body;
}

const optionalString = (body, field) => {
  const v = body[field];
  if (v !== undefined && typeof v !== 'string') throw invalidField(field, `${field} must be a string`);
  return v;
};

const requiredString = (body, field) => {
  const v = optionalString(body, field);
  if (!v) throw invalidField(field, `${field} is required`);
  return v;
};

const accountView = (a) => ({
  id: a.id, connection: a.connection, access_type: 'offline', scopes: a.scopes, created_at: a.created_at,
});

function startConnect(claims, body) {
  const connection = requiredString(body, 'connection');
  if (!CONNECTION_NAME.test(connection)) {
    throw invalidField('connection', 'connection must be 1-128 characters from A-Z a-z 0-9 _ -');
  }
  if (!connectionEnabled(connection)) {
    throw new Problem(400, 'Bad Request', `The connection ${connection} is not enabled for Connected Accounts.`);
  }
  const redirectUri = requiredString(body, 'redirect_uri');
  const parsed = URL.parse(redirectUri);
  if (!parsed || !['http:', 'https:'].includes(parsed.protocol) || parsed.hash) {
    throw invalidField('redirect_uri', 'redirect_uri must be an absolute http(s) URL without a fragment');
  }
  const state = optionalString(body, 'state');
  let { scopes } = body;
  if (scopes === undefined) {
    scopes = CONNECTION_DEFAULT_SCOPES[connection] ?? [];
  } else if (!Array.isArray(scopes) || !scopes.every((x) => typeof x === 'string' && /^\S+$/.test(x))) {
    throw invalidField('scopes', 'scopes must be an array of scope strings');
  }
  const challenge = optionalString(body, 'code_challenge');
  const method = optionalString(body, 'code_challenge_method');
  if (challenge !== undefined && !/^[A-Za-z0-9\-._~]{43,128}$/.test(challenge)) {
    throw invalidField('code_challenge', 'code_challenge must be 43-128 characters (base64url of a SHA-256)');
  }
  if ((challenge !== undefined || method !== undefined) && method !== 'S256') {
    throw invalidField('code_challenge_method', 'code_challenge_method must be S256');
  }
  const params = body.authorization_params;
  if (params !== undefined && (!params || typeof params !== 'object' || Array.isArray(params))) {
    throw invalidField('authorization_params', 'authorization_params must be an object');
  }
  const session = {
    auth_session: randomHex(16),
    ticket: randomHex(16),
    sub: claims.sub,
    client_id: claims.client_id ?? claims.azp ?? null,
    connection,
    redirect_uri: redirectUri,
    state: state ?? null,
    scopes: [...new Set(scopes)],
    code_challenge: challenge ?? null,
    authorization_params: params ?? null,
    expires_at: nowMs() + cfg.connect_ttl * 1000,
    connect_code: null,
    status: 'started', // started -> consented | denied -> completed
  };
  connectSessions.set(session.auth_session, session);
  connectTickets.set(session.ticket, session);
  return {
    auth_session: session.auth_session,
    connect_uri: `${provider.issuer}connected-accounts/connect`,
    connect_params: { ticket: session.ticket },
    expires_in: cfg.connect_ttl,
  };
}

// The browser step: the user consents at the provider at once and is sent back to redirect_uri
// with connect_code and state (`consent=deny` in the URL makes the user refuse instead).
function browserConnect(res, url) {
  const session = connectTickets.get(url.searchParams.get('ticket') ?? '');
  if (!session || session.status !== 'started' || session.expires_at <= nowMs()) {
    throw new Problem(400, 'Bad Request', 'Unknown, used or expired connect ticket.');
  }
  const answer = new URLSearchParams();
  if (url.searchParams.get('consent') === 'deny') {
    session.status = 'denied';
    answer.set('error', 'access_denied');
    answer.set('error_description', 'The user did not authorize the connection.');
  } else {
    session.status = 'consented';
    session.connect_code = randomHex(16);
    answer.set('connect_code', session.connect_code);
  }
  if (session.state !== null) answer.set('state', session.state);
  const location = new URL(session.redirect_uri);
  if (cfg.connect_code_in_fragment) {
    location.hash = answer.toString();
  } else {
    for (const [k, v] of answer) location.searchParams.set(k, v);
  }
  res.writeHead(302, { location: location.href, 'cache-control': 'no-store', 'content-length': 0 });
  res.end();
}

function completeConnect(claims, body) {
  const authSession = requiredString(body, 'auth_session');
  const connectCode = requiredString(body, 'connect_code');
  const redirectUri = requiredString(body, 'redirect_uri');
  const verifier = optionalString(body, 'code_verifier');
  const session = connectSessions.get(authSession);
  if (!session) throw new Problem(404, 'Not Found', 'Unknown auth_session.');
  if (session.sub !== claims.sub) throw new Problem(403, 'Forbidden', 'The connect session belongs to another user.');
  if (session.status === 'completed') throw new Problem(409, 'Conflict', 'The connect session was already completed.');
  if (session.expires_at <= nowMs()) throw new Problem(400, 'Bad Request', 'The connect session expired.');
  if (session.status === 'denied') throw new Problem(400, 'Bad Request', 'The user did not authorize the connection.');
  if (session.status !== 'consented' || connectCode !== session.connect_code) {
    throw invalidField('connect_code', 'Invalid connect_code.');
  }
  if (redirectUri !== session.redirect_uri) {
    throw invalidField('redirect_uri', 'redirect_uri does not match the connect request.');
  }
  if (session.code_challenge !== null) {
    if (!verifier) throw invalidField('code_verifier', 'code_verifier is required (PKCE)');
    const computed = crypto.createHash('sha256').update(verifier).digest('base64url');
    if (computed !== session.code_challenge) {
      throw invalidField('code_verifier', 'code_verifier does not match the code_challenge.');
    }
  }
  session.status = 'completed';
  connectTickets.delete(session.ticket);
  const account = putLinkedAccount(session.sub, session.connection, { scopes: session.scopes, broken: false });
  return accountView(account);
}

const MY_ACCOUNT_BASE = '/me/v1/connected-accounts';

async function handleMyAccount(req, res, url) {
  const path = url.pathname;
  const route = `${req.method} ${path}`;
  if (route === 'GET /connected-accounts/connect') {
    browserConnect(res, url);
    return;
  }
  if (route === `POST ${MY_ACCOUNT_BASE}/connect`) {
    const claims = myAccountClaims(req, 'create:me:connected_accounts');
    sendJson(res, 201, startConnect(claims, await myAccountBody(req)));
    return;
  }
  if (route === `POST ${MY_ACCOUNT_BASE}/complete`) {
    const claims = myAccountClaims(req, 'create:me:connected_accounts');
    sendJson(res, 201, completeConnect(claims, await myAccountBody(req)));
    return;
  }
  if (route === `GET ${MY_ACCOUNT_BASE}/accounts`) {
    const claims = myAccountClaims(req, 'read:me:connected_accounts');
    const only = url.searchParams.get('connection');
    const accounts = [...linkedAccounts.values()]
      .filter((a) => a.sub === claims.sub && (!only || a.connection === only))
      .map(accountView);
    sendJson(res, 200, { accounts });
    return;
  }
  if (route === `GET ${MY_ACCOUNT_BASE}/connections`) {
    myAccountClaims(req, 'read:me:connected_accounts');
    const names = cfg.connections.includes('*') ? Object.keys(CONNECTION_DEFAULT_SCOPES) : cfg.connections;
    const connections = names.map((name) => ({
      name, strategy: name, scopes: CONNECTION_DEFAULT_SCOPES[name] ?? [],
    }));
    sendJson(res, 200, { connections });
    return;
  }
  const del = /^\/me\/v1\/connected-accounts\/accounts\/([^/]+)$/.exec(path);
  if (req.method === 'DELETE' && del) {
    const claims = myAccountClaims(req, 'delete:me:connected_accounts');
    const id = decodeURIComponent(del[1]);
    const account = [...linkedAccounts.values()].find((a) => a.id === id && a.sub === claims.sub);
    if (!account) throw new Problem(404, 'Not Found', `No connected account ${id}.`);
    linkedAccounts.delete(accountKey(account.sub, account.connection));
    res.writeHead(204, { 'cache-control': 'no-store' });
    res.end();
    return;
  }
  throw new Problem(404, 'Not Found', `No route ${route}.`);
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

// The client id of a token request: the body's client_id, else HTTP Basic's user name.
function requestClientId(req, body) {
  if (typeof body.client_id === 'string') return body.client_id;
  const m = /^Basic\s+(\S+)$/i.exec(String(req.headers.authorization ?? ''));
  if (!m) return undefined;
  const user = Buffer.from(m[1], 'base64').toString('utf8').split(':')[0];
  try {
    return decodeURIComponent(user);
  } catch {
    return user;
  }
}

// Multi-Resource Refresh Token: a refresh token asked for a token for another configured API.
// oidc-provider only serves the resources the grant was made for (else invalid_target), so with
// MRRT on the refresh token and its grant are extended to that API first, with the requested
// scopes the API defines (others are ignored, like a policy that does not list them). With MRRT
// off, Auth0 ignores the audience and answers for the original one; or, with mrrt_off_error,
// this answers 403 access_denied. Returns an answer to send, or null to go on.
async function applyMrrt(req, body) {
  const resource = body.resource;
  const defined = typeof resource === 'string' ? resourceScopes(resource) : null;
  if (!defined || typeof body.refresh_token !== 'string') return null;
  const rt = await provider.RefreshToken.find(body.refresh_token, { ignoreExpiration: true });
  if (!rt || rt.isExpired || rt.clientId !== requestClientId(req, body)) {
    return null; // oidc-provider answers (invalid_grant)
  }
  const already = rt.resourceIndicators.has(resource);
  if (already && (body.scope === undefined || splitScope(body.scope).every((s) => splitScope(rt.scope).includes(s)))) {
    return null; // the native refresh: nothing new asked of this API
  }
  if (!cfg.mrrt) {
    if (cfg.mrrt_off_error) {
      return {
        status: 403,
        body: {
          error: 'access_denied',
          error_description: `Client "${rt.clientId}" has no refresh token policy for "${resource}" (Multi-Resource Refresh Token)`,
        },
      };
    }
    delete body.resource;
    delete body.scope;
    return null;
  }
  const grant = await provider.Grant.find(rt.grantId);
  if (!grant) return null;
  const requested = body.scope === undefined ? defined : splitScope(body.scope);
  const granted = requested.filter((s) => defined.includes(s));
  grant.addResourceScope(resource, granted.join(' '));
  await grant.save();
  const held = new Set(splitScope(rt.scope));
  for (const s of granted) held.add(s);
  rt.scope = [...held].join(' ');
  // Like Auth0's refresh token policy: any scope the API defines may be added later
  // (`connections unlink` asks for delete after `connect` asked for create).
  if (!already) rt.resource = [...(rt.resource === undefined ? [] : [].concat(rt.resource)), resource];
  await rt.save();
  if (body.scope !== undefined) {
    body.scope = requested.filter((s) => held.has(s)).join(' ');
    if (!body.scope) delete body.scope;
  }
  return null;
}

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
        body = { ...Object.fromEntries(url.searchParams), ...parseBody(req, raw) };
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

  // OIDC POST bodies are read first, so that failure injection can match the grant type.
  let body = null;
  let bodyRead = false;
  if (req.method === 'POST' && OIDC_POST_PATHS.has(path)) {
    bodyRead = true;
    try {
      body = parseBody(req, await readRaw(req));
    } catch {
      body = null;
    }
    if (body && path === '/oauth/token') entry.grant_type = body.grant_type ?? null;
  }

  const injected = failures.grant_types.length === 0
    || (path === '/oauth/token' && failures.grant_types.includes(body?.grant_type));
  const countInjected = () => {
    if (body?.grant_type === TOKEN_VAULT_GRANT && path === '/oauth/token') tokenVault.injected += 1;
  };
  if (injected && failures.drop_connections) {
    countInjected();
    entry.status = 'dropped';
    req.socket.destroy();
    return;
  }
  if (injected && failures.hang) {
    countInjected();
    entry.status = 'hung';
    if (!bodyRead) req.resume();
    return; // never answered; the client gives up
  }
  if (injected && failures.delay_ms > 0) await sleep(failures.delay_ms);

  const pathMatches = failures.error_paths.length === 0 || failures.error_paths.includes('*')
    || failures.error_paths.includes(path);
  if (injected && failures.error_count !== 0 && pathMatches) {
    if (failures.error_count > 0) failures.error_count -= 1;
    countInjected();
    if (req.method !== 'GET' && !bodyRead) await readRaw(req).catch(() => '');
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

  if (path.startsWith('/me/') || path === '/connected-accounts/connect') {
    try {
      await handleMyAccount(req, res, url);
    } catch (err) {
      if (!(err instanceof Problem)) throw err;
      sendProblem(res, err);
    }
    return;
  }

  if (bodyRead) {
    if (!body) {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'failed to parse the request body' });
      return;
    }
    if (body.audience !== undefined && body.resource === undefined && path !== '/oauth/revoke') {
      body.resource = body.audience;
    }
    delete body.audience;
    if (path === '/oauth/token') {
      const slow = checkSlowDown(body);
      if (slow) {
        sendJson(res, slow.status, slow.body, slow.headers);
        return;
      }
      if (body.grant_type === 'refresh_token') {
        const refused = await applyMrrt(req, body);
        if (refused) {
          sendJson(res, refused.status, refused.body);
          return;
        }
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
    if (meta.resource_server_identifier) {
      clients[c.client_id].resource_server_identifier = meta.resource_server_identifier;
    }
  }
  process.stdout.write(`${JSON.stringify({
    issuer,
    port,
    pid: process.pid,
    admin: `${issuer}__admin/`,
    audience: cfg.audience,
    api_scopes: cfg.api_scopes,
    my_account_audience: meAudience,
    connections: cfg.connections,
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
