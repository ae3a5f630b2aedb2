#!/usr/bin/env bash
# Gets the coding agent that examples/coding-agent.yaml and
# crates/orchestrator-cli/tests/coding_agent.rs run as a step: mini-swe-agent
# from PyPI, at the version and with the dependencies pinned in
# scripts/agents/mini-swe-agent-$version.txt (wheels only, no build), in $1
# (default ~/.cache/orch/agents):
#
#   wheels-$version/          the pinned wheels and the lock file
#                             (requirements.txt): the wheelhouse the example
#                             mounts and installs from, without network, into
#                             the venv it keeps in its cache
#   mini-swe-agent-$version/  a virtual environment installed from them; its
#                             `bin/mini` is the agent's CLI
#
# Prints ORCH_TEST_CODING_AGENT=<the environment> and
# ORCH_TEST_CODING_AGENT_WHEELS=<the wheelhouse>.
#
# The environment is made from the system's python3 (/usr/bin/python3, or
# $ORCH_AGENT_PYTHON): a sandboxed step sees the host's /usr but not the
# homes where pyenv and the like keep theirs, and a virtual environment runs
# its base interpreter; the wheels are the ones that interpreter takes. Needs
# python3 with venv (Debian: python3-venv) and network access the first
# time; does nothing when both are there and complete (a marker written last
# in each holds the lock file's sha256, so an interrupted download or
# install, or a changed lock file, starts afresh).
set -euo pipefail

version=2.4.6
dir=${1:-$HOME/.cache/orch/agents}
lock=$(cd "$(dirname "$0")" && pwd)/agents/mini-swe-agent-$version.txt
python=${ORCH_AGENT_PYTHON:-/usr/bin/python3}
venv=$dir/mini-swe-agent-$version
wheels=$dir/wheels-$version
marker=.orch-installed

[ -r "$lock" ] || { echo "agent-assets: no lock file $lock" >&2; exit 1; }
want=$(sha256sum "$lock" | cut -d' ' -f1)
pip=(--quiet --disable-pip-version-check --no-input --no-deps --only-binary=:all:)

if [ "$(cat "$venv/$marker" 2>/dev/null || true)" != "$want" ]; then
    [ -x "$python" ] || { echo "agent-assets: no python at $python (set ORCH_AGENT_PYTHON)" >&2; exit 1; }
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
        echo "agent-assets: mini-swe-agent needs Python 3.10 or later; $python is $("$python" -V 2>&1)" >&2
        exit 1
    }
    rm -rf "$venv"
    mkdir -p "$dir"
    "$python" -m venv "$venv" >&2 || {
        echo "agent-assets: $python -m venv failed (Debian: apt-get install python3-venv)" >&2
        rm -rf "$venv"
        exit 1
    }
fi

# The wheels, downloaded by the environment's pip so that they are the ones
# its interpreter installs.
if [ "$(cat "$wheels/$marker" 2>/dev/null || true)" != "$want" ]; then
    rm -rf "$wheels" "$wheels.part"
    "$venv/bin/python" -m pip download "${pip[@]}" --dest "$wheels.part" -r "$lock" >&2 || {
        echo "agent-assets: pip download -r $lock failed" >&2
        rm -rf "$wheels.part"
        exit 1
    }
    cp "$lock" "$wheels.part/requirements.txt"
    printf '%s\n' "$want" >"$wheels.part/$marker"
    mv "$wheels.part" "$wheels"
fi

if [ "$(cat "$venv/$marker" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install "${pip[@]}" --no-index --find-links "$wheels" \
        -r "$wheels/requirements.txt" >&2 || {
        echo "agent-assets: pip install -r $lock from $wheels failed" >&2
        exit 1
    }
    # pip compiled the bytecode, so steps that cannot write the environment
    # start as fast as an ordinary install.
    probe=$(MSWEA_SILENT_STARTUP=1 MSWEA_CONFIGURED=true LITELLM_LOCAL_MODEL_COST_MAP=True \
        MSWEA_GLOBAL_CONFIG_DIR="$venv/.probe-config" "$venv/bin/mini" --help </dev/null 2>&1) || {
        printf '%s\n' "$probe" >&2
        echo "agent-assets: $venv/bin/mini does not start" >&2
        exit 1
    }
    rm -rf "$venv/.probe-config"
    printf '%s\n' "$want" >"$venv/$marker"
fi

echo "ORCH_TEST_CODING_AGENT=$venv"
echo "ORCH_TEST_CODING_AGENT_WHEELS=$wheels"
