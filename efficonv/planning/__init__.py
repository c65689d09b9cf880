"""Planning: what a conv runs, and why — the cost model, its tables, autotune and timing.

* :class:`Plan` — the choice for one input shape, with its reason.
* :data:`RATES`, :data:`TRAINING_FACTORS` — the cost model's per-backend tables (data).
* :func:`path_terms`, :func:`estimate_seconds` — the cost model's accounting of one path.
* :func:`plan_conv` — the decision behind ``implementation="auto"`` and ``"autotune"``.
* :func:`autotune` — measure every path once per shape and keep the fastest (cached).
* :func:`median_seconds` — the one timing statistic; :func:`median_time_ratio` — two calls timed in
  alternating pairs.
* :func:`plan_for` — the platforms (and the sizes of symbolic dims) convs are planned for, e.g. around
  :func:`jax.export.export` (:mod:`efficonv.kernels.targets`).

The formats (:class:`efficonv.Format`) delegate to this package; it never imports them.
"""

from efficonv.kernels.targets import SYMBOLIC_BATCH as SYMBOLIC_BATCH
from efficonv.kernels.targets import SYMBOLIC_SPATIAL as SYMBOLIC_SPATIAL
from efficonv.kernels.targets import plan_for as plan_for
from efficonv.planning.cost_model import Term as Term
from efficonv.planning.cost_model import estimate_seconds as estimate_seconds
from efficonv.planning.cost_model import path_terms as path_terms
from efficonv.planning.cost_model import plan_conv as plan_conv
from efficonv.planning.plan import IMPLEMENTATIONS as IMPLEMENTATIONS
from efficonv.planning.plan import OBJECTIVES as OBJECTIVES
from efficonv.planning.plan import STEP_KINDS as STEP_KINDS
from efficonv.planning.plan import Implementation as Implementation
from efficonv.planning.plan import Objective as Objective
from efficonv.planning.plan import Plan as Plan
from efficonv.planning.plan import Step as Step
from efficonv.planning.plan import StepKind as StepKind
from efficonv.planning.protocol import PlannableFormat as PlannableFormat
from efficonv.planning.rates import RATES as RATES
from efficonv.planning.rates import TRAINING_FACTORS as TRAINING_FACTORS
from efficonv.planning.rates import rates_for as rates_for
from efficonv.planning.rates import training_factors_for as training_factors_for
from efficonv.planning.timing import median_seconds as median_seconds
from efficonv.planning.timing import median_time_ratio as median_time_ratio
from efficonv.planning.tuning import CACHE_ENV as CACHE_ENV
from efficonv.planning.tuning import autotune as autotune
from efficonv.planning.tuning import autotune_dense as autotune_dense
from efficonv.planning.tuning import cache as cache
from efficonv.planning.tuning import clear_cache as clear_cache
