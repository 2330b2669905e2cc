#!/usr/bin/env python3
"""Write a single-layer container image as a docker-archive tarball (the format
`docker save` writes and `ctr images import` / `docker load` / `podman load`
read), from files on this machine, with no container engine.

  image/build.py OUT.tar NAME:TAG [options] SRC=DEST ...

Options (repeatable where it makes sense):
  --entrypoint JSON   e.g. '["/usr/local/bin/kubelet-guard"]'
  --cmd JSON          e.g. '["serve", "--help"]'
  --user UID:GID      numeric, so Kubernetes can check runAsNonRoot
  --expose PORT/tcp   documentation, like the Dockerfile's EXPOSE
  --dir PATH          an empty directory (/tmp is made 1777)
  --text DEST=CONTENT a small file written from the argument
  --link DEST=TARGET  a symbolic link
  --with-libs BINARY  also copy every shared library `ldd BINARY` names, at
                      the same paths (the dynamic loader included)

Every entry gets uid/gid 0 and mtime 0, so the same inputs give the same
image digest. Used by image/kubelet-guard (the product image) and by
e2e/realnode (the pause and busybox test images).
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile


def shared_libraries(binary):
    """Absolute paths of the shared objects `ldd` resolves for BINARY, loader included."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def build_layer(args):
    layer = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        def mkdirs(path):
            parts = [p for p in path.strip("/").split("/") if p]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d in seen:
                    continue
                seen.add(d)
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o1777 if d == "tmp" else 0o755
                t.addfile(ti)

        def add_file(src, dest):
            dest = dest.strip("/")
            if dest in seen:
                return
            seen.add(dest)
            mkdirs(os.path.dirname(dest))
            real = os.path.realpath(src)
            ti = t.gettarinfo(real, arcname=dest)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 0
            with open(real, "rb") as fh:
                t.addfile(ti, fh)

        for d in args.dir:
            mkdirs(d)
        for f in args.files:
            src, sep, dest = f.partition("=")
            if not sep:
                sys.exit(f"build.py: expected SRC=DEST, got {f!r}")
            add_file(src, dest)
        for binary in args.with_libs:
            for lib in shared_libraries(binary):
                add_file(lib, lib)
        for x in args.text:
            dest, _, content = x.partition("=")
            dest = dest.strip("/")
            mkdirs(os.path.dirname(dest))
            data = content.encode()
            ti = tarfile.TarInfo(dest)
            ti.size = len(data)
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))
        for link in args.link:
            dest, _, target = link.partition("=")
            dest = dest.strip("/")
            mkdirs(os.path.dirname(dest))
            ti = tarfile.TarInfo(dest)
            ti.type = tarfile.SYMTYPE
            ti.linkname = target
            ti.mode = 0o777
            t.addfile(ti)
    return layer.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("ref")
    p.add_argument("--entrypoint")
    p.add_argument("--cmd")
    p.add_argument("--user")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--env", action="append",
                   default=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--link", action="append", default=[])
    p.add_argument("--text", action="append", default=[])
    p.add_argument("--with-libs", action="append", default=[])
    p.add_argument("files", nargs="*")
    args = p.parse_intermixed_args()

    layer = build_layer(args)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"Env": args.env, "WorkingDir": "/"}
    if args.entrypoint:
        config["Entrypoint"] = json.loads(args.entrypoint)
    if args.cmd:
        config["Cmd"] = json.loads(args.cmd)
    if args.user:
        config["User"] = args.user
    if args.expose:
        config["ExposedPorts"] = {port: {} for port in args.expose}
    image_config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "image/build.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_dir = hashlib.sha256(layer).hexdigest()
    manifest = json.dumps([{"Config": config_name, "RepoTags": [args.ref],
                            "Layers": [layer_dir + "/layer.tar"]}]).encode()
    with tarfile.open(args.out, "w") as out:
        ti = tarfile.TarInfo(layer_dir)
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
        out.addfile(ti)
        for name, data in ((config_name, config_bytes), (layer_dir + "/layer.tar", layer),
                           ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o644
            out.addfile(ti, io.BytesIO(data))
    print(args.out, args.ref, diff_id)


if __name__ == "__main__":
    main()
