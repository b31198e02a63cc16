"""The plugin host: a plugin-manager factory and the registry of named backends.

Built-in plugins (``gate_plugins``) and third-party ones arrive the same way,
through the ``onnx_gate`` entry-point group. ``ONNX_GATE_PLUGINS`` adds plugin
modules by import name (handy while writing one); ``ONNX_GATE_DISABLE_PLUGINS``
blocks entry points by name, like pytest's ``-p no:NAME``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pluggy

from gate.errors import OptionError, PluginError, SkipCandidate, UnknownNameError, listed
from gate.host import hookspecs
from gate.identity import PROJECT_NAME
from gate.metrics import MEASURED_METRICS
from gate.records import (
    ExecutionProvider,
    Exporter,
    GraphOptimizer,
    Quantizer,
    Record,
    Reporter,
    VacuousData,
    Validator,
)

ENTRY_POINT_GROUP = PROJECT_NAME
EXTRA_PLUGINS_ENV = "ONNX_GATE_PLUGINS"
DISABLED_PLUGINS_ENV = "ONNX_GATE_DISABLE_PLUGINS"

# kind -> (hook name, record type); the order is the order of a run.
KINDS: dict[str, tuple[str, type]] = {
    "exporter": ("onnx_gate_exporters", Exporter),
    "execution_provider": ("onnx_gate_execution_providers", ExecutionProvider),
    "graph_optimizer": ("onnx_gate_graph_optimizers", GraphOptimizer),
    "quantizer": ("onnx_gate_quantizers", Quantizer),
    "validator": ("onnx_gate_validators", Validator),
    "reporter": ("onnx_gate_reporters", Reporter),
}

KIND_NAMES = {record_type: kind.replace("_", " ") for kind, (_, record_type) in KINDS.items()}

R = TypeVar("R")


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from, for ``onnx-gate plugins``."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    source: str


def _names_from_env(variable: str) -> list[str]:
    return [part.strip() for part in os.environ.get(variable, "").split(",") if part.strip()]


class Host:
    """A plugin manager plus the records its plugins registered."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
        self.pm = pm
        self.infos = infos

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object directly (tests, embedding applications)."""
        _register(self.pm, plugin, name)
        self.infos.append(
            PluginInfo(
                name, getattr(plugin, "__name__", type(plugin).__name__), None, None, "registered"
            )
        )
        self.__dict__.pop("records", None)

    @cached_property
    def records(self) -> dict[str, dict[str, Record]]:
        """kind -> name -> record, with each record's ``plugin`` filled in."""
        collected: dict[str, dict[str, Record]] = {kind: {} for kind in KINDS}
        for kind, (hook_name, record_type) in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                try:
                    produced = list(impl.function() or ())
                except Exception as exc:
                    raise PluginError(
                        f"plugin '{impl.plugin_name}' raised in {hook_name}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                for record in produced:
                    if not isinstance(record, record_type):
                        raise PluginError(
                            f"plugin '{impl.plugin_name}' returned {type(record).__name__} "
                            f"from {hook_name}; expected {record_type.__name__}"
                        )
                    record = dataclasses.replace(record, plugin=impl.plugin_name)
                    if isinstance(record, Validator):
                        clash = sorted(set(record.metrics) & set(MEASURED_METRICS))
                        if clash:
                            raise PluginError(
                                f"validator '{record.name}' (plugin '{record.plugin}') declares "
                                f"metric(s) the gate measures itself: {listed(clash)}"
                            )
                    existing = collected[kind].get(record.name)
                    if existing is not None:
                        raise PluginError(
                            f"{kind.replace('_', ' ')} name '{record.name}' is registered by both "
                            f"plugin '{existing.plugin}' and plugin '{record.plugin}'"
                        )
                    collected[kind][record.name] = record
        return collected

    def names(self, kind: str) -> list[str]:
        return sorted(self.records[kind])

    def get(self, kind: str, name: str, where: str = "") -> Any:
        """The record ``name`` of ``kind``; an unknown name lists the valid ones."""
        try:
            return self.records[kind][name]
        except KeyError:
            valid = listed(self.names(kind), "none registered", shown=30)
            prefix = f"{where}: " if where else ""
            raise UnknownNameError(
                f"{prefix}unknown {kind.replace('_', ' ')} '{name}' (valid: {valid})"
            ) from None

    def hooks_of(self, plugin_name: str) -> list[str]:
        plugin = self.pm.get_plugin(plugin_name)
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}' is invalid: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin '{name}' cannot be registered: {exc}") from exc


def get_host(*, load_entry_points: bool = True, plugins: Iterable[tuple[str, object]] = ()) -> Host:
    """Build a fresh host: hookspecs, then entry points, then extra plugins.

    Raises :class:`PluginError` naming the plugin when one fails to import,
    clashes with another, or implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    disabled = set(_names_from_env(DISABLED_PLUGINS_ENV))
    for name in disabled:
        pm.set_blocked(name)
    if load_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled:
                continue
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            if pm.has_plugin(ep.name):
                other = next((i for i in infos if i.name == ep.name), None)
                raise PluginError(
                    f"plugin name '{ep.name}' is declared by both "
                    f"'{other.distribution if other else '?'}' and '{dist_name}'"
                )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}, from {dist_name}) failed to import: "
                    f"{type(exc).__name__}: {exc} "
                    f"(disable it with {DISABLED_PLUGINS_ENV}={ep.name})"
                ) from exc
            _register(pm, plugin, ep.name)
            infos.append(
                PluginInfo(
                    ep.name, ep.value, dist_name, dist.version if dist else None, "entry point"
                )
            )
    for module_name in _names_from_env(EXTRA_PLUGINS_ENV):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"plugin module '{module_name}' from {EXTRA_PLUGINS_ENV} failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, module, module_name)
        infos.append(PluginInfo(module_name, module_name, None, None, EXTRA_PLUGINS_ENV))
    host = Host(pm, infos)
    for name, plugin in plugins:
        host.register(plugin, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin '{name}' implements an unknown hook: {exc}") from exc
    return host


def call_plugin(
    record: Record, action: str, function: Callable[..., R], *args: Any, may_skip: bool = False
) -> R:
    """Call a plugin's function; an exception is re-raised naming the plugin.

    ``may_skip``: let :class:`SkipCandidate` through (candidate builders only).
    """
    try:
        return function(*args)
    except SkipCandidate:
        if may_skip:
            raise
        raise PluginError(
            f"{KIND_NAMES[type(record)]} '{record.name}' (plugin '{record.plugin}') raised "
            f"SkipCandidate while trying to {action}; only quantisers and graph optimisers may"
        ) from None
    except OptionError as exc:
        raise OptionError(
            f"{KIND_NAMES[type(record)]} '{record.name}' options: {exc.message}"
        ) from None
    except VacuousData:
        raise  # a verdict on the data, not a plugin failure
    except Exception as exc:
        kind = KIND_NAMES[type(record)]
        raise PluginError(
            f"{kind} '{record.name}' (plugin '{record.plugin}') failed to {action}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
