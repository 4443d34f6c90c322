"""VQA v2: the official JSON files, answer normalisation, soft targets, accuracy and a Dataset.

Files read (the layouts published at visualqa.org, never downloaded here)::

    v2_OpenEnded_mscoco_<subtype>_questions.json
        {"info", "license", "task_type", "data_type", "data_subtype",
         "questions": [{"image_id": int, "question": str, "question_id": int}, ...]}
    v2_mscoco_<subtype>_annotations.json            (absent for test2015)
        {"info", "license", "data_type", "data_subtype",
         "annotations": [{"question_id": int, "image_id": int, "question_type": str,
                          "answer_type": str, "multiple_choice_answer": str,
                          "answers": [{"answer": str, "answer_confidence": str,
                                       "answer_id": int}, ... 10 of them]}, ...]}

Answer normalisation and accuracy follow the official evaluation script
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA at its latest revision,
commit a013f00 ("Fixed processing answers bug", 2021-03-11); re-implemented here, not copied:

1. ``\\n`` and ``\\t`` become spaces, then the answer is stripped.
2. Punctuation (:func:`process_punctuation`): for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``:
   when the raw answer has that mark next to a space, or anywhere holds digit-comma-digit
   (the script's ``commaStrip``), the mark is deleted; otherwise it becomes a space. Then
   every period not followed by a digit is deleted (the script's ``periodStrip``, whose
   ``(?!<=\\d)`` group is a typo for a look-behind and never fires; because the script passes
   ``re.UNICODE`` as the ``count`` argument, only the first 32 such periods go). Colons and
   apostrophes are kept. So ``"1,000" -> "1000"``, ``"the dog." -> "the dog"``, ``"3.5"`` stays.
3. Digits and articles (:func:`process_digit_article`): lower-case, split on whitespace, map
   number words ``none``/``zero`` .. ``ten`` to ``0`` .. ``10``, drop ``a``/``an``/``the``, then
   map contraction spellings without apostrophes to the official form (``dont -> don't``;
   :data:`CONTRACTIONS`), and join with single spaces.
4. Accuracy of a predicted answer against the 10 human answers: for each of the 10
   leave-one-out subsets of 9 answers, ``min(1, #matches / 3)``; the mean of the ten. A
   question whose human answers differ after step 1 compares answers after steps 2-3; one
   whose 10 answers are identical compares them after step 1 only (the script's behaviour;
   ``always_normalize=True`` normalises in both cases).

With n answers of which c equal the prediction this is ``(c*min(1,(c-1)/3) + (n-c)*min(1,c/3)) / n``;
for n = 10: c = 0, 1, 2, 3, >=4 -> 0, 0.3, 0.6, 0.9, 1.0. Training targets
(:func:`soft_scores`) use the same number for every distinct normalised human answer, so
a prediction's target entry equals the accuracy it would be scored.

Axis letters in shape notes: A answers in the vocabulary, L question tokens, K regions,
D feature size.

Example::

    questions = load_vqa_questions("v2_OpenEnded_mscoco_val2014_questions.json")
    annotations = load_vqa_annotations("v2_mscoco_val2014_annotations.json")
    answers = build_answer_vocab(annotations, top_n=3129)
    words = build_question_vocab(questions)
    features = open_features("trainval_36/val36.hdf5", id_map="val36_imgid2idx.pkl")
    data = VQADataset(questions, annotations, features, answers, words, max_boxes=36)
    data[0]["target"]                                   # Tensor[3129], soft scores
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import load_json, save_json

__all__ = [
    "AnswerVocab",
    "CONTRACTIONS",
    "QuestionVocab",
    "VQADataset",
    "accuracy_from_count",
    "build_answer_vocab",
    "build_question_vocab",
    "evaluate_vqa",
    "load_vqa_annotations",
    "load_vqa_questions",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "soft_scores",
    "tokenize_question",
    "vqa_accuracy",
]

# ------------------------------------------------------------------ official normalisation

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # what the script's "(?!<=\d)(\.)(?!\d)" matches
_PERIOD_COUNT = int(re.UNICODE)  # the script passes re.UNICODE (32) as sub()'s count
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# Official contracted forms. Each is reached from the spellings that lack exactly one of its
# apostrophes ("don't" <- "dont"; "couldn't've" <- "couldnt've", "couldn'tve"), which is the
# rule behind the script's table. Entries of the script that break the rule are added below.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am
mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've
who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll
y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in _CONTRACTED:
        cuts = [i for i, ch in enumerate(form) if ch == "'"]
        for i in cuts:
            table[form[:i] + form[i + 1 :]] = form
    # the script's irregular entries: two identities and one reversed mapping
    table.update({"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"})
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()
"""Spelling -> official contracted form, as applied word by word in step 3. Keys with capitals
(``Im``, ``Ive``, ``Id've``) never match, since words are lower-cased first (as in the script)."""


def process_punctuation(text: str) -> str:
    """Step 2 of the module docstring: ``"yes!" -> "yes "``, ``"1,000" -> "1000"``, ``"dog." -> "dog"``."""
    out = text
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        if drop_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Step 3 of the module docstring: ``"Two dogs" -> "2 dogs"``, ``"the cat" -> "cat"``, ``"dont" -> "don't"``."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """Official answer normalisation, steps 1-3: ``"The Dog." -> "dog"``, ``"two" -> "2"``."""
    if not isinstance(text, str):
        raise ValueError(f"normalize_answer: expected a str, got {type(text).__name__}: {text!r}")
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def accuracy_from_count(count: int, n_answers: int = 10) -> float:
    """Leave-one-out accuracy of an answer given by ``count`` of ``n_answers`` humans.

    ``(c * min(1, (c-1)/3) + (n-c) * min(1, c/3)) / n``: 0, 0.3, 0.6, 0.9, 1.0 for c = 0..4 of 10.
    """
    if n_answers < 1 or not 0 <= count <= n_answers:
        raise ValueError(f"accuracy_from_count: expected 0 <= count <= n_answers, n_answers >= 1; got {count}, {n_answers}")
    c, n = count, n_answers
    return (c * min(1.0, (c - 1) / 3) + (n - c) * min(1.0, c / 3)) / n


def vqa_accuracy(prediction: str, answers: Sequence[str], *, always_normalize: bool = False) -> float:
    """Official VQA accuracy of one predicted answer (module docstring, step 4).

    Args:
        prediction: the predicted answer (raw text).
        answers: the human answers of the question (10 in VQA v2), raw as in the annotations.
        always_normalize: normalise even when every human answer is the same (the official
            script does not).

    Returns:
        float in [0, 1].
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"vqa_accuracy: expected a non-empty sequence of human answers, got {answers!r}")
    gts = [_clean_whitespace(a) for a in answers]
    pred = _clean_whitespace(prediction)
    if always_normalize or len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    return accuracy_from_count(sum(a == pred for a in gts), len(gts))


