"""The Golden-Path config: one initialisation, the arms, the metrics' constants, the decision rules.

A TOML file like ``dlnlab run``'s (``examples/golden_path_*.toml``), validated by strict, closed
pydantic models that reuse the experiment sections (:class:`~dlnlab.experiments.config.TaskConfig`,
:class:`~dlnlab.experiments.config.InitConfig`, :class:`~dlnlab.experiments.config.TrainingConfig`)
and their one-line errors (:func:`~dlnlab.experiments.config.format_error`). Precedence: model
defaults < file < ``--set key=value``. Every arm is an ordinary
:class:`~dlnlab.experiments.config.ExperimentConfig` built by :func:`arm_configs`: the same seed
(so the same teacher, data set and initial weights, ``init.shared = true``), differing only in the
method and its sampling randomness. Source: experiment notes §1
(``shared/seeds/notes-golden-path-and-saddle-sampling.txt``); docs/golden-path.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...config import (
    ExperimentConfig,
    FieldError,
    InitConfig,
    TaskConfig,
    TrainingConfig,
    apply_override,
    check_folder_name,
    format_error,
    read_toml,
    validate_config,
)

#: Built-in arms: name -> (method, data set, sampling with replacement, batch-size switch).
BUILTIN_ARMS: dict[str, str] = {
    "sgd": "online SGD (fresh samples every step)",
    "offline_sgd": "SGD on the fixed data set, minibatches drawn with replacement",
    "offline_sgd_epochs": "SGD on the fixed data set, epochs of shuffled minibatches (no replacement)",
    "sde": "the anisotropic SDE (SGD's exact modewise noise law)",
    "batch_switch": "online SGD at the small batch, then the large batch from switch_time on",
}
#: Arms on the fixed data set: compared with GD on the same data set (``offline_gd``).
OFFLINE_ARMS = ("offline_sgd", "offline_sgd_epochs")
#: Observables every arm records (``parameters`` = the flattened weights, for every metric that
#: needs the weights; the other four are cheap inside the compiled loop).
RECORDED = ["loss", "amplitude", "diffusion", "cross_amplitude", "balance_residual", "parameters"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class RecordTimes(_Model):
    """When the arms record (the same times in every arm)."""

    points: int = Field(200, ge=8, le=20_000, description="record times, t = 0 and the horizon "
                                                        "included; every metric on the time axis "
                                                        "is computed at each")
    spacing: Literal["adaptive", "linear", "log"] = Field(
        "adaptive", description="as record.spacing of `dlnlab run` (adaptive: refined around the "
                                "predicted learning transitions)")


class EscapeRule(_Model):
    """The escape rule (:func:`dlnlab.analysis.golden_path.escape_events`, docs/golden-path.md):
    a ladder of rungs ``tolerance`` apart; a rung is a plateau when it lasted ``contrast`` times
    as long as the fastest rung of the drop below it; the escape is the first time the loss is
    ``drop`` below the plateau's level. Runs' escapes are paired with GD's by plateau level
    (:func:`~dlnlab.analysis.golden_path.match_escapes`, within ``max_log_ratio``)."""

    drop: float = Field(0.2, gt=0.0, lt=1.0, description="relative drop below the plateau's level "
                                                         "that marks the escape (> tolerance)")
    tolerance: float = Field(0.05, gt=0.0, lt=1.0, description="relative spacing of the ladder's "
                                                               "rungs")
    contrast: float = Field(3.0, ge=0.0, description="a plateau rung lasts this many times as long "
                                                     "as the fastest rung of its drop")
    resolution: float = Field(1e-10, gt=0.0, lt=1.0, description="the ladder stops at this "
                                                                 "fraction of the initial loss")
    max_log_ratio: float = Field(0.25, gt=0.0, description="a run's escape is paired with GD's "
                                                           "when |log P - log P_GD| <= this")
    max_escapes: int = Field(4, ge=1, le=64, description="escapes kept per run (the first ones)")
    window: float = Field(2.0, gt=0.0, description="half width Delta of the escape-centred window "
                                                   "(t = step x learning rate)")
    window_points: int = Field(11, ge=3, le=201, description="checkpoints across the window, odd "
                                                             "(the escape at the centre)")

    @field_validator("window_points")
    @classmethod
    def _odd(cls, value):
        if value % 2 == 0:
            raise ValueError("must be odd (the escape time is the centre checkpoint)")
        return value

    @model_validator(mode="after")
    def _drop(self):
        if self.drop <= self.tolerance:
            raise FieldError("drop", self.drop, f"must exceed tolerance={self.tolerance:g}")
        return self


class Metrics(_Model):
    """Constants of the metrics (experiment notes §1.1-§1.2)."""

    rank_threshold: float = Field(1e-5, gt=0.0, lt=1.0, description="relative threshold eps: "
                                                                   "r_ij = #{sigma_m > eps sigma_1}")
    top_k: int = Field(5, ge=1, le=1000, description="top-K singular values of every partial "
                                                     "product (log pattern s_ij,k)")
    floor: float = Field(1e-30, gt=0.0, lt=1.0, description="delta in s = log(max(sigma, delta))")
    loss_levels: int = Field(24, ge=20, le=1000, description="loss levels for loss-aligned "
                                                             "checkpoints (geometric between GD's "
                                                             "initial and final loss)")
    bootstrap_resamples: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples "
                                                                          "of the runs (B)")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of the "
                                                                "percentile bootstrap intervals")
    heatmap_times: list[float] = Field(default_factory=list,
                                       description="times of the r_ij heatmaps (empty: GD's "
                                                   "escapes and the horizon, at most 4)")
    cross_threshold: float = Field(0.05, gt=0.0, description="t_cross(a): first time "
                                                             "max_b!=a |w_ab| <= this x s_1")
    cross_from_peak: bool = Field(True, description="t_cross counted from the peak of max_b!=a "
                                                    "|w_ab| on (false: from t = 0, the notes' "
                                                    "literal rule, which gives t_cross = 0 when "
                                                    "the cross modes start below the threshold)")
    diagonal_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="t_diag(a): first time "
                                                                      "|w_aa| >= this x s_a")
    escape: EscapeRule = Field(default_factory=EscapeRule, description="the escape rule")

    @field_validator("heatmap_times")
    @classmethod
    def _times(cls, value):
        if any(t < 0 for t in value) or len(value) > 8:
            raise ValueError("at most 8 times, each >= 0")
        return value


class DecisionRules(_Model):
    """The claims' decision rules, fixed before the results (docs/golden-path.md)."""

    parameter_distance_large: float = Field(
        0.1, gt=0.0, description="prediction 1 supported when the interval's lower end of the "
                                 "final relative parameter distance exceeds this")
    function_distance_small: float = Field(
        0.05, gt=0.0, description="prediction 2 supported when the interval's upper end of the "
                                  "final relative function distance is below this")
    rank_distance_small: float = Field(
        0.5, ge=0.0, description="prediction 3 (ranks) supported when the interval's upper end "
                                 "of d_r at the end and at every escape-centre is below this "
                                 "(less than half a rank summed over the partial products)")
    shape_distance_small: float = Field(
        0.1, gt=0.0, description="prediction 3 (spectra) supported when the interval's upper "
                                 "end of the final d_shape per entry (sum over i<=j, k divided "
                                 "by their count) is below this")
    cross_before_diagonal: float = Field(
        0.5, gt=0.0, lt=1.0, description="t_cross < t_diag supported when the interval's lower "
                                         "end of the fraction of (mode, run) pairs exceeds this")


