"""Datasets of a trial: load, pick splits, map labels, add IPA columns, tokenize (all cached).

A dataset entry (see ARCHITECTURE.md, language database) names either a hub id with an
optional subset, loaded with ``datasets.load_dataset``, or, through ``data.mirrors`` (resolved by
the plan into the entry's ``"path"``) or a local ``"dataset"`` path, a folder that holds:

* per-split files ``<split>.{tsv,csv,json,jsonl,parquet,txt}``, directly or under ``<subset>/``
  (split aliases: validation = dev = valid), or
* a ``DatasetDict.save_to_disk`` folder (``dataset_dict.json``).

Roles: ``train`` (fine-tuning), ``eval`` (model selection) and an optional ``test`` (the final
report). Every transformation is a ``datasets`` map with an explicit content fingerprint and an
arrow file under the cache dir, so a rerun (or a compute node after ``finetune prefetch``)
reuses the transcriptions and token ids instead of making them again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.errors import FinetuneError, Problem
from finetune.login.inputs import (  # where the inputs are: shared with the login node's checks
    CACHE_DIR_PATH,
    EXTENSIONS,
    ROLES,
    cache_dir_message,
    config_file,
    dataset_label,
    default_cache_dir,
    digest,
    entry_splits,
    find_split_file,
    hub_snapshot,
    is_saved_dataset_dict,
    local_folder,
    resolve_cache_dir,
    split_candidates,
    split_problems,
    trial_languages,
)

if TYPE_CHECKING:
    from datasets import Dataset

PHONEME_SUFFIX = "-phoneme"
# Bump when the encoding of the same input changes (keys the cached token ids).
ENCODING_REVISION = 1


class DataError(FinetuneError):
    """A dataset, split, column or label is missing or inconsistent (exit code 2)."""


@dataclass
class TrialData:
    """What the trainer needs: encoded datasets with columns input_ids, labels, length, language, row."""

    train: Dataset | None
    eval: dict[str, Dataset]
    test: dict[str, Dataset]
    label_names: list[str]
    separator: str = ""
    # language -> role -> rows dropped because they are longer than the block size
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)


# -- loading ---------------------------------------------------------------------------------


def writable_cache_dir(cache: Path, source: str, configured: bool = True) -> Path:
    """``cache``, made if needed, after a real write into it; DataError naming ``data.cache_dir``
    of ``source`` (not the dataset that happens to be loaded first) when that fails.
    ``configured``: the trial sets data.cache_dir (else the default folder is meant)."""
    import tempfile

    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = f"cannot be written ({e.strerror or e}{f': {e.filename}' if e.filename else ''})"
        raise DataError(problems=[Problem(source, CACHE_DIR_PATH, cache_dir_message(cache, reason, configured))]) from None
    return cache


def _quiet_datasets() -> None:
    import sys

    import datasets

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()


def literal_path(file: Path, cache: str) -> str:
    """``file`` as ``datasets`` will read it literally: it expands ``$VAR`` and ``~`` in data file
    paths (``relative_to_absolute_path``), so a path holding either is reached through a symlink
    named by its hash, under the cache (or the temp folder when the cache path has them too)."""
    text = str(Path(file).absolute())
    if "$" not in text and "~" not in text:
        return text
    import hashlib
    import tempfile

    base = Path(cache) if "$" not in cache and "~" not in cache else Path(tempfile.gettempdir())
    links = base / "literal-paths"
    links.mkdir(parents=True, exist_ok=True)
    link = links / (hashlib.sha256(text.encode()).hexdigest()[:16] + Path(file).suffix)
    if not (link.is_symlink() and os.readlink(link) == text):
        tmp = links / f".{link.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(text)
        os.replace(tmp, link)
    return str(link)


def load_splits(
    entry: dict[str, Any],
    roles: Iterable[str] = ROLES,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    where: str = "$",
    save_snapshot: bool = False,
) -> dict[str, Dataset]:
    """role -> ``datasets.Dataset`` for the entry's splits of ``roles`` (raw columns).

    A hub dataset is read from its snapshot under the cache dir when ``finetune prefetch`` made
    one (``save_snapshot=True``), so offline compute nodes never touch the network.
    """
    import datasets

    _quiet_datasets()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hf_cache = str(cache / "datasets")
    wanted = entry_splits(entry, roles)
    label = dataset_label(entry)
    problems = split_problems(entry, wanted, where=where)
    if problems:
        raise DataError(problems=problems)
    folder = local_folder(entry)
    out: dict[str, Dataset] = {}
    if folder is not None and not is_saved_dataset_dict(folder):
        for role, split in wanted.items():
            file = find_split_file(folder, split)
            assert file is not None  # checked by split_problems
            builder, kwargs = EXTENSIONS[file.suffix]
            if builder == "csv":
                kwargs = {**kwargs, "na_filter": False}  # keep "NA", "null", "" as text
            try:
                loaded = datasets.load_dataset(builder, data_files={"data": literal_path(file, hf_cache)},
                                               cache_dir=hf_cache, **kwargs)
            except Exception as e:  # the builders raise many kinds; the message is what matters
                raise DataError(problems=[Problem(str(file), f"{where}.splits.{role}", f"cannot read: {e}")]) from None
            out[role] = loaded["data"]
        return out
    snapshot = hub_snapshot(entry, cache) if folder is None else None
    try:
        if folder is not None:
            loaded = datasets.load_from_disk(str(folder))
        elif snapshot is not None and is_saved_dataset_dict(snapshot):
            loaded = datasets.load_from_disk(str(snapshot))  # made by `finetune prefetch`: no network
        else:
            name = entry.get("dataset")
            if not name:
                raise DataError(problems=[Problem("trial config", f"{where}.dataset", "no dataset named")])
            loaded = datasets.load_dataset(str(name), entry.get("subset") or None, cache_dir=hf_cache)
            if save_snapshot and snapshot is not None:
                _save_atomically(loaded, snapshot)
    except DataError:
        raise
    except Exception as e:
        hint = "" if folder is not None else " (no network? run `finetune prefetch` where there is one, or set data.mirrors)"
        raise DataError(problems=[Problem(label, f"{where}.dataset", f"cannot load dataset: {e}{hint}")]) from None
    if isinstance(loaded, datasets.Dataset):
        raise DataError(problems=[Problem(label, f"{where}.dataset", "holds one Dataset without splits; save a DatasetDict")])
    problems = []
    for role, split in wanted.items():
        name = next((c for c in split_candidates(split) if c in loaded), None)
        if name is None:
            problems.append(
                Problem(label, f"{where}.splits.{role}", f"split {split!r} not found (has: {', '.join(sorted(loaded))})")
            )
        else:
            out[role] = loaded[name]
    if problems:
        raise DataError(problems=problems)
    return out


def _save_atomically(dataset_dict: Any, target: Path) -> None:
    """``save_to_disk`` into a temporary sibling, then rename: a crash leaves no half snapshot."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset_dict.save_to_disk(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)


