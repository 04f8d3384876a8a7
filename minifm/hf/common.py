"""Helpers shared by the converters: renaming state-dict keys and reading config fields."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from minifm.checkpoint import load_state_dict_strict

RenameRules = Sequence[tuple[str, str]]


def rename_keys(state_dict: Mapping[str, Tensor], rules: RenameRules) -> dict[str, Tensor]:
    """Rename each key with the first matching `(regex, replacement)` rule.

    Keys that match no rule keep their name, so the strict load reports them as unexpected.
    """
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in rules:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = tensor
    return renamed


def load_converted(
    module: nn.Module, state_dict: Mapping[str, Tensor], rules: RenameRules, source: str
) -> nn.Module:
    """Copy every tensor of `state_dict` into `module` after renaming; return it in eval mode."""
    load_state_dict_strict(module, rename_keys(state_dict, rules), source)
    return module.eval()


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` from the keys that start with it; other keys stay unchanged."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def reject_unsupported(config, field: str, supported: Sequence, model: str) -> None:
    """Raise ValueError when `config.field` holds a value the minifm model does not implement."""
    value = getattr(config, field, None)
    if value not in supported:
        raise ValueError(
            f"{model} with {field}={value!r} is not supported; expected one of {list(supported)}"
        )
