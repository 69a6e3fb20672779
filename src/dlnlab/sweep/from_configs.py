"""A sweep from a list of experiment configs: the configs a study runs one by one, as one sweep.

:func:`sweep_from_configs` finds the config fields in which the configs differ and makes them one
``[[zip]]`` group (a ``point`` dimension whose ``i``-th point is the ``i``-th config), on the
first config as base; runs in the sweep engine's two tiers (docs/sweeps.md): a learning-rate
list shares one compiled program, a batch-size list makes one group per size.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..experiments.config import ExperimentConfig
from .config import SweepConfig, sweep_from_dict

#: Fields whose differences do not make an axis: the run name (each config's own label).
IGNORED_FIELDS = ("name",)


def _leaves(data: dict, prefix: str = "") -> dict:
    """Dotted leaf fields of a config dump (a list, or a ``None`` section, is one leaf)."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


def _without_none(data: dict) -> dict:
    """The dump without ``None`` fields (their default: TOML has no null)."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items()
            if v is not None}


def sweep_from_configs(configs: Sequence[ExperimentConfig], name: str, *,
                       chunk_runs: int | None = None) -> SweepConfig:
    """The sweep whose points are ``configs``, in order.

    Base: ``configs[0]`` named ``name``; one ``[[zip]]`` group over every dotted field
    (``training.learning_rate``, ``training.batch_size``, ...) whose value differs between the
    configs, so point ``i`` of the sweep's ``point`` dimension has the fields of ``configs[i]``
    (its ``name`` aside). With one config, no axis: a sweep of one point, no dimension.
    ``chunk_runs``: as :class:`SweepConfig`. A point's runs use keys derived from its config
    (docs/sweeps.md, "Keys"), not from ``seed`` as ``dlnlab run`` does: the same laws, other
    draws.

    Raises ``ValueError`` (one line): no configs, a config that is not an
    :class:`ExperimentConfig`, configs with different ``runs`` (a sweep has one number of runs
    per point), two configs that differ only in ``name`` (the same point twice), or anything
    :class:`SweepConfig` refuses.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs=[]: a sweep needs at least one config")
    for i, config in enumerate(configs):
        if not isinstance(config, ExperimentConfig):
            raise ValueError(f"configs[{i}]={type(config).__name__}: must be an ExperimentConfig")
    runs = {c.runs for c in configs}
    if len(runs) > 1:
        raise ValueError(f"runs={sorted(runs)}: the configs of one sweep must have the same "
                         "number of runs")
    dumps = [c.model_dump(mode="json") for c in configs]
    leaves = [_leaves(d) for d in dumps]
    axes = [field for field in leaves[0] if field not in IGNORED_FIELDS
            and any(other[field] != leaves[0][field] for other in leaves[1:])]
    if len(configs) > 1 and not axes:
        raise ValueError(f"configs={[c.name for c in configs]}: the configs differ only in name; "
                         "a sweep runs each point once")
    for field in axes:
        if any(leaf[field] is None for leaf in leaves):
            raise ValueError(f"{field}: unset (None) in some configs and set in others; a sweep "
                             "axis needs a value at every point")
    base = _without_none(dumps[0])
    base["name"] = name
    data: dict = {"name": name, "base": base, "runs": configs[0].runs}
    if axes:
        data["zip"] = [{field: [leaf[field] for leaf in leaves] for field in axes}]
    if chunk_runs is not None:
        data["chunk_runs"] = chunk_runs
    return sweep_from_dict(data)
