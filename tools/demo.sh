#!/usr/bin/env bash
# The README's first command: on a fresh Debian 12 machine, as root, install what the demo needs
# (Debian's mail and DNS servers, a venv with certbot-email), then issue an S/MIME certificate
# for alice@example.test with `certbot certonly -a email-reply` from the local test CA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-system-deps.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check .
exec .venv/bin/python tools/demo.py
