#!/usr/bin/env bash
# Builds the container image weave-router:VERSION (the name manifests/daemonset.yaml uses) from
# release binaries built here, checks it, and exports it as an OCI archive:
#   target/weave-router-image.oci.tar
# Load that on a node with `ctr -n k8s.io images import FILE` (containerd) or `podman load -i FILE`.
#
# Run as root on a Debian machine. Non-interactive and idempotent: it runs scripts/setup.sh
# (which installs buildah and binutils with the rest, each only when missing), and adds Rust's
# x86_64-unknown-linux-musl target only when missing.
#
# No Docker daemon and no registry are needed: the image is FROM scratch (see Containerfile), and
# buildah builds it with chroot isolation, so no OCI runtime (runc, crun) is needed either; the
# checks run the image's programs the same way. Buildah's storage is the machine's default
# (/var/lib/containers/storage, overlay where the kernel allows it); for another, point
# CONTAINERS_STORAGE_CONF at a storage.conf (driver = "vfs" works on any filesystem).
#
# Steps: 1. packages  2. weave-router (glibc) and weave-cni (static, musl) in release mode
# 3. the build context in target/image/context  4. buildah bud  5. checks in the image
# 6. the OCI archive (each blob's digest checked) and its size.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
SECONDS=0

say() { echo "build-image.sh: $*"; }
die() {
    echo "build-image.sh: FAILED: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    die "run as root (it installs Debian packages and uses buildah's root storage)"
fi

# ---- 1. packages ------------------------------------------------------------------------------
# setup.sh installs what is missing, buildah (the image builder; chroot isolation needs no OCI
# runtime) and binutils (strip, readelf) included, and Rust.
bash scripts/setup.sh >/dev/null || die "scripts/setup.sh failed"
say "$(buildah --version)"

# ---- 2. binaries ------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found after scripts/setup.sh"

musl=x86_64-unknown-linux-musl
# weave-cni is built static, so that it runs on any node. Without access to Rust's
# distribution server the target cannot be added: the image then carries the glibc build,
# which needs glibc 2.34 or newer on the nodes, and says so.
cni_static=1
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    say "adding Rust target $musl (weave-cni is built static)"
    if ! rustup target add "$musl"; then
        say "WARNING: cannot add the Rust target $musl; weave-cni in this image is the glibc" \
            "build, which needs glibc 2.34 or newer on the nodes"
        cni_static=0
    fi
fi

target_dir="${CARGO_TARGET_DIR:-target}"
say "cargo build --release -p weave-router"
cargo build --release -p weave-router || die "cargo build of weave-router failed"
router_bin="$target_dir/release/weave-router"
if [ "$cni_static" -eq 1 ]; then
    say "cargo build --release --target $musl -p weave-cni"
    cargo build --release --target "$musl" -p weave-cni || die "cargo build of weave-cni ($musl) failed"
    cni_bin="$target_dir/$musl/release/weave-cni"
else
    say "cargo build --release -p weave-cni"
    cargo build --release -p weave-cni || die "cargo build of weave-cni failed"
    cni_bin="$target_dir/release/weave-cni"
fi

version_line=$("$router_bin" --version) || die "$router_bin --version failed"
version=${version_line#weave-router }
[ -n "$version" ] && [ "$version" != "$version_line" ] ||
    die "unexpected version line from $router_bin: $version_line"
image="weave-router:$version"
archive="$target_dir/weave-router-image.oci.tar"

# ---- 3. build context -------------------------------------------------------------------------
ctx="$target_dir/image/context"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/etc"
cp "$router_bin" "$ctx/weave-router"
cp "$cni_bin" "$ctx/weave-cni"
# Debug information off, symbols kept (backtraces still name functions).
strip --strip-debug "$ctx/weave-router" "$ctx/weave-cni" || die "strip failed"

if [ "$cni_static" -eq 1 ] && readelf -l "$ctx/weave-cni" | grep -q INTERP; then
    die "weave-cni ($cni_bin) is dynamically linked; it must be static to run on any node"
fi

# The router's shared libraries, each at the path the loader asks for, from `ldd`:
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)   and   /lib64/ld-linux-x86-64.so.2 (0x...)
ldd_out=$(ldd "$ctx/weave-router") || die "ldd $router_bin failed"
if grep -q 'not found' <<<"$ldd_out"; then
    die "a library of weave-router is missing on this machine:"$'\n'"$ldd_out"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
[ -n "$libs" ] || die "ldd listed no libraries for the glibc build of weave-router:"$'\n'"$ldd_out"
grep -q '^/.*ld-linux' <<<"$libs" || die "ldd listed no dynamic loader:"$'\n'"$ldd_out"
for lib in $libs; do
    cp -L --parents "$lib" "$ctx/rootfs/" || die "copying $lib failed"
done
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
say "context: weave-router (glibc; $(echo $libs | tr ' ' ',')), weave-cni ($([ "$cni_static" -eq 1 ] && echo static || echo glibc))"

# ---- 4. image ---------------------------------------------------------------------------------
# Built as NAME-unchecked and named NAME only once the checks pass: a failed build leaves the
# previous image in place.
candidate="$image-unchecked"
work=$(mktemp -d)
ctr=""
checked=0
cleanup() {
    if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    if [ "$checked" -eq 0 ]; then buildah rmi "$candidate" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The last commit's time as the creation time, for files and image alike: the same sources
# and binaries give the same image ID.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
say "buildah bud -t $candidate"
buildah bud --quiet --isolation chroot --timestamp "$epoch" --build-arg VERSION="$version" \
    -f Containerfile -t "$candidate" "$ctx" >/dev/null || die "buildah bud failed"
new_id=$(buildah images --quiet "$candidate") || die "$candidate is not in buildah's storage after the build"

# ---- 5. checks in the image -------------------------------------------------------------------
ctr=$(buildah from --pull=never --quiet "$candidate") || die "buildah from $candidate failed"
run() { buildah run --isolation chroot "$@"; }

config=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$candidate") ||
    die "buildah inspect $candidate failed"
[ "$config" = '[/usr/local/bin/weave-router] [launch]' ] ||
    die "image entrypoint and cmd are $config, not /usr/local/bin/weave-router launch"

out=$(run "$ctr" -- /usr/local/bin/weave-router --version 2>&1) ||
    die "weave-router --version failed in the image:"$'\n'"$out"
[ "$out" = "weave-router $version" ] || die "weave-router --version in the image printed: $out"
say "check: weave-router --version in the image: $out"

out=$(run --env CNI_COMMAND=VERSION "$ctr" -- /usr/local/bin/weave-cni 2>&1) ||
    die "weave-cni (CNI_COMMAND=VERSION) failed in the image:"$'\n'"$out"
grep -q '"supportedVersions"' <<<"$out" || die "weave-cni VERSION in the image printed: $out"
say "check: CNI_COMMAND=VERSION weave-cni in the image: $out"

# What the DaemonSet's init container does, with the node's directories bind-mounted.
mkdir -p "$work/bin" "$work/net.d"
out=$(run -v "$work/bin:/host/opt/cni/bin" -v "$work/net.d:/host/etc/cni/net.d" "$ctr" -- \
    /usr/local/bin/weave-cni install --bin-dir /host/opt/cni/bin --conf-dir /host/etc/cni/net.d 2>&1) ||
    die "weave-cni install failed in the image:"$'\n'"$out"
cmp -s "$work/bin/weave-net" "$ctx/weave-cni" || die "weave-cni install did not put weave-cni on the node as weave-net"
grep -q '"weave-net"' "$work/net.d/10-weave.conflist" 2>/dev/null ||
    die "weave-cni install wrote no 10-weave.conflist naming weave-net"
# The runtime then runs weave-net on the node, outside the image.
out=$(CNI_COMMAND=VERSION "$work/bin/weave-net" 2>&1) || die "the installed weave-net failed on the host:"$'\n'"$out"
grep -q '"supportedVersions"' <<<"$out" || die "the installed weave-net printed: $out"
say "check: weave-cni install in the image wrote weave-net and 10-weave.conflist; weave-net runs on the host"

buildah rm "$ctr" >/dev/null || die "buildah rm $ctr failed"
ctr=""

old_id=$(buildah images --quiet "$image" 2>/dev/null || true)
buildah tag "$new_id" "$image" || die "buildah tag $image failed"
checked=1
buildah rmi "$candidate" >/dev/null || die "buildah rmi $candidate (the tag) failed"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    buildah rmi "$old_id" >/dev/null 2>&1 || say "note: the previous image $old_id is in use or has other names; left in place"
fi

# ---- 6. OCI archive ---------------------------------------------------------------------------
# Named in full inside the archive: Kubernetes takes `image: weave-router:0.1.0` to mean
# docker.io/library/weave-router:0.1.0, and containerd's import keeps the name it finds.
ref="docker.io/library/$image"
rm -f "$archive"
buildah push --quiet "$image" "oci-archive:$archive:$ref" >/dev/null || die "buildah push to $archive failed"
mkdir "$work/oci"
tar -xf "$archive" -C "$work/oci" || die "$archive is not a tar archive"
[ -f "$work/oci/oci-layout" ] && [ -f "$work/oci/index.json" ] || die "$archive has no oci-layout or index.json"
grep -q "\"org.opencontainers.image.ref.name\":\"$ref\"" "$work/oci/index.json" ||
    die "$archive's index.json does not name $ref"
(cd "$work/oci/blobs/sha256" && for b in *; do echo "$b  $b"; done | sha256sum --check --quiet) ||
    die "a blob in $archive does not match its digest"

size=$(stat -c %s "$archive")
say "image $image ($new_id), $(buildah images --format '{{.Size}}' "$image") unpacked"
say "archive $archive ($ref): $((size / 1024)) KiB ($(ls "$work/oci/blobs/sha256" | wc -l) blobs, digests checked)"
say "done in ${SECONDS}s"
