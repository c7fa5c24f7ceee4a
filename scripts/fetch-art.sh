#!/usr/bin/env bash
# Fetch the Expat-licensed character art of Debian's renpy-demo and renpy-thequestion packages into a
# cache folder (never committed). Idempotent: does nothing when the cache is complete.
set -euo pipefail
dest=${1:-.cache/art}
pkgs=(renpy-demo renpy-thequestion)
[ -f "$dest/.complete" ] && exit 0
mkdir -p "$dest/debs" "$dest/images"
cd "$dest/debs"
fetch() { apt-get download "${pkgs[@]}" >/dev/null 2>&1; }
if ! ls renpy-demo_*.deb renpy-thequestion_*.deb >/dev/null 2>&1; then
  if ! fetch; then
    echo "fetch-art: apt-get download failed; refreshing the package lists (apt-get update) once" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
    fetch || { echo "fetch-art: cannot download ${pkgs[*]} (is this a Debian/Ubuntu machine with network?)" >&2; exit 1; }
  fi
fi
rm -rf ../x && mkdir ../x
for d in *.deb; do dpkg -x "$d" ../x; done
cd ..
# Character sprites and the band CGs: the art the tests and the demo use.
find x/usr/share/games/renpy -path '*/game/images/*' \
  \( -name 'eileen *' -o -name 'lucy *' -o -name 'sylvie *' -o -name 'concert*' \) -name '*.png' \
  -exec cp {} images/ \;
# A few backgrounds without characters, for false-positive checks.
find x/usr/share/games/renpy -path '*/game/images/*' -name 'bg *.jpg' -exec cp {} images/ \;
cp x/usr/share/doc/renpy-demo/copyright images/COPYRIGHT-renpy-demo 2>/dev/null || true
cp x/usr/share/doc/renpy-thequestion/copyright images/COPYRIGHT-renpy-thequestion 2>/dev/null || true
rm -rf x
n=$(ls images/*.png | wc -l)
[ "$n" -ge 16 ] || { echo "fetch-art: expected at least 16 character images, got $n" >&2; exit 1; }
touch .complete
echo "fetch-art: $n character images in $dest/images"
