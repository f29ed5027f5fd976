#!/usr/bin/env bash
# Give a bare Debian CI machine what the Docker and browser test groups need:
# the Docker engine (started here), debootstrap for the base image, Chromium, Prometheus
# with promtool (the alert-rule tests), and checkov (the policy tests).
# Idempotent: installs only what is missing. Needs root.
set -euo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! /usr/bin/docker info >/dev/null 2>&1; then
    (dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 60); do
        /usr/bin/docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi
/usr/bin/docker info >/dev/null 2>&1 || echo "ci-provision: Docker engine did not start; the Docker tests will fail (CI=true)" >&2

# checkov for the policy tests, from its own hash-checked lock.
make --no-print-directory policy-setup >/dev/null \
    || echo "ci-provision: checkov could not be installed; the policy tests will fail (CI=true)" >&2
