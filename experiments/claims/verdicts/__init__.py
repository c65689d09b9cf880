"""Verdicts on the seed's claims, computed from the comparison and compression runs; writes ``experiments/README.md``.

Usage::

  python -m experiments.claims.verdicts --compare experiments/results/compare_fashion_mnist_quick \\
      --compress experiments/results/compress_fashion_mnist_quick --out experiments/README.md

``--compare`` takes ``compare.json`` files written by :mod:`experiments.claims.compare`, or directories (their
``compare.json``, else every ``compare.json`` below them); ``--compress`` the same for the ``compress.json`` of
:mod:`experiments.claims.compress`. Both repeat and take several paths. Nothing is trained or timed here: every number
in the output is read from those files.

For each claim (:data:`CLAIMS`) it picks one run — among the runs that contain every scheme the claim needs,
the one whose needed schemes trained longest (the most training steps; ties: the first given) — because
timings are comparable only within one run, and evaluates the claim's checks with the numeric rules of
:class:`Rules`. Every check is ``pass``, ``fail`` or ``undecided``:

* accuracy checks are undecided when the run trained fewer than ``Rules.min_train_steps`` steps (after a
  few dozen steps accuracy measures how fast a network learns, not where it ends);
* timing checks are undecided when the measured ratio lies within the noise band around the threshold
  (``Rules.timing_band``, or ``Rules.loaded_timing_band`` when the run's 1-minute load average at the end
  exceeded its usable cores);
* cost checks (MACs, parameters) are exact.

A claim **holds** when all its checks pass, **does not hold here** when one fails (a failing cost or timing
check decides this even on a short run), and is **inconclusive** otherwise — also when no run has the schemes
it needs (the Markdown names the missing ones and the command that would produce them).

The output Markdown starts by saying it is generated and by which command; per claim it gives the claim, the
command that produced its data, the numbers, the rule and the verdict.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from experiments.claims.verdicts.compression_claims import COMPRESSION_CLAIMS, pick_compress_run
from experiments.claims.verdicts.markdown import markdown
from experiments.claims.verdicts.rules import (
  FAILS,
  HOLDS,
  INCONCLUSIVE,
  VERDICTS,
  Check,
  Claim,
  Result,
  Rules,
  Verdict,
  all_of,
)
from experiments.claims.verdicts.runs import Run, find_files, load_run
from experiments.claims.verdicts.training_claims import TRAINING_CLAIMS
from experiments.cli import command_line

__all__ = ["CLAIMS", "FAILS", "HOLDS", "INCONCLUSIVE", "VERDICTS", "Rules", "Run", "evaluate", "evaluate_all", "main"]

CLAIMS: tuple[Claim, ...] = TRAINING_CLAIMS + COMPRESSION_CLAIMS
"""The claims, in the seed's order."""


def pick_compare_run(runs: Sequence[Run], schemes: Sequence[str]) -> tuple[Run | None, tuple[str, ...]]:
  """The run with every scheme of ``schemes`` whose needed schemes trained longest (ties: the first).

  Returns:
    ``(run, ())``, or ``(None, missing)`` with the schemes the most complete run lacks.
  """
  complete = [r for r in runs if all(s in r.rows for s in schemes)]
  if complete:
    return max(complete, key=lambda r: r.steps(schemes)), ()
  if not runs:
    return None, tuple(schemes)
  most = max(runs, key=lambda r: sum(s in r.rows for s in schemes))
  return None, tuple(s for s in schemes if s not in most.rows)


def _reason(checks: Sequence[Check], result: Result) -> str:
  """One sentence: the failing checks, or the undecided ones of the alternatives that have not failed."""
  if result is True:
    passing = sorted({c.group for c in checks if c.group and all_of([d.result for d in checks if d.group == c.group])})
    return "every check passes" + (f" for {', '.join(passing)}." if passing else ".")
  if result is False:
    return "fails: " + "; ".join(f"{c.name} is {c.measured} (needed {c.needed})" for c in checks if c.result is False)
  failed = {c.group for c in checks if c.result is False}
  return "undecided: " + "; ".join(f"{c.name} — {c.note}" for c in checks if c.result is None and c.group not in failed)


def evaluate(claim: Claim, compare_runs: Sequence[Run], compress_runs: Sequence[Run], rules: Rules) -> Verdict:
  """The claim's verdict from the run :func:`pick_compare_run` / :func:`pick_compress_run` chooses."""
  if claim.source == "compress":
    run = pick_compress_run(compress_runs)
    if run is None:
      what = "no compress run given" if not compress_runs else "no compress run has a CP variant (scheme `cp`)"
      return Verdict(claim, INCONCLUSIVE, f"{what}.", None, (), ("CP variants",))
  else:
    run, missing = pick_compare_run(compare_runs, claim.schemes)
    if run is None:
      what = "no compare run given" if not compare_runs else "no compare run has every scheme it needs"
      names = ", ".join(f"`{s}`" for s in missing)
      return Verdict(claim, INCONCLUSIVE, f"{what}; missing: {names}.", None, (), missing)
  checks, result = claim.evaluate(run, rules)
  verdict = {True: HOLDS, False: FAILS, None: INCONCLUSIVE}[result]
  if not checks:
    return Verdict(claim, INCONCLUSIVE, "nothing to check.", run, ())
  return Verdict(claim, verdict, _reason(checks, result), run, tuple(checks))


def evaluate_all(
  compare_runs: Sequence[Run], compress_runs: Sequence[Run], rules: Rules | None = None
) -> list[Verdict]:
  """The verdict of every claim of :data:`CLAIMS`."""
  rules = rules or Rules()
  return [evaluate(claim, compare_runs, compress_runs, rules) for claim in CLAIMS]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0])
  parser.add_argument("--compare", nargs="+", action="extend", default=[], help="compare.json files or directories")
  parser.add_argument("--compress", nargs="+", action="extend", default=[], help="compress.json files or directories")
  parser.add_argument("--out", default="experiments/README.md", help="the Markdown to write")
  parser.add_argument("--min-train-steps", type=int, default=Rules.min_train_steps)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Verdict]:
  """The command line: reads the runs, writes ``--out``, prints each claim's verdict.

  Raises:
    ValueError: naming ``--compare``/``--compress`` when a path is missing or not such a results file, or
      ``--min-train-steps`` when it is negative.
  """
  args = parse_args(argv)
  if args.min_train_steps < 0:
    raise ValueError(f"--min-train-steps must be >= 0, got {args.min_train_steps}")
  rules = Rules(min_train_steps=args.min_train_steps)
  compare_runs = [load_run(p, "compare") for p in find_files(args.compare, "compare.json", "--compare")]
  compress_runs = [load_run(p, "compress") for p in find_files(args.compress, "compress.json", "--compress")]
  verdicts = evaluate_all(compare_runs, compress_runs, rules)
  command = command_line(__spec__.name, argv)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(markdown(verdicts, compare_runs, compress_runs, rules, command))
  for v in verdicts:
    print(f"{v.claim.number}. {v.claim.title}: {v.verdict}")
  print(f"Wrote {out}")
  return verdicts