def soft_scores(answers: Sequence[str]) -> dict[str, float]:
    """Soft target of every distinct normalised human answer: its leave-one-out accuracy.

    ``["2"]*3 + ["3"]*7 -> {"2": 0.9, "3": 1.0}``; answers are normalised first
    (:func:`normalize_answer`).
    """
    counts = Counter(normalize_answer(a) for a in answers)
    return {a: accuracy_from_count(c, len(answers)) for a, c in counts.items()}


# ------------------------------------------------------------------ files


def _records(path: str | os.PathLike[str], key: str, required: Sequence[str], kind: str) -> list[dict[str, Any]]:
    """The ``key`` list of a VQA JSON file, every record checked for ``required`` fields."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a VQA {kind} file with a {key!r} list, found {found}")
    records = data[key]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: {key}[{i}] is a {type(rec).__name__}, expected an object")
        missing = [f for f in required if f not in rec]
        if missing:
            raise ValueError(f"{path}: {key}[{i}] lacks fields {missing}; has {sorted(rec)}")
        for f in ("question_id", "image_id"):
            if f in required and (isinstance(rec[f], bool) or not isinstance(rec[f], int)):
                raise ValueError(f"{path}: {key}[{i}].{f} must be an int, got {rec[f]!r}")
    ids = Counter(rec["question_id"] for rec in records)
    dup = [q for q, n in ids.items() if n > 1]
    if dup:
        raise ValueError(f"{path}: question_id repeated in {key}: {sorted(dup)[:5]}")
    return records


def load_vqa_questions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``questions`` of a ``v2_OpenEnded_mscoco_*_questions.json`` file.

    Returns:
        list of ``{"question_id": int, "image_id": int, "question": str}`` in file order.

    Raises:
        ValueError: naming the file, when it is not that layout (e.g. an annotations file),
            a record lacks a field, or a question id repeats.
    """
    records = _records(path, "questions", ("question_id", "image_id", "question"), "questions")
    for i, rec in enumerate(records):
        if not isinstance(rec["question"], str):
            raise ValueError(f"{path}: questions[{i}].question must be a str, got {rec['question']!r}")
    return records


