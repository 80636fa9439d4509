#!/usr/bin/env bash
# The project's test command:  bash scripts/test.sh [extra pytest arguments]
#
# On a fresh Debian machine (as root, or a user with sudo) it installs the real SIP peers the
# interop tests drive (SIPp, baresip, sox, espeak-ng), installs the package with its test
# extras, then runs ruff, mypy and pytest. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m peer -x
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"

# --- system packages (skipped when every binary is already there) -------------------------
missing=0
for bin in sipp baresip sox espeak-ng kamailio; do
    command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 1 ]; then
    sudo=""
    can_install=1
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else can_install=0; fi
    fi
    command -v apt-get >/dev/null 2>&1 || can_install=0
    if [ "$can_install" -eq 1 ]; then
        echo "scripts/test.sh: installing sip-tester baresip-core sox espeak-ng kamailio" >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends sip-tester baresip-core sox espeak-ng kamailio
    else
        echo "scripts/test.sh: cannot install sip-tester baresip-core sox espeak-ng kamailio" \
             "(needs apt-get and root or sudo); the peer tests will skip" >&2
    fi
fi

# --- Python package with its test extras ----------------------------------------------------
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"$PYTHON" -m pip install -q -e '.[test]'

# --- lint, types, tests ----------------------------------------------------------------------
"$PYTHON" -m ruff check sip media switch tests bench
"$PYTHON" -m mypy
"$PYTHON" -m pytest -q "$@"
