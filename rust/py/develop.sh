#!/usr/bin/env bash
# Fallback for `pip install --no-build-isolation -e .` when the package metadata cannot be built
# (e.g. README.md not there yet): build the extension with cargo, drop it next to the Python
# sources and put `python/` on sys.path with a .pth file. Same result as maturin's editable mode.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
profile="${1:-release}"
cd "$root"
PYO3_BUILD_EXTENSION_MODULE=1 cargo build --profile "$profile" -p orbweaver-py
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
install -m 0755 "target/$dir/lib_core.so" python/orbweaver/_core.abi3.so
site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! python3 -c 'import orbweaver._core' 2>/dev/null; then
  echo "$root/python" > "$site/orbweaver-dev.pth"
fi
python3 -c 'import orbweaver._core as c; print("orbweaver._core", c.__version__, c.__file__)'