class GoldenPathConfig(_Model):
    """The Golden-Path protocol: GD once, S seeds of every stochastic arm, from one initialisation."""

    name: str = Field("default", description="names the output folder golden-path/<name> and the "
                                             "cached arms")
    seed: int = Field(0, ge=0, lt=2 ** 63, description="root seed: teacher, data set, initial "
                                                       "weights (shared by every arm), noise")
    seeds: int = Field(16, ge=2, le=100_000, description="runs S of every stochastic arm (GD runs "
                                                         "once)")
    dtype: Literal["float32", "float64"] = Field("float64", description="simulation precision")
    arms: list[str] = Field(default_factory=lambda: list(BUILTIN_ARMS),
                            description="arms beside GD: " + ", ".join(BUILTIN_ARMS)
                                        + ", or any registered method acting on the weights "
                                          "(online)")
    offline_samples: int = Field(256, ge=1, description="data set size n of the offline arms "
                                                        "(the same data set in each)")
    switch_time: float | None = Field(None, gt=0.0, description="batch_switch: time of the "
                                                                "switch (default: half the "
                                                                "horizon)")
    switch_batch_size: int = Field(32, ge=1, description="batch_switch: the large batch size")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the teacher (online; the "
                                                                     "offline arms draw "
                                                                     "offline_samples from it)")
    init: InitConfig = Field(default_factory=lambda: InitConfig(shared=True),
                             description="the one initialisation (init.shared is always on)")
    training: TrainingConfig = Field(default_factory=TrainingConfig,
                                     description="learning rate, the small batch size, horizon")
    record: RecordTimes = Field(default_factory=RecordTimes, description="record times")
    product: Literal["auto", "broadcast", "batched"] = Field(
        "auto", description="every arm's engine product (the experiment config's product: "
                            "docs/config.md)")
    kernel: bool = Field(True, description="every arm's compiled-kernel switch (the experiment "
                                           "config's kernel: docs/config.md)")
    metrics: Metrics = Field(default_factory=Metrics, description="metric constants")
    claims: DecisionRules = Field(default_factory=DecisionRules, description="decision rules")

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        return check_folder_name(value)

    @field_validator("arms")
    @classmethod
    def _arms(cls, value):
        valid = arm_names()
        if not value:
            raise ValueError("needs at least one arm beside GD")
        if len(set(value)) != len(value):
            raise ValueError("arms must not repeat")
        for name in value:
            if name not in valid:
                raise FieldError("arms", name, f"unknown arm; one of {', '.join(valid)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _shared(cls, data):
        """``init.shared`` defaults to true here (the resolved config says so)."""
        if isinstance(data, dict) and isinstance(data.get("init", {}), dict):
            data = {**data, "init": {"shared": True, **data.get("init", {})}}
        return data

    @model_validator(mode="after")
    def _consistency(self):
        if not self.init.shared:
            raise FieldError("init.shared", False, "the Golden Path compares runs from one "
                                                   "initialisation; leave it out or set true")
        if self.task.num_samples:
            raise FieldError("task.num_samples", self.task.num_samples,
                             "the task is online; the offline arms' data set size is "
                             "offline_samples")
        if self.training.schedule:
            raise FieldError("training.schedule", [s.time for s in self.training.schedule],
                             "must be empty; the batch_switch arm switches at switch_time")
        if not self.training.replacement:
            raise FieldError("training.replacement", False,
                             "leave it out; the offline_sgd_epochs arm samples without replacement")
        horizon = self.training.horizon
        if self.switch_time is not None and self.switch_time >= horizon:
            raise FieldError("switch_time", self.switch_time, f"must lie before the horizon {horizon:g}")
        if "offline_sgd_epochs" in self.arms and self.training.batch_size > self.offline_samples:
            raise FieldError("training.batch_size", self.training.batch_size,
                             f"must be <= offline_samples = {self.offline_samples} without "
                             "replacement")
        if self.metrics.top_k > min(self.task.widths):
            raise FieldError("metrics.top_k", self.metrics.top_k,
                             f"must be <= the narrowest width {min(self.task.widths)} (the "
                             "smallest partial product's rank)")
        return self

    @property
    def depth(self) -> int:
        return self.task.depth


def arm_names() -> list[str]:
    """Valid arm names: the built-in arms, then every registered method that acts on the weights
    and models online training (besides ``gd``, the reference)."""
    from ....dynamics.registry import METHODS

    extra = [m.name for m in METHODS if m.state == "weights" and m.name not in ("gd", *BUILTIN_ARMS)]
    return [*BUILTIN_ARMS, *extra]


def reference_arm(arm: str) -> str:
    """The GD arm an arm is compared with: ``offline_gd`` for the offline arms, else ``gd``."""
    return "offline_gd" if arm in OFFLINE_ARMS else "gd"


def arm_configs(config: GoldenPathConfig) -> dict[str, ExperimentConfig]:
    """Every arm as an :class:`ExperimentConfig`: ``gd`` (one run, when an online arm is asked
    for), ``offline_gd`` (one run on the offline arms' data set, when an offline arm is asked
    for), then ``config.arms`` (S runs each). All share
    the seed (teacher, data set, the one initialisation) and the record times; a bad combination
    is one ``ValueError`` line naming the arm."""
    base = {"seed": config.seed, "dtype": config.dtype, "product": config.product,
            "kernel": config.kernel,
            "task": config.task.model_dump(),
            "init": config.init.model_dump(), "training": config.training.model_dump(),
            "record": {"points": config.record.points, "spacing": config.record.spacing,
                       "variables": RECORDED}}
    arms = (["gd"] if any(a not in OFFLINE_ARMS for a in config.arms) else []) \
        + (["offline_gd"] if any(a in OFFLINE_ARMS for a in config.arms) else []) + list(config.arms)
    out = {}
    for arm in arms:
        data = {**base, "name": f"{config.name}-{arm}", "task": dict(base["task"]),
                "training": dict(base["training"])}
        method, runs = arm, config.seeds
        if arm in ("gd", "offline_gd"):
            method, runs = "gd", 1
        elif arm in OFFLINE_ARMS:
            method = "sgd"
        elif arm == "batch_switch":
            method = "sgd"
            at = config.switch_time if config.switch_time is not None else \
                0.5 * config.training.horizon
            data["training"]["schedule"] = [{"time": at, "batch_size": config.switch_batch_size}]
        if arm in ("offline_gd", *OFFLINE_ARMS):
            data["task"]["num_samples"] = config.offline_samples
        if arm == "offline_sgd_epochs":
            data["training"]["replacement"] = False
        data.update(methods=[method], runs=runs)
        try:
            out[arm] = validate_config(data)
        except ValueError as error:
            raise ValueError(f"arms={arm!r}: as an experiment, {error}") from None
    return out


def validate_golden_path(data: dict) -> GoldenPathConfig:
    """A :class:`GoldenPathConfig` from a dict; a bad value raises ``ValueError`` (one line)."""
    try:
        config = GoldenPathConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise ValueError(format_error(error, root=GoldenPathConfig)) from None
    arm_configs(config)     # every arm must be a valid experiment (sizes, step counts)
    return config


def load_golden_path_config(path: str | Path | None = None,
                            overrides: list[str] | None = None) -> GoldenPathConfig:
    """Read a Golden-Path TOML config (``None``: the defaults) and apply ``key=value`` overrides
    (``seeds=32``, ``training.horizon=50``, ``arms=["sgd"]``); one ``ValueError`` line for any bad
    file, key or value, also for a wrong argument type (``path`` not a str/Path, ``overrides``
    not a list of strings)."""
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(f"config_path={path!r}: must be a path (str or pathlib.Path) or None")
    if overrides is not None and (isinstance(overrides, (str, bytes))
                                  or not isinstance(overrides, (list, tuple))
                                  or not all(isinstance(item, str) for item in overrides)):
        raise ValueError(f"overrides={overrides!r}: must be a list of key=value strings")
    data: dict = read_toml(path) if path is not None else {}
    for item in overrides or []:
        apply_override(data, item)
    return validate_golden_path(data)


def config_to_toml(config: GoldenPathConfig) -> str:
    """The resolved config as TOML (``OUT/config.toml``; reading it back gives the same config)."""
    import tomli_w

    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
