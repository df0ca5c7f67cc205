#!/usr/bin/env bash
# Run a built image the way the cluster does, without a container engine (podman/docker are not needed):
# its root filesystem read-only, as the image's USER (uid 1000), the model folder mounted read-only,
# tmpfs on /tmp, fresh mount and PID namespaces. The host's network is shared (pass a loopback bind).
#
#   deploy/images/run.sh IMAGE MODEL_DIR MOUNT_POINT [ARG...]
#   deploy/images/run.sh localhost/clipshield/serve-kserve:dev /path/bundle /mnt/models \
#       --bundle /mnt/models --model-name clipshield --host-port 8080 --bind-host 127.0.0.1
#
# ARGs replace the image's CMD (its ENTRYPOINT and ENV are kept). Runs in the foreground and exits with
# the server's status; SIGTERM/SIGINT stop the server and remove the working container.
# Why not `buildah run`: buildah 1.28 has no read-only root option. The image's rootfs is a buildah
# working container (vfs: a plain folder), bind-mounted onto itself read-only inside `unshare`, entered
# with `chroot --userspec`.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
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

# Inside the new namespaces: mounts, then read-only root, then the server as the image's user.
inner=$(cat <<EOF
set -e
mount --make-rprivate /
mount --bind "$root" "$root"
mount --bind "$MODEL" "$root$MOUNT_POINT"
mount -o remount,bind,ro "$root$MOUNT_POINT"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -o remount,bind,ro "$root"
exec chroot --userspec="$uid:$gid" --groups="$gid" "$root" env -i ${WORKDIR:+-C "$WORKDIR"} HOME="${home:-/}" \
    $(printf '%q ' "${ENV_VARS[@]}") $ENTRYPOINT $CMD
EOF
)
unshare --mount --pid --fork --kill-child bash -c "$inner" &
child=$!
# `unshare --fork` ignores SIGTERM while it waits: signal the server (its child, PID 1 of the new namespace) itself
stop() { kill -TERM $(cat "/proc/$child/task/$child/children" 2>/dev/null) "$child" 2>/dev/null || true; }
trap stop TERM INT
status=0
wait "$child" || status=$?
# a trapped signal interrupts `wait`: wait again for the server's own exit
if kill -0 "$child" 2>/dev/null; then wait "$child" || status=$?; fi
exit "$status"
