import dataclasses
from typing import Literal

import pytest

from bioinstruct.runs.config import dump_config, load_config
from bioinstruct.errors import ConfigError

pytestmark = pytest.mark.unit


@dataclasses.dataclass
class Lora:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclasses.dataclass
class Data:
    path: str = "data.jsonl"
    max_length: int = 512


@dataclasses.dataclass
class Cfg:
    model: str = "llama2-7b"
    seed: int = 0
    bf16: bool = True
    zero_stage: Literal[2, 3] = 2
    lr: float = 3e-4
    run_name: str | None = None
    lora: Lora = dataclasses.field(default_factory=Lora)
    data: Data = dataclasses.field(default_factory=Data)

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_file_then_overrides(tmp_path):
    p = write(tmp_path, "model: /models/llama2-13b\nlora:\n  r: 4\ndata:\n  max_length: 256\n")
    cfg = load_config(Cfg, p, ["lora.r=16", "data.max_length=1024", "lr=1e-4",
                               "lora.target_modules=[q_proj, k_proj, v_proj]", "run_name=null"])
    assert cfg.model == "/models/llama2-13b"
    assert cfg.lora.r == 16 and cfg.lora.alpha == 16
    assert cfg.data.max_length == 1024 and cfg.data.path == "data.jsonl"
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert cfg.run_name is None


@dataclasses.dataclass
class Stage:
    lora: Lora = dataclasses.field(default_factory=lambda: Lora(r=64, target_modules=["o_proj"]))


def test_override_inside_a_section_keeps_the_sections_own_defaults(tmp_path):
    cfg = load_config(Stage, None, ["lora.alpha=8"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (64, 8, ["o_proj"])
    cfg = load_config(Stage, write(tmp_path, "lora:\n  dropout: 0.1\n"))
    assert (cfg.lora.r, cfg.lora.dropout) == (64, 0.1)


def test_int_accepted_for_float_and_number_for_str():
    cfg = load_config(Cfg, None, ["lr=1", "model=2024"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.model == "2024"


def test_unknown_key_names_file_line_and_closest(tmp_path):
    p = write(tmp_path, "model: x\nlora:\n  rr: 16\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert f"{p}:3" in msg and "'lora.rr'" in msg and "closest valid key: 'lora.r'" in msg


def test_unknown_key_in_override_suggests_key_in_other_section():
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["max_length=1024"])
    assert "override 'max_length=1024'" in str(e.value)
    assert "closest valid key: 'data.max_length'" in str(e.value)


def test_wrong_type_names_key_and_source(tmp_path):
    p = write(tmp_path, "seed: 0\nlora:\n  r: sixteen\n")
    with pytest.raises(ConfigError, match=rf"{p}:3: key 'lora.r' expects int, got 'sixteen'"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="key 'bf16' expects bool"):
        load_config(Cfg, None, ["bf16=1"])
    with pytest.raises(ConfigError, match="key 'seed' expects int"):
        load_config(Cfg, None, ["seed=true"])
    with pytest.raises(ConfigError, match=r"key 'lora' expects Lora"):
        load_config(Cfg, None, ["lora=3"])
    with pytest.raises(ConfigError, match=r"'zero_stage' must be one of 2, 3, got 1"):
        load_config(Cfg, None, ["zero_stage=1"])
    with pytest.raises(ConfigError, match=r"key 'lora.target_modules\[1\]' expects str"):
        load_config(Cfg, None, ["lora.target_modules=[q_proj, [1]]"])


def test_validation_in_post_init_is_a_config_error():
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        load_config(Cfg, None, ["seed=-1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=":1: a config file must be a mapping"):
        load_config(Cfg, write(tmp_path, "- a\n- b\n"))
    from bioinstruct.errors import DataError
    with pytest.raises(DataError, match=r"cfg.yaml:2: invalid YAML"):
        load_config(Cfg, write(tmp_path, "model: x\n  bad: 1\nseed: 2\n"))
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, None, ["lora.r"])


def test_empty_file_gives_defaults_and_dump_round_trips(tmp_path):
    assert load_config(Cfg, write(tmp_path, "")) == Cfg()
    cfg = load_config(Cfg, None, ["lora.r=32"])
    again = load_config(Cfg, write(tmp_path, dump_config(cfg)))
    assert again == cfg
