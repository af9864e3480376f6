"""Validates Istio resources (JSON array on stdin) against Istio's CRD schemas as the PyPI
package cloudcoil-models-istio ships them (pydantic models generated from Istio's CRDs):
types, enums and required fields by pydantic, plus a walk that refuses every field the
schema does not declare (the models themselves would ignore a misspelt field, and so would
Istio: the API server prunes it). Prints {"errors": [...]}; exit 1 if any."""
import json
import sys
import typing

import pydantic
from cloudcoil.models.istio.extensions import v1alpha1 as extensions
from cloudcoil.models.istio.networking import v1 as networking
from cloudcoil.models.istio.networking import v1alpha3 as networking_alpha

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
    if is_model(annotation):
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
    print(json.dumps({"errors": errors, "checked": len(docs)}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
