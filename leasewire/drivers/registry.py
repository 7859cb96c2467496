"""Find attach drivers by name in the ``leasewire.drivers`` entry-point group.

leasewire registers its own drivers there in pyproject.toml, and a third-party
distribution adds a driver by declaring an entry point in the same group.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from leasewire.drivers.base import Driver

ENTRY_POINT_GROUP = "leasewire.drivers"

logger = logging.getLogger(__name__)


class UnknownDriverError(LookupError):
    """No driver of that name is installed."""

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(available) or "none"
        super().__init__(
            f"unknown driver {name!r}; installed drivers: {listing} "
            f"(entry-point group {ENTRY_POINT_GROUP!r})"
        )
        self.name = name


def available_drivers() -> list[str]:
    """Return the names of the installed drivers, sorted."""
    return sorted({point.name for point in entry_points(group=ENTRY_POINT_GROUP)})


def load_driver_class(name: str) -> type[Driver]:
    """Import the driver class registered under ``name``."""
    points = entry_points(group=ENTRY_POINT_GROUP, name=name)
    point = next(iter(points), None)
    if point is None:
        raise UnknownDriverError(name, available_drivers())

    driver_class = point.load()
    if not (isinstance(driver_class, type) and issubclass(driver_class, Driver)):
        raise TypeError(
            f"entry point {point.value!r} for driver {name!r} is not a subclass of "
            f"{Driver.__module__}.Driver"
        )
    return driver_class


class DriverSet:
    """Driver instances of one node daemon, created on first use.

    One instance per name, so that the locks a driver keeps cover every
    request of the daemon.
    """

    def __init__(self) -> None:
        self._drivers: dict[str, Driver] = {}

    def get(self, name: str) -> Driver:
        driver = self._drivers.get(name)
        if driver is None:
            driver = load_driver_class(name)()
            self._drivers[name] = driver
            logger.info("Loaded attach driver %r (%s)", name, type(driver).__qualname__)
        return driver
