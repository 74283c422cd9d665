#!/usr/bin/env bash
# Build Orbweaver's wheel with maturin and install it, with the MariaDB extra, into a fresh
# virtual environment at PREFIX. The Dockerfile's build stage runs exactly this script, and
# .ci/run runs it too: the image cannot be built where CI runs (no base-image registry), so
# this is how its build steps are proven.
#
#   scripts/build-dist.sh DIST_DIR PREFIX
#
# Needs python3 (with venv), cargo/rustc >= 1.85, a C compiler and the MariaDB client library
# headers (libmariadb-dev) for the `mariadb` connector. Writes the wheel to DIST_DIR; PREFIX
# ends up holding only the runtime: orbweaver, its dependencies and the `orbweaver` command.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DIST_DIR PREFIX" >&2
  exit 2
fi
dist="$(mkdir -p "$1" && cd "$1" && pwd)"
prefix="$2"
cd "$(dirname "$0")/.."

# maturin lives in a throwaway environment: the runtime in PREFIX never contains it.
build_env="$(mktemp -d)"
trap 'rm -rf "$build_env"' EXIT
python3 -m venv "$build_env"
"$build_env/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2'

rm -f "$dist"/orbweaver-*.whl
"$build_env/bin/maturin" build --release --locked --out "$dist"
wheel="$(ls "$dist"/orbweaver-*-abi3-*.whl)"

python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
  "${wheel}[mariadb]"

# The installed runtime works: the CLI, the Rust extension and the MariaDB connector load.
"$prefix/bin/orbweaver" --version
"$prefix/bin/python" -c 'import mariadb, orbweaver._core'
echo "built $(basename "$wheel"); installed into $prefix"
