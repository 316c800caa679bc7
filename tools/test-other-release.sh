#!/usr/bin/env bash
# The suite on the other stable Debian release (host 12 bookworm: a 13 trixie chroot; host 13: a
# bookworm chroot), as root: build the chroot from Debian's packages with mmdebstrap, install the
# lab's servers and Python in it, and run one env of the suite there with its own Python and venv.
# On trixie that env uses Debian's own certbot (/usr/lib/python3/dist-packages, certbot 4.0), and
# the chroot also builds debian/ into python3-certbot-email, installs it beside apt's certbot and
# runs the issuance and renewal tests with /usr/bin/certbot and /usr/bin/python3 alone.
# Whatever happens, the chroot's processes are killed, its mounts go and it is removed.
#   bash tools/test-other-release.sh [pytest args]      (tools/test.sh runs it after the host)
#   CERTBOT_EMAIL_CHROOT_STAGES="suite deb"             the stages to run (default: both)
# Appends "<env> passed failed integration skipped" lines to $CERTBOT_EMAIL_TEST_TALLY.
set -euo pipefail

# -- inside the chroot --------------------------------------------------------------------------

# Debian's certbot and what the plugins depend on (debian/control names the same for the .deb).
DEBIAN_CERTBOT=(python3-certbot python3-acme python3-josepy python3-dnspython python3-dkim
                python3-imapclient python3-cryptography)
# The .deb stage: Debian's tools to build it, /usr/bin/certbot, and Debian's pytest to test it.
DEB_STAGE=(build-essential debhelper dh-python python3-all python3-setuptools
           pybuild-plugin-pyproject dpkg-dev certbot python3-pytest)
# The tests the .deb stage runs: our plugins listed by certbot, an S/MIME certificate by
# email-reply and a TLS one by email-dns deployed by -i mailserver, each renewed.
DEB_TESTS=(
  tests/integration/test_certbot_with_email_hooks.py::test_plugins_lists_every_plugin_of_ours_with_no_refusal
  "tests/integration/test_email_reply_mail.py::test_certbot_certonly_and_renew_against_the_test_ca[mail-before-post]"
  "tests/integration/test_installers.py::test_mailserver_deploys_and_renewal_reaches_every_listener[email-dns]"
)

retry() {  # retry <command...>: three tries, for downloads from Debian and PyPI
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    echo "try $attempt of 3 failed: $*" >&2
    sleep $((attempt * 10))
  done
  return 1
}

tally_of() {  # tally_of <label> <pytest...>: run pytest with its tally line labelled <label>
  local label=$1 status=0
  shift
  # A bound on one run, so that a hung test cannot hold CI (a whole run takes ~10 min).
  TOX_ENV_NAME=$label CERTBOT_EMAIL_TEST_TALLY=/root/tally \
    timeout --kill-after=60 1800 "$@" || status=$?
  [ "$status" -ne 124 ] || echo "chroot: $label stopped after 30 min" >&2
  return "$status"
}

inside() {
  local release stage started status=0
  release=$(. /etc/os-release && echo "$VERSION_CODENAME")
  export DEBIAN_FRONTEND=noninteractive
  started=$SECONDS
  retry apt-get update -q
  extra=(python3 python3-venv)
  if [ "$release" = trixie ]; then extra+=("${DEBIAN_CERTBOT[@]}" "${DEB_STAGE[@]}"); fi
  retry apt-get install -y -q --no-install-recommends "${extra[@]}" >/dev/null
  retry bash /src/tools/install-system-deps.sh >/dev/null
  echo "chroot: packages installed in $((SECONDS - started)) s"
  # The tests write below the checkout (caches, builds): they get a copy.
  mkdir -p /root/src
  tar -C /src --exclude=./.tox --exclude='./.venv*' --exclude=./build --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -C /root/src -xf -
  cd /root/src
  for stage in $STAGES; do
    started=$SECONDS
    # A process of its own, where set -e holds (it does not in a function called with ||).
    bash /src/tools/test-other-release.sh --stage "$stage" "$release" "$@" || status=1
    echo "chroot: stage $stage took $((SECONDS - started)) s"
  done
  return "$status"
}

