"""The public surface: ``aiimg.services.__all__`` and ``aiimg.messages.__all__`` are pinned.

Every name in ``__all__`` exists, and every public attribute of the package is in ``__all__``
or is a submodule, so nothing becomes public by accident (an import left at module level)
and nothing listed is missing. Changing either list is a decision: update it here.
"""

from __future__ import annotations
import __future__

import importlib
import subprocess
import sys
import tomllib
import types

import pytest

from aiimg import messages, services

from .reliability.procs import ROOT

SERVICES = (
    "AddressRefused",
    "AiimgError",
    "AttemptContext",
    "BadEncoding",
    "BlobError",
    "Bus",
    "BusError",
    "Client",
    "Config",
    "ConfigError",
    "EmbeddedServerError",
    "HostUnresolved",
    "InputImage",
    "JobError",
    "MediaError",
    "MemoryBus",
    "Output",
    "Provider",
    "ProviderFailure",
    "ReferenceSet",
    "ReferenceStore",
    "ResponseTooLarge",
    "SelfieError",
    "Stack",
    "StaleView",
    "UpstreamResponseError",
    "__version__",
    "config_from_dict",
    "connect",
    "load_config",
    "new_job_id",
    "open_bus",
    "running",
    "submit_selfie",
)

MESSAGES = (
    "AttemptDispatched",
    "AttemptFailed",
    "AttemptSucceeded",
    "BlobRef",
    "BreakerState",
    "CancelRequested",
    "DEFAULT_PREFIX",
    "DecodeError",
    "Event",
    "FAILURE_REASONS",
    "FailureSummary",
    "JobCancelled",
    "JobCompleted",
    "JobEvent",
    "JobFailed",
    "JobId",
    "JobRejected",
    "JobRequested",
    "Names",
    "Operation",
    "ParsedSubject",
    "ProviderAlias",
    "ProviderHealth",
    "REJECT_REASONS",
    "Reason",
    "RejectReason",
    "TerminalEvent",
    "decode_event",
    "encode",
    "event_subject",
    "kind_of",
    "placed",
    "subject",
)


@pytest.mark.parametrize(
    ("module", "pinned"), [(services, SERVICES), (messages, MESSAGES)], ids=["services", "messages"]
)
def test_exported_members(module: types.ModuleType, pinned: tuple[str, ...]) -> None:
    assert tuple(module.__all__) == pinned
    for name in module.__all__:
        assert getattr(module, name) is not None, name  # lazy names resolve too
    # Submodules (app, infra, _events …) and ``from __future__ import annotations`` are not API.
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not (isinstance(value, types.ModuleType) and value.__name__.startswith(module.__name__ + "."))
        and not isinstance(value, __future__._Feature)
    }
    assert public - set(module.__all__) == set(), "public but not in __all__"


def test_lazy_names_are_the_real_objects() -> None:
    from aiimg.services.app.client import Client
    from aiimg.services.domain.errors import AiimgError, ProviderFailure
    from aiimg.services.infra.memory import MemoryBus

    assert services.Client is Client
    assert services.MemoryBus is MemoryBus
    assert issubclass(services.ProviderFailure, services.AiimgError)
    assert services.ProviderFailure is ProviderFailure and services.AiimgError is AiimgError
    assert set(dir(services)) >= set(services.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        services.nope  # noqa: B018


def test_importing_the_package_loads_no_transport() -> None:
    """``import aiimg.services`` (and its pure domain) imports neither NATS nor HTTP nor Pillow."""
    code = (
        "import sys, aiimg.services, aiimg.services.domain.config\n"
        "heavy = sorted(m for m in ('nats', 'httpx', 'aiohttp', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
        "aiimg.services.Client\n"
        "assert 'nats' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_version_is_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert importlib.import_module("aiimg.services").__version__ == project["version"]
