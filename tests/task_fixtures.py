"""Small datasets in the real formats for the QA and causal-LM tests (made here, no downloads).

``write_squad(folder, language)`` writes ``train.jsonl`` / ``validation.jsonl`` in SQuAD's layout
(id, question, context, answers {"text": [...], "answer_start": [...]}) for ``russian`` or
``polish``: facts about capitals placed after filler sentences from SIB-200, so some contexts
are longer than the tiny model's block (64 tokens); validation rows carry two gold answers.
``write_text(folder, language)`` writes raw text (``train.txt``, ``validation.txt``, one
document per line) from SIB-200 sentences for causal-LM fine-tuning.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanogpt_fixtures import sib200_texts

FACTS = {
    "russian": [
        ("Какая столица {x}?", "Столица {x} — {a}.", x, a)
        for x, a in [("Польши", "Варшава"), ("России", "Москва"), ("Франции", "Париж"), ("Италии", "Рим"),
                     ("Испании", "Мадрид"), ("Германии", "Берлин"), ("Чехии", "Прага"), ("Австрии", "Вена")]
    ],
    "polish": [
        ("Jaka jest stolica {x}?", "Stolicą {x} jest {a}.", x, a)
        for x, a in [("Polski", "Warszawa"), ("Rosji", "Moskwa"), ("Francji", "Paryż"), ("Włoch", "Rzym"),
                     ("Hiszpanii", "Madryt"), ("Niemiec", "Berlin"), ("Czech", "Praga"), ("Austrii", "Wiedeń")]
    ],
}
SIB = {"russian": "rus_Cyrl", "polish": "pol_Latn"}


def squad_rows(language: str, *, offset: int = 0, n_fillers: tuple[int, ...] = (0, 1, 3)) -> list[dict]:
    fillers = sib200_texts((SIB[language],), per_language=40)
    rows = []
    for i, (q, fact, x, a) in enumerate(FACTS[language]):
        before = " ".join(fillers[(offset + i + k) % len(fillers)] for k in range(n_fillers[i % len(n_fillers)]))
        sentence = fact.format(x=x, a=a)
        context = (before + " " + sentence if before else sentence) + " " + fillers[(offset + i) % len(fillers)]
        start = context.index(sentence) + sentence.index(a)
        rows.append({"id": f"{language}-{offset}-{i}", "question": q.format(x=x), "context": context,
                     "answers": {"text": [a], "answer_start": [start]}})
    return rows


def write_squad(folder: Path, language: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = squad_rows(language) + squad_rows(language, offset=9)
    valid = squad_rows(language, offset=20)
    for row in valid:  # a second gold answer: the answer with its sentence's full stop
        a, s = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        row["answers"] = {"text": [a, row["context"][s:s + len(a) + 1]], "answer_start": [s, s]}
    for name, rows in (("train", train), ("validation", valid)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    return folder


def write_text(folder: Path, language: str, *, train: int = 40, valid: int = 12) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = sib200_texts((SIB[language],), per_language=train + valid)
    (folder / "train.txt").write_text("\n".join(texts[:train]) + "\n", encoding="utf-8")
    (folder / "validation.txt").write_text("\n".join(texts[train:]) + "\n", encoding="utf-8")
    return folder


def entry(folder: Path, task_type: str, language: str) -> dict:
    """A resolved dataset entry (as the plan freezes it) for a folder written above."""
    espeak = {"russian": "ru", "polish": "pl"}[language]
    base = {"dataset": str(folder), "path": str(folder), "splits": {"train": "train", "eval": "validation"},
            "task_type": task_type, "language": language, "espeak": espeak, "name": f"{task_type}-{language}"}
    if task_type == "question-answering":
        return {**base, "train_features": ["question", "context"], "eval_feature": "answers"}
    return {**base, "train_features": ["text"]}
