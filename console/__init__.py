"""The desk: handler screen-pop, supervisor wallboard, auditor search, in the browser.

``create_app(backend=..., db=..., settings=...)`` builds the aiohttp application; the
service implements :class:`DeskBackend` (``console/backend.py``);
:class:`tests.console.fake.FakeBackend` is an in-memory stand-in for the tests.
Users, sessions and the DPA 2018 s.62 access log live in ``console/users.py``.
"""

from .app import create_app
from .backend import Conflict, DeskBackend, DeskError, Invalid, NotFound, Pending
from .users import UserError, create_user

__all__ = ["Conflict", "DeskBackend", "DeskError", "Invalid", "NotFound", "Pending", "UserError",
           "create_app", "create_user"]
