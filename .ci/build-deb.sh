#!/usr/bin/env bash
# Build the Debian package from a copy of the working tree (no .git, no build
# leftovers) with dpkg-buildpackage, into OUTDIR; print the .deb's path.
# Needs debian/control's Build-Depends (.ci/debian.sh installs them).
#
# Usage: bash .ci/build-deb.sh OUTDIR
set -euo pipefail
OUT="$(realpath "${1:?usage: build-deb.sh OUTDIR}")"
cd "$(dirname "$0")/.."
version="$(dpkg-parsechangelog -l debian/changelog -S Version)"
rm -rf "$OUT/src"
mkdir -p "$OUT/src"
tar --exclude=./.git --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
    --exclude=.hypothesis --exclude='*.egg-info' --exclude=./build --exclude=./dist \
    --exclude=./debian/hacheck --exclude=./debian/.debhelper --exclude=./debian/files \
    --exclude='./debian/*.substvars' --exclude=./debian/debhelper-build-stamp \
    -cf - . | tar -xf - -C "$OUT/src"
(cd "$OUT/src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root dpkg-buildpackage -us -uc -b) \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log" >&2; echo "build-deb.sh: dpkg-buildpackage failed" >&2; exit 1; }
deb="$OUT/hacheck_${version}_all.deb"
[ -f "$deb" ] || { echo "build-deb.sh: dpkg-buildpackage made no $deb" >&2; exit 1; }
echo "$deb"
