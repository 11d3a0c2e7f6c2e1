"""Hydra's and OmegaConf's complaints about an override, as the one line fvexp prints for bad input.

The Python API (`fvexp.run`) and the tools that take overrides (`fvexp-layers`) compose the
command line's config themselves. Hydra answers a misspelt key with advice to append it
(`+objective.chanel=3`), which would only add a setting nothing reads; here it becomes "unknown key
'objective.chanel'; closest valid: objective.channel", and an unknown option of a group lists the
group's options.
"""

from __future__ import annotations

from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from fvexp.errors import FvexpError, closest, unknown

HIDDEN = ("hydra", "_target_")  # keys of the composed config that are not settings a user sets


def composition_error(error: Exception) -> FvexpError:
    """The one-line error for an override Hydra could not apply: a missing key, an unknown option, or Hydra's words."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return unknown(f"{group} option" if group else "config", option, error.options,
                       hint=options_listed(group, option, error.options))
    cause = error.__cause__
    if (isinstance(error, ConfigCompositionException) and isinstance(cause, ConfigAttributeError | ConfigKeyError)
            and cause.parent_node is not None and cause.full_key):
        prefix = cause.full_key.rpartition(".")[0]
        names = [str(key) for key in cause.parent_node if key not in HIDDEN]
        near = closest(str(cause.key), names)  # matched on the last part: the prefix is the same for all
        listed = ", ".join(f"{prefix}.{name}" if prefix else name for name in near or names)
        return FvexpError(f"unknown key {cause.full_key!r}; {'closest valid' if near else 'valid'}: {listed}")
    return FvexpError(hydra_words(error))


def options_listed(group: str, option: str, options: list[str]) -> str:
    """The group's options in full, beside the closest ones (`unknown` lists them itself when none is close)."""
    return f"{group or 'config'} options: {', '.join(sorted(options))}" if closest(option, options) else ""


def hydra_words(error: Exception) -> str:
    """Hydra's or OmegaConf's message and its cause's as one line, without the config search path and detail lines."""
    lines = [line.strip() for part in (error, error.__cause__) if part is not None for line in str(part).splitlines()]
    kept: list[str] = []
    for line in lines:
        if line.startswith(("Config search path", "Set the environment variable HYDRA_FULL_ERROR")):
            break
        if line and not line.startswith(("full_key:", "object_type=", "reference_type=")):
            kept.append(line if line.endswith((".", ":")) else line + ".")
    return " ".join(kept).rstrip(".") or type(error).__name__
