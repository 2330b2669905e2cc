# syntax=docker/dockerfile:1
#
# kubelet-guard container image: a release build on Debian bookworm, run on
# distroless (glibc + libgcc, no shell, no package manager) as the unprivileged
# "nonroot" user (65532), which is what manifests/daemonset.yaml expects.
#
#   docker build -t registry.example.com/kubelet-guard:0.1.0 .
#   docker push registry.example.com/kubelet-guard:0.1.0
#
# Not built by CI (no container engine there). Its engine-less twin,
# image/kubelet-guard, reads USER, ENTRYPOINT, CMD, EXPOSE and the binary's
# path from this file's final stage and writes the same image (libraries from
# the build host instead of distroless); that image is what e2e/realnode
# deploys on a real kubelet. Change the final stage here and both follow.
#
# Needs BuildKit (the default builder since Docker 23; podman/buildah support
# the cache mounts too). The cache mounts keep the cargo registry and the
# target directory between builds; they are not part of any image layer.

# rust:1-bookworm follows the newest stable Rust 1.x (edition 2024 needs >= 1.85).
# Pin a version (e.g. rust:1.95-bookworm) for reproducible builds.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The binary is copied out in the same step because target/ is a cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kubelet-guard \
 && install -D -m 0755 target/release/kubelet-guard /out/kubelet-guard

# Same Debian release as the builder, so the glibc the binary was linked
# against is the one it runs with.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kubelet-guard /usr/local/bin/kubelet-guard
# Numeric, so Kubernetes can enforce runAsNonRoot without resolving a name.
USER 65532:65532
# The gateway's port and its loopback admin port (documentation only: the
# DaemonSet uses hostNetwork).
EXPOSE 10250 10251
ENTRYPOINT ["/usr/local/bin/kubelet-guard"]
CMD ["serve", "--help"]
