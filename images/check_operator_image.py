"""Inspects the operator image saved by `podman save --format docker-archive` without running a
container (which this machine cannot), then runs the binary taken out of it.

usage: check_operator_image.py IMAGE.tar OPERATOR_BINARY FILTER_WASM CRDS_YAML FILTER_CONFIG

Checks: the layers hold exactly the operator binary and the filter .wasm at the paths the
manifests use, byte-identical to the build, and nothing else (no shell, no libc); the binary
is statically linked (no ELF interpreter); the config runs it as a non-root user with the
binary as entrypoint. Then the binary from the image prints the CRDs (compared with
CRDS_YAML), checks FILTER_CONFIG, and copies the .wasm from the image as the gateway's
initContainer does. Prints what it checked; exit 1 on any difference."""
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

archive, binary, wasm, crds, filter_config = sys.argv[1:6]
BIN = "usr/local/bin/layergate-operator"
WASM = "usr/share/layergate/layergate_filter.wasm"
sha = lambda b: hashlib.sha256(b).hexdigest()
errors = []


def interpreter(elf: bytes):
    """The PT_INTERP of a 64-bit little-endian ELF, or None (a static binary)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return "not a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", elf, phoff + i * phentsize)
        if p_type == 3:
            off, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 8)
            size, = struct.unpack_from("<Q", elf, phoff + i * phentsize + 32)
            return elf[off:off + size].rstrip(b"\0").decode()
    return None


files = {}
with tarfile.open(archive) as tar:
    manifest = json.load(tar.extractfile("manifest.json"))[0]
    config = json.load(tar.extractfile(manifest["Config"]))
    for layer in manifest["Layers"]:
        with tarfile.open(fileobj=io.BytesIO(tar.extractfile(layer).read())) as lt:
            for m in lt.getmembers():
                name = m.name.lstrip("./")
                if m.isfile():
                    files[name] = (lt.extractfile(m).read(), m.mode)
                elif m.issym() or m.islnk():
                    errors.append(f"link in a layer: {name} -> {m.linkname}")
if set(files) != {BIN, WASM}:
    errors.append(f"layer files {sorted(files)}, expected only {BIN} and {WASM}")
want = {BIN: open(binary, "rb").read(), WASM: open(wasm, "rb").read()}
for path, data in want.items():
    got = files.get(path)
    if got is None:
        continue
    if got[0] != data:
        errors.append(f"{path} differs from the build")
if BIN in files:
    interp = interpreter(files[BIN][0])
    if interp is not None:
        errors.append(f"{BIN} is dynamically linked ({interp})")
    if not files[BIN][1] & 0o111:
        errors.append(f"{BIN} is not executable (mode {oct(files[BIN][1])})")
cfg = config.get("config") or {}
user = cfg.get("User", "")
if not user or user.split(":")[0] in ("", "0", "root"):
    errors.append(f"runs as root (User {user!r})")
if cfg.get("Entrypoint") != ["/" + BIN]:
    errors.append(f"entrypoint {cfg.get('Entrypoint')}, expected {['/' + BIN]}")
if cfg.get("Cmd"):
    errors.append(f"a default command is set: {cfg.get('Cmd')}")

# Run what the image holds (not the build): the CRDs, a filter configuration, the copy.
ran = []
if BIN in files and WASM in files and not errors:
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "layergate-operator")
        open(exe, "wb").write(files[BIN][0])
        os.chmod(exe, 0o755)
        src = os.path.join(d, "layergate_filter.wasm")
        open(src, "wb").write(files[WASM][0])
        env = {"PATH": "/nonexistent"}  # nothing but the binary itself
        out = subprocess.run([exe, "crds"], capture_output=True, env=env)
        if out.returncode != 0 or out.stdout != open(crds, "rb").read():
            errors.append(f"`crds` from the image: exit {out.returncode}, output differs from {crds}: {out.stderr[-500:]!r}")
        ran.append("crds")
        out = subprocess.run([exe, "check-filter-config", filter_config], capture_output=True, env=env)
        if out.returncode != 0 or b"valid" not in out.stdout:
            errors.append(f"`check-filter-config` from the image: exit {out.returncode}: {out.stdout!r} {out.stderr[-500:]!r}")
        ran.append("check-filter-config: " + out.stdout.decode().splitlines()[0] if out.stdout else "check-filter-config")
        dest = os.path.join(d, "wasm")
        os.mkdir(dest)
        out = subprocess.run([exe, "copy-filter", src, dest], capture_output=True, env=env)
        copied = os.path.join(dest, "layergate_filter.wasm")
        if out.returncode != 0 or not os.path.exists(copied) or open(copied, "rb").read() != want[WASM]:
            errors.append(f"`copy-filter` from the image: exit {out.returncode}: {out.stderr[-500:]!r}")
        ran.append("copy-filter")
print(json.dumps({
    "layers": len(manifest["Layers"]),
    "files": {k: {"bytes": len(v[0]), "sha256": sha(v[0]), "mode": oct(v[1])} for k, v in files.items()},
    "user": user, "entrypoint": cfg.get("Entrypoint"), "ran": ran, "errors": errors,
}, indent=1))
sys.exit(1 if errors else 0)
