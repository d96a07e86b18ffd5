#!/usr/bin/env bash
# Builds the Debian package target/debian/ackgate_<version>_<arch>.deb with
# dpkg-deb: the release binary (/usr/bin/ackgate), the systemd units, the
# example configuration as a conffile (/etc/ackgate/ackgate.toml), the
# Grafana dashboard and the Prometheus alert rules (/usr/share/ackgate), and
# the README. Installing creates /etc/ackgate/secret (random, mode 600) if
# there is none; nothing is enabled or started: edit the config first.
# Prints the package's path. Usage: scripts/package.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=${1:-target/debian}
cargo build --release --bins --quiet
bin=target/release/ackgate
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs is the libc6 it needs.
glibc=$(objdump -T "$bin" | grep -Eo 'GLIBC_[0-9.]+' | sed 's/GLIBC_//' | sort -V | tail -1)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 755 "$bin" "$root/usr/bin/ackgate"
strip --strip-unneeded "$root/usr/bin/ackgate"
for u in ackgate.service ackgate@.service; do
  install -d "$root/lib/systemd/system"
  sed 's|/usr/local/bin/ackgate|/usr/bin/ackgate|g' "deploy/$u" > "$root/lib/systemd/system/$u"
  chmod 644 "$root/lib/systemd/system/$u"
done
install -D -m 644 examples/ackgate.toml "$root/etc/ackgate/ackgate.toml"
install -D -m 644 examples/services.toml "$root/usr/share/doc/ackgate/examples/services.toml"
install -D -m 644 deploy/grafana/ackgate-dashboard.json "$root/usr/share/ackgate/grafana/ackgate-dashboard.json"
if [ -f deploy/prometheus/ackgate-alerts.yml ]; then
  install -D -m 644 deploy/prometheus/ackgate-alerts.yml "$root/usr/share/ackgate/prometheus/ackgate-alerts.yml"
fi
install -D -m 644 README.md "$root/usr/share/doc/ackgate/README.md"
cat > "$root/usr/share/doc/ackgate/copyright" <<'TXT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ackgate

Files: *
Copyright: the ackgate developers
License: MIT or Apache-2.0
TXT

install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<TXT
Package: ackgate
Version: $version
Architecture: $arch
Maintainer: ackgate developers <ackgate@localhost>
Depends: libc6 (>= $glibc)
Recommends: systemd
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: handshake-offloading SYN proxy (XDP SYN cookies)
 ackgate answers SYNs in XDP with SipHash SYN cookies at line rate and
 hands only connections whose ACK carries a valid cookie to its userspace
 relay, which opens the backend connection: backends never see a
 half-open connection, so a SYN flood cannot exhaust them.
TXT
echo /etc/ackgate/ackgate.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  chmod 700 /etc/ackgate
  if [ ! -e /etc/ackgate/secret ]; then
    # The cookie secret: 32 hex digits, readable by root only. A fleet
    # shares one: replace this file on every member.
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > /etc/ackgate/secret)
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
  fi
fi
TXT
cat > "$root/DEBIAN/postrm" <<'TXT'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -f /etc/ackgate/secret
  rmdir /etc/ackgate 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
TXT
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/ackgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
