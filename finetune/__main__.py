import signal
import sys

# A trial process must survive SIGUSR2 from its first moment (finetune.usr2): before any import.
if len(sys.argv) > 1 and sys.argv[1] in ("train", "array-task"):
    _early: list[bool] = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: _early.append(True))
    from finetune import usr2

    usr2.install_early()
    if _early:
        usr2._on_usr2(signal.SIGUSR2, None)

from finetune.cli import main  # noqa: E402

sys.exit(main())
