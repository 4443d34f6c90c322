"""VQA v2: official normalisation and accuracy worked by hand, vocabularies, files and the Dataset."""
from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.data import vqa
from mmfuse.data.vqa_features import NpzFeatureDir


# ------------------------------------------------------------------ normalisation, by hand

@pytest.mark.parametrize(
    "raw, expected",
    [
        ("two", "2"),
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),             # only zero..ten are mapped
        ("the dog.", "dog"),
        ("A Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("im", "im"),                     # the script's "Im" key never matches lower-cased text
        ("somebody'd", "somebodyd"),      # the script's reversed entry
        ("1,000", "1000"),
        ("1,000 (approx)", "1000 approx"),  # a digit-comma-digit makes every mark vanish
        ("yes,no", "yes no"),             # no digit comma: the comma becomes a space
        ("yes , no", "yes no"),           # a mark next to a space is deleted
        ("yes!", "yes"),
        ("black/white", "black white"),
        ("t-shirt", "t shirt"),
        ("3.5", "3.5"),                   # a period before a digit stays
        ("e.g.", "eg"),
        ("10:30", "10:30"),               # colons are not in the official list
        ("it's", "it's"),                 # apostrophes are kept
        ("  multiple   spaces\tand\nlines ", "multiple spaces and lines"),
        ("", ""),
    ],
)
def test_normalize_answer_by_hand(raw, expected):
    assert vqa.normalize_answer(raw) == expected


def test_period_strip_count_matches_the_script():
    # the script passes re.UNICODE (= 32) as sub()'s count: only 32 periods are removed
    assert vqa.process_punctuation("." * 40 + "x") == "." * 8 + "x"


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(ValueError, match="expected a str, got int"):
        vqa.normalize_answer(3)  # type: ignore[arg-type]


def test_contraction_table_spot_checks():
    c = vqa.CONTRACTIONS
    assert c["dont"] == "don't" and c["wont"] == "won't" and c["yall"] == "y'all"
    assert c["yall'd've"] == c["y'alld've"] == c["y'all'dve"] == "y'all'd've"
    assert c["twas"] == "'twas" and c["ow's'at"] == "'ow's'at"
    assert "lets" not in c and "shes" not in c and "yalldve" not in c
    assert len(c) == 120


# ------------------------------------------------------------------ accuracy, by hand


def _loo_reference(pred: str, answers: list[str]) -> float:
    """Slow, obvious leave-one-out: every subset of n-1 human answers, min(1, matches/3), averaged."""
    n = len(answers)
    subsets = list(combinations(range(n), n - 1))
    return sum(min(1.0, sum(answers[i] == pred for i in s) / 3) for s in subsets) / len(subsets)


@pytest.mark.parametrize("count, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_accuracy_from_count_by_hand(count, expected):
    # c = 3: three subsets keep 2 matches (2/3 each), seven keep 3 (1 each): (2 + 7) / 10 = 0.9.
    # c = 2: two subsets keep 1 (1/3), eight keep 2 (2/3): (2/3 + 16/3) / 10 = 0.6.
    assert vqa.accuracy_from_count(count) == pytest.approx(expected)
    answers = ["x"] * count + [f"other{i}" for i in range(10 - count)]
    assert vqa.vqa_accuracy("x", answers) == pytest.approx(expected)
    assert _loo_reference("x", answers) == pytest.approx(expected)


def test_accuracy_normalises_prediction_and_answers():
    answers = ["2", "2", "2", "two", "3", "three", "3", "4", "4", "4"]
    # after normalisation: four "2", three "3", three "4"
    assert vqa.vqa_accuracy("Two.", answers) == pytest.approx(1.0)
    assert vqa.vqa_accuracy("the three", answers) == pytest.approx(0.9)
    assert vqa.vqa_accuracy("5", answers) == 0.0


def test_identical_answers_are_not_normalised_like_the_script():
    answers = ["dog"] * 10
    assert vqa.vqa_accuracy("dog", answers) == 1.0
    assert vqa.vqa_accuracy(" dog\n", answers) == 1.0   # whitespace is always cleaned
    assert vqa.vqa_accuracy("the dog.", answers) == 0.0  # the official script's behaviour
    assert vqa.vqa_accuracy("the dog.", answers, always_normalize=True) == 1.0


def test_accuracy_errors():
    with pytest.raises(ValueError, match="non-empty sequence"):
        vqa.vqa_accuracy("a", [])
    with pytest.raises(ValueError, match="non-empty sequence"):
        vqa.vqa_accuracy("a", "abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count <= n_answers"):
        vqa.accuracy_from_count(11, 10)


WORDS = st.sampled_from(["yes", "no", "2", "two", "the dog", "dog.", "red", "1,000", "dont", "don't"])


@settings(max_examples=60, deadline=None)
@given(answers=st.lists(WORDS, min_size=1, max_size=10), pred=WORDS)
def test_soft_scores_equal_the_accuracy_they_predict(answers, pred):
    scores = vqa.soft_scores(answers)
    norm = [vqa.normalize_answer(a) for a in answers]
    p = vqa.normalize_answer(pred)
    assert scores.get(p, 0.0) == pytest.approx(vqa.vqa_accuracy(pred, answers, always_normalize=True))
    assert scores.get(p, 0.0) == pytest.approx(_loo_reference(p, norm))
    assert all(0 <= s <= 1 for s in scores.values())


def test_soft_scores_by_hand():
    assert vqa.soft_scores(["2"] * 3 + ["3"] * 7) == pytest.approx({"2": 0.9, "3": 1.0})
    assert vqa.soft_scores(["Yes", "yes", "no"] + ["maybe"] * 7) == pytest.approx(
        {"yes": vqa.accuracy_from_count(2), "no": 0.3, "maybe": 1.0}
    )


# ------------------------------------------------------------------ fixtures in the official layout


def _answers(*pairs):
    out = []
    for text, n in pairs:
        out += [text] * n
    assert len(out) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]


