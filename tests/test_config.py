"""The one config reader (jina_clip_v2/_config.py) and the stage schema (training/config.py): errors name the
dotted key, values are range-checked, and the same YAML gives the same values to training, the evaluation
suites and the benchmarks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from _tiny import ROOT

from jina_clip_v2._config import parse_yaml_value
from jina_clip_v2.benchmarks import train_step as bench
from jina_clip_v2.evaluation import suites
from jina_clip_v2.evaluation.tasks import task_from_dict
from jina_clip_v2.training.config import ConfigError, config_to_yaml, load_config, resolve_path

TINY = ROOT / "training" / "configs" / "tiny.yaml"


# --------------------------------------------------------------------------------------------------
# Unknown keys, wrong types, missing values: the dotted key is named
# --------------------------------------------------------------------------------------------------


# override(s) (`;`-separated) -> a part of the error message
SCHEMA_ERRORS = """
optim.lr=1e-3                           -> unknown config key 'optim.lr'
trian.steps=3                           -> unknown config key 'trian'
data.text.sources.0.pth=x               -> unknown config key 'data.text.sources.0.pth'
data.text.sources=[{path: a, wieght: 2}] -> unknown config key 'data.text.sources.0.wieght'
train.grad_cache.chunk=4                -> unknown config key 'train.grad_cache.chunk'
train.steps=many                        -> 'train.steps' must be an integer, got 'many'
train.steps=2.5                         -> 'train.steps' must be an integer, got 2.5
optim.text_lr=fast                      -> 'optim.text_lr' must be a number, got 'fast'
train.deterministic=maybe               -> 'train.deterministic' must be true or false, got 'maybe'
train.log_with=tensorboard              -> 'train.log_with' must be a list, got 'tensorboard'
data.text.sources.0.weight=heavy        -> 'data.text.sources.0.weight' must be a number, got 'heavy'
data.text.sources=[{weight: 2}]         -> missing required config key 'data.text.sources.0.path'
stage=2; train.resolution_switch={at_step: 3} -> missing required config key 'train.resolution_switch.image_size'
data.text.batch_size=null               -> 'data.text.batch_size' must be an integer, got None
data.text.sources.3.path=x              -> cannot set 'data.text.sources.3.path': 'data.text.sources' has 1 item
"""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([item.strip() for item in line.split(" -> ")[0].split(";")], line.split(" -> ")[1].strip())
        for line in SCHEMA_ERRORS.strip().splitlines()
    ],
)
def test_schema_errors_name_the_dotted_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(TINY, overrides)
    assert message in str(caught.value)


def test_missing_required_values_in_a_file(tmp_path):
    path = tmp_path / "stage.yaml"
    path.write_text("stage: 1\noutput_dir: out\nmodel: {init_from: x}\ntrain: {steps: 3}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="missing required config key 'data'"):
        load_config(path)
    path.write_text(TINY.read_text(encoding="utf-8").replace("  steps: 150\n", ""), encoding="utf-8")
    with pytest.raises(ConfigError, match="missing required config key 'train.steps'"):
        load_config(path)
    path.write_text("stage: 1\nstage: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'stage'"):
        load_config(path)


# --------------------------------------------------------------------------------------------------
# Ranges (issue 13): every error names the key and the bad value
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("optim.text_lr=-1e-3", "optim.text_lr", "-0.001"),
        ("optim.text_lr=0", "optim.text_lr", "0.0"),
        ("optim.vision_lr=.nan", "optim.vision_lr", "nan"),
        ("optim.vision_lr=.inf", "optim.vision_lr", "inf"),
        ("optim.temperature_lr=-1", "optim.temperature_lr", "-1.0"),
        ("optim.eps=0", "optim.eps", "0.0"),
        ("optim.weight_decay=-0.02", "optim.weight_decay", "-0.02"),
        ("optim.max_grad_norm=-1", "optim.max_grad_norm", "-1.0"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm", "0.0"),
        ("optim.betas=[0.9, 1.0]", "optim.betas", "[0.9, 1.0]"),
        ("optim.betas=[-0.1, 0.98]", "optim.betas", "[-0.1, 0.98]"),
        ("optim.betas=[0.9]", "optim.betas", "[0.9]"),
        ("optim.text_layer_decay=0", "optim.text_layer_decay", "0.0"),
        ("optim.vision_layer_decay=1.5", "optim.vision_layer_decay", "1.5"),
        ("optim.min_lr_ratio=2", "optim.min_lr_ratio", "2.0"),
        ("optim.warmup_steps=-1", "optim.warmup_steps", "-1"),
        ("optim.warmup_steps=151", "optim.warmup_steps", "151"),
        ("data.text.max_length=0", "data.text.max_length", "0"),
        ("data.image_text.batch_size=0", "data.image_text.batch_size", "0"),
        ("data.text.num_negatives=0", "data.text.num_negatives", "0"),
        ("data.text.shuffle_buffer=-5", "data.text.shuffle_buffer", "-5"),
        ("data.text.sources.0.weight=-1", "data.text.sources.0.weight", "-1.0"),
        ("train.steps=0", "train.steps", "0"),
        ("train.log_every=0", "train.log_every", "0"),
        ("train.checkpoint_every=0", "train.checkpoint_every", "0"),
        ("train.keep_last=0", "train.keep_last", "0"),
        ("train.mixed_precision=fp8", "train.mixed_precision", "'fp8'"),
        ("train.peak_tflops=-1", "train.peak_tflops", "-1.0"),
        ("train.grad_cache.text_chunk_size=0", "train.grad_cache.text_chunk_size", "0"),
        ("train.resolution_switch={at_step: -1, image_size: 70}", "train.resolution_switch.at_step", "-1"),
        ("train.resolution_switch={at_step: 151, image_size: 70}", "train.resolution_switch.at_step", "151"),
        ("train.resolution_switch={at_step: 3, image_size: 0}", "train.resolution_switch.image_size", "0"),
        ("loss.text_temperature_init=0", "loss.text_temperature_init", "0.0"),
        ("loss.image_text_temperature_init=-0.07", "loss.image_text_temperature_init", "-0.07"),
        ("loss.image_text_temperature_init=0.001", "loss.image_text_temperature_init", "0.001"),  # < 1/100
        ("loss.max_logit_scale=0", "loss.max_logit_scale", "0.0"),
        ("loss.matryoshka_dims=[16, 0]", "loss.matryoshka_dims", "[16, 0]"),
        ("loss.ssl_crop_scale=[0.5, 0.25]", "loss.ssl_crop_scale", "[0.5, 0.25]"),
        ("model.image_size=0", "model.image_size", "0"),
        ("peft={r: 0}", "peft.r", "0"),
        ("peft.dropout=1.0", "peft.dropout", "1.0"),
        ("peft.tower=audio", "peft.tower", "'audio'"),
        ("stage=4", "stage", "4"),
    ],
)
def test_values_out_of_range_are_rejected(override, key, value):
    with pytest.raises(ConfigError) as caught:
        load_config(TINY, [override])
    text = str(caught.value)
    assert f"'{key}'" in text and value in text, text


def test_in_range_values_are_accepted():
    cfg = load_config(TINY, ["optim.weight_decay=0", "optim.max_grad_norm=null", "optim.betas=[0.0, 0.999]",
                             "optim.warmup_steps=150", "optim.min_lr_ratio=1", "train.resolution_switch.at_step=0"])
    assert cfg.optim.max_grad_norm is None and cfg.optim.weight_decay == 0.0
    assert cfg.optim.betas == [0.0, 0.999] and cfg.train.resolution_switch.at_step == 0


# --------------------------------------------------------------------------------------------------
# One reader: the same YAML gives the same values everywhere
# --------------------------------------------------------------------------------------------------


def test_yaml_reader_scalars():
    """YAML 1.2 booleans (`no` is text), exponent floats without a dot, no timestamps."""
    assert parse_yaml_value("[no, yes, on, off, true, False, 1e-4, 2.0e-3, 10, null, 2024-01-02, .nan]")[:-1] == [
        "no", "yes", "on", "off", True, False, 1e-4, 2e-3, 10, None, "2024-01-02"
    ]
    assert math.isnan(parse_yaml_value(".nan"))


def test_same_yaml_same_values_in_training_evaluation_and_benchmarks(tmp_path):
    """One stage file read by training and by the benchmark, one suite file read by evaluation: `no` is the
    string "no" in a text field and False in a boolean field, in every reader; `1e-4` is the number 0.0001."""
    folder = tmp_path / "configs"
    folder.mkdir()
    text = TINY.read_text(encoding="utf-8")
    text = text.replace("description: tiny CPU run", "description: no  # tiny CPU run")
    text = text.replace("mixed_precision: bf16", "mixed_precision: no")
    text = text.replace("deterministic: true", "deterministic: no")
    text = text.replace("text_lr: 2.0e-3", "text_lr: 1e-4")
    (folder / "stage1.yaml").write_text(text, encoding="utf-8")

    training = load_config(folder / "stage1.yaml")
    assert (training.description, training.train.mixed_precision, training.train.deterministic) == ("no", "no", False)
    assert training.optim.text_lr == 1e-4 and isinstance(training.optim.text_lr, float)

    benchmark, _ = bench.stage_config(1, folder)
    assert benchmark == training  # the benchmark reads the stage through training's loader
    settings = bench.stage_settings(1, folder)
    assert (settings["seq_len"], settings["text_batch"], settings["image_text_batch"], settings["negatives"]) == (
        training.data.text.max_length, training.data.text.batch_size, training.data.image_text.batch_size, 0
    )

    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "tasks:\n  - {kind: crossmodal, name: Mine, dataset: /d, language: no, multilingual: no, revision: 1e-4}\n",
        encoding="utf-8",
    )
    (task,) = suites.get_suite(str(suite))
    assert (task.language, task.multilingual) == ("no", False)
    assert task.revision == "0.0001"  # a number in YAML, converted to the text field's string (quote to keep "1e-4")
    # Overrides on the command line: a text field takes the scalar as written, in both readers.
    (task,) = suites.apply_overrides([task], ["Mine.revision=1e-4", "Mine.multilingual=no"])
    assert (task.revision, task.multilingual) == ("1e-4", False)
    assert load_config(TINY, ["description=1e-4", "train.deterministic=no"]).description == "1e-4"


def test_suite_file_and_task_errors_name_the_key(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("bse: quick\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key 'bse'"):
        suites.get_suite(str(suite))
    with pytest.raises(ConfigError, match="'ks' must be a list"):
        task_from_dict({"kind": "crossmodal", "name": "x", "dataset": "y", "ks": "five"})
    with pytest.raises(ConfigError, match="missing required config key 'dataset'"):
        task_from_dict({"kind": "crossmodal", "name": "x"})
    with pytest.raises(ConfigError, match="'ks' must be a list"):
        suites.apply_overrides(suites.get_suite("quick"), ["Flickr30K.ks=five"])


# --------------------------------------------------------------------------------------------------
# Round trip and paths
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_written_config_reads_back_to_the_same_values(tmp_path, stage):
    cfg = load_config(TINY, [f"stage={stage}", "description=no", "peft={tower: both, r: 4}"])
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def test_paths_resolve_in_the_package_and_the_assets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no training/ here: the shipped configs resolve from the package
    assert resolve_path("training/configs/tiny.yaml") == TINY.resolve()
    assert load_config("training/configs/stage2.yaml").stage == 2
    monkeypatch.setenv("JINA_CLIP_ASSETS", str(tmp_path / "assets"))
    assert resolve_path("assets://xlm-roberta-tokenizer") == tmp_path / "assets" / "xlm-roberta-tokenizer"
    assert load_config("training/configs/tiny.yaml").model.processor_from == "assets://xlm-roberta-tokenizer"
    assert Path("relative/thing") == resolve_path("relative/thing")
