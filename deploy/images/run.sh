#!/usr/bin/env bash
# Run a built image the way the cluster does, without a container engine (podman/docker are not needed):
# its root filesystem read-only, as the image's USER (uid 1000), the model folder mounted read-only,
# tmpfs on /tmp, fresh mount and PID namespaces. The host's network is shared (pass a loopback bind).
#
#   deploy/images/run.sh [--bind SRC:DST[:ro]]... [--tmpfs DIR]... [--env K=V]... IMAGE MODEL_DIR MOUNT_POINT [ARG...]
#   deploy/images/run.sh localhost/clipshield/serve-kserve:dev /path/bundle /mnt/models \
#       --bundle /mnt/models --model-name clipshield --host-port 8080 --bind-host 127.0.0.1
#   deploy/images/run.sh --bind conf:/etc/clipshield:ro --bind work:/home/model-server/work \
#       --bind logs:/home/model-server/logs --env HOME=/home/model-server/work \
#       localhost/clipshield/serve:dev /path/model_store /home/model-server/model-store
#
# ARGs replace the image's CMD (its ENTRYPOINT and ENV are kept; --env adds or overrides). --bind mounts a
# host path (read-write unless :ro: the pod's ConfigMap and emptyDir volumes), --tmpfs a fresh tmpfs. Runs
# in the foreground and exits with the server's status. SIGTERM/SIGINT stop it as the kubelet stops a pod:
# SIGTERM to the image's entrypoint (PID 1 of the container), SIGKILL to the whole container if it still runs
# STOP_GRACE_S seconds later (default 30, Kubernetes' default terminationGracePeriodSeconds; said on stderr);
# the working container is removed.
# Why not `buildah run`: buildah 1.28 has no read-only root option. The image's rootfs is a buildah
# working container (vfs: a plain folder), bind-mounted onto itself read-only inside `unshare`, entered
# with `chroot --userspec`.
set -euo pipefail

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
BINDS=() TMPFS=() ENVS=()
while [ $# -gt 0 ]; do
    case $1 in
        --bind) [ $# -ge 2 ] || usage; BINDS+=("$2"); shift 2 ;;
        --tmpfs) [ $# -ge 2 ] || usage; TMPFS+=("$2"); shift 2 ;;
        --env) [ $# -ge 2 ] || usage; ENVS+=("$2"); shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -ge 3 ] || usage
IMAGE=$1 MODEL=$(realpath "$2") MOUNT_POINT=$3
shift 3
BUILDAH=(buildah --storage-driver vfs)

config=$("${BUILDAH[@]}" inspect --type image "$IMAGE" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]))')
field() { python3 -c 'import json,shlex,sys; c=json.loads(sys.argv[1]); v=c.get(sys.argv[2]) or ""; print(shlex.join(v) if isinstance(v, list) else v)' "$config" "$1"; }
USER_SPEC=$(field User)
WORKDIR=$(field WorkingDir)
ENTRYPOINT=$(field Entrypoint)
mapfile -t ENV_VARS < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1]).get("Env") or []))' "$config")
if [ $# -gt 0 ]; then CMD=$(printf '%q ' "$@"); else CMD=$(field Cmd); fi

ctr=$("${BUILDAH[@]}" from --pull-never "$IMAGE")
root=$("${BUILDAH[@]}" mount "$ctr")
cleanup() { "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
USER_SPEC=${USER_SPEC:-0:0}
uid=${USER_SPEC%%:*} gid=${USER_SPEC#*:}
[ "$gid" != "$USER_SPEC" ] || gid=$uid
home=$(awk -F: -v u="$uid" '$3 == u {print $6}' "$root/etc/passwd" 2>/dev/null || true)
mkdir -p "$root$MOUNT_POINT" "$root/tmp" "$root/proc" "$root/dev"

# The extra volumes, as mount commands for the inner script (mount points made while the root is writable).
volumes=""
for spec in "${BINDS[@]}"; do
    src=$(realpath "${spec%%:*}") rest=${spec#*:}
    dst=${rest%:ro} mode=${rest#"${rest%:ro}"}
    if [ -d "$src" ]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")" && touch "$root$dst"; fi
    volumes+="mount --bind $(printf %q "$src") $(printf %q "$root$dst")"$'\n'
    [ "$mode" != :ro ] || volumes+="mount -o remount,bind,ro $(printf %q "$root$dst")"$'\n'
done
for dir in "${TMPFS[@]}"; do
    mkdir -p "$root$dir"
    volumes+="mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $(printf %q "$root$dir")"$'\n'
done

# Inside the new namespaces: mounts, then read-only root, then the server as the image's user, as PID 1 of
# the new PID namespace (a container's entrypoint is its PID 1: a signal it has no handler for is dropped).
inner=$(cat <<EOF
set -e
mount --make-rprivate /
mount --bind "$root" "$root"
mount --bind "$MODEL" "$root$MOUNT_POINT"
mount -o remount,bind,ro "$root$MOUNT_POINT"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --rbind /dev "$root/dev"
$volumes
mount -o remount,bind,ro "$root"
exec chroot --userspec="$uid:$gid" --groups="$gid" "$root" env -i ${WORKDIR:+-C "$WORKDIR"} HOME="${home:-/}" \
    $(printf '%q ' "${ENV_VARS[@]}" "${ENVS[@]}") $ENTRYPOINT $CMD
EOF
)
unshare --mount --pid --fork --kill-child bash -c "$inner" &
child=$!
STOP_GRACE_S=${STOP_GRACE_S:-30}
# `unshare --fork` ignores SIGTERM while it waits: signal its child (the server, PID 1 of the new namespace) itself
pid1() { cat "/proc/$child/task/$child/children" 2>/dev/null || true; }
stop() { signalled=1; stop_at=${stop_at:-$SECONDS}; kill -TERM $(pid1) "$child" 2>/dev/null || true; }
trap stop TERM INT
# a trapped signal interrupts `wait` (status 128+n): give the server its grace period, then wait for its exit status
while :; do
    signalled=0 status=0
    wait "$child" || status=$?
    [ "$signalled" = 1 ] || break
    while kill -0 "$child" 2>/dev/null && [ $((SECONDS - stop_at)) -lt "$STOP_GRACE_S" ]; do sleep 0.2; done
    if kill -0 "$child" 2>/dev/null; then
        printf 'run.sh: the server ignored SIGTERM for %s s: SIGKILL to the container\n' "$STOP_GRACE_S" >&2
        kill -KILL $(pid1) 2>/dev/null || true
    fi
done
exit "$status"
