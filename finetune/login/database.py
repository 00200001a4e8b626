"""The language database: language -> {"espeak": voice, task -> dataset name -> entry}.

Pure lookups over the parsed JSON; ``load_database`` is the only function that reads a file.
An entry's ``dataset`` is a hub id (``Davlan/sib200``) or a local folder, relative to the
database file; ``data.mirrors`` in the config maps hub ids to local copies.

A language without ``"espeak"`` gets its espeak-ng voice from its name (``ESPEAK_VOICES``), as
the original tool's databases name none. Databases in the original format (splits as a
``[train, eval]`` list) are translated on load by ``finetune.login.legacy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import ConfigError, Problem

META_KEYS = ("$schema", "$comment")

# Language name (as the database spells it, lower case) -> espeak-ng voice. Every voice is one
# that espeak-ng ships (tests check it against the voices of the installed library).
ESPEAK_VOICES = {
    "afrikaans": "af", "albanian": "sq", "amharic": "am", "arabic": "ar", "armenian": "hy",
    "azerbaijani": "az", "basque": "eu", "belarusian": "be", "bengali": "bn", "bosnian": "bs",
    "bulgarian": "bg", "cantonese": "yue", "catalan": "ca", "chinese": "cmn", "croatian": "hr",
    "czech": "cs", "danish": "da", "dutch": "nl", "english": "en-us", "esperanto": "eo",
    "estonian": "et", "finnish": "fi", "french": "fr-fr", "georgian": "ka", "german": "de",
    "greek": "el", "gujarati": "gu", "hebrew": "he", "hindi": "hi", "hungarian": "hu",
    "icelandic": "is", "indonesian": "id", "irish": "ga", "italian": "it", "japanese": "ja",
    "kannada": "kn", "kazakh": "kk", "korean": "ko", "kyrgyz": "ky", "latin": "la", "latvian": "lv",
    "lithuanian": "lt", "macedonian": "mk", "malay": "ms", "malayalam": "ml", "maltese": "mt",
    "mandarin": "cmn", "marathi": "mr", "nepali": "ne", "norwegian": "nb", "persian": "fa",
    "polish": "pl", "portuguese": "pt", "punjabi": "pa", "romanian": "ro", "russian": "ru",
    "serbian": "sr", "sindhi": "sd", "sinhala": "si", "slovak": "sk", "slovenian": "sl",
    "spanish": "es", "swahili": "sw", "swedish": "sv", "tamil": "ta", "tatar": "tt", "telugu": "te",
    "thai": "th", "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "uzbek": "uz",
    "vietnamese": "vi", "welsh": "cy",
}


def espeak_voice(language: str) -> str | None:
    """The espeak-ng voice for a language name (``ESPEAK_VOICES``), or None when unknown."""
    return ESPEAK_VOICES.get(language.strip().lower())


@dataclass(frozen=True)
class Database:
    data: dict[str, Any]
    path: str = "<database>"  # the file as named in messages
    folder: Path = field(default_factory=Path.cwd)  # local dataset folders are relative to this

    def languages(self) -> list[str]:
        return [k for k in self.data if k not in META_KEYS]

    def has_language(self, language: str) -> bool:
        return language in self.data and language not in META_KEYS

    def espeak(self, language: str) -> str | None:
        """The entry's ``"espeak"``, else the voice derived from the language name, else None."""
        return self.data[language].get("espeak") or espeak_voice(language)

    def tasks(self, language: str) -> list[str]:
        return [k for k in self.data.get(language, {}) if k != "espeak"]

    def dataset_names(self, language: str, task: str) -> list[str]:
        return list(self.data.get(language, {}).get(task, {}) or {})

    def entry(self, language: str, task: str, name: str) -> dict[str, Any]:
        return self.data[language][task][name]

    def lookup_problems(self, language: str, task: str, name: str) -> list[str]:
        """Why (language, task, name) has no entry; empty when it has one."""
        from finetune.login.schema import did_you_mean

        if not self.has_language(language):
            return [f"language {language!r} is not in the database {self.path}" + did_you_mean(language, self.languages())]
        if task not in self.tasks(language):
            return [f"language {language!r} has no task {task!r} in {self.path}" + did_you_mean(task, self.tasks(language))]
        names = self.dataset_names(language, task)
        if name not in names:
            return [f"language {language!r} has no dataset {name!r} for task {task!r} in {self.path}"
                    + did_you_mean(name, names)]
        return []

    def local_folder(self, entry: dict[str, Any], mirrors: dict[str, str | None]) -> str | None:
        """The absolute local folder holding this entry's split files, or None (load from the hub).

        A mirrored hub id gives ``<mirror>/<subset>``; a local ``dataset`` (absolute, ``./``,
        ``../``, ``~`` or an existing folder beside the database) gives ``<dataset>/<subset>``.
        """
        dataset = entry["dataset"]
        subset = entry.get("subset")
        root: str | None = mirrors.get(dataset)
        if root is None and _looks_local(dataset, self.folder):
            root = os.path.normpath(os.path.join(self.folder, os.path.expanduser(dataset)))
        if root is None:
            return None
        return os.path.join(root, subset) if subset else root


def _looks_local(dataset: str, folder: Path) -> bool:
    if dataset.startswith(("/", "./", "../", "~")):
        return True
    return (folder / dataset).is_dir()


def load_database(path: str | os.PathLike[str], *, name: str | None = None) -> Database:
    """Read and schema-check the database; raises ConfigError listing every problem."""
    from finetune.login.layers import read_config_file
    from finetune.login.legacy import translate_database
    from finetune.login.schema import validate

    shown = name or str(path)
    try:
        data = read_config_file(path)
    except ConfigError as e:
        raise ConfigError(problems=[Problem(shown, p.path, p.message) for p in e.problems]) from None
    translation = translate_database(data, shown)
    data = translation.value
    problems = translation.problems + validate("database", data, shown)
    problems += consistency_problems(data, shown)
    if problems:
        raise ConfigError(problems=problems)
    return Database(data=data, path=shown, folder=Path(path).resolve().parent)


def consistency_problems(data: Any, shown: str) -> list[Problem]:
    """Checks the schema cannot express: labels agree with classes."""
    from finetune.login.layers import join_path

    problems: list[Problem] = []
    if not isinstance(data, dict):
        return problems
    for language, tasks in data.items():
        if language in META_KEYS or not isinstance(tasks, dict):
            continue
        for task, names in tasks.items():
            if task == "espeak" or not isinstance(names, dict):
                continue
            for ds_name, entry in names.items():
                if not isinstance(entry, dict):
                    continue
                labels, classes = entry.get("labels"), entry.get("classes")
                if isinstance(labels, list) and isinstance(classes, int) and len(labels) != classes:
                    path = join_path(join_path(join_path(join_path("$", language), task), ds_name), "labels")
                    problems.append(Problem(shown, path, f"has {len(labels)} labels but classes is {classes}"))
                if isinstance(labels, list) and len(set(labels)) != len(labels):
                    path = join_path(join_path(join_path(join_path("$", language), task), ds_name), "labels")
                    problems.append(Problem(shown, path, "has duplicate labels"))
    return problems
