#!/bin/bash
# Install the Debian 12 packages the test suite uses: the peer tools the
# differential tests compare against, the workload builder's tools, and the
# filesystem tools for loop-mounted test filesystems.
#
# Idempotent: installs only what is missing, with one `apt-get update`.
# As a normal user it cannot install: it lists what is missing (the tests that
# need those tools skip with a reason) and exits 0 so the rest of CI still runs.
# As root it exits 1 if a package is still missing afterwards, so a CI machine
# that silently lost its peer tools does not turn the differential tests into skips.
# Extra package names may be given as arguments.
set -uo pipefail

PACKAGES=(
  debootstrap pigz zstd           # make the real workload (tests/compat)
  containers-storage umoci skopeo tar-split docker-registry   # peer tools
  docker.io podman                # tests/interop: a private dockerd (the fixture starts and
                                  # stops it; the package's own service is not used) and podman
  xfsprogs e2fsprogs attr         # mkfs.xfs/mkfs.ext4 for loop filesystems, getfattr/setfattr
  tar                             # GNU tar, the reference extractor
  golang-go                       # compiles a Go archive/tar probe: windowsfilter byte-compatibility
  "$@"
)

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} = 0 ]; then
  echo "ci-apt: all ${#PACKAGES[@]} packages present" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ci-apt: not root, cannot install: ${missing[*]}" >&2
  echo "ci-apt: tests that need them will skip (as root: $0)" >&2
  exit 0
fi

# Another apt/dpkg run (an image's first-boot upgrade, a parallel job) may hold
# the lock: wait for it rather than fail.
apt_opts=(-o DPkg::Lock::Timeout=900 -q)
export DEBIAN_FRONTEND=noninteractive
# docker.io and containerd ship services that apt would start (a host dockerd
# with a bridge and iptables rules on /var/lib/docker). The interop tests start a
# private dockerd of their own and nothing else may run: a policy-rc.d that
# refuses every start (honoured by invoke-rc.d and deb-systemd-invoke) keeps apt
# from starting any service; ours is removed again afterwards.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# ci-apt.sh: no service starts during the install\nexit 101\n' \
    >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
fi
cleanup_policy() { if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup_policy EXIT
echo "ci-apt: installing ${missing[*]}" >&2
if ! apt-get "${apt_opts[@]}" update; then
  echo "ci-apt: apt-get update failed; trying the install with the existing lists" >&2
fi
if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"; then
  echo "ci-apt: apt-get install failed" >&2
fi
still=()
for p in "${missing[@]}"; do
  installed "$p" || still+=("$p")
done
if [ ${#still[@]} != 0 ]; then
  echo "ci-apt: still missing: ${still[*]}" >&2
  exit 1
fi
exit 0
