#!/usr/bin/env bash
# Installs the real AI coding CLIs used by the slow end-to-end tests into ./clients (ignored by
# git). Versions are pinned to the ones the captures in tests/data/captures were taken with (and
# those the Cline and opencode tests were written against); a client already installed at its
# pinned version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A PINNED=(
  ["@anthropic-ai/claude-code"]="${CLAUDE_CODE_VERSION:-2.1.197}"
  ["@openai/codex"]="${CODEX_VERSION:-0.169.0}"
  ["@google/gemini-cli"]="${GEMINI_CLI_VERSION:-0.61.0}"
  ["@qwen-code/qwen-code"]="${QWEN_CODE_VERSION:-0.15.10}"
  # two more agents `detour run` is tested with (tests/e2e/test_detour_run_agents.py)
  ["cline"]="${CLINE_VERSION:-3.0.65}"
  ["opencode-ai"]="${OPENCODE_VERSION:-1.18.33}"
)
wanted=()
for pkg in "${!PINNED[@]}"; do
  version="${PINNED[$pkg]}"
  if ! grep -q "\"version\": \"$version\"" "clients/node_modules/$pkg/package.json" 2>/dev/null; then
    wanted+=("$pkg@$version")
  fi
done
[ ${#wanted[@]} -eq 0 ] && exit 0
mkdir -p clients
npm install --prefix ./clients --no-audit --no-fund --loglevel=error "${wanted[@]}"