QUESTIONS = [
    {"image_id": 42, "question": "What color is the dog?", "question_id": 420},
    {"image_id": 42, "question": "How many dogs are there?", "question_id": 421},
    {"image_id": 7, "question": "Is it raining?", "question_id": 70},
    {"image_id": 9, "question": "What's on the left-hand side?", "question_id": 90},
]
ANNOTATIONS = [
    {"question_type": "what color is the", "multiple_choice_answer": "brown", "answers": _answers(("brown", 6), ("tan", 3), ("black", 1)),
     "image_id": 42, "answer_type": "other", "question_id": 420},
    {"question_type": "how many", "multiple_choice_answer": "2", "answers": _answers(("2", 2), ("two", 2), ("3", 6)),
     "image_id": 42, "answer_type": "number", "question_id": 421},
    {"question_type": "is it", "multiple_choice_answer": "no", "answers": _answers(("no", 10)),
     "image_id": 7, "answer_type": "yes/no", "question_id": 70},
    {"question_type": "what", "multiple_choice_answer": "brown", "answers": _answers(("brown", 1), ("a tree", 9)),
     "image_id": 9, "answer_type": "other", "question_id": 90},
]


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture
def vqa_files(tmp_path):
    q = _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
        "questions": QUESTIONS,
    })
    a = _write(tmp_path / "v2_mscoco_val2014_annotations.json", {
        "info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco", "annotations": ANNOTATIONS,
    })
    return q, a


