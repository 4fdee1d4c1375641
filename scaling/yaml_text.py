"""YAML as configs and sweep specs are read: PyYAML's safe loader, except that a repeated key is an error and
colons make no base-60 numbers.

PyYAML keeps the last of two equal keys in a mapping and drops the first without a word. In a sweep spec
that silently removes a budget or a list of sizes (two `1e11:` lines under `isoflop.params`), so every
config and spec is read with `load_yaml` instead.

YAML 1.1 reads `1:00:00` as the base-60 integer 3600, so `time_min: 1:00:00` meant 60 hours. Here such a
value stays text, which the key's own check then rejects with its unit.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, with mappings built by `_mapping_without_repeats`."""


def _mapping_without_repeats(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Only the mapping's own keys are compared: one that overrides a key merged in from an anchor (<<: *base)
    # is written that way on purpose.
    own_keys = [key_node for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge"]
    first_seen: dict[Any, yaml.Mark] = {}
    for key_node in own_keys:
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping below raises PyYAML's own error for it
            continue
        if seen is not None:
            raise ConstructorError(
                "while reading a mapping", node.start_mark,
                f"the key {key!r} appears again (first on line {seen.line + 1}); YAML would keep only the last "
                "one, so merge the two entries", key_node.start_mark,
            )
        first_seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)

# PyYAML's int and float patterns without their base-60 forms (digits:digits).
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(_INT, re.compile(r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.X), list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse `text` like `yaml.safe_load`; raise yaml.YAMLError (with the line) when a mapping repeats a key."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a subclass of SafeLoader)