# -- fingerprints and cached maps ------------------------------------------------------------


def _cached_map(ds: Dataset, fn, *, key: str, cache_dir: Path, **kwargs: Any) -> Dataset:
    """``ds.map(fn, batched=True)`` stored at ``cache_dir/maps/<key>.arrow`` and reused from there."""
    maps = cache_dir / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    return ds.map(
        fn,
        batched=True,
        new_fingerprint=key,
        cache_file_name=str(maps / f"{key}.arrow"),
        load_from_cache_file=True,
        **kwargs,
    )


def features_of(entry: dict[str, Any]) -> list[str]:
    feats = entry.get("train_features") or ["text"]
    return [feats] if isinstance(feats, str) else [str(f) for f in feats]


def add_phoneme_columns(
    ds: Dataset,
    features: Sequence[str],
    espeak: str,
    *,
    cache_dir: Path,
    batch_size: int = 256,
    num_proc: int | None = None,
) -> Dataset:
    """Add ``<feature>-phoneme`` IPA columns that ``ds`` lacks (transcribed once, then cached).

    ``num_proc`` > 1 transcribes in that many processes (datasets' map); the cache is found
    again whatever ``num_proc`` a later call uses.
    """
    from finetune.compute import ipa

    missing = [f for f in features if f + PHONEME_SUFFIX not in ds.column_names]
    if not missing:
        return ds
    key = digest("ipa", ds._fingerprint, missing, ipa.transcription_id(espeak))

    def transcribe_batch(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {
            f + PHONEME_SUFFIX: ipa.transcribe(["" if t is None else str(t) for t in batch[f]], espeak)
            for f in missing
        }

    if num_proc is not None and (num_proc < 2 or len(ds) < 2 * batch_size):
        num_proc = None
    return _cached_map(ds, transcribe_batch, key=key, cache_dir=cache_dir, batch_size=batch_size,
                       num_proc=num_proc, desc=f"IPA ({espeak})")


def add_qa_phoneme_columns(ds: Dataset, entry: dict[str, Any], espeak: str, *, cache_dir: Path,
                           batch_size: int = 64) -> Dataset:
    """``question-phoneme``, ``context-phoneme`` and ``<answers>-phoneme`` columns (cached like all maps)."""
    from finetune.compute import ipa
    from finetune.compute.qa_answers import QA_IPA_REVISION, answers_of, transcribe_with_answers

    question, context = features_of(entry)
    answers = entry.get("eval_feature", "answers")
    key = digest("qa-ipa", QA_IPA_REVISION, ds._fingerprint, question, context, answers,
                  ipa.transcription_id(espeak))

    def transcribe_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        golds = [answers_of(v) for v in batch[answers]]
        contexts, ipa_answers = transcribe_with_answers(batch[context], golds, espeak)
        questions = ipa.transcribe(["" if q is None else str(q) for q in batch[question]], espeak)
        return {question + PHONEME_SUFFIX: questions, context + PHONEME_SUFFIX: contexts,
                answers + PHONEME_SUFFIX: ipa_answers}

    return _cached_map(ds, transcribe_batch, key=key, cache_dir=cache_dir, batch_size=batch_size,
                       desc=f"IPA with answers ({espeak})")


def tokenizer_id(tokenizer: Any) -> str:
    """A content hash of a fast tokenizer (vocab, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return digest(text, tokenizer.eos_token)


# -- labels ----------------------------------------------------------------------------------


def _column_values(ds: Dataset, column: str) -> list[Any]:
    from datasets import ClassLabel

    feature = ds.features[column]
    values = ds.unique(column)
    if isinstance(feature, ClassLabel):
        return [feature.int2str(v) for v in values]
    return values


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def resolve_label_names(
    entries: dict[str, dict[str, Any]], values: dict[str, dict[str, list[Any]]], *, source: str = "trial config"
) -> list[str]:
    """The trial's label list: the entries' ``labels`` (all equal) or the sorted union of values.

    ``values`` is language -> role -> unique label values. Checks ``classes`` and that every
    value has a label; raises DataError listing every problem.
    """
    problems: list[Problem] = []
    lists = {lang: [str(x) for x in e["labels"]] for lang, e in entries.items() if e.get("labels")}
    if lists:
        first_lang, names = next(iter(lists.items()))
        for lang, other in lists.items():
            if other != names:
                problems.append(
                    Problem(source, f"$.datasets.{lang}.labels", f"differs from the labels of {first_lang}: {other} != {names}")
                )
    else:
        union: dict[str, Any] = {}
        for per_role in values.values():
            for vals in per_role.values():
                for v in vals:
                    union.setdefault(str(v), v)
        names = [str(v) for v in sorted(union.values(), key=_sort_key)]
    for lang, entry in entries.items():
        label = dataset_label(entry)
        column = entry.get("eval_feature", "label")
        for role, vals in values.get(lang, {}).items():
            unknown = sorted({str(v) for v in vals} - set(names))
            if unknown and not _are_ids(vals, len(names)):
                problems.append(
                    Problem(
                        label,
                        f"$.datasets.{lang}.labels",
                        f"column {column!r} of split {role} has labels not in the label list: {', '.join(unknown[:5])}"
                        + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""),
                    )
                )
        classes = entry.get("classes")
        if classes is not None and int(classes) != len(names):
            problems.append(
                Problem(label, f"$.datasets.{lang}.classes", f"classes is {classes} but there are {len(names)} labels: {names}")
            )
    if problems:
        raise DataError(problems=problems)
    return names


def _are_ids(values: Sequence[Any], n: int) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in values)


def label_mapper(names: Sequence[str], values: Sequence[Any]):
    """value -> id: by name, or the value itself when the column holds ids into ``names``."""
    index = {n: i for i, n in enumerate(names)}
    by_name = all(str(v) in index for v in values)
    if by_name:
        return lambda v: index[str(v)]
    return int


# -- encoding --------------------------------------------------------------------------------


def input_columns(entry: dict[str, Any], model_type: str) -> list[str]:
    """The columns joined into the model input: ``train_features`` (``-phoneme`` ones for ipa)."""
    feats = features_of(entry)
    return [f + PHONEME_SUFFIX for f in feats] if model_type == "ipa" else feats


def _column_problems(ds: Dataset, entry: dict[str, Any], role: str, model_type: str, where: str) -> list[Problem]:
    label = dataset_label(entry)
    have = ds.column_names
    problems = []
    for i, feat in enumerate(features_of(entry)):
        ok = feat in have or (model_type == "ipa" and feat + PHONEME_SUFFIX in have)
        if not ok:
            problems.append(
                Problem(
                    label,
                    f"{where}.train_features[{i}]",
                    f"column {feat!r} not in split {role} (columns: {', '.join(have)})",
                )
            )
    kind = entry.get("task_type") or "classification"
    column = entry.get("eval_feature", "label")
    ipa_answers = kind == "question-answering" and model_type == "ipa" and column + PHONEME_SUFFIX in have
    if kind != "causal-lm" and column not in have and not ipa_answers:
        what = "answers" if kind == "question-answering" else "label"
        problems.append(
            Problem(label, f"{where}.eval_feature", f"{what} column {column!r} not in split {role} (columns: {', '.join(have)})")
        )
    elif kind == "question-answering" and len(features_of(entry)) == 2 and not problems:
        from finetune.compute.qa_answers import answer_problems

        suffix = PHONEME_SUFFIX if ipa_answers else ""
        problems += answer_problems(ds, column + suffix, features_of(entry)[1] + suffix, label=label, where=where,
                                    role=role)
    return problems


def encode(
    ds: Dataset,
    *,
    columns: Sequence[str],
    label_column: str,
    label_names: Sequence[str],
    tokenizer: Any,
    block_size: int,
    filter_length: bool,
    separator: str,
    language: str,
    cache_dir: Path,
) -> Dataset:
    """Tokenize the joined input columns and map labels; drop or truncate rows over ``block_size``."""
    from datasets import ClassLabel

    feature = ds.features[label_column]
    raw_values = _column_values(ds, label_column)
    to_id = label_mapper(label_names, raw_values)
    class_names = feature.names if isinstance(feature, ClassLabel) else None
    key = digest(
        "encode", ENCODING_REVISION, ds._fingerprint, list(columns), label_column, list(label_names),
        tokenizer_id(tokenizer), block_size, filter_length, separator, language,
    )  # fmt: skip

    def encode_batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        texts = [
            separator.join("" if batch[c][i] is None else str(batch[c][i]) for c in columns)
            for i in range(len(indices))
        ]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        labels = batch[label_column]
        if class_names is not None:
            labels = [class_names[v] for v in labels]
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "length": [], "language": [], "row": []}
        for row, toks, lab in zip(indices, ids, labels, strict=True):
            if len(toks) > block_size:
                if filter_length:
                    continue
                toks = toks[:block_size]
            out["input_ids"].append(toks)
            out["labels"].append(to_id(lab))
            out["length"].append(len(toks))
            out["language"].append(language)
            out["row"].append(row)
        return out

    return _cached_map(
        ds, encode_batch, key=key, cache_dir=cache_dir, with_indices=True, batch_size=1000,
        remove_columns=ds.column_names, desc=f"tokenize ({language})",
    )  # fmt: skip


# -- the trial -------------------------------------------------------------------------------


def _roles_for(language: str, trial_config: dict[str, Any]) -> list[str]:
    roles = []
    if language in trial_config.get("train_languages", []):
        roles.append("train")
    if language in trial_config.get("eval_languages", []):
        roles += ["eval", "test"]
    return roles


def load_trial_raw(
    trial_config: dict[str, Any], *, cache_dir: str | os.PathLike[str] | None = None, source: str = "trial config"
) -> tuple[dict[str, dict[str, Dataset]], list[Problem]]:
    """language -> role -> raw Dataset (IPA columns added for ipa trials), and column problems."""
    configured = cache_dir is not None or bool((trial_config.get("data") or {}).get("cache_dir"))
    cache = writable_cache_dir(resolve_cache_dir(trial_config, cache_dir), source, configured)
    model_type = trial_config.get("model_type", "normal")
    entries = trial_config.get("datasets") or {}
    problems: list[Problem] = []
    raw: dict[str, dict[str, Dataset]] = {}
    for lang in trial_languages(trial_config):
        where = f"$.datasets.{lang}"
        entry = entries.get(lang)
        if entry is None:
            problems.append(Problem(source, where, f"no dataset for language {lang!r}"))
            continue
        from finetune.login.tasks import entry_problems

        kind = entry.get("task_type") or "classification"
        kind_problems = entry_problems(entry, source=source, where=where) if kind != "classification" else []
        if kind_problems:  # (classification's classes are checked against the labels later)
            problems.extend(kind_problems)
            continue
        try:
            splits = load_splits(entry, _roles_for(lang, trial_config), cache_dir=cache, where=where)
        except DataError as e:
            problems.extend(e.problems)
            continue
        split_problems_ = [p for role, ds in splits.items() for p in _column_problems(ds, entry, role, model_type, where)]
        if split_problems_:
            problems.extend(split_problems_)
            continue
        if model_type == "ipa":
            espeak = entry.get("espeak")
            needs = any(f + PHONEME_SUFFIX not in ds.column_names for ds in splits.values() for f in features_of(entry))
            if needs and not espeak:
                problems.append(Problem(source, f"{where}.espeak", f"no espeak code for {lang!r}: cannot make IPA columns"))
                continue
            if needs and kind == "question-answering":
                                splits = {role: add_qa_phoneme_columns(ds, entry, espeak, cache_dir=cache) for role, ds in splits.items()}
            elif needs:
                splits = {role: add_phoneme_columns(ds, features_of(entry), espeak, cache_dir=cache) for role, ds in splits.items()}
        raw[lang] = splits
    return raw, problems


@dataclass
class RawTrialData:
    """What every task's ``prepare_*`` starts from: the trial's raw splits, loaded and checked."""

    splits: dict[str, dict[str, Dataset]]  # language -> role -> raw Dataset (IPA columns added for ipa trials)
    cache: Path  # the resolved cache folder the encodings go to
    model_type: str
    source: str  # the file problems are reported against


def load_raw_trial_data(trial_config: dict[str, Any], *, cache_dir: str | os.PathLike[str] | None = None,
                        source: str | None = None) -> RawTrialData:
    """:func:`load_trial_raw` for a ``prepare_*``: the cache folder resolved, DataError (exit 2) listing
    every missing dataset, split or column at once."""
    source = source or config_file(trial_config)
    cache = resolve_cache_dir(trial_config, cache_dir)
    raw, problems = load_trial_raw(trial_config, cache_dir=cache, source=source)
    if problems:
        raise DataError(problems=problems)
    return RawTrialData(raw, Path(cache), trial_config.get("model_type", "normal"), source)


def prepare_trial_data(
    trial_config: dict[str, Any],
    tokenizer: Any,
    block_size: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    separator: str | None = None,
    source: str | None = None,
) -> TrialData:
    """Load, label, transcribe (ipa) and tokenize every dataset of a trial (TRIAL_CONFIG).

    ``train`` is the union of the train languages' train splits; ``eval``/``test`` map each eval
    language to its split (``test`` only where the entry names one). Raises DataError (exit 2)
    listing every missing dataset, split, column or label at once.
    """
    from datasets import concatenate_datasets

    source = source or config_file(trial_config)
    entries = trial_config.get("datasets") or {}
    kind = trial_task_type(trial_config)
    if kind != "classification":
        raise DataError(problems=[Problem(source, "$.datasets", f"a {kind} trial: use prepare_task_data")])
    loaded = load_raw_trial_data(trial_config, cache_dir=cache_dir, source=source)
    raw, cache, model_type = loaded.splits, loaded.cache, loaded.model_type
    values = {
        lang: {role: _column_values(ds, entries[lang].get("eval_feature", "label")) for role, ds in splits.items()}
        for lang, splits in raw.items()
    }
    label_names = resolve_label_names({lang: entries[lang] for lang in raw}, values, source=source)
    if separator is None:
        separator = tokenizer.eos_token or " "
    encoded: dict[str, dict[str, Dataset]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for lang, splits in raw.items():
        entry = entries[lang]
        for role, ds in splits.items():
            enc = encode(
                ds,
                columns=input_columns(entry, model_type),
                label_column=entry.get("eval_feature", "label"),
                label_names=label_names,
                tokenizer=tokenizer,
                block_size=block_size,
                filter_length=bool(entry.get("filter_length", True)),
                separator=separator,
                language=lang,
                cache_dir=cache,
            )
            encoded.setdefault(lang, {})[role] = enc
            dropped.setdefault(lang, {})[role] = len(ds) - len(enc)
    train_parts = [encoded[lang]["train"] for lang in trial_config.get("train_languages", []) if "train" in encoded.get(lang, {})]
    train = concatenate_datasets(train_parts) if train_parts else None
    eval_langs = trial_config.get("eval_languages", [])
    return TrialData(
        train=train,
        eval={lang: encoded[lang]["eval"] for lang in eval_langs if "eval" in encoded.get(lang, {})},
        test={lang: encoded[lang]["test"] for lang in eval_langs if "test" in encoded.get(lang, {})},
        label_names=label_names,
        separator=separator,
        dropped=dropped,
    )


def trial_task_type(trial_config: dict[str, Any]) -> str:
    """The task type of a trial's datasets (the planner made sure they agree)."""
    kinds = {str(e.get("task_type") or "classification") for e in (trial_config.get("datasets") or {}).values()}
    return kinds.pop() if len(kinds) == 1 else "classification"
