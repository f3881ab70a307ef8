"""A small offline renderer for the kustomizations in deploy/: `resources` (files and directories) and
`labels` / `commonLabels`, nothing else.

CI machines have no kubectl, so the tests render with this and, where kubectl exists, check that it
agrees with `kubectl kustomize`. A kustomization using anything this does not implement is an error here,
never a silent difference.
"""

from __future__ import annotations

import os

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "labels", "commonLabels"}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


def render(directory: str) -> list[dict]:
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise NotImplementedError(
            f"{directory}: kustomization fields {sorted(unsupported)} are not supported"
        )
    documents: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = os.path.join(directory, resource)
        if os.path.isdir(path):
            documents += render(path)
        else:
            with open(path) as f:
                documents += [doc for doc in yaml.safe_load_all(f) if doc]
    for entry in kustomization.get("labels", []):
        for doc in documents:
            _add_labels(
                doc, entry["pairs"], entry.get("includeSelectors", False), entry.get("includeTemplates")
            )
    if "commonLabels" in kustomization:
        for doc in documents:
            _add_labels(doc, kustomization["commonLabels"], selectors=True, templates=True)
    return documents


def _add_labels(doc: dict, pairs: dict, selectors: bool, templates: bool | None) -> None:
    doc.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if doc.get("kind") not in WORKLOADS:
        return
    spec = doc.setdefault("spec", {})
    if templates or selectors:  # kustomize labels pod templates whenever it labels selectors
        spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if selectors:
        spec.setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)
