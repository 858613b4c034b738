"""How many rollouts each prompt of a step gets (`algorithm.sampling`), one module per mode:

    fixed           fixed.py           n per prompt
    dynamic_filter  dynamic_filter.py  DAPO: resample until every kept group is mixed
    adaptive        adaptive.py        V0.5: a value prior, a test, extra rollouts where they pay

A sampler is a function `(controller, problems, more_problems, seed) -> Batch`. It draws rollouts
only through `controller.sample(problems, ns, seed)` (one generation round, scored, with DAPO's
overlong shaping and the step's bookkeeping), so every mode pays for and logs its rounds the same
way. `rlvr.train.controller.BudgetController` picks one by name. A new mode is a module, an entry
in `SAMPLERS` and its name in `rlvr.algorithms.presets.SAMPLING_MODES` (a unit test holds the two
lists equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from rlvr.sampling.adaptive import collect_adaptive
from rlvr.sampling.dynamic_filter import collect_dynamic_filter
from rlvr.sampling.fixed import collect_fixed

if TYPE_CHECKING:
    from rlvr.data import Problem
    from rlvr.train.controller import BudgetController
    from rlvr.types import Batch

    Sampler = Callable[[BudgetController, list[Problem], Callable[[int], list[Problem]], int], Batch]

SAMPLERS: dict[str, Sampler] = {"fixed": collect_fixed, "dynamic_filter": collect_dynamic_filter, "adaptive": collect_adaptive}
