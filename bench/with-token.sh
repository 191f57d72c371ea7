#!/usr/bin/env bash
# Runs the control-plane benchmark with a bearer token verified on every call
# (check_token_vs_plain), against the local identity provider in tests/idp.
# Needs `cargo build --release --workspace` first, and node + npm.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd tests/idp && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
coproc IDP { exec node tests/idp/server.mjs --port 0; }
trap 'kill "$IDP_PID" 2>/dev/null || true' EXIT
read -r ready <&"${IDP[0]}"
json() { node -e 'const v=JSON.parse(process.argv[1]); console.log(process.argv[2].split(".").reduce((o,k)=>o[k],v))' "$1" "$2"; }
issuer=$(json "$ready" issuer)
audience=$(json "$ready" audience)
exp=$(( $(date +%s) + 3600 ))
signed=$(curl -fsS -X POST -H 'content-type: application/json' \
  -d "{\"claims\":{\"sub\":\"auth0|bench\",\"scope\":\"read:status skills:write\",\"exp\":$exp,\"azp\":\"defenseclaw-cli\"}}" \
  "${issuer}__admin/sign")
DEFENSECLAW_BENCH_TOKEN=$(json "$signed" token)
export DEFENSECLAW_BENCH_TOKEN
target/release/defenseclaw-bench --with-token \
  --daemon-env DEFENSECLAW_AUTH__MODE=oidc \
  --daemon-env "DEFENSECLAW_AUTH__ISSUER=$issuer" \
  --daemon-env "DEFENSECLAW_AUTH__AUDIENCE=$audience" \
  --daemon-env DEFENSECLAW_AUTH__ROLES__OPERATOR=skills:write \
  "$@"
