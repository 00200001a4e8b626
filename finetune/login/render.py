"""sbatch templates -> script text. Pure: reads the template, returns a string, writes nothing.

The engine follows the file name: ``*.j2`` is jinja2 with ``StrictUndefined``; any other file is
the old style, plain bash with Python ``str.format`` fields (``{job_name}``, ``{cpus}``,
``{gpus}``, ``{timeout}``, ``{args}``, ``{temp_config_name}``, ...), as the original scripts used.

Every value is shell-quoted on its way into the text (jinja2: through ``finalize``; old style:
before ``format``), except values the caller marks ``ShellSafe`` because it built them from
quoted parts itself. A value holding a line break is refused: on an ``#SBATCH`` line it would
end the comment and start a shell command, whatever the quoting. A missing variable is a
``ConfigError`` naming the template and the variable.
"""

from __future__ import annotations

import functools
import shlex
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, Problem


class ShellSafe(str):
    """Text already fit for the shell (built here from quoted parts, or shell code on purpose)."""


def quote(value: Any) -> str:
    """One value as one shell word. Booleans become ``true``/``false``, None the empty word."""
    if isinstance(value, ShellSafe):
        return str(value)
    if value is None:
        value = ""
    elif isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def join(words: Iterable[Any]) -> ShellSafe:
    """Several values as a command line, each quoted."""
    return ShellSafe(" ".join(quote(w) for w in words))


def line_breaks(value: Any) -> bool:
    return isinstance(value, str) and any(c in value for c in "\n\r\0")


def engine_for(template: str | Path) -> str:
    return "jinja2" if str(template).endswith(".j2") else "format"


def render(template: str | Path, context: Mapping[str, Any]) -> str:
    """Render the template file at ``template`` with ``context``."""
    path = Path(template)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(problems=[Problem(str(path), "", f"cannot read template: {e.strerror or e}")]) from None
    return render_text(text, context, name=str(path), engine=engine_for(path))


def render_text(text: str, context: Mapping[str, Any], *, name: str, engine: str) -> str:
    """Render template ``text`` (called ``name`` in errors) with the given engine."""
    _check_values(context, name)
    if engine == "jinja2":
        return _render_jinja(text, context, name)
    if engine == "format":
        return _render_format(text, context, name)
    raise ValueError(f"unknown template engine {engine!r}")


