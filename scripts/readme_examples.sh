#!/usr/bin/env bash
# Runs, exactly as written, every README code block marked
#   <!-- run as written by scripts/readme_examples.sh (CI) -->
# in order, in a scratch directory holding bin/ and configs/ of this
# checkout (so the examples' relative runs/ paths start empty). Needs
# `make build`. Fails on the first command that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$root/bin" "$root/configs" "$work/"
# Blocks marked for CI, commands joined across backslash continuations.
awk '
  /<!-- run as written by scripts\/readme_examples.sh \(CI\) -->/ { want = 1; next }
  want && /^```sh/ { inblock = 1; want = 0; next }
  inblock && /^```/ { inblock = 0; next }
  inblock {
    line = $0
    if (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/) next
    if (line ~ /\\$/) { sub(/\\$/, "", line); cont = cont line; next }
    print cont line; cont = ""
  }
' README.md > "$work/examples.sh"
n=$(wc -l < "$work/examples.sh")
[ "$n" -gt 0 ] || { echo "readme_examples: no marked blocks in README.md" >&2; exit 1; }
cd "$work"
i=0
while IFS= read -r cmd; do
  i=$((i + 1))
  echo "== README example $i/$n: $cmd"
  s=$SECONDS
  bash -c "set -euo pipefail; $cmd" >"$work/out.log" 2>&1 || { cat "$work/out.log"; echo "readme_examples: failed: $cmd" >&2; exit 1; }
  tail -n 2 "$work/out.log"
  echo "   ($((SECONDS - s)) s)"
done < "$work/examples.sh"
echo "readme_examples: all $n examples ran"
