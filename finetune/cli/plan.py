"""`finetune plan` (grid search, = scripts/grid-search.py) and `finetune matrix` (cross-language
matrix, = scripts/finetuning-generator.py): plan into DIR, then submit through finetune.login.submit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.login import executors

GUARD = 500  # above this many trials, submitting needs --yes

PLAN_EPILOG = """examples:
  {prog} config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/grid-search.json --output-dir runs/rus-pol
  {prog} config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json --grid-config config/grid-demo.json --executor local --dry-run
  {prog} config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --grid-config config/grid-search.json --model-type ipa --set slurm.partition=gpu

Plans grid x model types into DIR/plan.json (trial ids are content hashes: rerunning keeps the
ids, adds only new trials and never touches materialised ones), then submits the trials that
are neither finished nor queued. --dry-run renders the job scripts into DIR/jobs and submits
nothing. Submitting more than {guard} trials needs --yes. Default DIR: runs/<config names>.
Exit codes: 0 planned and submitted (run here: every trial finished); 1 trials run here
(--executor local) failed, each listed with its log; 2 bad input (nothing written).
"""

MATRIX_EPILOG = """examples:
  {prog} config/finetune-rus-pol.json config/finetune-rus-pol-topic.json --output-dir runs/rus-pol-matrix
  {prog} config/finetune-rus-pol.json config/finetune-rus-pol-topic.json config/data-local.json --grid-config config/grid-demo.json --executor local --dry-run

For the languages of `datasets` (L1..Ln) trains on each language alone and on their union and
evaluates every trial on every language: n + 1 trials per model type and grid point (2
languages, 2 model types: 6 trials covering A->A, A->B, B->A, B->B, A+B->A, A+B->B). A grid
config adds its parameters on top (its "languages" section is not used). Submitting more than
{guard} trials needs --yes. Default DIR: runs/matrix-<config names>.
Exit codes: 0 planned and submitted (run here: every trial finished); 1 trials run here
(--executor local) failed, each listed with its log; 2 bad input (nothing written).
"""


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of every command that submits (submit, plan, matrix): one definition, the same meaning."""
    p.add_argument("--executor", choices=("auto", *executors.names()), default="auto",
                   help="where trials run (auto: slurm when sbatch is on PATH, else local)")
    p.add_argument("-t", "--template", metavar="TEMPLATE", default=None,
                   help="sbatch template (.j2 = jinja2, else old str.format style); default: jobs/templates/array.sbatch.j2")
    p.add_argument("--timeout", metavar="TIME", default=None,
                   help="time limit per trial (04:00:00, 90, 1-00:00:00); overrides slurm.time")
    p.add_argument("--throttle", type=positive_int, metavar="N", default=None,
                   help="at most N tasks of an array run at once (--array=...%%N)")
    p.add_argument("--max-array-size", type=positive_int, metavar="N", default=None,
                   help="split arrays above N tasks (default: MaxArraySize from `scontrol show config`)")
    p.add_argument("--parallel", type=positive_int, metavar="N", default=None,
                   help="local executor: trials at once (default: --throttle, else half the cores)")
    p.add_argument("--dry-run", action="store_true", help="render scripts into DIR/jobs; submit nothing")
    p.add_argument("--yes", "-y", action="store_true", help=f"allow submitting more than {GUARD} trials at once")
    p.add_argument("--follow", action="store_true",
                   help="when a queue limit leaves trials for later, wait and top up until every trial is queued")
    p.add_argument("--follow-interval", type=positive_int, default=60, metavar="S",
                   help="seconds between two top-ups with --follow (default 60)")


def submit_following(once, args: argparse.Namespace):
    """Call ``once()`` (one submit); with --follow, wait and call it again while a queue limit defers trials."""
    import time

    report = once()
    while args.follow and getattr(report, "deferred", None) and not args.dry_run:
        print(report.summary(), flush=True)
        time.sleep(args.follow_interval)
        report = once()
    return report


EXIT_TRIALS_FAILED = 1  # trials run here (local executor) that failed; 2 stays bad input, 75 requeue


