"""Inspects the filter image saved by `podman save --format docker-archive` (argv[1]) without
running it: exactly one layer, holding only plugin.wasm, byte-identical to the built filter
(argv[2]); no entrypoint or command. Prints what it checked; exit 1 on any difference."""
import hashlib
import io
import json
import sys
import tarfile

archive, wasm = sys.argv[1], sys.argv[2]
want = hashlib.sha256(open(wasm, "rb").read()).hexdigest()
errors = []
with tarfile.open(archive) as tar:
    manifest = json.load(tar.extractfile("manifest.json"))[0]
    config = json.load(tar.extractfile(manifest["Config"]))
    layers = manifest["Layers"]
    if len(layers) != 1:
        errors.append(f"{len(layers)} layers, expected 1")
    files = {}
    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(tar.extractfile(layer).read())) as lt:
            for m in lt.getmembers():
                if m.isfile():
                    files[m.name.lstrip("./")] = hashlib.sha256(lt.extractfile(m).read()).hexdigest()
    if set(files) != {"plugin.wasm"}:
        errors.append(f"layer files {sorted(files)}, expected only plugin.wasm")
    elif files["plugin.wasm"] != want:
        errors.append("plugin.wasm differs from the built filter")
    cfg = config.get("config") or {}
    if cfg.get("Entrypoint") or cfg.get("Cmd"):
        errors.append(f"entrypoint/cmd set: {cfg.get('Entrypoint')} {cfg.get('Cmd')}")
print(json.dumps({"layers": len(layers), "files": sorted(files), "plugin_sha256": files.get("plugin.wasm"), "errors": errors}))
sys.exit(1 if errors else 0)
