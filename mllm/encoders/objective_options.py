"""Every pretraining objective in one place: importing this registers `ov2`, `ov1` and `cappa`, and
`ModelOptions` is the one configuration section that holds the options of all of them.

A run names its objective separately (`objective: ov1`); `objective_config` then builds that objective's own
config from the section and refuses options that belong only to another objective, so a setting can never
be silently ignored.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from mllm.encoders.cappa import CapPaConfig
from mllm.encoders.objectives import OBJECTIVES, ObjectiveConfig, OpenVision2Config
from mllm.encoders.openvision1 import OpenVision1Config


# Bases in reverse order so that the fields read: shared, ov2, ov1, cappa.
@dataclass
class ModelOptions(CapPaConfig, OpenVision1Config, OpenVision2Config):
    """Model options of every objective (ov2: keep_ratio, mask, text_positions; ov1: text, text_len,
    embed_dim, contrastive_loss_weight, init_temperature, max_logit_scale; cappa: parallel_fraction); the
    shared ones come first. Options of objectives other than the chosen one must keep their defaults."""

    def __post_init__(self) -> None:
        for part in (OpenVision2Config, OpenVision1Config, CapPaConfig):
            part.__post_init__(self)


def objective_config(objective: str, options: ObjectiveConfig) -> ObjectiveConfig:
    """The config of `objective` built from `options` (a `ModelOptions` or any objective's config).

    Raises ValueError naming every option that `objective` does not have but that was changed from its
    default, and KeyError for an unknown objective.
    """
    target = OBJECTIVES.get(objective).config_class
    if type(options) is target:
        return options
    own = {f.name for f in fields(target)}
    foreign = [
        f.name for f in fields(options)
        if f.name not in own and f.default is not MISSING and getattr(options, f.name) != f.default
    ]
    if foreign:
        raise ValueError(
            f"objective {objective!r} has no option {', '.join(foreign)}; these belong to another objective "
            f"(options of {objective!r}: {', '.join(sorted(own))})"
        )
    return target(**{name: getattr(options, name) for name in own})