def report_failures(report, plan_dir) -> int:
    """After trials ran here (``report.failed``, the local executor): name each failed trial with
    its reason and log; EXIT_TRIALS_FAILED when there is one, else 0. A rerun runs only them."""
    failed = getattr(report, "failed", None) or []
    if not failed:
        return 0
    from finetune.login.submit import failures

    print(f"{len(failed)} of {len(report.submitted)} trials failed:")
    for f in failures(plan_dir, failed):
        print(f"  {f.line()}")
    print(f"error: {len(failed)} trials failed (exit {EXIT_TRIALS_FAILED}); `finetune submit {plan_dir}` "
          "runs only the unfinished ones again", file=sys.stderr)
    return EXIT_TRIALS_FAILED


def add_plan_arguments(p: argparse.ArgumentParser, *, matrix: bool) -> None:
    from finetune.cli.config import add_layer_arguments

    add_layer_arguments(p)
    p.add_argument("--grid-config", metavar="GRID", default=None,
                   help="grid config: parameters to sweep, zip groups, exclude rules"
                        + ("" if matrix else ", languages"))
    p.add_argument("--model-type", nargs="+", default=["normal", "ipa"], metavar="TYPE",
                   help="model types: normal, ipa (default: normal ipa)")
    p.add_argument("--output-dir", "-o", metavar="DIR", default=None,
                   help="the plan directory (default: runs/<names of the config files>)")
    p.add_argument("--temp-config-dir", metavar="DIR", default=None,
                   help="kept for compatibility: where the frozen trial configs go, i.e. the plan directory "
                        "(DIR/trials/<id>/config.json); an alias of --output-dir")
    add_submit_arguments(p)
    p.add_argument("--no-submit", action="store_true", help="only write the plan (DIR/plan.json)")
    p.add_argument("--replace", action="store_true",
                   help="drop trials of DIR/plan.json that these layers no longer produce and that never ran "
                        "or failed (finished, queued and running ones stay)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    p = subparsers.add_parser(
        "plan", help="plan a grid search (grid x model types) and submit it",
        description="Validate the layered config and grid, plan every trial into DIR and submit them.",
        epilog=PLAN_EPILOG.format(prog="finetune plan", guard=GUARD), formatter_class=HelpFormatter)
    add_plan_arguments(p, matrix=False)
    p.set_defaults(func=lambda args: run(args, matrix=False))

    m = subparsers.add_parser(
        "matrix", help="plan the cross-language matrix (each language and their union) and submit it",
        description="Plan the cross-language train/eval matrix (optionally times a grid) into DIR and submit it.",
        epilog=MATRIX_EPILOG.format(prog="finetune matrix", guard=GUARD), formatter_class=HelpFormatter)
    add_plan_arguments(m, matrix=True)
    m.set_defaults(func=lambda args: run(args, matrix=True))


def grid_search_parser(prog: str = "grid-search.py") -> argparse.ArgumentParser:
    return _script_parser(prog, "Plan a grid search (grid x model types) and submit it (same as `finetune plan`).",
                          PLAN_EPILOG, matrix=False)


def generator_parser(prog: str = "finetuning-generator.py") -> argparse.ArgumentParser:
    return _script_parser(prog, "Plan the cross-language matrix and submit it (same as `finetune matrix`).",
                          MATRIX_EPILOG, matrix=True)


def _script_parser(prog: str, description: str, epilog: str, *, matrix: bool) -> argparse.ArgumentParser:
    """The parser of a script in scripts/: the flags of `finetune plan` (or `matrix`), its own name."""
    from finetune.cli import HelpFormatter

    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                epilog=epilog.format(prog=f"python scripts/{prog}", guard=GUARD))
    add_plan_arguments(p, matrix=matrix)
    return p


