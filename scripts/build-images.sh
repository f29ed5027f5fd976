#!/usr/bin/env bash
# Build the training and serving images (names from components/images.py).
#
#   scripts/build-images.sh [train|serve|all] [extra docker build args...]
#
# Env:
#   DOCKER          docker client (default /usr/bin/docker when present, else docker)
#   BASE_IMAGE      image the Dockerfiles start FROM (default debian:bookworm-slim);
#                   made locally with debootstrap when it can be neither found nor pulled
#   EXTRA_CA_DIR    directory whose *.crt are trusted in the images (default
#                   /usr/local/share/ca-certificates, for intercepting proxies); put
#                   your own in ./certs/ instead or as well
#   TRAIN_IMAGE / SERVE_IMAGE   override the tags (default: components/images.py)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHICH="${1:-all}"
[[ $# -gt 0 ]] && shift
case "$WHICH" in train|serve|all) ;; *) echo "usage: $0 [train|serve|all] [docker build args]" >&2; exit 2 ;; esac

if [[ -z "${DOCKER:-}" ]]; then
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
export DOCKER DOCKER_BUILDKIT=1
BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
EXTRA_CA_DIR="${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"

image_const() {  # NAME -> value of NAME = "..." in components/images.py
    sed -n "s/^$1 *= *\"\(.*\)\"/\1/p" components/images.py
}
TRAIN_IMAGE="${TRAIN_IMAGE:-$(image_const TRAIN_IMAGE)}"
SERVE_IMAGE="${SERVE_IMAGE:-$(image_const SERVE_IMAGE)}"
[[ -n "$TRAIN_IMAGE" && -n "$SERVE_IMAGE" ]] || { echo "cannot read image names from components/images.py" >&2; exit 1; }

log() { printf 'build-images: %s\n' "$*" >&2; }

"$DOCKER" info >/dev/null 2>&1 || { log "no Docker engine reachable via $DOCKER"; exit 1; }

"$ROOT/scripts/base-image.sh" "$BASE_IMAGE"

# Extra CA certificates go into ./certs (build context). Files this script adds
# are removed again afterwards; certificates you put there yourself stay.
added=()
cleanup() {
    local f
    for f in "${added[@]}"; do rm -f "$f"; done
    rmdir certs 2>/dev/null || true
}
trap cleanup EXIT
if compgen -G "$EXTRA_CA_DIR/*.crt" >/dev/null; then
    mkdir -p certs
    for src in "$EXTRA_CA_DIR"/*.crt; do
        dst="certs/$(basename "$src")"
        if [[ ! -e "$dst" ]]; then cp "$src" "$dst"; added+=("$dst"); fi
    done
fi
log "extra CA certificates: $(compgen -G 'certs/*.crt' | wc -l)"

build() {  # KIND TAG
    local kind=$1 tag=$2 start end
    start=$(date +%s)
    log "building $tag from Dockerfile.$kind"
    "$DOCKER" build -f "Dockerfile.$kind" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "VCS_REF=$VCS_REF" -t "$tag" "${EXTRA_ARGS[@]}" .
    end=$(date +%s)
    log "$tag built in $((end - start)) s, $("$DOCKER" image inspect -f '{{.Size}}' "$tag" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}
EXTRA_ARGS=("$@")
# The commit, with "-dirty" when the tree has uncommitted changes (labels never lie).
VCS_REF=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ "$VCS_REF" != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then VCS_REF="$VCS_REF-dirty"; fi

[[ "$WHICH" == serve ]] || build train "$TRAIN_IMAGE"
[[ "$WHICH" == train ]] || build serve "$SERVE_IMAGE"