stage_suite() {  # stage_suite <release> [pytest args]: the whole suite in one venv
  # Not under /root (0700): email-capability's Postfix backend runs the venv's Python as the
  # spawn user (nobody).
  local release=$1 venv=/opt/certbot-email-venv
  shift
  if [ "$release" = trixie ]; then
    # Debian's certbot 4.0: the venv sees dist-packages; certbot-email goes in without its
    # dependencies (pip would take certbot from PyPI), then only what its test extra adds.
    python3 -m venv --system-site-packages "$venv"
    retry "$venv/bin/pip" install -q --no-deps .
    mapfile -t test_extra < <("$venv/bin/python" -c '
import importlib.metadata as m, re
for r in m.requires("certbot-email") or []:
    if re.search(r"extra\s*==\s*.test.", r):
        print(r.split(";")[0].strip())')
    retry "$venv/bin/pip" install -q "${test_extra[@]}"
    # venv/bin/certbot, where the tests look for it: /usr/bin/certbot's code, run by the venv's
    # Python so that it finds the certbot-email under test.
    printf '#!%s\nimport sys\nfrom certbot.main import main\nsys.exit(main())\n' \
      "$venv/bin/python" > "$venv/bin/certbot"
    chmod +x "$venv/bin/certbot"
    "$venv/bin/python" - <<'EOF'
import certbot, sys
if not certbot.__file__.startswith("/usr/lib/python3/dist-packages/"):
    sys.exit(f"the venv's certbot is {certbot.__file__}, not Debian's")
print(f"chroot: Debian's certbot {certbot.__version__}")
EOF
  else
    python3 -m venv "$venv"
    retry "$venv/bin/pip" install -q '.[test]'
  fi
  # Every test runs even where a module does not import here: the count says what fails.
  tally_of "$release:suite" env CI=true "$venv/bin/python" -m pytest -ra --durations=15 \
    -p no:cacheprovider --continue-on-collection-errors "${@:-tests}"
}

stage_deb() {  # stage_deb <release>: build, install and use python3-certbot-email
  local release=$1 deb started=$SECONDS
  if [ "$release" != trixie ]; then
    echo "chroot: no .deb stage on $release (its certbot is older than the plugins support)"
    return 0
  fi
  rm -rf /root/deb && mkdir -p /root/deb
  cp -a /root/src /root/deb/certbot-email
  (cd /root/deb/certbot-email && dpkg-buildpackage -us -uc -b) > /root/deb/build.log 2>&1 ||
    { tail -40 /root/deb/build.log; return 1; }
  deb=$(echo /root/deb/python3-certbot-email_*_all.deb)
  echo "chroot: $(basename "$deb") built in $((SECONDS - started)) s"
  started=$SECONDS
  retry apt-get install -y -q "$deb" >/dev/null
  echo "chroot: installed with apt in $((SECONDS - started)) s"
  dpkg-query -W -f='${Package} ${Version}: Depends: ${Depends}\n' python3-certbot-email
  # Only the tests, none of the checkout's code: everything comes from the installed package,
  # and sys.executable (/usr/bin/python3) puts the tests' certbot at /usr/bin/certbot.
  rm -rf /root/debtests && mkdir /root/debtests && cp -a /root/src/tests /root/debtests/
  (cd /root/debtests && tally_of "$release:deb" env CI=true /usr/bin/python3 -m pytest -ra \
     -p no:cacheprovider "${DEB_TESTS[@]}")
}

if [ "${1:-}" = --inside ]; then
  shift
  inside "$@"
  exit
fi
if [ "${1:-}" = --stage ]; then
  cd /root/src
  "stage_$2" "${@:3}"
  exit
fi

# -- on the host ----------------------------------------------------------------------------------

cd "$(dirname "$0")/.."
checkout=$PWD
STAGES=${CERTBOT_EMAIL_CHROOT_STAGES:-suite deb}
host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$host" in
  bookworm) other=trixie ;;
  trixie) other=bookworm ;;
  *) echo "$0: host is '$host'; only Debian 12 (bookworm) and 13 (trixie) are known" >&2; exit 1 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "$0: run as root (mmdebstrap, mount, chroot)" >&2
  exit 1
