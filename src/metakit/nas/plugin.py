"""The nas plugin: the ``supernet`` and ``nas`` backbones, ``metakit nas search|evaluate``, the ``nas:`` section.

The core builds these backbones by name only (:data:`metakit.backbones.BACKBONES` finds them
here), so it never imports :mod:`metakit.nas`. Loading this plugin imports nothing.
"""

from __future__ import annotations

from metakit.registry import Plugin

plugin = Plugin(
    name="nas",
    summary="architecture search across tasks (MetaNAS): search a cell, then compare it from scratch",
    commands={"nas": "metakit.nas.cli:add_nas_parser"},
    backbones={"supernet": "metakit.nas.network:supernet", "nas": "metakit.nas.network:nas"},
    config_section="nas",
)