def _check_values(context: Mapping[str, Any], name: str, prefix: str = "") -> None:
    for key, value in context.items():
        if isinstance(value, Mapping):
            _check_values(value, name, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if line_breaks(item) and not isinstance(item, ShellSafe):
                    raise ConfigError(
                        problems=[Problem(name, "", f"value of {prefix}{key}[{i}] contains a line break")]
                    )
        elif line_breaks(value) and not isinstance(value, ShellSafe):
            raise ConfigError(problems=[Problem(name, "", f"value of {prefix}{key} contains a line break")])


@functools.lru_cache(maxsize=16)
def _jinja_template(text: str) -> Any:
    """Compiled once per template text: rendering a thousand arrays compiles once."""
    import jinja2

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        finalize=quote,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = quote
    return env.from_string(text)


def _render_jinja(text: str, context: Mapping[str, Any], name: str) -> str:
    import jinja2

    try:
        return _jinja_template(text).render(**context)
    except jinja2.UndefinedError as e:
        raise ConfigError(problems=[Problem(name, "", f"undefined template variable: {e.message}")]) from None
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(problems=[Problem(name, "", f"template syntax error at line {e.lineno}: {e.message}")]) from None


def _render_format(text: str, context: Mapping[str, Any], name: str) -> str:
    fields = {k: quote(v) for k, v in context.items() if not isinstance(v, (Mapping, list, tuple)) and not callable(v)}
    missing = sorted(
        {f for _, f, _, _ in string.Formatter().parse(text) if f is not None and f.split(".")[0].split("[")[0] not in fields}
    )
    if missing:
        raise ConfigError(
            problems=[Problem(name, "", f"undefined template variable: {m!r}") for m in missing if m]
            or [Problem(name, "", "positional fields {} are not supported; name every field")]
        )
    try:
        return text.format(**fields)
    except (ValueError, IndexError, KeyError, AttributeError) as e:
        raise ConfigError(problems=[Problem(name, "", f"bad format template: {e}")]) from None


# After `scontrol requeue`, the one owner of what every shipped script (array.sbatch.j2,
# search.sbatch.j2) and the old-style block below run next, rendered into each with
# ``{{ lift_begin_time(indent) }}`` / ``lift_begin_time(indent)``.
LIFT_BEGIN_TIME = """\
# A requeued job waits 120 s (BeginTime) unless `scontrol update StartTime=now` follows once it
# is pending again, i.e. after this script is gone: a helper outside the job's process group
# does that (where proctrack/cgroup kills it too, the job simply starts 120 s later). It waits 2 s
# first: slurmd refuses a job credential issued in the same second as the requeue revoked the old
# one ("Job credential revoked"), and the job would end failed instead of running again.
setsid bash -c 'for _ in $(seq 240); do sleep 0.25
  [ "$(squeue -h -j "$1" -o %T 2>/dev/null)" = PENDING ] && sleep 2 && exec scontrol update jobid="$1" StartTime=now
done' lift-begin-time "$SLURM_JOB_ID" </dev/null >/dev/null 2>&1 &"""


def lift_begin_time(indent: int = 0) -> ShellSafe:
    """``LIFT_BEGIN_TIME`` for a script that runs it ``indent`` spaces deep: the lines after the
    first are indented (the template's own text indents the first), and no line break ends it."""
    return ShellSafe(LIFT_BEGIN_TIME.replace("\n", "\n" + " " * int(indent)))


# The requeue protocol for old-style templates (those of the original scripts, which know nothing
# of it): ``with_requeue_protocol`` adds it to the rendered text, so an unchanged template behaves
# like jobs/templates/array.sbatch.j2 (USR2 at any moment -> the trial checkpoints -> the job is
# requeued -> the trial resumes exactly).
REQUEUE_DIRECTIVES = """#SBATCH --signal=B:USR2@{grace}
#SBATCH --requeue
#SBATCH --open-mode=append
"""
REQUEUE_PREAMBLE = r"""# -- added by finetune (the template's own lines follow): SLURM sends USR2 to this shell only
# (--signal=B:USR2), at any moment. This shell runs the rest of the script again in a child, in a
# session of its own, and passes USR2 to all of it: the trial checkpoints and exits {exit_requeue},
# and this shell requeues the job. The trial's command must be the script's last line (its exit
# code is the script's).
if [ -z "${{FINETUNE_REQUEUE_CHILD:-}}" ]; then
  child=
  usr2=0
  forward_usr2() {{
    usr2=1
    echo "== $(date -Is) USR2: asking the trial to checkpoint"
    [ -n "$child" ] && {{ kill -USR2 -- "-$child" 2>/dev/null || kill -USR2 "$child" 2>/dev/null; }}
  }}
  trap forward_usr2 USR2
  rc={exit_requeue}
  if [ "$usr2" = 0 ]; then  # else USR2 came before anything ran: requeue at once
    FINETUNE_REQUEUE_CHILD=1 setsid bash "$0" "$@" &
    child=$!
    wait "$child"
    rc=$?
    while kill -0 "$child" 2>/dev/null; do  # wait returns early when a trapped signal arrives
      wait "$child"
      rc=$?
    done
    # killed by the USR2 itself before the trial's interpreter could handle it: nothing was written
    if [ "$usr2" = 1 ] && [ "$rc" -eq 140 ]; then rc={exit_requeue}; fi
  fi
  if [ "$rc" -eq {exit_requeue} ]; then
    echo "== $(date -Is) the trial checkpointed; requeueing job $SLURM_JOB_ID"
    {lift_begin_time}
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  exit "$rc"
fi
trap : USR2  # this copy of the script outlives USR2; the trial gets it (and handles it from its first moment)
# -- end of what finetune added
"""


def with_requeue_protocol(text: str, *, grace: int, exit_requeue: int) -> str:
    """``text`` (a rendered old-style script) with the requeue protocol: the ``#SBATCH`` lines
    right after the first line (the interpreter line; the template's own directives come later and
    win), the shell part before the template's first command."""
    lines = text.splitlines(keepends=True)
    head = 1 if lines and lines[0].startswith("#!") else 0
    first = next((i for i in range(head, len(lines)) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
                 len(lines))
    preamble = REQUEUE_PREAMBLE.format(exit_requeue=int(exit_requeue), lift_begin_time=lift_begin_time(4))
    directives = REQUEUE_DIRECTIVES.format(grace=int(grace))
    if head and not lines[0].endswith("\n"):
        lines[0] += "\n"
    return "".join(lines[:head] + [directives] + lines[head:first] + [preamble] + lines[first:])
