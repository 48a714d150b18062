"""Grid files: what is accepted, and a table of what is refused and how."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from normsweep import config
from normsweep.errors import GridError

GRID = '[grid]\nwidth = [16]\ndepth = [2]\nlr = [0.1]\n'


def test_defaults_are_the_reference_setting():
    c = config.parse(GRID, default_name="g")
    assert (c.data.n, c.data.d, c.data.k, c.data.seed) == (1024, 16, 10, 0)
    assert (c.model.init, c.model.output) == ("he", "softmax")
    assert (c.train.loss, c.train.steps, c.train.dtype) == ("mse", 2000, "float32")
    assert c.record.steps == "log" and c.record.weights is False
    assert c.grid.seed == (0,) and c.name == "g"


def test_axis_forms():
    c = config.parse('name = "a"\n[grid]\nwidth = { geomspace = [64, 1024, 5] }\n'
                     'depth = { values = [4, 2, 3] }\nlr = { linspace = [0.1, 0.3, 3] }\n'
                     'seed = [2, 0]\n')
    assert c.grid.width == (64, 128, 256, 512, 1024)
    assert c.grid.depth == (2, 3, 4) and c.grid.seed == (0, 2)
    np.testing.assert_allclose(c.grid.lr, [0.1, 0.2, 0.3])


def test_lr_width_exponent():
    c = config.parse('name = "a"\n[grid]\nwidth = [64, 256]\ndepth = [2]\n'
                     'lr = { geomspace = [0.25, 4, 5], width_exponent = -1 }\n')
    assert c.grid.lr_width_exponent == -1
    np.testing.assert_allclose(c.grid.lr_effective(256), np.geomspace(0.25, 4, 5) / 256)


def test_fingerprint_leaves_out_settings_at_their_default(monkeypatch):
    """A setting added later with a default that keeps the old behaviour must
    not change the fingerprint of folders launched before it existed."""
    c = config.parse('name = "a"\n' + GRID)
    before = c.fingerprint()
    real_settings, real_defaults = config.Config.settings, config.default_settings
    monkeypatch.setattr(config.Config, "settings",
                        lambda self: {**real_settings(self), "train.new_knob": 0})
    monkeypatch.setattr(config, "default_settings",
                        lambda: {**real_defaults(), "train.new_knob": 0})
    assert c.fingerprint() == before
    monkeypatch.setattr(config.Config, "settings",
                        lambda self: {**real_settings(self), "train.new_knob": 1})
    assert c.fingerprint() != before


def test_the_old_name_of_lanczos_steps_is_accepted_with_the_same_fingerprint():
    new = config.parse('[record]\nlanczos_steps = 30\n' + GRID, default_name="x")
    old = config.parse('[record]\npower_iters = 30\n' + GRID, default_name="x")
    assert new.record.lanczos_steps == old.record.lanczos_steps == 30
    assert new.fingerprint() == old.fingerprint() != config.parse(GRID, default_name="x").fingerprint()
    # hashed under the first name, as folders written before the rename were
    kept = [("record.power_iters" if k == "record.lanczos_steps" else k, v)
            for k, v in new.settings().items() if config.default_settings().get(k) != v]
    kept.append(("record_format", config.RECORD_FORMAT))
    assert new.fingerprint() == hashlib.sha256(repr(sorted(kept)).encode()).hexdigest()[:16]


def test_fingerprint_ignores_width_and_depth_but_not_lr():
    a = config.parse('name = "a"\n' + GRID)
    b = config.parse('name = "a"\n' + GRID.replace("[16]", "[16, 32]").replace("[2]", "[2, 5]"))
    c = config.parse('name = "a"\n' + GRID.replace("[0.1]", "[0.2]"))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


BASE = {"name": '"ok"', "data": "", "model": "", "train": "", "record": ""}
# (id, grid text, key the message must name, a fragment of the message)
BAD = [
    ("toml-syntax", 'name = "x\n' + GRID, "TOML", "not valid TOML"),
    ("unknown-top", 'name = "x"\nwidht = 3\n' + GRID, "widht", "unknown key"),
    ("misspelt-axis", 'name = "x"\n[grid]\nwidht = [16]\ndepth = [2]\nlr = [0.1]\n', "grid.widht", "unknown key"),
    ("unknown-data-key", '[data]\nnn = 3\n' + GRID, "data.nn", "unknown key"),
    ("unknown-section-key", '[train]\nmomentum = 0.9\n' + GRID, "train.momentum", "unknown key"),
    ("name-slash", 'name = "../evil"\n' + GRID, "name", "plain identifier"),
    ("name-empty", 'name = ""\n' + GRID, "name", "plain identifier"),
    ("name-number", 'name = 3\n' + GRID, "name", "plain identifier"),
    ("n-zero", '[data]\nn = 0\n' + GRID, "data.n", "≥ 1"),
    ("n-float", '[data]\nn = 10.5\n' + GRID, "data.n", "integer"),
    ("d-one", '[data]\nd = 1\n' + GRID, "data.d", "≥ 2"),
    ("k-string", '[data]\nk = "ten"\n' + GRID, "data.k", "integer"),
    ("seed-negative", '[data]\nseed = -1\n' + GRID, "data.seed", "between"),
    ("init-unknown", '[model]\ninit = "xavier"\n' + GRID, "model.init", '"he"'),
    ("output-unknown", '[model]\noutput = "sigmoid"\n' + GRID, "model.output", '"softmax"'),
    ("loss-unknown", '[train]\nloss = "hinge"\n' + GRID, "train.loss", '"mse"'),
    ("ce-linear", '[model]\noutput = "linear"\n[train]\nloss = "cross_entropy"\n' + GRID, "train.loss", "softmax"),
    ("steps-zero", '[train]\nsteps = 0\n' + GRID, "train.steps", "between 1"),
    ("steps-bool", '[train]\nsteps = true\n' + GRID, "train.steps", "integer"),
    ("dtype", '[train]\ndtype = "float16"\n' + GRID, "train.dtype", "float32"),
    ("record-steps", '[record]\nsteps = "sometimes"\n' + GRID, "record.steps", "stride"),
    ("record-stride-zero", '[record]\nsteps = 0\n' + GRID, "record.steps", "stride"),
    ("weights-string", '[record]\nweights = "yes"\n' + GRID, "record.weights", "true or false"),
    ("no-grid", 'name = "x"\n', "grid", "required"),
    ("no-lr", '[grid]\nwidth = [16]\ndepth = [2]\n', "grid.lr", "required"),
    ("width-zero", GRID.replace("[16]", "[0, 16]"), "grid.width", "≥ 1"),
    ("width-float", GRID.replace("[16]", "[16.5]"), "grid.width", "integer"),
    ("width-empty", GRID.replace("[16]", "[]"), "grid.width", "non-empty"),
    ("width-duplicate", GRID.replace("[16]", "[16, 16]"), "grid.width", "distinct"),
    ("width-string", GRID.replace("[16]", '"16"'), "grid.width", "must be a number or a list"),
    ("depth-one", GRID.replace("depth = [2]", "depth = [1]"), "grid.depth", "≥ 2"),
    ("lr-zero", GRID.replace("[0.1]", "[0.0]"), "grid.lr", "> 0"),
    ("lr-negative", GRID.replace("[0.1]", "[-0.1]"), "grid.lr", "> 0"),
    ("lr-nan", GRID.replace("[0.1]", "[nan]"), "grid.lr", "finite"),
    ("lr-inf", GRID.replace("[0.1]", "[inf]"), "grid.lr", "finite"),
    ("lr-bool", GRID.replace("[0.1]", "[true]"), "grid.lr", "number"),
    ("geomspace-zero", GRID.replace("[0.1]", "{ geomspace = [0, 1, 3] }"), "grid.lr.geomspace", "start > 0"),
    ("geomspace-short", GRID.replace("[0.1]", "{ geomspace = [0.1, 1] }"), "grid.lr.geomspace", "[start, stop, num]"),
    ("linspace-num", GRID.replace("[0.1]", "{ linspace = [0.1, 1, 0] }"), "grid.lr.linspace", "num"),
    ("axis-two-forms", GRID.replace("[0.1]", "{ values = [0.1], geomspace = [1, 2, 2] }"), "grid.lr", "exactly one"),
    ("axis-unknown-form", GRID.replace("[0.1]", "{ logspace = [1, 2, 2] }"), "grid.lr", "exactly one"),
    ("width-exponent-on-width", GRID.replace("[16]", "{ values = [16], width_exponent = 1 }"), "grid.width", "exactly one"),
    ("width-exponent-nan", GRID.replace("[0.1]", "{ values = [0.1], width_exponent = nan }"), "grid.lr.width_exponent", "finite"),
    ("int-geomspace-repeats", GRID.replace("[16]", "{ geomspace = [2, 3, 5] }"), "grid.width.geomspace", "repeated"),
    ("seed-huge", GRID + "seed = [4294967296]\n", "grid.seed", "≤ 2147483647"),
    ("grid-not-table", 'grid = 3\n', "grid", "table"),
    ("precision-unknown", '[train]\nmatmul_precision = "tf32"\n' + GRID, "train.matmul_precision", '"highest"'),
    ("weight-decay-negative", '[train]\nweight_decay = -0.1\n' + GRID, "train.weight_decay", "≥ 0"),
    ("weight-decay-nan", '[train]\nweight_decay = nan\n' + GRID, "train.weight_decay", "≥ 0"),
    ("weight-decay-axis-negative", GRID + "weight_decay = [0.0, -1e-3]\n", "grid.weight_decay", "≥ 0"),
    ("weight-decay-axis-duplicate", GRID + "weight_decay = [0.0, 0.0]\n", "grid.weight_decay", "distinct"),
    ("weight-decay-twice", '[train]\nweight_decay = 0.1\n' + GRID + "weight_decay = [0.0, 0.1]\n", "train.weight_decay", "not both"),
    ("parametrization-axis-unknown", GRID + 'parametrization = ["standard", "yang"]\n', "grid.parametrization", '"mup"'),
    ("parametrization-axis-empty", GRID + "parametrization = []\n", "grid.parametrization", "non-empty"),
    ("parametrization-axis-duplicate", GRID + 'parametrization = ["ntk", "ntk"]\n', "grid.parametrization", "distinct"),
    ("parametrization-axis-unknown-name", GRID + 'parametrization = "yang"\n', "grid.parametrization", '"mup"'),
    ("parametrization-twice", '[model]\nparametrization = "ntk"\n' + GRID + 'parametrization = ["ntk"]\n', "model.parametrization", "not both"),
    ("mup-axis-width-init", '[model]\ninit = "width"\n' + GRID + 'parametrization = ["mup"]\n', "model.init", '"he"'),
    ("lanczos-steps-too-many", '[record]\nlanczos_steps = 201\n' + GRID, "record.lanczos_steps",
     "between 1 and 200"),
    ("power-iters-too-many", '[record]\npower_iters = 201\n' + GRID, "record.power_iters",
     "between 1 and 200"),
    ("lanczos-steps-twice", '[record]\nlanczos_steps = 5\npower_iters = 5\n' + GRID,
     "record.power_iters", "are both given"),
    ("ntk-points-zero", '[record]\nntk_points = 0\n' + GRID, "record.ntk_points", "between 1"),
    ("ntk-points-above-n", '[data]\nn = 8\n[record]\nntk_eigs = 5\nntk_points = 16\n' + GRID, "record.ntk_points", "data.n"),
    ("ntk-eigs-negative", '[record]\nntk_eigs = -1\n' + GRID, "record.ntk_eigs", "0 (off), \"log\""),
    ("jacobian-word", '[record]\njacobian_norm = "sparse"\n' + GRID, "record.jacobian_norm",
     "a stride"),
    ("spectra-not-bool", '[record]\nspectra = 1\n' + GRID, "record.spectra", "true or false"),
]


@pytest.mark.parametrize("text,key,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_grid_is_refused_with_file_key_value_and_allowed(text, key, fragment):
    with pytest.raises(GridError) as info:
        config.parse(text, source="bad.toml", default_name="x")
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    assert key in message, message
    assert fragment in message, message


def test_grid_file_is_never_executed(tmp_path):
    path = tmp_path / "g.toml"
    marker = tmp_path / "pwned"
    path.write_text('name = "__import__(\'os\').system(\'touch %s\')"\n' % marker + GRID)
    with pytest.raises(GridError):
        config.load(path)
    assert not marker.exists()


def test_schema_doc_lists_every_key_with_its_default():
    """docs/schema.md's grid file shows each section's keys at their defaults:
    the doc and `config.setting` cannot drift apart."""
    import dataclasses
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "schema.md").read_text()
    block = re.search(r"## Grid file\n.*?```toml\n(.*?)```", text, re.S).group(1)
    shown = tomllib.loads(block)
    defaults = config.Config("x", config.DataConfig(), config.ModelConfig(),
                             config.TrainConfig(), config.RecordConfig(), None)
    for section in config.SECTIONS:
        fields = {f.name: getattr(getattr(defaults, section), f.name)
                  for f in dataclasses.fields(getattr(defaults, section))}
        assert shown[section] == fields, section


def test_a_single_value_is_an_axis_of_one():
    one = config.parse('[grid]\nwidth = 16\ndepth = 3\nlr = 0.1\nseed = 4\n'
                       'parametrization = "ntk"\nweight_decay = 0.01\n', default_name="x")
    lists = config.parse('[grid]\nwidth = [16]\ndepth = [3]\nlr = [0.1]\nseed = [4]\n'
                         'parametrization = ["ntk"]\nweight_decay = [0.01]\n', default_name="x")
    assert one.grid == lists.grid and one.grid.width == (16,) and one.grid.parametrization == ("ntk",)
    assert one.fingerprint() == lists.fingerprint()


def test_overrides_replace_keys_and_the_text_is_the_effective_grid(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('name = "g"\n[train]\nsteps = 50  # a comment\n[grid]\nwidth = [16]\n'
                    'depth = [2]\nlr = { geomspace = [0.01, 1.0, 3], width_exponent = -1 }\n')
    cfg = config.load(path, ["train.steps=7", "grid.lr=[0.5, 0.25]", "grid.width=32",
                             "model.init=width", 'record.steps="all"', "grid.seed=[1, 2]"])
    assert cfg.train.steps == 7 and cfg.grid.lr == (0.25, 0.5) and cfg.grid.width == (32,)
    assert cfg.model.init == "width" and cfg.record.steps == "all" and cfg.grid.seed == (1, 2)
    assert cfg.grid.lr_width_exponent == -1.0          # kept from the file
    again = config.parse(cfg.text, source="stored")    # what the results folder records
    assert again.settings() == cfg.settings() and again.name == "g"
    assert cfg.text.startswith("#") and "train.steps=7" in cfg.text.splitlines()[0]
    assert config.load(path, ["grid.lr.width_exponent=0"]).grid.lr_width_exponent == 0.0
    assert config.load(path).text == path.read_text()  # no overrides: the file as written


@pytest.mark.parametrize("item,key,fragment", [
    ("train.steps", "--set", "KEY=VALUE"),
    ("train.steps=ten steps", "train.steps", "not a TOML value"),
    ("train.stpes=10", "train.stpes", "unknown key"),
    ("train.steps=-3", "train.steps", "between 1"),
    ("grid.width=[0]", "grid.width", "≥ 1"),
    ("grid.width.every=3", "grid.width", "not a table"),
])
def test_bad_overrides_name_the_file_the_key_and_what_is_allowed(tmp_path, item, key, fragment):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    with pytest.raises(GridError) as info:
        config.load(path, [item])
    message = str(info.value)
    assert message.startswith(f"{path} with --set: ") and key in message and fragment in message


def test_an_unknown_key_suggests_the_nearest_allowed_one():
    with pytest.raises(GridError, match="did you mean width\\?"):
        config.parse('name = "x"\n[grid]\nwidht = [8]\ndepth = [2]\nlr = [0.1]\nseed = [0]\n')
    with pytest.raises(GridError) as info:       # nothing near: no guess
        config.parse('name = "x"\n[grid]\nzzz = [8]\ndepth = [2]\nlr = [0.1]\nseed = [0]\n')
    assert "did you mean" not in str(info.value)


def test_the_package_has_a_version():
    import importlib.metadata

    import normsweep
    assert normsweep.__version__ == importlib.metadata.version("normsweep")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "sweeps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_bundled_grid_parses_and_opens_with_its_command(path):
    text = path.read_text()
    config.parse(text, source=str(path))
    first = text.splitlines()[0]
    assert first.startswith(f"# normsweep launch sweeps/{path.name}"), first
    assert "RUNTIME" not in text
