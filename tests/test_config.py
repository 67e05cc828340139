"""Config validation, overrides and recipes."""

import json

import pytest

from alr_fast.config import Config, MethodConfig, TrainConfig, apply_overrides, config_from_dict, config_to_dict
from alr_fast.loss.contract import ALRParamError, ALRParams
from alr_fast.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_valid_and_round_trips(name):
    cfg = get_recipe(name)
    assert cfg.recipe == name
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg


def test_documented_defaults():
    assert get_recipe("cifar10").method.alpha == 0.9
    assert get_recipe("clothing1m").method.alpha == 0.8
    assert get_recipe("webvision").method.bank_dtype == "bfloat16"


def test_overrides_are_typed():
    cfg = apply_overrides(get_recipe("demo"), [
        "method.alpha=0.8", "train.epochs=7", "data.augment=true", "optim.milestones=3,5", "data.data_root=/x",
    ])
    assert cfg.method.alpha == 0.8 and cfg.train.epochs == 7 and cfg.data.augment is True
    assert cfg.optim.milestones == (3, 5) and cfg.data.data_root == "/x"


@pytest.mark.parametrize(
    "override, match",
    [
        ("method.alpha=1.2", r"method.alpha: must be in \[0, 1\]"),
        ("method.alpha=nan", r"method.alpha: must be in \[0, 1\], got nan"),
        ("method.alpha=-0.1", r"method.alpha: must be in \[0, 1\], got -0.1"),
        ("method.lam=inf", r"method.lam: must be a finite number >= 0, got inf"),
        ("method.lam=nan", r"method.lam: must be a finite number >= 0, got nan"),
        ("method.lam=-1e-9", r"method.lam: must be a finite number >= 0"),
        ("method.name=mixup", "method.name: must be one of"),
        ("train.epochs=0", "train.epochs: must be >= 1"),
        ("train.epochs=ten", "train.epochs='ten'"),
        ("data.augment=maybe", "expected true/false"),
        ("data.noise_kind=uniform", "data.noise_kind: must be one of"),
        ("method.warmup_epochs=40", "leaves no refinement epoch"),
        ("optim.milestones=5,3", "must be sorted"),
        ("nosuch.x=1", "unknown section"),
        ("method.beta=1", "unknown field 'beta'"),
        ("method.alpha", "expected section.field=value"),
    ],
)
def test_bad_overrides_name_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(get_recipe("demo"), [override])


def test_method_semantics():
    assert MethodConfig(name="selc", lam=0.7).effective_lam == 0.0
    assert MethodConfig(name="ce", lam=0.7).effective_lam == 0.0
    assert MethodConfig(name="alr", lam=0.7).effective_lam == 0.7
    # The loss parameters the schedule starts from are the contract's type, built from the validated fields.
    assert MethodConfig(name="alr", alpha=0.8, lam=0.7).loss_params == ALRParams(0.8, 0.7)
    assert MethodConfig(name="selc", alpha=0.8, lam=0.7).loss_params == ALRParams(0.8, 0.0)


def test_alpha_and_lam_are_checked_by_the_loss_contract_when_the_config_is_built():
    """One validator: the config refuses exactly what ALRParams refuses (values at and just past the bounds),
    naming the config field, before any model or engine exists."""
    for alpha in (0.0, 1.0, 0.5):
        assert MethodConfig(alpha=alpha).alpha == alpha
    for alpha in (-1e-12, 1.0 + 1e-12, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^config method\.alpha: must be in \[0, 1\]"):
            MethodConfig(alpha=alpha)
        with pytest.raises(ALRParamError):
            ALRParams(alpha, 0.0)
    for lam in (-1e-12, float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=r"^config method\.lam: must be a finite number >= 0"):
            MethodConfig(lam=lam)
        with pytest.raises(ALRParamError):
            ALRParams(0.5, lam)
    # CE and SELC ignore lam, but a bad value is still a bad config.
    with pytest.raises(ValueError, match=r"method\.lam"):
        MethodConfig(name="selc", lam=float("inf"))


def test_cli_refuses_a_bad_lam_at_once(tmp_path):
    """`python -m alr_fast config --set method.lam=inf` stops with exit 2 naming the field (no model built)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "alr_fast", "config", "--set", "method.lam=inf"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "method.lam" in r.stderr and "finite" in r.stderr


def test_ce_may_have_any_warmup():
    Config(method=MethodConfig(name="ce", warmup_epochs=100), train=TrainConfig(epochs=2))


def test_unknown_field_in_dict():
    d = config_to_dict(get_recipe("demo"))
    d["train"]["epoch"] = 3
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['train.epoch'\].*did you mean train.epochs"):
        config_from_dict(d)


def test_demo_defaults_to_auto_warmup_and_an_explicit_length_means_fixed():
    demo = get_recipe("demo")
    assert (demo.method.warmup, demo.method.ramp_epochs) == ("auto", 5.0)
    fixed = apply_overrides(demo, ["method.warmup_epochs=2"])
    assert (fixed.method.warmup, fixed.method.warmup_epochs) == ("fixed", 2)
    kept = apply_overrides(demo, ["method.warmup=auto", "method.warmup_epochs=2"])
    assert kept.method.warmup == "auto"
    assert apply_overrides(demo, ["method.lam=0.5"]).method.warmup == "auto"
