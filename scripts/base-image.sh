#!/usr/bin/env bash
# Make sure the base image the Dockerfiles start FROM exists locally.
#
#   scripts/base-image.sh [IMAGE]        (default: debian:bookworm-slim)
#
# 1. already present locally             -> nothing to do;
# 2. `docker pull` works (Docker Hub or a mirror is reachable) -> the real image;
# 3. otherwise (air-gapped build hosts)  -> an equivalent Debian bookworm root
#    filesystem made with debootstrap and `docker import`ed under the same name.
#
# Step 3 needs root and `debootstrap` (apt-get install debootstrap).
# Env: DOCKER (client, default /usr/bin/docker when present), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR.
set -euo pipefail

IMAGE="${1:-${BASE_IMAGE:-debian:bookworm-slim}}"
if [[ -z "${DOCKER:-}" ]]; then
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

log() { printf 'base-image: %s\n' "$*" >&2; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is present"
    exit 0
fi

if timeout 300 "$DOCKER" pull "$IMAGE" >/dev/null 2>&1; then
    log "pulled $IMAGE"
    exit 0
fi

suite="${IMAGE##*:}"
suite="${suite%-slim}"
case "$suite" in
    bookworm|trixie|bullseye) ;;
    *) log "cannot pull $IMAGE and do not know how to debootstrap '$suite'"; exit 1 ;;
esac
command -v debootstrap >/dev/null || {
    log "cannot pull $IMAGE and debootstrap is missing (apt-get install debootstrap)"
    exit 1
}
[[ $(id -u) -eq 0 ]] || { log "debootstrap needs root"; exit 1; }

log "cannot pull $IMAGE; building it with debootstrap ($suite from $MIRROR)"
rootfs="$(mktemp -d "${TMPDIR:-/tmp}/base-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase "$suite" "$rootfs" "$MIRROR" >&2

# Make it behave like the official -slim image: no docs/man pages/locales
# installed by later apt-get calls, no recommends, clean apt lists.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY_MIRROR $suite-security main
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log

tar --numeric-owner -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$IMAGE" >/dev/null
log "imported $IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") bytes)"
