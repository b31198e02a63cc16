"""Step 1a: the target - the execution provider, its options and the threads every
session of the run uses, and what the report says about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gate.errors import GateError
from gate.host.manager import Host, call_plugin
from gate.policy.loading import Policy
from gate.run.runtime import Target
from gate.run.testbed import physical_cores


@dataclass(frozen=True)
class ChosenTarget:
    target: Target
    described: dict[str, Any]
    """report.json's ``target``."""
    warnings: list[str] = field(default_factory=list)


def choose_target(policy: Policy, host: Host) -> ChosenTarget:
    """target.provider when it is available here; the CPU when it is not and target.fallback
    allows it (with a warning that the timings say nothing about the target); else an error."""
    provider = host.get("execution_provider", policy.provider, "target.provider")
    requested, fell_back, warnings = provider, None, []
    if not call_plugin(provider, "check availability", provider.is_available):
        missing = (
            f"execution provider '{provider.name}' ({provider.ort_name}) is not available "
            f"here: it needs the package {provider.package}"
            + (f" ({provider.install})" if provider.install else "")
        )
        if not policy.fallback:
            raise GateError(f"{missing}; or set target.fallback: true to time on the CPU")
        provider = host.get("execution_provider", "cpu", "target.fallback")
        fell_back = missing
        warnings.append(
            f"{missing}: target.fallback is on, so everything runs and is timed on the CPU "
            "instead - the timings say nothing about the target"
        )
    options = (
        call_plugin(provider, "map options", provider.provider_options, policy.provider_options)
        if fell_back is None
        else {}
    )
    threads = physical_cores() if policy.threads is None else policy.threads
    target = Target(provider.ort_name, options, threads, policy.fallback)
    described = {
        "provider": provider.name,
        "requested_provider": requested.name,
        "fallback": {"allowed": policy.fallback, "reason": fell_back},
        "usd_per_hour": policy.usd_per_hour,
        **target.describe(),
        "threads_source": "target.threads" if policy.threads is not None else "physical cores",
    }
    return ChosenTarget(target, described, warnings)
