#!/usr/bin/env bash
# Build a bioinstruct image with apptainer (see containers/README.md).
#
#     containers/build.sh gpu                 # Apptainerfile       -> bioinstruct-gpu-VERSION.sif
#     containers/build.sh cpu                 # containers/cpu.def  -> bioinstruct-cpu-VERSION.sif
#     containers/build.sh cpu -o /project/me/images/cpu.sif
#     containers/build.sh FILE.def -o out.sif # any definition using this checkout's %files
#
# Options:
#   -o, --output PATH   image to write (default: ./bioinstruct-KIND-VERSION.sif, or
#                       ./bioinstruct-KIND-VERSION/ with --sandbox)
#   --sandbox           build a writable directory instead of a SIF (quicker; for testing)
#   --host-pip          let pip inside the build use this machine's pip settings: its CA
#                       bundle (TLS-inspecting proxy), index URLs, local wheel folders and
#                       HTTPS_PROXY, and a download cache in $APPTAINER_CACHEDIR/pip that
#                       makes rebuilds quicker. All bound in for the build only, never copied.
#   --                  the rest goes to `apptainer build` (e.g. --notest, --build-arg)
#
# Runs unprivileged: --fakeroot is added when you are not root (needs an /etc/subuid entry;
# most clusters set one up, or allow builds only on particular nodes). Apptainer's cache and
# temporary files go to scratch (APPTAINER_CACHEDIR / APPTAINER_TMPDIR if set, else
# $SCRATCH, else $TMPDIR, else /tmp), never to $HOME: a GPU build unpacks ~15 GB.
# Environment: APPTAINER (the apptainer command to use, default: apptainer on PATH).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
start=$(date +%s)
help_text() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
usage() { if [ "${1:-0}" = 0 ]; then help_text; else help_text >&2; fi; exit "${1:-0}"; }
die() { echo "build.sh: error: $*" >&2; exit 2; }

kind="" out="" sandbox="" host_pip="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage ;;
        -o | --output) [ $# -ge 2 ] || die "$1 needs a path"; out=$2; shift 2 ;;
        --sandbox) sandbox=1; shift ;;
        --host-pip) host_pip=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$kind" ] || die "one image at a time"; kind=$1; shift ;;
    esac
done
case "$kind" in
    gpu) def=$repo/Apptainerfile ;;
    cpu) def=$repo/containers/cpu.def ;;
    "") usage 2 ;;
    *) def=$(readlink -f -- "$kind"); [ -f "$def" ] || die "no such definition file: $kind"
       kind=$(basename "$kind" .def) ;;
esac

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/bioinstruct/__init__.py")
[ -n "$version" ] || die "could not read __version__ from bioinstruct/__init__.py"
if [ -z "$out" ]; then
    out=$PWD/bioinstruct-$kind-$version
    [ -n "$sandbox" ] || out=$out.sif
fi
out=$(realpath -m -- "$out")   # absolute: the build runs from the checkout

apptainer=${APPTAINER:-apptainer}
command -v "$apptainer" >/dev/null \
    || die "'$apptainer' not found: module load apptainer (clusters) or containers/ci-apptainer.sh (CI)"

# Cache and temporary space on scratch: the GPU base image alone is several GB.
scratch=${SCRATCH:-${TMPDIR:-/tmp}}
export APPTAINER_CACHEDIR=${APPTAINER_CACHEDIR:-$scratch/$(id -un)/apptainer/cache}
export APPTAINER_TMPDIR=${APPTAINER_TMPDIR:-$scratch/$(id -un)/apptainer/tmp}
mkdir -p "$APPTAINER_CACHEDIR" "$APPTAINER_TMPDIR" "$(dirname "$out")"

# APPTAINERENV_X / SINGULARITYENV_X set X in every container, %post included: they are
# how a key is often handed to jobs (APPTAINERENV_OPENAI_API_KEY), and %post must never
# see one. A build takes its variables from --build-arg instead.
for v in $(compgen -e); do
    case "$v" in
        APPTAINERENV_* | SINGULARITYENV_*) echo "build.sh: not passing $v to the build"; unset "$v" ;;
    esac
done

args=(build --force)
[ -n "$sandbox" ] && args+=(--sandbox)
[ "$(id -u)" = 0 ] || args+=(--fakeroot)