@pytest.fixture
def features(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "feats"
    folder.mkdir()
    for image_id, n in ((42, 3), (7, 5), (9, 2)):
        np.savez(folder / f"COCO_val2014_{image_id:012d}.jpg.npz", x=rng.random((8, n), dtype=np.float32),
                 bbox=np.tile([0, 0, 10, 20], (n, 1)).astype(np.float32), image_h=np.array(40), image_w=np.array(20),
                 num_bbox=np.array(n))
    return NpzFeatureDir(folder, feature_dim=8)


def test_load_official_files(vqa_files):
    q_path, a_path = vqa_files
    questions = vqa.load_vqa_questions(q_path)
    annotations = vqa.load_vqa_annotations(a_path)
    assert [q["question_id"] for q in questions] == [420, 421, 70, 90]
    assert annotations[1]["answers"][3]["answer"] == "two"


def test_swapped_or_broken_files_name_the_file(vqa_files, tmp_path):
    q_path, a_path = vqa_files
    with pytest.raises(ValueError, match=r"annotations\.json: expected a VQA questions file with a 'questions' list"):
        vqa.load_vqa_questions(a_path)
    with pytest.raises(ValueError, match=r"questions\.json: expected a VQA annotations file"):
        vqa.load_vqa_annotations(q_path)
    bad = _write(tmp_path / "q.json", {"questions": [{"image_id": 1, "question_id": 2}]})
    with pytest.raises(ValueError, match=r"q\.json: questions\[0\] lacks fields \['question'\]"):
        vqa.load_vqa_questions(bad)
    bad = _write(tmp_path / "q2.json", {"questions": [QUESTIONS[0], QUESTIONS[0]]})
    with pytest.raises(ValueError, match=r"q2\.json: question_id repeated in questions: \[420\]"):
        vqa.load_vqa_questions(bad)
    bad = _write(tmp_path / "q3.json", {"questions": [{**QUESTIONS[0], "image_id": "42"}]})
    with pytest.raises(ValueError, match=r"q3\.json: questions\[0\]\.image_id must be an int"):
        vqa.load_vqa_questions(bad)
    bad = _write(tmp_path / "a.json", {"annotations": [{**ANNOTATIONS[0], "answers": []}]})
    with pytest.raises(ValueError, match=r"a\.json: annotations\[0\]\.answers must be a non-empty list"):
        vqa.load_vqa_annotations(bad)
    (tmp_path / "trunc.json").write_text('{"questions": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"trunc\.json: not a readable JSON"):
        vqa.load_vqa_questions(tmp_path / "trunc.json")


def test_answer_vocab_by_frequency(tmp_path):
    anns = [{"multiple_choice_answer": a, "answers": [{"answer": a}] * 10} for a in
            ["yes", "Yes", "no", "2", "two", "two", "red", "blue", "the blue"]]
    # normalised counts: yes 2, 2 3, blue 2, no 1, red 1
    assert vqa.build_answer_vocab(anns).answers == ("2", "blue", "yes", "no", "red")
    assert vqa.build_answer_vocab(anns, top_n=2).answers == ("2", "blue")
    assert vqa.build_answer_vocab(anns, min_count=2).answers == ("2", "blue", "yes")
    assert vqa.build_answer_vocab(anns, min_count=2, top_n=1).answers == ("2",)
    assert vqa.build_answer_vocab(anns, source="all").answers[0] == "2"
    with pytest.raises(ValueError, match="top_n must be an int >= 1"):
        vqa.build_answer_vocab(anns, top_n=0)
    with pytest.raises(ValueError, match="source must be"):
        vqa.build_answer_vocab(anns, source="some")
    vocab = vqa.build_answer_vocab(anns)
    back = vqa.AnswerVocab.load(vocab.save(tmp_path / "answers.json"))
    assert back == vocab and back.index("blue") == 1 and back.index("green") == -1
    target = vocab.target(["2"] * 4 + ["blue"] * 2 + ["green"] * 4)
    assert target.dtype == np.float32 and target.tolist() == pytest.approx([1.0, 0.6, 0, 0, 0])


def test_question_tokens_and_vocab(tmp_path):
    assert vqa.tokenize_question("What's on the left-hand side?") == ["whats", "on", "the", "left", "hand", "side"]
    assert vqa.tokenize_question("Is it black/white (or \"grey\")?") == ["is", "it", "black", "white", "or", "grey"]
    words = vqa.build_question_vocab(["is it red", "is it blue", {"question": "Is IT?"}])
    assert words.words[:4] == ("<pad>", "<unk>", "is", "it")
    ids, n = words.encode("is it green or red", max_len=4)
    assert n == 4 and ids.tolist() == [2, 3, 1, 1]  # "green", "or" unknown; truncated at 4
    ids, n = words.encode("red", max_len=3)
    assert n == 1 and ids.tolist() == [words.words.index("red"), 0, 0]
    assert vqa.QuestionVocab.load(words.save(tmp_path / "w.json")) == words
    with pytest.raises(ValueError, match="start with"):
        vqa.QuestionVocab(("a", "b"))


def test_evaluate_vqa(vqa_files):
    annotations = vqa.load_vqa_annotations(vqa_files[1])
    results = [{"question_id": 420, "answer": "tan"}, {"question_id": 421, "answer": "two"},
               {"question_id": 70, "answer": "no"}, {"question_id": 90, "answer": "tree"}]
    out = vqa.evaluate_vqa(results, annotations)
    # 420: tan x3 -> 0.9; 421: "2" x4 after normalisation -> 1.0; 70: 1.0; 90: "tree" (9 say "a tree" -> "tree") -> 1.0
    assert out["per_question"] == pytest.approx({420: 0.9, 421: 1.0, 70: 1.0, 90: 1.0})
    assert out["overall"] == pytest.approx(3.9 / 4) and out["count"] == 4
    assert out["per_answer_type"] == pytest.approx({"number": 1.0, "other": 0.95, "yes/no": 1.0})
    assert vqa.evaluate_vqa({420: "brown"}, annotations)["overall"] == 1.0
    with pytest.raises(ValueError, match=r"no annotation, e\.g\. question ids \[5\]"):
        vqa.evaluate_vqa({5: "x"}, annotations)
    with pytest.raises(ValueError, match="must have 'question_id' and 'answer'"):
        vqa.evaluate_vqa([{"answer": "x"}], annotations)


def test_dataset_joins_questions_answers_and_features(vqa_files, features):
    questions, annotations = vqa.load_vqa_questions(vqa_files[0]), vqa.load_vqa_annotations(vqa_files[1])
    answers = vqa.build_answer_vocab(annotations, source="all")
    words = vqa.build_question_vocab(questions)
    data = vqa.VQADataset(questions, annotations, features, answers, words, max_question_len=6, max_boxes=4)
    assert len(data) == 4
    item = data[1]  # question 421 on image 42 (3 boxes)
    assert item["question_id"].item() == 421 and item["image_id"].item() == 42
    assert item["question_tokens"].shape == (6,) and item["question_len"].item() == 5
    assert words.words[item["question_tokens"][0]] == "how"
    assert item["regions"].shape == (4, 8) and item["regions"].dtype == torch.float32
    assert item["region_mask"].tolist() == [True, True, True, False]
    raw = features[42]
    assert torch.equal(item["regions"][:3], torch.from_numpy(raw.features))
    assert item["box_geometry"][0].tolist() == pytest.approx([0, 0, 0.5, 0.5, 0.5, 0.5])
    assert item["target"].shape == (len(answers),)
    assert item["target"][answers.index("2")].item() == pytest.approx(1.0)  # "2" and "two": four votes
    assert item["target"][answers.index("3")].item() == pytest.approx(1.0)
    assert item["answer"].item() in (answers.index("2"), answers.index("3"))
    for i, q in enumerate(questions):  # the sparse store gives the vocabulary's dense targets
        expected = answers.target([a["answer"] for a in annotations[i]["answers"]])
        assert np.array_equal(data.target(i), expected) and np.array_equal(data[i]["target"].numpy(), expected)
    item = data[2]  # image 7 has 5 boxes -> truncated to 4, all valid
    assert item["region_mask"].all() and item["target"][answers.index("no")].item() == 1.0
    test_split = vqa.VQADataset(questions, None, features, None, words)
    assert "target" not in test_split[0] and test_split[0]["regions"].shape == (100, 8)
    with pytest.raises(ValueError, match="no targets without annotations"):
        test_split.target(0)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    batch = next(iter(loader))
    assert batch["regions"].shape == (4, 4, 8) and batch["target"].shape == (4, len(answers))


def test_dataset_mismatches_raise(vqa_files, features):
    questions, annotations = vqa.load_vqa_questions(vqa_files[0]), vqa.load_vqa_annotations(vqa_files[1])
    answers, words = vqa.build_answer_vocab(annotations), vqa.build_question_vocab(questions)
    with pytest.raises(ValueError, match=r"1 of 4 questions have no annotation, e\.g\. question ids \[90\]"):
        vqa.VQADataset(questions, annotations[:3], features, answers, words)
    moved = [dict(a) for a in annotations]
    moved[0]["image_id"] = 7
    with pytest.raises(ValueError, match=r"disagree on image_id.*\(420, 42, 7\)"):
        vqa.VQADataset(questions, moved, features, answers, words)
    extra = questions + [{"image_id": 1234, "question": "?", "question_id": 5}]
    with pytest.raises(ValueError, match=r"1 images have no features in .*feats, e\.g\. image ids \[1234\]"):
        vqa.VQADataset(extra, None, features, None, words)
    assert len(vqa.VQADataset(extra, None, features, None, words, drop_missing_images=True)) == 4
    with pytest.raises(ValueError, match="without an answer_vocab"):
        vqa.VQADataset(questions, annotations, features, None, words)
