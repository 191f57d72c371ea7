#!/usr/bin/env bash
# Builds the Debian package defenseclaw_<version>_<arch>.deb from built binaries,
# with dpkg-deb (no other packaging tool needed).
#
#   cargo build --release --locked --bin defenseclawd --bin defenseclawctl
#   deploy/debian/build-deb.sh target/release target/debian
#
# The package holds both binaries (stripped), the systemd units, sysusers and
# tmpfiles entries, the example config as /etc/defenseclaw/defenseclawd.toml (a
# conffile), the OpenClaw gate plugin, shell completions and man pages. Every
# file is owned by root; the maintainer scripts create the defenseclaw user and
# the private directories, and do nothing to the host when dpkg installs into
# another root (DPKG_ROOT).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BIN_DIR OUT_DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
deploy="$(dirname "$here")"
repo="$(dirname "$deploy")"
bin_dir="$1"
out_dir="$2"
for bin in defenseclawd defenseclawctl; do
  if [ ! -x "$bin_dir/$bin" ]; then
    echo "build-deb: $bin_dir/$bin is missing; build it first (cargo build --release --bin $bin)" >&2
    exit 1
  fi
done
for tool in dpkg-deb strip gzip objdump; do
  command -v "$tool" >/dev/null || { echo "build-deb: $tool is required (Debian: dpkg, binutils, gzip)" >&2; exit 1; }
done

version="$("$bin_dir/defenseclawd" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/etc/defenseclaw" \
  "$root/usr/share/defenseclaw/openclaw-plugin" "$root/usr/share/doc/defenseclaw" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"

for bin in defenseclawd defenseclawctl; do
  install -m 0755 "$bin_dir/$bin" "$root/usr/bin/$bin"
  strip --strip-all "$root/usr/bin/$bin"
done
install -m 0644 "$deploy/systemd/defenseclawd.service" "$deploy/systemd/defenseclawd.socket" \
  "$root/lib/systemd/system/"
install -m 0644 "$deploy/sysusers/defenseclaw.conf" "$root/usr/lib/sysusers.d/defenseclaw.conf"
install -m 0644 "$deploy/tmpfiles/defenseclaw.conf" "$root/usr/lib/tmpfiles.d/defenseclaw.conf"
# Readable by the daemon's group only once postinst applies the tmpfiles entry
# (/etc/defenseclaw 0750 root:defenseclaw); it holds no secret.
install -m 0644 "$deploy/config/defenseclawd.toml" "$root/etc/defenseclaw/defenseclawd.toml"
install -m 0644 "$deploy"/openclaw-plugin/* "$root/usr/share/defenseclaw/openclaw-plugin/"
install -m 0644 "$repo/README.md" "$root/usr/share/doc/defenseclaw/README.md"

ctl="$root/usr/bin/defenseclawctl"
"$ctl" man "$stage/man"
for page in "$stage"/man/*.1; do
  gzip -9n -c "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
chmod 0644 "$root"/usr/share/man/man1/*.gz
"$ctl" completions bash > "$root/usr/share/bash-completion/completions/defenseclawctl"
"$ctl" completions zsh > "$root/usr/share/zsh/vendor-completions/_defenseclawctl"
"$ctl" completions fish > "$root/usr/share/fish/vendor_completions.d/defenseclawctl.fish"

glibc="$(objdump -T "$root/usr/bin/defenseclawd" "$ctl" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
size_kib="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@GLIBC@/$glibc/" -e "s/@SIZE@/$size_kib/" \
  "$here/control.in" > "$root/DEBIAN/control"
echo "/etc/defenseclaw/defenseclawd.toml" > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

mkdir -p "$out_dir"
deb="$out_dir/defenseclaw_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
