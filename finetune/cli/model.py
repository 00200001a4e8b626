"""`finetune convert` (nanoGPT ckpt.pt -> Hugging Face directory) and `finetune pretrain`."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from finetune.errors import Problem, UsageError

CONVERT_EPILOG = """examples:
  finetune convert models/rus-pol-normal/ckpt.pt hf/rus-pol-topic --task classification --num-labels 7
  finetune convert models/rus-pol-normal/ckpt.pt hf/rus-pol-lm --task causal-lm --tokenizer models/rus-pol-normal
  finetune convert --merge-lora runs/rus-pol/trials/3f9c1a2b7d04 hf/rus-pol-topic-merged

Reads the checkpoint with torch.load(weights_only=True) (a file that needs arbitrary unpickling
is refused), checks every key and shape against its model_args, and writes OUT_DIR with
model.safetensors, config.json (model_type nanogpt) and the tokenizer. Without --tokenizer the
nanoGPT-layout sibling <ckpt dir>-vocab.json / -merges.txt is used when it exists. Load the
result with transformers after `import finetune.compute.hf`, or with trust_remote_code=True.
A bad checkpoint exits 2 with every problem listed.

--merge-lora TRIAL_DIR OUT_DIR: a finished LoRA trial (lora_r > 0) keeps only its adapter and
head in TRIAL_DIR/model; this folds them into the trial's base checkpoint and writes a plain
model directory that loads without peft.
"""

PRETRAIN_EPILOG = """examples:
  finetune pretrain --sib200 data/sib200 --languages russian polish --name rus-pol-normal --out-dir models --steps 300
  finetune pretrain --sib200 data/sib200 --languages rus_Cyrl pol_Latn --name rus-pol-ipa --out-dir models --steps 300 --ipa
  finetune pretrain --corpus corpus.txt --name my-model --out-dir models --steps 1000 --n-layer 6 --n-embd 384

