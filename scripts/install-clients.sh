#!/usr/bin/env bash
# Installs the real AI coding CLIs used by the slow end-to-end tests into ./clients (ignored by
# git). Versions are pinned to the ones the captures in tests/data/captures were taken with.
set -euo pipefail
cd "$(dirname "$0")/.."
CLAUDE_CODE_VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
if [ -x clients/node_modules/.bin/claude ] &&
   grep -q "\"version\": \"$CLAUDE_CODE_VERSION\"" clients/node_modules/@anthropic-ai/claude-code/package.json 2>/dev/null; then
  exit 0
fi
mkdir -p clients
npm install --prefix ./clients --no-audit --no-fund --loglevel=error \
  "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
