#!/usr/bin/env bash
# Optional system packages for interop tests (Debian's corosync 3.1.7 and iproute2).
# Never fails: tests that need what could not be installed skip with a printed reason.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${COROSYNC_SKIP_APT:-0}" != 1 ]; then
    if ! command -v ip >/dev/null 2>&1 || ! [ -x /usr/sbin/corosync ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends iproute2 corosync corosync-qdevice corosync-qnetd >/dev/null) \
            || echo "ci-setup: apt-get install failed; interop tests will skip"
        # Debian's package starts its own daemon; tests start what they need themselves.
        systemctl stop corosync 2>/dev/null || true
    fi
fi
exit 0
