#!/usr/bin/env bash
# Download, on a machine with network, the wheels that the prepared GPU check
# (scripts/device_check.sh; docs/distributed.md, "The prepared GPU check") installs on a
# CUDA machine without network. That machine is expected to hold python3 3.12 (x86-64
# Linux) with torch, transformers, peft, accelerate and ila's other common packages; what it
# lacks of ila's needs is downloaded here, at the versions pinned in constraints.txt:
# datasets with the two packages it needs that such an image lacks (dill, multiprocess),
# gguf and trl. bitsandbytes (the 4-bit base of tests/test_quantized.py) has no pin there,
# since CI has no CUDA: its version is set below (BITSANDBYTES= leaves it out; 43 MB).
#
#   scripts/fetch_device_wheels.sh [DEST]   # DEST defaults to .whl (ignored by git)
#
# Environment: PYTHON (the pip to download with, default python3), DEVICE_PYTHON (the
# target machine's Python version, default 3.12), BITSANDBYTES (a requirement or empty).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
BITSANDBYTES=${BITSANDBYTES-bitsandbytes==0.50.2}
DEST=${1:-.whl}
PINNED=(datasets dill multiprocess gguf trl)

requirements=()
for name in "${PINNED[@]}"; do
  if ! pin=$(grep -i -E "^${name}==" constraints.txt); then
    echo "fetch_device_wheels: error: constraints.txt has no pin for ${name}; add one" >&2
    exit 2
  fi
  requirements+=("$pin")
done
if [ -n "$BITSANDBYTES" ]; then
  requirements+=("$BITSANDBYTES")
fi

# Into a fresh folder, then in place of DEST: one version of each package, never a
# half-filled DEST (two versions of one package stop the install on the device).
tmp="${DEST%/}.download"
rm -rf "$tmp"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$DEVICE_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp" "${requirements[@]}"
rm -rf "$DEST"
mv "$tmp" "$DEST"
ls -l "$DEST"
echo "$(du -sh "$DEST" | cut -f1) of wheels in $DEST for ${requirements[*]}"
