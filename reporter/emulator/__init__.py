"""The emulator (`mgh-reporter emulator`; README: The emulator): a local Migration Hub that
validates like the real service, for trying things out and for every test. `service` serves
it, `validator` checks requests, `operations` answers them over `state`."""

from reporter.emulator.service import Emulator
from reporter.emulator.state import Faults, HubState
from reporter.emulator.validator import ServiceError

__all__ = ["Emulator", "Faults", "HubState", "ServiceError"]
