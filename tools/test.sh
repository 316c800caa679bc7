#!/usr/bin/env bash
# The test command (README.rst, .ci/run): on a fresh Debian 12 machine, as root, install what
# the suite needs -- Debian's servers for the integration lab, tox -- then run every tox env:
# unit + integration tests on the newest and on the lowest supported certbot, ruff, mypy.
# Arguments are passed to pytest, e.g. `bash tools/test.sh -k compat`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-system-deps.sh
[ -x .venv-tox/bin/tox ] || python3 -m venv .venv-tox
.venv-tox/bin/pip install -q --disable-pip-version-check 'tox>=4'

export CERTBOT_EMAIL_TEST_TALLY="$PWD/.tox/test-tally"
mkdir -p .tox && : > "$CERTBOT_EMAIL_TEST_TALLY"
status=0
.venv-tox/bin/tox run -- "$@" || status=$?

# One closing line over both certbot versions, counted by tests/conftest.py.
awk '{p += $2; f += $3; i += $4; s += $5} END {
       printf "integration tests run: %d\n", i
       printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$CERTBOT_EMAIL_TEST_TALLY"
exit "$status"
