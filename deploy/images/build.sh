#!/usr/bin/env bash
# `make images`: build the Dockerfile's targets with buildah (chroot isolation, vfs storage: no daemon, no
# overlay or user namespaces needed), on the official base images when they can be pulled and otherwise on
# stand-ins bootstrapped here from Debian packages (docs/deploy.md, "Build the images without Docker").
#
#   deploy/images/build.sh [TARGET...]        default targets: serve-kserve model (add `serve` for TorchServe)
#
# Environment:
#   IMAGE_PREFIX   image names are $IMAGE_PREFIX/<target>:$IMAGE_TAG (default localhost/clipshield, dev)
#   STANDIN        auto (default: stand-ins only where the official base cannot be pulled, or, for `serve`,
#                  the official torch index cannot be reached), always, never
#   PULL_TIMEOUT   seconds one pull of an official base may take before the stand-in is used (default 60)
#   REPORT         JSON lines, one per target: image, size, build seconds, bases (default build/images/report.jsonl)
#   BASES_ONLY     1: only pull or bootstrap the base images
#   TORCH_ONLY     1: only print the --build-arg lines chosen for serve's torch (none: the Dockerfile's pin)
#   BUILD_ARGS     extra `buildah bud` arguments, e.g. "--build-arg TORCH_INDEX_URL=..." for `serve` (naming
#                  TORCH_INDEX_URL or TORCH_VERSION there turns the torch stand-in off)
#
# torch for `serve`: the Dockerfile's torch==$TORCH_VERSION from its TORCH_INDEX_URL (download.pytorch.org's CPU
# index) when that index answers; otherwise the newest local CPU wheel (torch-*+cpu-cp311-*.whl) in a find-links
# folder of the pip configuration, as --build-arg TORCH_VERSION=<its version>: the image then carries that torch
# (e.g. 2.13.0+cpu), not the pinned one. The log line and the report's "torch" field say which.
#
# The build machine's pip configuration (pip.conf files and the local indexes, wheel folders, CA bundle and
# constraint files they name) is bind-mounted into every RUN step read-only (`buildah bud -v`): pip in
# the build stages sees the same indexes as pip here, and nothing of it is written into an image layer.
# Image builds are heavy: run this under the shared lock (`make images` does). It takes no lock itself,
# so a caller already holding the lock (a slow test under `flock`) does not deadlock.
set -euo pipefail

cd "$(dirname "$0")/../.."
IMAGE_PREFIX=${IMAGE_PREFIX:-localhost/clipshield}
IMAGE_TAG=${IMAGE_TAG:-dev}
STANDIN=${STANDIN:-auto}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}
REPORT=${REPORT:-build/images/report.jsonl}
WORK=build/images
BUILDAH=(buildah --storage-driver vfs)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(serve-kserve model)

# The official bases are the Dockerfile's own defaults (one place to change them).
arg_default() { sed -n "s/^ARG $1=//p" Dockerfile | head -n1; }
PYTHON_OFFICIAL=$(arg_default PYTHON_IMAGE)
BUSYBOX_OFFICIAL=$(arg_default BUSYBOX_IMAGE)
TORCH_INDEX_OFFICIAL=$(arg_default TORCH_INDEX_URL)
TORCH_VERSION_OFFICIAL=$(arg_default TORCH_VERSION)
PYTHON_STANDIN=localhost/python:3.11-slim-bookworm
BUSYBOX_STANDIN=localhost/busybox:bookworm
mkdir -p "$WORK"

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

have_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# rootfs tarball -> image: `buildah from scratch` + `buildah add` (it unpacks a local tar) + config + commit.
import_rootfs() {
    local tar=$1 name=$2 cmd=$3 ctr
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$tar" / >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd "$cmd" --label "org.clipshield.standin=$(basename "$tar")" "$ctr"
    "${BUILDAH[@]}" commit --rm "$ctr" "$name" >/dev/null
}

