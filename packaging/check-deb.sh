#!/usr/bin/env bash
# Installs the Debian package on this machine (dpkg -i; its dependencies with
# apt when missing) and checks it: every binary runs and names itself, the man
# pages and completions are where man and the shells look, the service account
# and the configuration's ownership, and `systemd-analyze verify` on the unit
# (when systemd-analyze is available).
set -euo pipefail
deb="${1:?usage: check-deb.sh PACKAGE.deb}"
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
fail() { echo "check-deb.sh: FAILED: $*" >&2; exit 1; }

$sudo dpkg -i "$deb" || {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -f
}
dpkg -s brandkms | grep -q '^Status: install ok installed' || fail "brandkms not installed"

kms --version
for b in kms kmsctl issuer cybershop loading-portal terminal clearing loadgen; do
  [ "$(command -v "$b")" = "/usr/bin/$b" ] || fail "$b is not /usr/bin/$b"
  "$b" --help | head -1 | grep -q "^$b: " || fail "$b --help does not name $b"
  [ -f "/usr/share/man/man1/$b.1.gz" ] || [ -f "/usr/share/man/man1/$b.1" ] || fail "no man page for $b"
  [ -f "/usr/share/bash-completion/completions/$b" ] || fail "no bash completion for $b"
  [ -f "/usr/share/zsh/vendor-completions/_$b" ] || fail "no zsh completion for $b"
  [ -f "/usr/share/fish/vendor_completions.d/$b.fish" ] || fail "no fish completion for $b"
done
getent passwd brandkms >/dev/null || fail "no brandkms service account"
[ "$(stat -c '%U:%G %a' /etc/brandkms/kms.toml)" = "root:brandkms 640" ] \
  || fail "/etc/brandkms/kms.toml is $(stat -c '%U:%G %a' /etc/brandkms/kms.toml)"
unit=/lib/systemd/system/brandkms.service
[ -f "$unit" ] || unit=/usr/lib/systemd/system/brandkms.service
[ -f "$unit" ] || fail "no brandkms.service"
for setting in NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
  "LoadCredential=kms-pin:/etc/brandkms/pin" User=brandkms; do
  grep -qx "$setting" "$unit" || fail "$unit lacks $setting"
done
if command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-deb.sh: systemd-analyze verify $unit"
  systemd-analyze verify "$unit"
  systemd-analyze security --offline=yes "$unit" 2>/dev/null | grep "Overall exposure" || true
else
  echo "check-deb.sh: systemd-analyze not available; unit not verified"
fi
# The installed kms reads the installed configuration (it stops at the missing
# PIN credential, which only the unit provides: configuration exit code 2).
set +e
out="$(kms doctor --config /etc/brandkms/kms.toml 2>&1)"; code=$?
set -e
[ "$code" = 2 ] && grep -q "pin_credential" <<<"$out" || fail "kms doctor on the default config: $code: $out"
echo "check-deb.sh: brandkms $(dpkg-query -W -f '${Version}' brandkms) installed and checked"
