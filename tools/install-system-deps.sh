#!/usr/bin/env bash
# Install the Debian 12 or 13 packages the integration lab (tests/lab) runs, as root; the names
# are the same on both releases. Idempotent: when all are installed already it returns at once,
# without touching apt.
#   pebble                            ACME test CA
#   postfix                           SMTP: port-25 MX, submission, submissions
#   dovecot-core/-imapd/-pop3d/-lmtpd IMAP, POP3, LMTP delivery, SASL for Postfix
#   bind9 (named, tsig-keygen)        DNS with TSIG-signed RFC 2136 updates
#   bind9-dnsutils (nsupdate, dig)    DNS clients the tests and hook examples use
#   opendkim, opendkim-tools          DKIM signing milter, and opendkim-testkey
#   mount                             mount(8), for the tests of systemd-like private /tmp
#                                     (essential on Debian 12, not on a minimal Debian 13)
# openssl and curl are deliberately absent: they are already installed, and naming them makes apt
# upgrade them (and libssl3) as a side effect.
set -euo pipefail

PACKAGES=(
  pebble
  postfix
  dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
  bind9 bind9-dnsutils
  opendkim opendkim-tools
  mount
)

if [ "$(id -u)" -ne 0 ]; then
  echo "$0: run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages for the lab: all installed"
  exit 0
fi

echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The lab runs its own Postfix instance; the system one stays unconfigured (no /etc/postfix/main.cf).
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