# python:3.11-slim-bookworm stand-in: Debian bookworm minbase with its python3 (3.11.2; the official image
# builds 3.11.10 from source into /usr/local), venv support, `python` on PATH and the CA bundle.
bootstrap_python() {
    local tar=$WORK/python-standin.tar
    log "bootstrapping $PYTHON_STANDIN from Debian packages (mmdebstrap)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' bookworm "$tar"
    import_rootfs "$tar" "$PYTHON_STANDIN" python3
}

# busybox stand-in: Debian's statically linked busybox and its applet links, nothing else (the `model`
# target only copies a file in; the init container runs `cp`).
bootstrap_busybox() {
    local dir=$WORK/busybox-standin tar=$WORK/busybox-standin.tar deb
    log "bootstrapping $BUSYBOX_STANDIN from Debian's busybox-static"
    rm -rf "$dir" && mkdir -p "$dir/deb" "$dir/root/bin" "$dir/root/tmp"
    (cd "$dir/deb" && apt-get download -q busybox-static >/dev/null)
    deb=$(ls "$dir"/deb/busybox-static_*.deb)
    dpkg-deb -x "$deb" "$dir/x"
    cp "$dir/x/bin/busybox" "$dir/root/bin/busybox"
    for applet in $("$dir/root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$dir/root/bin/$applet"
    done
    chmod 1777 "$dir/root/tmp"
    tar -C "$dir/root" -cf "$tar" .
    import_rootfs "$tar" "$BUSYBOX_STANDIN" sh
}

# Echo the base to build on: the official image if pullable (STANDIN=auto|never), else the stand-in.
base_for() {
    local official=$1 standin=$2 bootstrap=$3
    if [ "$STANDIN" != always ]; then
        if have_image "$official" || timeout "$PULL_TIMEOUT" "${BUILDAH[@]}" pull -q "docker.io/library/$official" >/dev/null 2>&1; then
            echo "$official"
            return
        fi
        [ "$STANDIN" != never ] || { log "cannot pull $official and STANDIN=never"; exit 2; }
        log "cannot pull docker.io/library/$official: using the stand-in $standin"
    fi
    have_image "$standin" || "$bootstrap" >&2
    echo "$standin"
}

# `-v src:src:ro` for every pip configuration file and every local path it names.
pip_mounts() {
    local files=(/etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf") f p
    local -A seen=()
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        case $f in "$HOME"/*) printf "%s\n" -v "$f:/root/${f#"$HOME"/}:ro" ;; *) printf "%s\n" -v "$f:$f:ro" ;; esac
        for p in $(grep -oE "(file://)?/[^ '\"]+" "$f" | sed 's|^file://||'); do
            [ "$(basename "$p")" != simple ] || p=$(dirname "$p") # a simple index links to ../../files
            [ -e "$p" ] && [ -z "${seen[$p]:-}" ] || continue
            seen[$p]=1
            printf "%s\n" -v "$p:$p:ro"
        done
    done
}

# The pip configuration's find-links folders (local wheels), one a line.
find_links() {
    local f
    for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
        [ -f "$f" ] || continue
        sed -n 's/^[[:space:]]*find[-_]links[[:space:]]*=[[:space:]]*//p' "$f" | tr ' ' '\n' | sed 's|^file://||'
    done | grep -v '^$' || true
}

# `--build-arg` lines choosing torch for `serve` (none: the Dockerfile's pin from its official index).
torch_args() {
    local wheel version
    case " ${BUILD_ARGS:-} " in *TORCH_INDEX_URL=* | *TORCH_VERSION=*) return ;; esac
    if [ "$STANDIN" != always ] && curl -sSfL -o /dev/null --max-time "$PULL_TIMEOUT" "$TORCH_INDEX_OFFICIAL/torch/"; then
        log "torch==$TORCH_VERSION_OFFICIAL from $TORCH_INDEX_OFFICIAL (the Dockerfile's pin)"
        return
    fi
    [ "$STANDIN" != never ] || { log "cannot reach $TORCH_INDEX_OFFICIAL and STANDIN=never"; exit 2; }
    # the bases are Python 3.11; sort -V puts the newest version last
    wheel=$(find_links | while read -r d; do ls "$d"/torch-*+cpu-cp311-cp311-*.whl 2>/dev/null; done | sort -V | tail -n1)
    [ -n "$wheel" ] || { log "cannot reach $TORCH_INDEX_OFFICIAL and no torch-*+cpu-cp311 wheel in the pip find-links folders: pass BUILD_ARGS=\"--build-arg TORCH_INDEX_URL=...\""; exit 2; }
    version=$(basename "$wheel" | cut -d- -f2)
    log "cannot reach $TORCH_INDEX_OFFICIAL: torch $version from the local wheel $wheel, NOT the Dockerfile's torch==$TORCH_VERSION_OFFICIAL (known difference)"
    # an exact local version (+cpu) matches that wheel only; the index serves torch's dependencies
    printf '%s\n' --build-arg "TORCH_VERSION=$version" --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
}

TORCH_ARGS=() TORCH=""
if printf '%s\n' "${TARGETS[@]}" | grep -qx serve; then
    torch_out=$(torch_args) # a failure here stops the build (set -e); `< <(...)` would not
    [ -z "$torch_out" ] || mapfile -t TORCH_ARGS <<<"$torch_out"
    TORCH=$TORCH_VERSION_OFFICIAL
    [ ${#TORCH_ARGS[@]} -eq 0 ] || TORCH=$(printf '%s\n' "${TORCH_ARGS[@]}" | sed -n 's/^TORCH_VERSION=//p')
    case " ${BUILD_ARGS:-} " in *TORCH_INDEX_URL=* | *TORCH_VERSION=*) TORCH="as BUILD_ARGS set" ;; esac
fi
[ "${TORCH_ONLY:-0}" = 0 ] || { [ ${#TORCH_ARGS[@]} -eq 0 ] || printf '%s\n' "${TORCH_ARGS[@]}"; exit 0; }
PYTHON_BASE=$(base_for "$PYTHON_OFFICIAL" "$PYTHON_STANDIN" bootstrap_python)
BUSYBOX_BASE=model-not-built
if printf '%s\n' "${TARGETS[@]}" | grep -qx model; then
    BUSYBOX_BASE=$(base_for "$BUSYBOX_OFFICIAL" "$BUSYBOX_STANDIN" bootstrap_busybox)
fi
[ "${BASES_ONLY:-0}" = 0 ] || { log "bases: $PYTHON_BASE $BUSYBOX_BASE"; exit 0; }
mapfile -t MOUNTS < <(pip_mounts)
read -r -a EXTRA <<<"${BUILD_ARGS:-}"

for target in "${TARGETS[@]}"; do
    image=$IMAGE_PREFIX/$target:$IMAGE_TAG
    log "building $image (python base $PYTHON_BASE)"
    start=$(date +%s)
    "${BUILDAH[@]}" bud --isolation chroot --layers=false --target "$target" -t "$image" \
        --build-arg "PYTHON_IMAGE=$PYTHON_BASE" --build-arg "BUSYBOX_IMAGE=$BUSYBOX_BASE" \
        "${MOUNTS[@]}" "${EXTRA[@]}" "${TORCH_ARGS[@]}" -f Dockerfile . >&2
    seconds=$(($(date +%s) - start))
    size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$image" | head -n1)
    printf '{"target": "%s", "image": "%s", "size": "%s", "build_s": %d, "python_base": "%s", "busybox_base": "%s", "torch": "%s", "date": "%s", "buildah": "%s"}\n' \
        "$target" "$image" "$size" "$seconds" "$PYTHON_BASE" "$BUSYBOX_BASE" "$([ "$target" = serve ] && echo "$TORCH")" "$(date -u +%FT%TZ)" \
        "$(buildah --version | awk '{print $3}')" | tee -a "$REPORT"
done