def positive_int(text: str) -> int:
    """argparse type for counts such as --throttle N: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def default_output_dir(configs: list[str], grid_config: str | None, *, matrix: bool) -> Path:
    """runs/<stems of the config files (and grid)>, prefixed with matrix- for the matrix."""
    stems = [Path(c).stem for c in configs]
    if grid_config:
        stems.append(Path(grid_config).stem)
    name = "_".join(stems) or "plan"
    return Path("runs") / (("matrix-" if matrix else "") + name)


def output_dir(args: argparse.Namespace, *, matrix: bool) -> Path:
    from finetune.errors import Problem, UsageError

    out, temp = args.output_dir, args.temp_config_dir
    if out and temp and Path(out).resolve() != Path(temp).resolve():
        raise UsageError(problems=[Problem("--temp-config-dir", "", f"differs from --output-dir ({temp} vs {out}); "
                                           "it is an alias of --output-dir (trial configs go to DIR/trials/<id>/)")])
    chosen = out or temp
    return Path(chosen) if chosen else default_output_dir(args.config, args.grid_config, matrix=matrix)


def _check_flags(args: argparse.Namespace) -> None:
    from finetune.errors import Problem, UsageError
    from finetune.login.schema import field_error

    problems = []
    if args.template is not None and not Path(args.template).is_file():
        problems.append(Problem("--template", "", f"template not found: {args.template}"))
    bad_time = field_error("config", ("slurm", "time"), args.timeout) if args.timeout is not None else None
    if bad_time:
        problems.append(Problem("--timeout", "", f"{bad_time} (got {args.timeout!r})"))
    if args.dry_run and args.no_submit:
        problems.append(Problem("--no-submit", "", "use either --dry-run or --no-submit"))
    if problems:
        raise UsageError(problems=problems)


MAX_PLAN_TRIALS = 10_000_000  # more cannot be expanded in memory: refused, --yes or not


def _guard_before_expanding(args: argparse.Namespace, search: bool) -> None:
    """Refuse in milliseconds, from the grid's counts alone, what the guard would refuse after
    expanding: more than GUARD trials without --yes (when submitting), more than MAX_PLAN_TRIALS
    at all. The count is a lower bound (exclude rules subtracted at their most)."""
    from finetune.errors import Problem, UsageError
    from finetune.login.plan_checks import grid_lower_bound

    if search or not getattr(args, "grid_config", None):
        return
    n = grid_lower_bound(args.grid_config)
    if n is None:
        return
    if n > MAX_PLAN_TRIALS:
        raise UsageError(problems=[Problem(args.grid_config, "$.parameters", f"this grid makes at least {n} trials; "
                                           f"one plan holds at most {MAX_PLAN_TRIALS} (split the grid)")])
    if n > GUARD and not args.yes and not (args.dry_run or args.no_submit):
        raise UsageError(problems=[Problem("--yes", "", f"this plan has at least {n} trials (more than {GUARD}); "
                                           "add --yes to submit them, or --dry-run to look first")])


def run(args: argparse.Namespace, *, matrix: bool, search: bool = False) -> int:
    """Validate flags and configs, plan, guard, write the plan, submit (or dry-run).
    A grid config with a search block starts the search instead (``run_search``)."""
    from finetune.errors import Problem, UsageError
    from finetune.login.plan import build_plan, write_plan

    _check_flags(args)
    out = output_dir(args, matrix=matrix)
    _guard_before_expanding(args, search)
    plan = build_plan(args.config, args.set, grid_config=args.grid_config, model_types=args.model_type,
                      matrix=matrix, default=args.default)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if plan.search is not None or search:
        return run_search(args, plan, out)
    n = len(plan.trials)
    submitting = not (args.dry_run or args.no_submit)
    if submitting and n > GUARD and not args.yes:
        raise UsageError(problems=[Problem("--yes", "", f"this plan has {n} trials (more than {GUARD}); "
                                           "add --yes to submit them, or --dry-run to look first")])
    if not args.no_submit:  # a bad template or slurm section refuses before the plan is written
        _check_rendering()(plan, out, template=args.template, timeout=args.timeout,
                           executor=args.executor)
    report = write_plan(plan, out, replace=args.replace)
    counts = ", ".join(f"{mt}: {c}" for mt, c in plan.counts().items())
    print(f"planned {n} trials ({counts}) in {out}: {len(report.added)} new, "
          f"{len(report.kept) + len(report.updated)} already planned; plan.json has {report.total}")
    if report.dropped:
        print(f"--replace: dropped {len(report.dropped)} trials no longer planned that never ran or failed: "
              f"{', '.join(report.dropped[:8])}{' ...' if len(report.dropped) > 8 else ''}")
    if report.superseded:
        print(f"{len(report.superseded)} trials superseded (their checkpoint, tokenizer or local dataset "
              f"changed): {', '.join(report.superseded[:8])}{' ...' if len(report.superseded) > 8 else ''}; "
              "submit skips them, collect lists them as superseded")
    if args.no_submit:
        return 0
    submit = _submit_function()
    result = submit_following(lambda: submit(out, executor=args.executor, template=args.template,
                                             timeout=args.timeout, throttle=args.throttle, dry_run=args.dry_run,
                                             max_array_size=args.max_array_size, parallel=args.parallel), args)
    if args.dry_run:
        for w in getattr(result, "warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        from finetune.cli._dry_run import dry_run_lines

        print("\n".join(dry_run_lines(result, out)))
        script = rendered_script(result, out)
        print(f"dry run: nothing submitted; one rendered script: {script if script else '(none rendered)'}")
    elif result is not None:
        print(_summary(result))
        return report_failures(result, out)
    return 0


def run_search(args: argparse.Namespace, plan, out: Path) -> int:
    """Start (or continue) the search: one array of workers sharing an Optuna study in DIR."""
    from finetune.errors import Problem, UsageError
    from finetune.login.search_submit import prepare, start_search

    if plan.search is None:
        raise UsageError(problems=[Problem(args.grid_config or "--grid-config", "$.search",
                                           "missing: `finetune search` needs a grid config with a search block")])
    if args.template is not None:
        raise UsageError(problems=[Problem("--template", "", "a search renders jobs/templates/search.sbatch.j2; "
                                           "--template is for grids")])
    s = plan.search
    print(f"search: {s['sampler']} sampler, {s['pruner']} pruner, budget {s['trials']} trials, {s['workers']} "
          f"workers, {s['direction']} eval {s['metric']}; parameters: {', '.join(s['params'])}")
    if args.no_submit:
        prepare(plan, out)
        print(f"study ready in {out / 'search'} (nothing submitted)")
        return 0
    report = start_search(plan, out, executor=args.executor, timeout=args.timeout, dry_run=args.dry_run)
    print(report.summary())
    problems = report.failures()  # a local run: failed trials and workers, named with their logs
    for line in problems:
        print(f"  {line}")
    if problems:
        print(f"error: {len(report.failed)} trials failed, {len(report.worker_exits)} workers ended in error "
              f"(exit {EXIT_TRIALS_FAILED})", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return 0


def _check_rendering():
    try:
        from finetune.login.submit import check_rendering
    except ImportError:  # submission not available: _submit_function says so after planning
        return lambda *args, **kwargs: None
    return check_rendering


def _submit_function():
    from finetune.errors import FinetuneError

    try:
        from finetune.login.submit import submit
    except ImportError as e:
        raise FinetuneError(f"submission is not available in this installation ({e}); "
                            "the plan is written, use --no-submit to only plan") from None
    return submit


def rendered_script(report, out: Path) -> str | None:
    """One rendered job script: from the submit report when it says, else the first under DIR/jobs."""
    for attr in ("scripts", "script_paths", "rendered"):
        value = getattr(report, attr, None)
        if value:
            first = next(iter(value.values())) if isinstance(value, dict) else next(iter(value))
            return str(first)
    from finetune.layout import jobs_dir

    jobs = jobs_dir(out)
    if jobs.is_dir():
        for path in sorted(jobs.rglob("*")):
            if path.is_file() and path.suffix in (".sh", ".sbatch", ".slurm", ""):
                return str(path)
    return None


def _summary(report) -> str:
    for attr in ("summary", "message"):
        value = getattr(report, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, str) and value:
            return value
    return str(report)


def main_grid_search(argv: list[str] | None = None) -> int:
    from finetune.cli import run_script

    return run_script(grid_search_parser(), lambda args: run(args, matrix=False), argv)


def main_generator(argv: list[str] | None = None) -> int:
    from finetune.cli import run_script

    return run_script(generator_parser(), lambda args: run(args, matrix=True), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_grid_search())
