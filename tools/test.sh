#!/usr/bin/env bash
# The test command (README.rst, .ci/run): on a fresh Debian 12 or 13 machine, as root, install what
# the suite needs -- Debian's servers for the integration lab, tox -- then run every tox env:
# unit + integration tests on the newest and on the lowest supported certbot, ruff, mypy.
# Arguments are passed to pytest, e.g. `bash tools/test.sh -k compat`.
# CERTBOT_EMAIL_TEST_RELEASES picks what runs: "host" (the default), "host chroot" adds the suite
# in a chroot of the other stable Debian release (tools/test-other-release.sh), "chroot" runs
# only that. The chroot stage is not in the default yet: a Debian 12 host's Debian 13 chroot
# passes whole, but a Debian 13 host's Debian 12 chroot has not been run yet (README, Development).
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
releases=${CERTBOT_EMAIL_TEST_RELEASES:-host}
for release in $releases; do
  case "$release" in
    host | chroot) ;;
    *) echo "$0: CERTBOT_EMAIL_TEST_RELEASES takes host and/or chroot, not '$release'" >&2
       exit 2 ;;
  esac
done
[ -n "${releases// }" ] || { echo "$0: CERTBOT_EMAIL_TEST_RELEASES names nothing to run" >&2; exit 2; }
export CERTBOT_EMAIL_TEST_TALLY="$PWD/.tox/test-tally"
mkdir -p .tox && : > "$CERTBOT_EMAIL_TEST_TALLY"
status=0

if [[ " $releases " == *" host "* ]]; then
  bash tools/install-system-deps.sh
  [ -x .venv-tox/bin/tox ] || python3 -m venv .venv-tox
  .venv-tox/bin/pip install -q --disable-pip-version-check 'tox>=4'
  .venv-tox/bin/tox run -- "$@" || status=$?
  # The host's lines are "<env> ...": name the release, as the chroot's "<release>:<stage>".
  sed -i "/^[^ :]* /s/^/$host:/" "$CERTBOT_EMAIL_TEST_TALLY"
fi
if [[ " $releases " == *" chroot "* ]]; then
  bash tools/test-other-release.sh "$@" || status=$?
fi

# The closing lines, counted by tests/conftest.py: each release, then all of them.
awk -v host="$host" '{
       split($1, label, ":"); r = label[1]
       if (!(r in p)) order[n++] = r
       p[r] += $2; f[r] += $3; i[r] += $4; s[r] += $5 }
     END {
       for (k = 0; k < n; k++) {
         r = order[k]; where = (r == host) ? "host" : "chroot"
         printf "%s (%s): integration tests run: %d\n", r, where, i[r]
         printf "%s (%s): tests: %d passed, %d failed, %d skipped\n", r, where, p[r], f[r], s[r]
         P += p[r]; F += f[r]; I += i[r]; S += s[r] }
       printf "integration tests run: %d\n", I
       printf "tests: %d passed, %d failed, %d skipped\n", P, F, S }' "$CERTBOT_EMAIL_TEST_TALLY"
exit "$status"
