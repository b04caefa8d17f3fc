#!/usr/bin/env bash
# The reusable action's one step: runs the caller's script in host1 of a fresh LAN (or the LAN
# of their topology file), from this repository's checkout, without root. Inputs arrive as
# INPUT_* variables; paths are the caller's, relative to their workspace and inside it. Writes
# `exit-code`, `report` (this run's directory: captures, consoles, summary.json), `junit` and `artifact`
# (a name for uploading it, unique to this call) to $GITHUB_OUTPUT, and exits with the script's
# code.
set -uo pipefail
lab_root="$(cd "$(dirname "$0")/../../.." && pwd)"
workspace="$(cd "${GITHUB_WORKSPACE:-$PWD}" && pwd -P)"

# A path of the caller's, resolved in their workspace; one that leads out of it (absolute
# elsewhere, `..`, a link out) is refused: the action reads only what the caller's repository holds.
theirs() {
  local input="$1" path="$2" resolved
  case "$path" in /*) resolved="$path" ;; *) resolved="$workspace/$path" ;; esac
  resolved="$(realpath -m -- "$resolved")"
  case "$resolved" in
    "$workspace" | "$workspace"/*) echo "$resolved" ;;
    *)
      echo "macvlan-lab action: the \`$input\` input \"$path\" is outside the workspace ($workspace); give a path in your repository" >&2
      return 1
      ;;
  esac
}

if [ -z "${INPUT_SCRIPT:-}" ]; then
  echo "macvlan-lab action: give the \`script\` input: a script of your repository to run in host1" >&2
  exit 2
fi
args=(lab run --timeout "${INPUT_TIMEOUT:-300}")
if [ -n "${INPUT_TOPOLOGY:-}" ]; then
  path="$(theirs topology "$INPUT_TOPOLOGY")" || exit 2
  args+=(--topology "$path")
fi
[ -n "${INPUT_KERNEL:-}" ] && args+=(--kernel "$INPUT_KERNEL")
[ -n "${INPUT_PACKAGES:-}" ] && args+=(--package "$INPUT_PACKAGES")
[ -n "${INPUT_MODULES:-}" ] && args+=(--module "$INPUT_MODULES")
if [ -n "${INPUT_KERNEL_TREE:-}" ]; then
  path="$(theirs kernel-tree "$INPUT_KERNEL_TREE")" || exit 2
  args+=(--kernel-tree "$path")
fi
IFS=',' read -ra sources <<< "${INPUT_MODULE_SOURCES:-}"
for source in "${sources[@]}"; do
  if [ -n "$source" ]; then
    path="$(theirs module-sources "$source")" || exit 2
    args+=(--module-source "$path")
  fi
done
if [ -n "${INPUT_DIR:-}" ]; then
  path="$(theirs dir "$INPUT_DIR")" || exit 2
  args+=(--dir "$path")
fi
[ -n "${INPUT_REPEAT:-}" ] && args+=(--repeat "$INPUT_REPEAT")
[ -n "${INPUT_REQUIRE_ACCEL:-}" ] && args+=(--require-accel "$INPUT_REQUIRE_ACCEL")
script="$(theirs script "$INPUT_SCRIPT")" || exit 2
run_dir="$(mktemp)"
trap 'rm -f "$run_dir"' EXIT
args+=(--run-dir-to "$run_dir" "$script")

cd "$lab_root"
if [ -n "${LAB_XTASK:-}" ]; then
  "$LAB_XTASK" "${args[@]}"
else
  cargo xtask "${args[@]}"
fi
code=$?
# This run's own directory (empty if it failed before making one): not `runs/latest`, which
# another job on a shared runner may have moved, and which CARGO_TARGET_DIR moves elsewhere.
report="$(head -n1 "$run_dir")"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  echo "exit-code=$code" >> "$GITHUB_OUTPUT"
  echo "report=$report" >> "$GITHUB_OUTPUT"
  if [ -n "$report" ] && [ -f "$report/junit.xml" ]; then
    echo "junit=$report/junit.xml" >> "$GITHUB_OUTPUT"
  fi
  echo "artifact=macvlan-lab-${GITHUB_JOB:-job}-$(basename "${report:-none-$$}")" >> "$GITHUB_OUTPUT"
fi
exit "$code"
