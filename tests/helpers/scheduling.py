"""A pytest-xdist scheduler that sends each test module to one worker, and some modules to the same one."""

from __future__ import annotations

from pathlib import PurePosixPath

from xdist.scheduler import LoadScopeScheduling


class ModulesTogether(LoadScopeScheduling):
    """xdist's `loadscope` (a module's tests on one worker; the modules with most tests handed out first),
    with the modules named in ``together`` as one unit called ``name``. xdist's own `loadgroup` would do
    this from marks, but its marks change `Item._nodeid`, which pytest 9 no longer reads."""

    def __init__(self, config, log=None, *, together: set[str], name: str) -> None:
        super().__init__(config, log)
        self.together, self.name = together, name

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return self.name if PurePosixPath(module).name in self.together else module
