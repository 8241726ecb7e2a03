#!/usr/bin/env bash
# Make the image's base, debian:bookworm-slim, from Debian's packages on this machine, without an image registry.
#
# Debian's official debian:bookworm-slim is built the same way (debuerreotype): a minbase bootstrap of bookworm
# with the "slim" dpkg exclusions (no documentation, manuals or translations; copyright files kept) and the apt
# settings that keep package lists and downloads out of the layers. mmdebstrap does the bootstrap with the
# machine's apt (its proxy settings and CA included), with /usr merged by directory symlinks as debootstrap does
# (not by the usrmerge package, which would pull Perl in), and `docker import` turns the tarball into the image.
#
# Usage: scripts/base-image.sh [IMAGE]   (default debian:bookworm-slim; FORCE=1 rebuilds an existing image)
set -euo pipefail

IMAGE=${1:-debian:bookworm-slim}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [[ ${FORCE:-0} != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE is present (FORCE=1 rebuilds it)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }

# The slim exclusions of debuerreotype (debuerreotype-slimify), as dpkg configuration that stays in the image,
# so packages installed on top of it are slim too.
slim=(
    path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright
    path-exclude=/usr/share/man/* path-exclude=/usr/share/groff/* path-exclude=/usr/share/info/*
    path-exclude=/usr/share/lintian/* path-exclude=/usr/share/linda/*
    path-exclude=/usr/share/locale/* path-include=/usr/share/locale/locale.alias
)
dpkg_options=()
for option in "${slim[@]}"; do
    dpkg_options+=("--dpkgopt=$option")
done

# debuerreotype-minimizing-config: no translations, no package caches kept after an install.
apt_config='Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
Apt::AutoRemove::SuggestsImportant "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'

sources="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main"

echo "building $IMAGE from Debian $SUITE packages ($MIRROR)"
# shellcheck disable=SC2016  # "$1" in the hooks is the new root, expanded by mmdebstrap's shell, not this one
mmdebstrap --quiet --variant=minbase --format=tar "${dpkg_options[@]}" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook="printf '%s\n' '$apt_config' > \"\$1/etc/apt/apt.conf.d/docker-minimal\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/apt/* "$1"/var/log/dpkg.log' \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id; : > "$1"/etc/machine-id' \
    "$SUITE" - "$sources" |
    docker import --change 'CMD ["bash"]' --message "mmdebstrap --variant=minbase $SUITE (slim)" - "$IMAGE"
docker image inspect --format "$IMAGE: {{.Size}} bytes" "$IMAGE"