Trains a byte-level BPE tokenizer and a small nanoGPT on the corpus and writes them in
nanoGPT's layouts: OUT_DIR/NAME/ckpt.pt and OUT_DIR/NAME-vocab.json, OUT_DIR/NAME-merges.txt.
--corpus files hold one text per line. --sib200 reads <DIR>/<language>/<split>.tsv (column
text). --ipa transcribes every text with espeak-ng first; a SIB-200 language may carry its
espeak voice as rus_Cyrl=ru (known SIB-200 languages have defaults), --corpus needs --espeak.
SIB-200 data: Adelani et al. 2023, Apache-2.0 / FLORES-200 CC BY-SA 4.0.
"""

# SIB-200 subset -> espeak-ng voice (as in config/language-database.json)
ESPEAK = {
    "rus_Cyrl": "ru", "pol_Latn": "pl", "ces_Latn": "cs", "slk_Latn": "sk",
    "ukr_Cyrl": "uk", "bel_Cyrl": "be", "bul_Cyrl": "bg", "eng_Latn": "en-us",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from finetune.cli import HelpFormatter

    c = subparsers.add_parser(
        "convert",
        help="nanoGPT ckpt.pt -> Hugging Face model directory",
        description="Build a Hugging Face model directory (safetensors) from a nanoGPT checkpoint.",
        epilog=CONVERT_EPILOG,
        formatter_class=HelpFormatter,
    )
    c.add_argument("ckpt", metavar="CKPT", help="a nanoGPT ckpt.pt (with --merge-lora: a finished LoRA trial directory)")
    c.add_argument("out_dir", metavar="OUT_DIR", help="the directory to write (must not exist, or be empty)")
    c.add_argument("--task", choices=("causal-lm", "classification", "question-answering"),
                   help="which head to build (required without --merge-lora)")
    c.add_argument("--merge-lora", action="store_true",
                   help="CKPT is a LoRA trial directory: merge its adapter into the base model")
    c.add_argument("--num-labels", type=int, metavar="N", help="classes of the classification head")
    c.add_argument("--labels", nargs="+", metavar="NAME", help="class names, in label-id order (sets --num-labels)")
    c.add_argument("--tokenizer", metavar="PATH",
                   help="vocab/merges prefix, tokenizer.json or HF dir (default: <ckpt dir>-vocab.json if present)")
    c.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    c.set_defaults(func=_convert)

    p = subparsers.add_parser(
        "pretrain",
        help="train a byte-level BPE tokenizer and a small nanoGPT on a corpus",
        description="Pretrain a tokenizer and a small nanoGPT; write them in nanoGPT's layouts.",
        epilog=PRETRAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", nargs="+", metavar="FILE", help="text files, one text per line")
    src.add_argument("--sib200", metavar="DIR", help="a SIB-200 folder (<DIR>/<language>/<split>.tsv)")
    p.add_argument("--languages", nargs="+", metavar="LANG[=ESPEAK]",
                   help="SIB-200 languages (with --sib200): the names configs use (russian polish, looked up in "
                        "--database) or SIB-200 codes (rus_Cyrl pol_Latn)")
    p.add_argument("--database", metavar="FILE", default=None,
                   help="language database for --languages names (default: the shipped config/language-database.json)")
    p.add_argument("--split", default="train", help="SIB-200 split to read (default: train)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N texts of each language/file")
    p.add_argument("--ipa", action="store_true", help="transcribe the corpus to IPA (espeak-ng) first")
    p.add_argument("--espeak", metavar="VOICE", help="espeak-ng voice of --corpus files (with --ipa)")
    p.add_argument("--name", required=True, help="model name: writes OUT_DIR/NAME/ckpt.pt, OUT_DIR/NAME-vocab.json")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="where to write")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    p.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary size (default: 4000)")
    p.add_argument("--n-layer", type=int, default=4, help="layers (default: 4)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument("--n-embd", type=int, default=128, help="embedding size (default: 128)")
    p.add_argument("--block-size", type=int, default=128, help="context length (default: 128)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: one per core; 1 is faster on a busy shared machine)")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/NAME/ckpt.pt")
    exists.add_argument("--skip-existing", action="store_true", help="do nothing if OUT_DIR/NAME/ckpt.pt exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_pretrain)


def _convert(args: argparse.Namespace) -> int:
    from finetune.compute.convert import convert

    if args.merge_lora:
        extra = [f for f, v in (("--task", args.task), ("--num-labels", args.num_labels), ("--labels", args.labels),
                                ("--tokenizer", args.tokenizer)) if v]
        if extra:
            raise UsageError(problems=[Problem(extra[0], "", "not used with --merge-lora (the trial knows its head, "
                                               "labels and tokenizer)")])
        from finetune.compute.training.lora import merge

        out = merge(args.ckpt, args.out_dir, overwrite=args.force)
        print(f"wrote {out} (LoRA adapter of {args.ckpt} merged into its base model)")
        return 0
    if args.task is None:
        raise UsageError(problems=[Problem("--task", "", "required (causal-lm, classification or question-answering)")])

    report = convert(
        args.ckpt, args.out_dir, task=args.task, num_labels=args.num_labels, labels=args.labels,
        tokenizer=args.tokenizer, overwrite=args.force,
    )
    tok = f", tokenizer from {report.tokenizer}" if report.tokenizer else " (no tokenizer found: pass --tokenizer)"
    labels = f", {report.num_labels} labels" if report.num_labels else ""
    print(f"wrote {report.out_dir} ({report.task}{labels}, {report.parameters:,} parameters{tok})")
    return 0


def parse_languages(values: list[str], database: str | None = None) -> list[tuple[str, str | None]]:
    """``rus_Cyrl``, ``rus_Cyrl=ru`` or a database name (``russian``) -> (SIB-200 code, espeak voice)."""
    out = []
    db = None
    for v in values:
        lang, _, voice = v.partition("=")
        if not re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", lang):  # not a SIB-200 code: a database language
            db = db or _database(database)
            code, known = _sib200_code(db, lang)
            lang, voice = code, voice or known
        out.append((lang, voice or ESPEAK.get(lang)))
    return out


def _database(path: str | None):
    from finetune.login.database import load_database
    from finetune.login.shipped import config_file

    return load_database(path or str(config_file("language-database.json")))


def _sib200_code(db, language: str) -> tuple[str, str | None]:
    """The SIB-200 subset and espeak voice the database gives ``language``."""
    from finetune.login.schema import did_you_mean

    if not db.has_language(language):
        raise UsageError(problems=[Problem("--languages", "", f"{language!r} is neither a SIB-200 code (rus_Cyrl) nor "
                                           f"a language of {db.path}" + did_you_mean(language, db.languages()))])
    for task in db.tasks(language):
        for name in db.dataset_names(language, task):
            entry = db.entry(language, task, name)
            if "sib200" in str(entry.get("dataset", "")).lower() and entry.get("subset"):
                return entry["subset"], db.espeak(language)
    raise UsageError(problems=[Problem("--languages", "", f"{db.path} has no SIB-200 dataset for {language!r}")])


def read_sib200(root: Path, language: str, split: str) -> list[str]:
    path = root / language / f"{split}.tsv"
    if not path.is_file():
        raise UsageError(problems=[Problem("--sib200", "", f"{path}: not found")])
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if "text" not in (reader.fieldnames or []):
            raise UsageError(problems=[Problem(str(path), "", "no 'text' column")])
        return [row["text"] for row in reader]


def _corpus(args: argparse.Namespace) -> list[tuple[list[str], str | None]]:
    """(texts, espeak voice) per language or file; every flag problem reported at once."""
    problems: list[Problem] = []
    groups: list[tuple[list[str], str | None]] = []
    if args.sib200:
        if not args.languages:
            raise UsageError(problems=[Problem("--languages", "", "required with --sib200, e.g. rus_Cyrl pol_Latn")])
        for lang, voice in parse_languages(args.languages, args.database):
            if args.ipa and not voice:
                problems.append(Problem("--languages", "", f"no espeak voice known for {lang}: write {lang}=VOICE"))
            try:
                groups.append((read_sib200(Path(args.sib200), lang, args.split), voice))
            except UsageError as e:
                problems += e.problems
    else:
        if args.languages:
            problems.append(Problem("--languages", "", "only with --sib200 (use --espeak for --corpus files)"))
        if args.ipa and not args.espeak:
            problems.append(Problem("--espeak", "", "--ipa with --corpus needs the espeak voice, e.g. --espeak ru"))
        for file in args.corpus:
            try:
                lines = Path(file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(Problem(file, "", f"cannot read: {e}"))
                continue
            groups.append(([ln for ln in lines if ln.strip()], args.espeak))
    if problems:
        raise UsageError(problems=problems)
    return [(texts[: args.limit] if args.limit else texts, voice) for texts, voice in groups]


def _pretrain(args: argparse.Namespace) -> int:
    from finetune.compute.pretrain import pretrain, result_dict

    texts: list[str] = []
    for group, voice in _corpus(args):
        if args.ipa:
            from finetune.compute.ipa import transcribe

            group = transcribe(group, voice)
        texts += group
    if_exists = "overwrite" if args.force else "skip" if args.skip_existing else "error"
    result = pretrain(
        texts, args.out_dir, args.name, vocab_size=args.vocab_size, n_layer=args.n_layer,
        n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size, steps=args.steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        device=args.device, threads=args.threads, if_exists=if_exists, log=None if args.json else print,
    )
    if args.json:
        print(json.dumps(result_dict(result), indent=2))
    elif result.skipped:
        print(f"{result.ckpt_path} exists: skipped")
    return 0