fi
tools=()
command -v mmdebstrap >/dev/null || tools+=(mmdebstrap)
command -v mount >/dev/null || tools+=(mount)  # not essential on Debian 13
if [ "${#tools[@]}" -gt 0 ]; then
  retry apt-get update -q
  DEBIAN_FRONTEND=noninteractive retry apt-get install -y -q --no-install-recommends "${tools[@]}"
fi

root=$(mktemp -d /var/tmp/certbot-email-"$other".XXXXXX)

chroot_pids() {  # the processes whose root directory is the chroot
  local proc
  for proc in /proc/[0-9]*; do
    case "$(readlink "$proc/root" 2>/dev/null)" in
      "$root" | "$root"/*) echo "${proc#/proc/}" ;;
    esac
  done
}

cleanup() {
  local pids tries
  trap - EXIT INT TERM
  [ -z "${namespace:-}" ] || kill -TERM "$namespace" 2>/dev/null || true
  pids=$(chroot_pids)
  if [ -n "$pids" ]; then
    echo "chroot: stopping what is left running: $(echo $pids)" >&2
    kill -TERM $pids 2>/dev/null || true
    for tries in 1 2 3 4 5 6 7 8 9 10; do
      [ -z "$(chroot_pids)" ] && break
      sleep 0.5
    done
    pids=$(chroot_pids)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  # The mounts live in the chroot's own namespace and go with it; none should be seen here.
  findmnt -rn -o TARGET | grep -E "^$root(/|$)" | sort -r | xargs -r -n1 umount -l || true
  if findmnt -rn -o TARGET | grep -qE "^$root(/|$)"; then
    echo "chroot: $root still has mounts; not removed" >&2
    return 1
  fi
  rm -rf --one-file-system "$root"
  echo "chroot: removed, no mounts or processes of it left"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_chroot() {  # mmdebstrap wants an empty directory: a failed try leaves a partial one
  find "$root" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
  mmdebstrap "$@"
}

started=$SECONDS
retry build_chroot --quiet --variant=apt --include=ca-certificates \
  --aptopt='Acquire::Retries "5"' "$other" "$root" \
  "deb http://deb.debian.org/debian $other main" \
  "deb http://deb.debian.org/debian-security $other-security main"
echo "chroot: $other built in $((SECONDS - started)) s"
# apt in the chroot must not start the services it installs: the lab runs its own.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cp /etc/hosts "$root/etc/hosts"
# pip in the chroot trusts the certificate authorities the host trusts (a local proxy's too).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/host-ca-certificates.crt"
mkdir -p "$root/src"

status=0
export STAGES
# A fresh environment, as on a new machine: nothing of the host's pip or Python settings.
unshare --mount --fork /bin/bash -euc '
  root=$1 checkout=$2
  shift 2
  # The root a mount of its own, so that unshare -m inside (a test of systemd-like private
  # mounts) can change its propagation.
  mount --bind "$root" "$root"
  for dir in /proc /sys /dev /dev/pts; do mount --bind "$dir" "$root$dir"; done
  mount --bind "$checkout" "$root/src"
  mount -o remount,bind,ro "$root/src"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 STAGES="$STAGES" PIP_CERT=/etc/ssl/host-ca-certificates.crt \
    /bin/bash /src/tools/test-other-release.sh --inside "$@"
' chroot "$root" "$checkout" "$@" &
# In the background, so that a TERM or INT is acted on at once (cleanup), not after the chroot.
namespace=$!
wait "$namespace" || status=$?

if [ -n "${CERTBOT_EMAIL_TEST_TALLY:-}" ] && [ -f "$root/root/tally" ]; then
  cat "$root/root/tally" >> "$CERTBOT_EMAIL_TEST_TALLY"
fi
exit "$status"
