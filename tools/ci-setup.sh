#!/usr/bin/env bash
# Optional system packages for interop tests: Debian's corosync 3.1.7 (+ qdevice/qnetd) and
# iproute2. Never fails: tests that need what could not be installed skip with a printed reason.
# Package scripts must not start any daemon here (a policy-rc.d forbids it for the duration):
# tests start, and stop, exactly the daemons they need.
set -u
[ "$(id -u)" = 0 ] || exit 0
command -v apt-get >/dev/null 2>&1 || exit 0
[ "${COROSYNC_SKIP_APT:-0}" = 1 ] && exit 0
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/corosync ] || need+=(corosync)
[ -x /usr/bin/corosync-qnetd ] || need+=(corosync-qnetd)
[ -x /usr/sbin/corosync-qdevice ] || need+=(corosync-qdevice)
[ ${#need[@]} -eq 0 ] && exit 0
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created_policy=1
fi
if apt-get update -qq >/dev/null 2>&1 &&
   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    echo "ci-setup: installed ${need[*]}"
else
    echo "ci-setup: could not install ${need[*]}; interop tests will skip"
fi
[ "$created_policy" = 1 ] && rm -f "$policy"
exit 0
