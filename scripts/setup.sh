#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test uniter.
# Idempotent: installs only missing packages. `setup.sh cuda` adds Debian's
# CUDA 11.8 toolkit (non-free) for the CUDA build.
set -euo pipefail

want=(libopenblas-dev liblmdb-dev pkg-config libgloo-dev g++)
if [ "${1:-}" = "cuda" ]; then
  want+=(nvidia-cuda-toolkit)
fi
if [ "${1:-}" = "python" ] || [ "${2:-}" = "python" ]; then
  want+=(python3-numpy python3-lmdb python3-msgpack python3-msgpack-numpy python3-lz4)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if printf '%s\n' "${missing[@]}" | grep -q nvidia-cuda-toolkit && [ ! -f /etc/apt/sources.list.d/nonfree.sources ]; then
  $sudo tee /etc/apt/sources.list.d/nonfree.sources >/dev/null <<EOS
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
fi
echo "setup: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
