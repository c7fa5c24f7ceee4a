#!/usr/bin/env bash
# Copy the real llama-swap's Go source (the proxy only: no web UI, tests, docs or helper commands) from a
# checkout of github.com/mostlygeek/llama-swap into third_party/llama-swap, from which `make test` builds the
# binary the tests run. The Go module proxy serves llama-swap's dependencies but not llama-swap itself, so its
# own source lives here. Usage: scripts/vendor-llama-swap.sh CHECKOUT (at the commit the Makefile names).
set -euo pipefail
src=${1:?usage: $0 LLAMA_SWAP_CHECKOUT}
dest=$(cd "$(dirname "$0")/.." && pwd)/third_party/llama-swap
commit=$(sed -n 's/^LLAMA_SWAP_COMMIT := //p' "$(dirname "$0")/../Makefile")
if [ -d "$src/.git" ] || [ -f "$src/.git" ]; then
  have=$(git -C "$src" rev-parse HEAD)
  [ "$have" = "$commit" ] || { echo "vendor-llama-swap: $src is at $have, the Makefile pins $commit" >&2; exit 1; }
fi
rm -rf "$dest/internal" "$dest/llama-swap.go" "$dest/go.mod" "$dest/go.sum" "$dest/LICENSE.md"
mkdir -p "$dest"
cp "$src/go.mod" "$src/go.sum" "$src/LICENSE.md" "$src/llama-swap.go" "$dest/"
(cd "$src" && find internal -type f \( -name '*.go' -o -path 'internal/store/migrations/*' \) \
   ! -name '*_test.go' ! -path 'internal/server/embed.go') | while read -r f; do
  mkdir -p "$dest/$(dirname "$f")"
  cp "$src/$f" "$dest/$f"
done
echo "vendor-llama-swap: $(find "$dest" -type f | wc -l) files from $src into $dest"
