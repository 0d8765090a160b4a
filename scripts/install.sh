#!/usr/bin/env bash
# Install huabu into .venv/ at the repository root (torch pinned to 2.13.0 by pyproject.toml).
#   scripts/install.sh         the app with its studio and server extras: .venv/bin/huabu
#   scripts/install.sh --dev   also the test extras and the Debian packages the tests need
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --dev or nothing)" >&2; exit 2 ;;
  esac
done

# Debian packages the app needs (a CJK font for glyph maps, the text in images) and those the test suite needs besides
# (emoji font for huabu-tiny's scene renderer; chromium for the studio's browser tests and screenshots). Add new
# needs here.
DEBIAN_PACKAGES=(fonts-noto-cjk)
DEV_DEBIAN_PACKAGES=("${DEBIAN_PACKAGES[@]}" fonts-noto-color-emoji chromium redis-server)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    echo "install.sh: please install ${missing[*]} with your package manager" >&2; return 0
  fi
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
    || echo "install.sh: could not install ${missing[*]} (needs root or sudo); some tests will fail" >&2
}

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv; then
    apt_install python3-venv
    python3 -m venv .venv
  fi
fi

if [ "$dev" -eq 1 ]; then
  .venv/bin/python -m pip install -e ".[dev,studio,server]"
  apt_install "${DEV_DEBIAN_PACKAGES[@]}"
else
  .venv/bin/python -m pip install -e ".[studio,server]"
  apt_install "${DEBIAN_PACKAGES[@]}"
fi
echo "huabu installed: .venv/bin/huabu"
