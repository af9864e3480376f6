"""Validates Istio resources (JSON array on stdin) against Istio's CRD schemas as the PyPI
package cloudcoil-models-istio (1.31, pinned in the Makefile) ships them (pydantic models generated from Istio's CRDs):
types, enums and required fields by pydantic, plus a walk that refuses every field the
schema does not declare (the models themselves would ignore a misspelt field, and so would
Istio: the API server prunes it). Prints {"errors": [...], "checked": N, "istio_models": V};
exit 1 if any.

cloudcoil-models-istio 1.31 declares Requires-Python >=3.14 because its runtime (cloudcoil 0.7)
and its package index (`_lookup.py`, deferred annotations) need 3.14; the generated model modules
themselves are plain 3.11 code. The Makefile installs them alone (--no-deps) beside cloudcoil
0.6's runtime, and this script loads the model modules without the package's __init__."""
import importlib.metadata
import importlib.util
import json
import sys
import types
import typing

import pydantic
import cloudcoil.models
import cloudcoil.pydantic

# The one name the 1.31 builders import that cloudcoil 0.6 lacks (a sentinel for builders only).
if not hasattr(cloudcoil.pydantic, "UNSET"):
    cloudcoil.pydantic.UNSET = object()
_spec = importlib.util.find_spec("cloudcoil.models.istio")
_pkg = types.ModuleType("cloudcoil.models.istio")
_pkg.__path__ = list(_spec.submodule_search_locations)
sys.modules["cloudcoil.models.istio"] = _pkg

from cloudcoil.models.istio.extensions import v1alpha1 as extensions  # noqa: E402
from cloudcoil.models.istio.networking import v1 as networking  # noqa: E402
from cloudcoil.models.istio.networking import v1alpha3 as networking_alpha  # noqa: E402

VERSION = importlib.metadata.version("cloudcoil-models-istio")

MODELS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): extensions.WasmPlugin,
    ("networking.istio.io/v1", "ServiceEntry"): networking.ServiceEntry,
    ("networking.istio.io/v1", "DestinationRule"): networking.DestinationRule,
    ("networking.istio.io/v1", "Gateway"): networking.Gateway,
    ("networking.istio.io/v1", "VirtualService"): networking.VirtualService,
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): networking_alpha.EnvoyFilter,
}


def is_model(t):
    return isinstance(t, type) and issubclass(t, pydantic.BaseModel)


def models_in(annotation):
    """The pydantic models an annotation can hold (through Optional, List, Dict, Annotated)."""
    if is_model(annotation):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(models_in(arg))
    return found


def check(annotation, value, path, errors):
    """Appends the unknown fields of `value` as `annotation` reads it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if is_model(annotation) and issubclass(annotation, pydantic.RootModel):
        # A oneOf in the CRD (1.31's models): the value is the root, one of the alternatives.
        check(annotation.model_fields["root"].annotation, value, path, errors)
    elif is_model(annotation):
        if not isinstance(value, dict):
            return
        fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
        for key, child in value.items():
            field = fields.get(key)
            if field is None:
                errors.append(f"{path}.{key}: unknown field (not in the {annotation.__name__} schema)")
            else:
                check(field.annotation, child, f"{path}.{key}", errors)
    elif origin in (dict, typing.Dict) and len(args) == 2:
        if isinstance(value, dict):
            for key, child in value.items():
                check(args[1], child, f"{path}.{key}", errors)
    elif origin in (list, typing.List) and args:
        if isinstance(value, list):
            for i, item in enumerate(value):
                check(args[0], item, f"{path}[{i}]", errors)
    elif args:
        # Optional / Union / Annotated: the value must fit one of the alternatives.
        tries = []
        for alt in args:
            if alt is type(None):
                continue
            found = []
            check(alt, value, path, found)
            if not found:
                return
            tries.append(found)
        if tries:
            errors.extend(min(tries, key=len))


def main():
    docs = json.load(sys.stdin)
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
        if model is None:
            errors.append(f"{where}: no Istio schema for {doc.get('apiVersion')} {doc.get('kind')}")
            continue
        try:
            model.model_validate(doc)
        except pydantic.ValidationError as e:
            errors.extend(f"{where}: {line}" for line in str(e).splitlines()[1:] if line.strip())
        check(model.model_fields["spec"].annotation, doc.get("spec", {}), f"{where} spec", errors)
    print(json.dumps({"errors": errors, "checked": len(docs), "istio_models": VERSION}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
