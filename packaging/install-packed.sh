#!/bin/sh
# Installs a packed keylime-ts (`npm pack`) into a folder as an operator does: production dependencies only, the
# compiled dist/ (no TypeScript, no tsx), better-sqlite3's native build allowed. The Containerfile's install stage
# and .ci/run both run this, so CI exercises the image's install steps.
# Usage: install-packed.sh <keylime-ts-X.Y.Z.tgz> <folder>
set -eu
tarball="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
mkdir -p "$2"
cd "$2"
printf '{"name":"keylime-ts-install","private":true,"allowScripts":{"better-sqlite3":true}}\n' >package.json
npm install --omit=dev --no-audit --no-fund "$tarball"
