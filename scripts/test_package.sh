#!/usr/bin/env bash
# The Debian package, installed for real: builds it (scripts/package.sh),
# `dpkg -i`, checks what an operator gets (the binary runs, `ackgate check`
# accepts the installed example config, the units name the installed
# binary, the secret exists with mode 600, the dashboard and alert rules
# are there), then purges it and checks nothing is left. Refuses to run
# where ackgate is already installed from a package (it would purge it).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package test: $*" >&2; exit 1; }
if dpkg-query -W -f='${Status}' ackgate 2>/dev/null | grep -q 'ok installed'; then
  fail "an ackgate package is installed on this machine; this test installs and purges its own: remove it first (dpkg -P ackgate)"
fi
out=$(mktemp -d)
trap 'dpkg -P ackgate >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
deb=$(scripts/package.sh "$out")
# Output captured before grep reads it: with pipefail, `grep -q` quitting
# early would fail the writer with SIGPIPE.
info=$(dpkg-deb --info "$deb")
grep -q '^ Package: ackgate' <<<"$info" || fail "no control file"
dpkg -i "$deb" >/dev/null
want=$(./target/release/ackgate --version)
[ "$(/usr/bin/ackgate --version)" = "$want" ] || fail "installed binary says '$(/usr/bin/ackgate --version)', want '$want'"
/usr/bin/ackgate check --config /etc/ackgate/ackgate.toml >/dev/null || fail "ackgate check refused the installed example config"
grep -q '^ExecStart=/usr/bin/ackgate run --config /etc/ackgate/ackgate.toml' /lib/systemd/system/ackgate.service \
  || fail "the unit does not run the installed binary"
grep -q '/usr/bin/ackgate' /lib/systemd/system/ackgate@.service || fail "ackgate@.service does not run the installed binary"
[ "$(stat -c %a /etc/ackgate/secret)" = 600 ] || fail "secret mode $(stat -c %a /etc/ackgate/secret)"
grep -Eq '^[0-9a-f]{32}$' /etc/ackgate/secret || fail "secret is not 32 hex digits"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' /usr/share/ackgate/grafana/ackgate-dashboard.json
for f in /usr/share/ackgate/prometheus/ackgate-alerts.yml /usr/share/doc/ackgate/README.md; do
  [ -s "$f" ] || fail "$f missing"
done
files=$(dpkg -L ackgate)
grep -qx /etc/ackgate/ackgate.toml <<<"$files" || fail "the config is not the package's"
grep -qx /etc/ackgate/ackgate.toml /var/lib/dpkg/info/ackgate.conffiles || fail "the config is not a conffile"
dpkg -P ackgate >/dev/null
for f in /usr/bin/ackgate /lib/systemd/system/ackgate.service /etc/ackgate; do
  [ ! -e "$f" ] || fail "$f left after purge"
done
echo "package ok: $(basename "$deb"), installed, checked and purged"
