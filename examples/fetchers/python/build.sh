#!/usr/bin/env bash
# Builds fetcher.wasm, a polhost fetcher component, from app.py with
# componentize-py (pip install componentize-py==0.25.1).
#
#   ./build.sh [-w WIT_DIR] [-o OUT]
#
#   -w WIT_DIR  the contract: a directory holding fetcher.wit and deps/
#               (default: the repository's wit/; or what
#               `polhost plugin wit DIR` writes)
#   -o OUT      the component to write (default: fetcher.wasm next to app.py)
#
# COMPONENTIZE_PY names the componentize-py binary (default: the one on
# PATH, else the venv tests/harness/install.sh fills).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$here/../../../wit"
out="$here/fetcher.wasm"
while getopts "w:o:h" opt; do
  case "$opt" in
    w) wit="$OPTARG" ;;
    o) out="$OPTARG" ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

if [ ! -f "$wit/fetcher.wit" ]; then
  echo "build.sh: $wit/fetcher.wit not found (pass -w DIR, e.g. from 'polhost plugin wit DIR')" >&2
  exit 2
fi

cpy="${COMPONENTIZE_PY:-}"
if [ -z "$cpy" ]; then
  if command -v componentize-py >/dev/null 2>&1; then
    cpy="$(command -v componentize-py)"
  else
    cpy="$HOME/.cache/polhost/venv/bin/componentize-py"
  fi
fi
if [ ! -x "$cpy" ] && ! command -v "$cpy" >/dev/null 2>&1; then
  echo "build.sh: componentize-py not found (pip install componentize-py==0.25.1, or set COMPONENTIZE_PY)" >&2
  exit 2
fi

mkdir -p "$(dirname "$out")"
# app.py is copied to a scratch directory, on componentize-py's Python path
# (-p): the build's __pycache__ stays out of the source tree. The bindings
# (wit_world, componentize_py_types) are generated into the component.
# The component is written next to its target, then renamed: a reader never
# sees half a file.
src="$(mktemp -d)"
tmp="$(mktemp "$out.XXXXXX.tmp")"
trap 'rm -rf "$src" "$tmp"' EXIT
cp "$here/app.py" "$src/"
"$cpy" -d "$wit" -w fetcher componentize -p "$src" app -o "$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$out"
echo "$out"
