#!/usr/bin/env bash
# The reusable action's one step: runs the caller's script in host1 of a fresh LAN (or the LAN
# of their topology file), from this repository's checkout, without root. Inputs arrive as
# INPUT_* variables; paths are the caller's, relative to their workspace. Writes `exit-code`
# and `report` (the run's directory: captures, consoles, summary.json) to $GITHUB_OUTPUT, and
# exits with the script's code.
set -uo pipefail
lab_root="$(cd "$(dirname "$0")/../../.." && pwd)"
workspace="${GITHUB_WORKSPACE:-$PWD}"
theirs() { case "$1" in /*) echo "$1" ;; *) echo "$workspace/$1" ;; esac; }

args=(lab run --timeout "${INPUT_TIMEOUT:-300}")
[ -n "${INPUT_TOPOLOGY:-}" ] && args+=(--topology "$(theirs "$INPUT_TOPOLOGY")")
[ -n "${INPUT_KERNEL:-}" ] && args+=(--kernel "$INPUT_KERNEL")
[ -n "${INPUT_PACKAGES:-}" ] && args+=(--package "$INPUT_PACKAGES")
[ -n "${INPUT_MODULES:-}" ] && args+=(--module "$INPUT_MODULES")
[ -n "${INPUT_KERNEL_TREE:-}" ] && args+=(--kernel-tree "$(theirs "$INPUT_KERNEL_TREE")")
IFS=',' read -ra sources <<< "${INPUT_MODULE_SOURCES:-}"
for source in "${sources[@]}"; do
  [ -n "$source" ] && args+=(--module-source "$(theirs "$source")")
done
[ -n "${INPUT_DIR:-}" ] && args+=(--dir "$(theirs "$INPUT_DIR")")
[ -n "${INPUT_REQUIRE_ACCEL:-}" ] && args+=(--require-accel "$INPUT_REQUIRE_ACCEL")
if [ -z "${INPUT_SCRIPT:-}" ]; then
  echo "macvlan-lab action: give the \`script\` input: a script of your repository to run in host1" >&2
  exit 2
fi
args+=("$(theirs "$INPUT_SCRIPT")")

cd "$lab_root"
if [ -n "${LAB_XTASK:-}" ]; then
  "$LAB_XTASK" "${args[@]}"
else
  cargo xtask "${args[@]}"
fi
code=$?
report="$(readlink -f target/lab/runs/latest 2>/dev/null || true)"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  echo "exit-code=$code" >> "$GITHUB_OUTPUT"
  echo "report=$report" >> "$GITHUB_OUTPUT"
fi
exit "$code"