ctx=""
cleanup() { [ -z "$ctx" ] || rm -rf -- "$ctx"; }
trap cleanup EXIT
if [ -n "$host_pip" ]; then
    # The definitions' %post reads /mnt/bioinstruct-pip/pip.conf when it exists. Only /mnt is
    # bound (apptainer can bind onto existing paths only, and every base image has /mnt);
    # the local folders pip.conf names are bound below it, at d0, d1, ...
    ctx=$(mktemp -d "$APPTAINER_TMPDIR/host-pip.XXXXXX")
    conf=$ctx/bioinstruct-pip/pip.conf
    mkdir -p "$ctx/bioinstruct-pip"
    declare -A setting=()
    if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
        # "global.cert='/x'" and ":env:.find-links='/y'": the environment's value wins,
        # as it does for pip itself (pip lists it last).
        while IFS= read -r line; do
            key=${line%%=*} value=${line#*=}
            key=${key#*.} value=${value#\'} value=${value%\'}
            setting[$key]=$value
        done < <(python3 -m pip config list 2>/dev/null | grep -E '^[^=]+\.[a-z-]+=' || true)
    fi
    cert=${setting[cert]:-${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}}}
    n=0
    binds=(--bind "$ctx:/mnt:ro")
    # A local folder (find-links) or file:// index becomes /mnt/bioinstruct-pip/dN; anything
    # else is kept. An index is bound with its parent: local "simple" indexes link to
    # ../../files/. Sets $localized (a $(...) subshell would lose the binds it adds).
    localize() {
        local item path dir out_items=()
        for item in $1; do
            path=${item#file://}
            path=${path%/}
            if [ "$path" != "${item%/}" ] || [ -d "$item" ]; then
                [ -d "$path" ] || continue   # pip ignores a missing one too
                if [ "$path" != "${item%/}" ]; then dir=$(dirname "$path"); else dir=$path; fi
                mkdir -p "$ctx/bioinstruct-pip/d$n"
                binds+=(--bind "$dir:/mnt/bioinstruct-pip/d$n:ro")
                export BIOINSTRUCT_APPTAINER_BINDS=${BIOINSTRUCT_APPTAINER_BINDS:+$BIOINSTRUCT_APPTAINER_BINDS:}$dir
                if [ "$dir" != "$path" ]; then
                    item=file:///mnt/bioinstruct-pip/d$n/$(basename "$path")
                else
                    item=/mnt/bioinstruct-pip/d$n
                fi
                n=$((n + 1))
            fi
            out_items+=("$item")
        done
        localized="${out_items[*]}"
    }
    # pip's cache, on scratch next to apptainer's own, read-write.
    mkdir -p "$APPTAINER_CACHEDIR/pip" "$ctx/bioinstruct-pip/cache"
    binds+=(--bind "$APPTAINER_CACHEDIR/pip:/mnt/bioinstruct-pip/cache")
    {
        echo "[global]"
        echo "cache-dir = /mnt/bioinstruct-pip/cache"
        if [ -f "$cert" ]; then
            cp -- "$cert" "$ctx/bioinstruct-pip/ca.crt"
            echo "cert = /mnt/bioinstruct-pip/ca.crt"
        fi
        for key in index-url extra-index-url find-links; do
            value=${setting[$key]:-}
            [ -n "$value" ] || continue
            localize "$value"
            echo "$key = $localized"
        done
        for key in timeout default-timeout retries trusted-host prefer-binary only-binary no-index; do
            if [ -n "${setting[$key]:-}" ]; then echo "$key = ${setting[$key]}"; fi
        done
        # %post does not see the caller's environment, so a proxy has to be in pip.conf.
        proxy=${setting[proxy]:-${HTTPS_PROXY:-${https_proxy:-}}}
        if [ -n "$proxy" ]; then echo "proxy = $proxy"; fi
    } >"$conf"
    args+=("${binds[@]}")
    echo "build.sh: pip settings for the build (bound read-only at /mnt/bioinstruct-pip):"
    sed 's/^/    /' "$conf"
fi

echo "build.sh: $def -> $out"
echo "build.sh: APPTAINER_CACHEDIR=$APPTAINER_CACHEDIR APPTAINER_TMPDIR=$APPTAINER_TMPDIR"
# %files paths are relative to the working directory: the checkout's root.
cd "$repo"
"$apptainer" "${args[@]}" "${extra[@]}" "$out" "$def"

if [ -n "$sandbox" ]; then
    size=$(du -sh -- "$out" | cut -f1)
else
    size=$(du -h --apparent-size -- "$out" | cut -f1)
fi
echo "build.sh: built $out ($size) in $(($(date +%s) - start)) s"
