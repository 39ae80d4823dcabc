import dataclasses
import os

import pytest

from mindllm.config import Config, apply_override, load_config, save_config
from mindllm.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_config_file_equals_builtin_defaults():
    # `python -m mindllm.train` with no file must train exactly what configs/gpt_char_shakespeare.yaml says
    assert load_config(os.path.join(ROOT, "configs", "gpt_char_shakespeare.yaml")) == Config()


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_shipped_config_loads(name):
    load_config(os.path.join(ROOT, "configs", name))


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(None, ["train.max_iters=200", "train.lr=3e-4", "model.dropout=0", "out_dir=runs/x",
                             "resume=true", "sample.prompt=ROMEO:"])
    assert cfg.train.max_iters == 200 and cfg.train.lr == pytest.approx(3e-4)
    assert isinstance(cfg.model.dropout, float) and cfg.resume is True and cfg.out_dir == "runs/x"
    assert cfg.sample.prompt == "ROMEO:"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.n_layer=3", "data.corpus=莎士比亚.txt"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize("override, message", [
    (["train.max_iter=5"], "unknown key 'train.max_iter' (did you mean 'train.max_iters'?)"),
    (["modle.n_layer=2"], "unknown key 'modle'"),
    (["train.max_iters=abc"], "train.max_iters must be an integer, got 'abc'"),
    (["train.max_iters=2.5"], "train.max_iters must be an integer"),
    (["train.lr=-0.1"], "train.lr must be > 0.0, got -0.1"),
    (["train.lr=0"], "train.lr must be > 0.0"),
    (["model.block_size=0"], "model.block_size must be >= 1, got 0"),
    (["model.n_layer=true"], "model.n_layer must be an integer, got True"),
    (["resume=1"], "resume must be true or false"),
    (["data.corpus=3"], None),
    (["context.device_target=TPU"], "context.device_target must be one of auto, CPU, GPU, Ascend"),
    (["model.n_embd=130"], "model.n_embd (130) must be divisible by model.n_head (4)"),
    (["train.min_lr=0.01"], "train.min_lr (0.01) must not exceed train.lr"),
    (["train=5"], "config: train must be a section of keys"),
    (["train.lr.x=1"], "config: train.lr is a value, not a section"),
    (["noequals"], "must look like key=value"),
])
def test_bad_values_name_the_key(override, message):
    if message is None:  # a string field keeps the text as typed
        assert load_config(None, override).data.corpus == "3"
        return
    with pytest.raises(UserError) as e:
        load_config(None, override)
    assert message in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_config(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(str(scalar))


def test_apply_override_builds_sections():
    data = {}
    apply_override(data, "model.n_layer=3")
    apply_override(data, "sample.prompt=a=b")  # only the first '=' separates key and value
    assert data["model"]["n_layer"].parsed == 3 and data["sample"]["prompt"].raw == "a=b"


def test_every_field_has_a_default():
    for f in dataclasses.fields(Config):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
