#!/usr/bin/env bash
# Provide a working `apptainer` on a Debian/Ubuntu machine that does not package it: CI here
# (Debian bookworm, root, apt reachable, no container registry). Clusters have their own
# apptainer (module load apptainer); this script is not for them.
#
#     bash containers/ci-apptainer.sh            # then:
#     export PATH="${BIOINSTRUCT_APPTAINER_ROOT:-/var/cache/bioinstruct-apptainer}/bin:$PATH"
#
# Apptainer is in Debian sid only (it needs glibc >= 2.38, bookworm has 2.36), so this
# debootstraps a minimal sid root with apptainer in it (1-1.5 minutes and 280 MB, once),
# configures it for this machine, and installs containers/apptainer as
# $BIOINSTRUCT_APPTAINER_ROOT/bin/apptainer: a wrapper that runs the real apptainer inside
# that root (see it for how). Idempotent: a root prepared by the same recipe is reused
# (about a second); a changed recipe rebuilds it. It changes nothing on the machine outside
# that folder, except installing debootstrap with apt when it is missing.
#
# Environment:
#   BIOINSTRUCT_APPTAINER_ROOT   cache folder (default /var/cache/bioinstruct-apptainer)
#   BIOINSTRUCT_DEBIAN_MIRROR    Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

cache=${BIOINSTRUCT_APPTAINER_ROOT:-/var/cache/bioinstruct-apptainer}
mirror=${BIOINSTRUCT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$(date +%s)
# debootstrap is in apt; unshare and pivot_root (util-linux) are on every Debian.
packages=apptainer,ca-certificates,debootstrap,uidmap,squashfs-tools
# Written into the root when it is ready; a change here makes the next run rebuild it.
# (The configuration below is rewritten on every run, so editing it needs no rebuild.)
recipe="recipe 1: sid minbase +$packages"

say() { echo "ci-apptainer: $*"; }
die() { echo "ci-apptainer: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mount namespaces); on a cluster use its apptainer"

# Remove a half-built root safely: an interrupted debootstrap can leave /proc or /sys mounted
# inside it, and rm -rf must never walk into those.
remove_tree() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    while read -r m; do umount -l "$m" 2>/dev/null || true; done \
        < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system -- "$dir"
}

mkdir -p "$cache/bin"
# One preparer at a time (parallel CI jobs, a test fixture racing .ci/run).
exec 9>"$cache/.lock"
flock -w 900 9 || die "timed out waiting for another ci-apptainer.sh ($cache/.lock)"

if [ -f "$cache/rootfs/.bioinstruct-ready" ] && [ "$(cat "$cache/rootfs/.bioinstruct-ready")" = "$recipe" ]; then
    how=cached
else
    how=built
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (apt)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
                >"$cache/apt.log" 2>&1; then
            tail -n 20 "$cache/apt.log" >&2
            die "could not install debootstrap (log: $cache/apt.log)"
        fi
    fi
    new=$cache/rootfs.new
    remove_tree "$new"
    say "debootstrapping Debian sid with apptainer into $cache (about a minute, once)"
    if ! debootstrap --variant=minbase --include="$packages" sid "$new" "$mirror" \
            >"$cache/debootstrap.log" 2>&1; then
        tail -n 30 "$cache/debootstrap.log" >&2
        die "debootstrap failed (full log: $cache/debootstrap.log)"
    fi
    # apt's lists and .debs are not needed to run apptainer.
    rm -rf "$new/var/cache/apt/archives/"*.deb "$new/var/lib/apt/lists/"*
    echo "$recipe" >"$new/.bioinstruct-ready"
    remove_tree "$cache/rootfs"
    mv "$new" "$cache/rootfs"
fi

# --- configuration (every run: cheap, and a cached root picks up changes) -------------------
conf=$cache/rootfs/etc/apptainer
# Root here may lack capabilities (this VM's bounding set has no CAP_SYS_RESOURCE), and
# apptainer by default asks for the full set whenever root runs a container, including the
# unsquashfs it runs to unpack a SIF: grant root exactly the capabilities this machine has.
cap_names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
    LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
    SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
    SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
    MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
    CHECKPOINT_RESTORE)   # capability numbers 0..40, as in linux/capability.h
bounding=$((16#$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)))
caps=()
for i in "${!cap_names[@]}"; do
    if (( (bounding >> i) & 1 )); then caps+=("\"CAP_${cap_names[$i]}\""); fi
done
printf '{\n\t"users": {\n\t\t"root": [%s]\n\t},\n\t"groups": {}\n}\n' \
    "$(IFS=,; echo "${caps[*]}")" >"$conf/capability.json"
sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf/apptainer.conf"
grep -qx 'root default capabilities = file' "$conf/apptainer.conf" \
    || die "could not set 'root default capabilities' in $conf/apptainer.conf"
# --fakeroot builds map root onto a subordinate id range; root needs one.
echo "root:100000:65536" >"$cache/rootfs/etc/subuid"
echo "root:100000:65536" >"$cache/rootfs/etc/subgid"

# `Bootstrap: debootstrap` builds (containers/cpu.def) spend a minute or more in debootstrap
# on every build: ci-debootstrap caches its packages and its finished tree (see it).
sbin=$cache/rootfs/usr/sbin
[ -e "$sbin/debootstrap.real" ] || mv "$sbin/debootstrap" "$sbin/debootstrap.real"
install -m 0755 "$here/ci-debootstrap" "$sbin/debootstrap"

# The wrapper is copied (not linked) so it keeps working when this checkout goes away.
install -m 0755 "$here/apptainer" "$cache/bin/apptainer"
version=$("$cache/bin/apptainer" --version) || die "the wrapper does not run apptainer"
say "$version ready in $(($(date +%s) - start)) s ($how); it is $cache/bin/apptainer"