def load_vqa_annotations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``annotations`` of a ``v2_mscoco_*_annotations.json`` file.

    Returns:
        list of annotation dicts (``question_id``, ``image_id``, ``answers`` [list of
        ``{"answer", ...}``], ``multiple_choice_answer``, ``question_type``, ``answer_type``).

    Raises:
        ValueError: naming the file, when it is not that layout, a record lacks a field or
            has an empty / malformed ``answers`` list, or a question id repeats.
    """
    records = _records(path, "annotations", ("question_id", "image_id", "answers", "multiple_choice_answer"), "annotations")
    for i, rec in enumerate(records):
        ans = rec["answers"]
        if not isinstance(ans, list) or not ans or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in ans):
            raise ValueError(
                f"{path}: annotations[{i}].answers must be a non-empty list of {{'answer': str}} objects, got {ans!r}"
            )
    return records


# ------------------------------------------------------------------ vocabularies


@dataclass(frozen=True)
class AnswerVocab:
    """Answer classes, most frequent first; normalised strings (:func:`normalize_answer`)."""

    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(self.answers)})
        if len(self._index) != len(self.answers):  # type: ignore[attr-defined]
            raise ValueError("AnswerVocab: answers must be distinct")

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self._index  # type: ignore[attr-defined]

    def index(self, answer: str) -> int:
        """Class id of a normalised answer; -1 when it is not in the vocabulary."""
        return self._index.get(answer, -1)  # type: ignore[attr-defined]

    def target(self, human_answers: Sequence[str]) -> np.ndarray:
        """Soft target float32 [A]: :func:`soft_scores` of the answers found in the vocabulary."""
        out = np.zeros(len(self.answers), dtype=np.float32)
        for answer, score in soft_scores(human_answers).items():
            i = self.index(answer)
            if i >= 0:
                out[i] = score
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"answers": [...]}`` as JSON (atomically)."""
        return save_json(path, {"kind": "vqa_answer_vocab", "answers": list(self.answers)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnswerVocab:
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
            raise ValueError(f"{path}: expected an answer vocabulary {{'answers': [...]}}, got {type(data).__name__}")
        return cls(tuple(str(a) for a in data["answers"]))


def _ranked(counts: Counter[str], top_n: int | None, min_count: int | None) -> tuple[str, ...]:
    """Keys by count (descending), ties by string; ``count >= min_count`` and the first ``top_n``."""
    for name, value in (("top_n", top_n), ("min_count", min_count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if min_count is not None:
        ranked = [kv for kv in ranked if kv[1] >= min_count]
    if top_n is not None:
        ranked = ranked[:top_n]
    return tuple(k for k, _ in ranked)


def build_answer_vocab(
    annotations: Iterable[Mapping[str, Any]],
    *,
    top_n: int | None = None,
    min_count: int | None = None,
    source: str = "multiple_choice",
) -> AnswerVocab:
    """Answer vocabulary by frequency.

    Args:
        annotations: VQA annotation dicts (:func:`load_vqa_annotations`), usually train (+ val).
        top_n: keep the N most frequent answers (3129 and 3000 are the usual sizes).
        min_count: keep answers counted at least this often (bottom-up attention uses 9).
        source: ``"multiple_choice"`` counts each question's ``multiple_choice_answer`` once;
            ``"all"`` counts every one of the human answers.

    Both limits may be given; answers are normalised before counting and ties broken by the
    answer string, so the result is deterministic.
    """
    counts: Counter[str] = Counter()
    for rec in annotations:
        if source == "multiple_choice":
            counts[normalize_answer(rec["multiple_choice_answer"])] += 1
        elif source == "all":
            counts.update(normalize_answer(a["answer"]) for a in rec["answers"])
        else:
            raise ValueError(f"build_answer_vocab: source must be 'multiple_choice' or 'all', got {source!r}")
    counts.pop("", None)
    return AnswerVocab(_ranked(counts, top_n, min_count))


_QUESTION_DROP = re.compile(r"[.,'!?\"()*#:;]")
_QUESTION_SPLIT = re.compile(r"[\s\-/]+")


def tokenize_question(text: str) -> list[str]:
    """Lower-case words: ``.,'!?"()*#:;`` dropped, split on spaces, ``-`` and ``/``.

    ``"What's on the left-hand side?" -> ["whats", "on", "the", "left", "hand", "side"]``.
    """
    return [w for w in _QUESTION_SPLIT.split(_QUESTION_DROP.sub("", text.lower())) if w]


@dataclass(frozen=True)
class QuestionVocab:
    """Question words; id 0 is ``<pad>``, 1 is ``<unk>``, then words by frequency."""

    words: tuple[str, ...]

    PAD = 0
    UNK = 1

    def __post_init__(self) -> None:
        if self.words[:2] != ("<pad>", "<unk>"):
            raise ValueError(f"QuestionVocab: expected words to start with ('<pad>', '<unk>'), got {self.words[:2]}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, int]:
        """Token ids int64 [max_len] (0-padded, truncated) and the kept length."""
        ids = [self._index.get(w, self.UNK) for w in tokenize_question(text)][:max_len]  # type: ignore[attr-defined]
        out = np.zeros(max_len, dtype=np.int64)
        out[: len(ids)] = ids
        return out, len(ids)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_json(path, {"kind": "vqa_question_vocab", "words": list(self.words)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuestionVocab:
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise ValueError(f"{path}: expected a question vocabulary {{'words': [...]}}, got {type(data).__name__}")
        return cls(tuple(str(w) for w in data["words"]))


def build_question_vocab(questions: Iterable[Mapping[str, Any] | str], *, min_count: int = 1) -> QuestionVocab:
    """Words of the questions (dicts with ``"question"`` or plain strings) seen ``min_count`` times."""
    counts: Counter[str] = Counter()
    for q in questions:
        counts.update(tokenize_question(q if isinstance(q, str) else q["question"]))
    counts.pop("<pad>", None)
    counts.pop("<unk>", None)
    return QuestionVocab(("<pad>", "<unk>", *_ranked(counts, None, min_count)))


# ------------------------------------------------------------------ evaluation


def evaluate_vqa(
    predictions: Mapping[int, str] | Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    *,
    always_normalize: bool = False,
) -> dict[str, Any]:
    """Official VQA accuracy of a set of predictions.

    Args:
        predictions: ``{question_id: answer}`` or the results-file layout
            ``[{"question_id": int, "answer": str}, ...]``.
        annotations: the ground-truth annotation dicts; only questions with a prediction are
            scored, and every prediction must have an annotation.

    Returns:
        ``{"overall": float, "per_question_type": {type: float}, "per_answer_type": {type: float},
        "per_question": {question_id: float}, "count": int}``; accuracies in [0, 1] (the
        script reports 100x these, rounded to 2 decimals).
    """
    if isinstance(predictions, Mapping):
        pred = {int(k): str(v) for k, v in predictions.items()}
    else:
        pred = {}
        for i, rec in enumerate(predictions):
            if not isinstance(rec, Mapping) or "question_id" not in rec or "answer" not in rec:
                raise ValueError(f"evaluate_vqa: prediction {i} must have 'question_id' and 'answer', got {rec!r}")
            pred[int(rec["question_id"])] = str(rec["answer"])
    gts = {int(a["question_id"]): a for a in annotations}
    unknown = sorted(set(pred) - set(gts))
    if unknown:
        raise ValueError(f"evaluate_vqa: {len(unknown)} predictions have no annotation, e.g. question ids {unknown[:5]}")
    per_question = {
        q: vqa_accuracy(answer, [a["answer"] for a in gts[q]["answers"]], always_normalize=always_normalize)
        for q, answer in pred.items()
    }
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    for q, acc in per_question.items():
        by_qtype.setdefault(str(gts[q].get("question_type", "")), []).append(acc)
        by_atype.setdefault(str(gts[q].get("answer_type", "")), []).append(acc)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {
        "overall": mean(list(per_question.values())),
        "per_question_type": {k: mean(v) for k, v in sorted(by_qtype.items())},
        "per_answer_type": {k: mean(v) for k, v in sorted(by_atype.items())},
        "per_question": per_question,
        "count": len(per_question),
    }


# ------------------------------------------------------------------ dataset


class VQADataset(Dataset):
    """Questions joined with their image features (by ``image_id``) and soft answer targets.

    Args:
        questions: question dicts (:func:`load_vqa_questions`).
        annotations: annotation dicts of the same questions, or ``None`` (test split: no
            targets). Every question must have one, with the same ``image_id``.
        features: a feature store from :mod:`mmfuse.data.vqa_features` (anything with
            ``__contains__(image_id)`` and ``padded(image_id, max_boxes)``).
        answer_vocab: answer classes; required with annotations.
        question_vocab: question words.
        max_question_len: L, tokens per question (truncated / 0-padded; 14 as in most VQA code).
        max_boxes: K, regions per image (truncated / zero-padded, with ``region_mask``).
        drop_missing_images: drop questions whose image is not in ``features`` instead of
            raising.

    Item::

        question_id, image_id     Tensor[] int64
        question_tokens           Tensor[L] int64;  question_len Tensor[] int64
        regions                   Tensor[K, D] float32
        boxes                     Tensor[K, 4] float32 (x1, y1, x2, y2 in pixels when known)
        box_geometry              Tensor[K, 6] float32 (x1/w, y1/h, x2/w, y2/h, bw/w, bh/h)
        region_mask               Tensor[K] bool, True = a real region
        target                    Tensor[A] float32 soft scores   (with annotations)
        answer                    Tensor[] int64, the best-scored class, -1 if none in the vocab
    """

    def __init__(
        self,
        questions: Sequence[Mapping[str, Any]],
        annotations: Sequence[Mapping[str, Any]] | None,
        features: Any,
        answer_vocab: AnswerVocab | None,
        question_vocab: QuestionVocab,
        *,
        max_question_len: int = 14,
        max_boxes: int = 100,
        drop_missing_images: bool = False,
    ) -> None:
        if max_question_len < 1 or max_boxes < 1:
            raise ValueError(f"VQADataset: max_question_len and max_boxes must be >= 1, got {max_question_len}, {max_boxes}")
        if annotations is not None and answer_vocab is None:
            raise ValueError("VQADataset: annotations were given without an answer_vocab")
        self.features = features
        self.answer_vocab = answer_vocab
        self.question_vocab = question_vocab
        self.max_question_len = int(max_question_len)
        self.max_boxes = int(max_boxes)
        by_qid = None
        if annotations is not None:
            by_qid = {int(a["question_id"]): a for a in annotations}
            missing = [q["question_id"] for q in questions if q["question_id"] not in by_qid]
            if missing:
                raise ValueError(
                    f"VQADataset: {len(missing)} of {len(questions)} questions have no annotation, "
                    f"e.g. question ids {missing[:5]}; are the questions and annotations files of the same split?"
                )
            wrong = [
                (q["question_id"], q["image_id"], by_qid[q["question_id"]]["image_id"])
                for q in questions
                if by_qid[q["question_id"]]["image_id"] != q["image_id"]
            ]
            if wrong:
                raise ValueError(
                    "VQADataset: questions and annotations disagree on image_id, "
                    f"(question_id, question image, annotation image) e.g. {wrong[:3]}"
                )
        kept = [q for q in questions if q["image_id"] in features]
        if len(kept) != len(questions) and not drop_missing_images:
            absent = sorted({q["image_id"] for q in questions} - {q["image_id"] for q in kept})
            raise ValueError(
                f"VQADataset: {len(absent)} images have no features in {getattr(features, 'path', features)}, "
                f"e.g. image ids {absent[:5]}; pass drop_missing_images=True to skip their questions"
            )
        self.question_ids = np.array([q["question_id"] for q in kept], dtype=np.int64)
        self.image_ids = np.array([q["image_id"] for q in kept], dtype=np.int64)
        encoded = [question_vocab.encode(q["question"], self.max_question_len) for q in kept]
        self._tokens = np.stack([e[0] for e in encoded]) if encoded else np.zeros((0, self.max_question_len), np.int64)
        self._lengths = np.array([e[1] for e in encoded], dtype=np.int64)
        # soft targets kept sparse (a dense [N, A] table is ~5 GB for VQA v2 train): the
        # non-zero (class, score) pairs of question i are rows _target_start[i]:_target_start[i+1]
        self._has_targets = by_qid is not None and answer_vocab is not None
        if self._has_targets:
            pairs = [
                [(answer_vocab.index(a), s) for a, s in soft_scores([x["answer"] for x in by_qid[q["question_id"]]["answers"]]).items()]
                for q in kept
            ]
            pairs = [[(i, s) for i, s in row if i >= 0 and s > 0] for row in pairs]
            self._target_start = np.cumsum([0] + [len(row) for row in pairs], dtype=np.int64)
            self._target_class = np.array([i for row in pairs for i, _ in row], dtype=np.int64)
            self._target_score = np.array([s for row in pairs for _, s in row], dtype=np.float32)

    def target(self, index: int) -> np.ndarray:
        """Soft target float32 [A] of question ``index`` (:meth:`AnswerVocab.target` of its answers)."""
        if not self._has_targets:
            raise ValueError("VQADataset: no targets without annotations")
        start, stop = self._target_start[index], self._target_start[index + 1]
        out = np.zeros(len(self.answer_vocab), dtype=np.float32)  # type: ignore[arg-type]
        out[self._target_class[start:stop]] = self._target_score[start:stop]
        return out

    def __len__(self) -> int:
        return int(self.question_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"VQADataset: index {index} out of range for {n} questions")
        index %= n
        region = self.features.padded(int(self.image_ids[index]), self.max_boxes)
        item = {
            "question_id": torch.tensor(self.question_ids[index]),
            "image_id": torch.tensor(self.image_ids[index]),
            "question_tokens": torch.from_numpy(self._tokens[index]),
            "question_len": torch.tensor(self._lengths[index]),
            "regions": torch.from_numpy(region["features"]),
            "boxes": torch.from_numpy(region["boxes"]),
            "box_geometry": torch.from_numpy(region["geometry"]),
            "region_mask": torch.from_numpy(region["mask"]),
        }
        if self._has_targets:
            target = self.target(index)
            item["target"] = torch.from_numpy(target)
            item["answer"] = torch.tensor(int(target.argmax()) if target.max() > 0 else -1)
        return item
