"""The manifest contract: sealing, schema checks, tamper detection."""
from __future__ import annotations

import json

import pytest

from runtimes.errors import BundleError, IncompatibleBundleError
from runtimes.manifest import REQUIRED_FIELDS, SCHEMA_VERSION, Manifest


def _fields():
    f = {k: {} for k, t in REQUIRED_FIELDS.items() if t is dict}
    f.update(bge_export_version="0", family="encoder", target="onnx", precision="fp32", parity=None)
    return f


def test_roundtrip(tmp_path):
    m = Manifest.build(_fields())
    m.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again.data == m.data and again.data["schema_version"] == SCHEMA_VERSION


def test_edit_is_detected(tmp_path):
    Manifest.build(_fields()).write(tmp_path)
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["target"] = "ort-cpu"
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="modified after the build"):
        Manifest.read(tmp_path)


def test_missing_field_is_named(tmp_path):
    d = Manifest.build(_fields()).data
    del d["family"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="missing field 'family'"):
        Manifest.read(tmp_path)


def test_future_schema_is_refused(tmp_path):
    d = dict(Manifest.build(_fields()).data)
    d["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(IncompatibleBundleError, match="schema version"):
        Manifest.read(tmp_path)


def test_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.read(tmp_path)
