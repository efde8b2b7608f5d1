"""``medseg models``: the zoo table, its JSON form, the family filter, and parameter counts computed without
allocating the full-size models."""
from __future__ import annotations

import json

import pytest
import torch

from medseg.cli import main
from medseg.commands import models as models_command
from medseg.models import registry


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """The table cache of these tests lives in one temporary folder, never in the user's home."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "medseg-cache"))


def test_table_lists_transunet_variants_with_published_counts(capsys):
    assert main(["models", "--family", "transunet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["name", "family", "parameters", "official", "code", "input"]
    rows = {line.split()[0]: line for line in lines[1:lines.index("")]}  # the table ends at the blank line
    assert set(rows) == {"R50-ViT-B_16", "ViT-B_16", "R50-ViT-L_16", "TransUNet-S", "TransUNet-Tiny"}
    assert "105,277,081" in rows["R50-ViT-B_16"] and "published" in rows["R50-ViT-B_16"]
    assert "91,674,201" in rows["ViT-B_16"] and "224x224" in rows["ViT-B_16"]
    assert "small" in rows["TransUNet-Tiny"] and "128x128" in rows["TransUNet-Tiny"]


def test_json_output(capsys):
    assert main(["models", "--json", "--family", "transunet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert by_name["R50-ViT-B_16"]["parameters"] == 105_277_081
    assert by_name["R50-ViT-B_16"]["published"] is True
    assert by_name["TransUNet-S"]["published"] is False
    assert all(row["family"] == "transunet" and row["description"] for row in rows)
    assert all(isinstance(row["parameters"], int) and row["parameters"] > 0 for row in rows)


def test_unfiltered_table_has_every_registered_variant(capsys):
    assert main(["models", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert names == {spec.name for spec in registry.list_models()}


def test_unknown_family_is_a_one_line_error(capsys):
    assert main(["models", "--family", "no_such_family"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg models: error: --family: unknown family 'no_such_family'")
    assert "\n" not in err


def test_parameter_counts_build_on_the_meta_device(monkeypatch):
    built = []
    real_create = registry.create

    def recording_create(*args, **kwargs):
        model = real_create(*args, **kwargs)
        built.append(model)
        return model

    monkeypatch.setattr(registry, "create", recording_create)
    assert models_command.count_parameters("R50-ViT-L_16") == 324_024_729
    assert models_command.count_parameters("R50-ViT-B_16", img_size=512) == 105_277_081 + (1024 - 196) * 768
    assert built and all(p.device.type == "meta" for model in built for p in model.parameters())


def test_parameter_count_falls_back_when_meta_fails(monkeypatch):
    real_create = registry.create

    def cpu_only_create(*args, **kwargs):
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("cannot build on meta")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(registry, "create", cpu_only_create)
    expected = sum(p.numel() for p in real_create("TransUNet-Tiny", num_classes=9, img_size=128).parameters())
    assert models_command.count_parameters("TransUNet-Tiny") == expected


@pytest.mark.parametrize("value", [None, 1234567])
def test_format_table_handles_unknown_counts(value):
    row = {"name": "X", "family": "f", "parameters": value, "img_size": 64, "published": False,
           "description": "d"}
    text = models_command.format_table([row])
    assert ("1,234,567" if value else " ?") in text


def test_the_table_is_cached_with_its_record(monkeypatch, capsys):
    assert main(["models", "--json"]) == 0  # counted here, or read from the cache an earlier test filled
    fresh = json.loads(capsys.readouterr().out)
    cached = json.loads(models_command.cache_path().read_text())
    assert cached["record"] == models_command.zoo_record() and cached["rows"] == fresh
    monkeypatch.setattr(models_command, "model_rows", lambda family=None: pytest.fail("counted again"))
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fresh
    cached["record"]["versions"]["torch"] = "0.0"  # another torch: counted again
    models_command.cache_path().write_text(json.dumps(cached))
    with pytest.raises(pytest.fail.Exception, match="counted again"):
        main(["models", "--json"])


def test_a_cached_listing_does_not_import_torch(capsys):
    import os
    import subprocess
    import sys

    assert main(["models"]) == 0  # fills the cache (counted here if needed)
    listed = capsys.readouterr().out
    code = "import sys; from medseg.cli import main; main(['models']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                            check=True)
    assert result.stdout.splitlines()[-1] == "False"
    assert result.stdout.splitlines()[:-1] == listed.splitlines()


def test_published_counts_equal_the_official_code(capsys):
    """Every variant with an official count: medseg built at the official configuration has exactly that many
    parameters, plus those it does not build by construction (listed in the registry)."""
    assert main(["models", "--json"]) == 0
    rows = [row for row in json.loads(capsys.readouterr().out) if row["official"]]
    assert {row["name"] for row in rows} >= {"TopFormer-Tiny", "SegFormer-B0", "BiSeNet-R18", "DS-TransUNet-B",
                                             "SETR-Naive-L16", "SETR-PUP-L16", "SETR-MLA-L16", "R50-ViT-B_16"}
    for row in rows:
        official = row["official"]
        assert official["equal"], row["name"]
        assert official["medseg"] + official["not_built"] == official["parameters"]
