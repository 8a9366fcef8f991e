"""Checks of command-line config overrides before absl parses them.

ml_collections reports an unknown override key as a bare AttributeError; this
names the bad key and lists the valid keys at that level instead.
"""
import difflib
import importlib.util
import os

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.exists(path):
        raise SystemExit(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_genjax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def check_override_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ValueError if `dotted` (e.g. 'optim.learning_rate') is not a key."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in keys:
            where = ".".join(walked) or "the top level"
            hint = difflib.get_close_matches(part, keys, n=1)
            hint = f" Did you mean {'.'.join(walked + hint)!r}?" if hint else ""
            groups = sorted(k for k in keys if isinstance(node[k], ml_collections.ConfigDict))
            if walked == ["optim"] and groups:
                hint += f" The parameter groups of this config's family are {groups}."
            raise ValueError(
                f"unknown config key {dotted!r}: {part!r} is not in {where}; "
                f"valid keys there: {sorted(keys)}.{hint}")
        node = node[part]
        walked.append(part)


def check_argv(argv, flag: str = "config") -> None:
    """Validates every --config.a.b=v override in argv against the config file."""
    path = None
    for arg in argv:
        if arg.startswith(f"--{flag}="):
            path = arg.split("=", 1)[1]
    if path is None:
        return
    config = load_config_file(path.split(":", 1)[0])
    for arg in argv:
        if arg.startswith(f"--{flag}."):
            key = arg[len(flag) + 3:].split("=", 1)[0]
            check_override_key(config, key)
