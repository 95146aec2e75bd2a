"""Question answering: official SQuAD scoring by hand, span mapping, the squad source, a tiny
fine-tune with evaluate and predict."""
import json
import os

import numpy as np
import pytest

from kplm.data.squad import SquadFiles
from kplm.errors import DataError
from kplm.heads.question_answering import QuestionAnsweringHead
from kplm.squad_metrics import exact_match_score, f1_score, normalize_answer, squad_scores

from conftest import NEAR_TIE, ROOT

SQUAD_TRAIN = os.path.join(ROOT, "data", "squad", "train.json")
SQUAD_DEV = os.path.join(ROOT, "data", "squad", "dev.json")


def test_official_normalisation_exact_match_and_f1():
    assert normalize_answer("  The  Denver, Broncos!  ") == "denver broncos"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert exact_match_score("the Broncos.", "Broncos") == 1.0
    assert exact_match_score("Denver Broncos", "Broncos") == 0.0
    # prediction "denver broncos won", gold "the broncos": common 1, P=1/3, R=1/1
    assert f1_score("Denver Broncos won", "the Broncos") == pytest.approx(2 * (1 / 3) / (4 / 3))
    assert f1_score("a", "the") == 0.0  # both normalise to nothing: no common token
    # max over gold answers; averaged over questions, in percent
    scores = squad_scores(["Broncos", "in 1990 and 1991"],
                          [["Carolina Panthers", "the Broncos"], ["1990", "1991"]])
    # q2: best gold "1990": P=1/4 R=1 -> F1=0.4, EM 0
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx((100 + 40) / 2)


def _fabricated(head, tokenizer, example, sequence_length):
    """Windows of ``example`` and logits peaked at its gold tokens where a window has them."""
    windows = head.encode([example], tokenizer, sequence_length)
    logits = np.zeros((len(windows["example"]), sequence_length, 2))
    for w, (start, end) in enumerate(windows["positions"]):
        if start:
            logits[w, start, 0] = logits[w, end, 1] = 20.0
    return windows, logits


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """A hand-made vocabulary: letters and digits (and their continuations), a few words."""
    from kplm.tokenizers.wordpiece import SPECIAL_TOKENS, WordPiece
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = (SPECIAL_TOKENS + chars + ["##" + c for c in chars] + list(",.-()\"?!")
              + ["the", "cafe", "paulo", "1920", "##ont", "founded", "was"])
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return WordPiece(vocabulary=str(path))


def test_span_mapping_returns_the_gold_substring(small_tokenizer):
    tokenizer = small_tokenizer
    head = QuestionAnsweringHead(doc_stride=16, max_answer_length=30)
    filler = " ".join(f"Filler sentence number {i} says nothing." for i in range(12))
    cases = [
        ("Who founded the Café?", "The Café Müller was founded by Ève DUPONT-Lefèvre in 1920.",
         "Ève DUPONT-Lefèvre"),
        ("When?", filler + " ÉTÉ 1920 came, (finally) " + filler, "ÉTÉ 1920"),
        ("Where?", "It opened in \"São Paulo\", Brazil.", "São Paulo"),
    ]
    for question, context, answer in cases:
        example = {"question": question, "context": context, "answer_texts": [answer],
                   "answer_starts": [context.index(answer)]}
        windows, logits = _fabricated(head, tokenizer, example, 48)
        answered = [w for w, p in enumerate(windows["positions"]) if p[0]]
        assert answered, (context, windows["positions"])
        if context.startswith("Filler"):
            assert len(windows["example"]) > 2 and answered[0] > 0  # beyond the first window
        result = head.postprocess(logits, windows, [context])[0]
        assert result["answer"] == answer
        assert context[result["start"]:result["end"]] == answer
        assert 0.9 < result["score"] <= 1.0


def test_squad_source_refuses_a_misaligned_answer(tmp_path):
    context = "Warsaw is the capital of Poland."
    qas = [{"id": "ok1", "question": "What?", "answers": [{"text": "Warsaw", "answer_start": 0}]},
           {"id": "bad7", "question": "Of what?",
            "answers": [{"text": "Poland", "answer_start": 3}]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    with pytest.raises(DataError, match=rf"{path}.*id bad7.*'Poland' does not match"):
        SquadFiles(paths=[str(path)]).check()
    good = SquadFiles(paths=[SQUAD_DEV])
    good.check()
    example = next(iter(good.build()))
    start = int(example["answer_starts"][0])
    text = example["answer_texts"][0].numpy().decode()
    assert example["context"].numpy().decode()[start:start + len(text)] == text


def _squad_v2(path):
    """Two questions on one paragraph: one answerable, one SQuAD v2 unanswerable."""
    context = "Warsaw is the capital of Poland."
    qas = [{"id": "a1", "question": "What is the capital of Poland?", "is_impossible": False,
            "answers": [{"text": "Warsaw", "answer_start": 0}]},
           {"id": "u1", "question": "What is the capital of Mars?", "is_impossible": True,
            "answers": [], "plausible_answers": [{"text": "Warsaw", "answer_start": 0}]}]
    path.write_text(json.dumps({"version": "v2.0",
                                "data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    return str(path)


def test_squad_v2_unanswerable_questions_are_named_or_scored_as_v2(tmp_path):
    from kplm.heads.question_answering import QuestionAnsweringHead
    path = _squad_v2(tmp_path / "v2.json")
    with pytest.raises(DataError, match=r"id u1\): expected a non-empty 'answers' list \(an "
                       r"unanswerable SQuAD v2 question \(is_impossible\)\? set "
                       r"require_answers: false"):
        SquadFiles(paths=[path]).check()
    source = SquadFiles(paths=[path], require_answers=False)
    assert [len(x["answer_texts"]) for x in source.build()] == [1, 0]
    # the official v2 rule: an unanswerable question is right only for an empty answer
    assert squad_scores(["Warsaw", "Warsaw"], [["Warsaw"], []]) == {"exact_match": 50.0,
                                                                      "f1": 50.0}
    assert squad_scores(["Warsaw", " the "], [["Warsaw"], []])["f1"] == 100.0

    class Fixed(QuestionAnsweringHead):  # answers "Warsaw" to every question
        def _answers(self, model, examples, tokenizer, batch_size, sequence_length):
            return [{"answer": "Warsaw"} for _ in examples]
    scores = Fixed().evaluate(None, source, None, batch_size=2, sequence_length=32)
    assert scores == {"exact_match": 50.0, "f1": 50.0, "questions": 2}


@pytest.fixture(scope="session")
def qa_run(tmp_path_factory):
    from kplm.training.finetune import finetune
    run_dir = str(tmp_path_factory.mktemp("squad") / "run")
    config = {
        "run_dir": run_dir, "seed": 0,
        "tokenizer": {"name": "wordpiece", "vocabulary_size": 2000},
        "backbone": {"name": "encoder", "num_layers": 1, "num_heads": 2, "hidden_dim": 64,
                     "intermediate_dim": 128, "sequence_length": 128, "dropout": 0.0},
        "data": {"train": {"name": "squad", "paths": [SQUAD_TRAIN]},
                 "validation": {"name": "squad", "paths": [SQUAD_DEV]}},
        "head": {"name": "question_answering", "dropout": 0.0},
        # one evaluation, at the end (the final weights are the ones measured below)
        "trainer": {"steps": 200, "batch_size": 32, "learning_rate": 3e-3, "warmup_steps": 10,
                    "eval_every": 200, "log_every": 20},
    }
    log = []
    metrics = finetune(config, echo=log.append, progress=False)
    return run_dir, metrics, log


def test_finetune_learns_and_predicts_a_context_substring(qa_run):
    from kplm.runs import FinetunedRun
    run_dir, metrics, log = qa_run
    losses = [float(line.split("  loss ")[1].split()[0]) for line in log
              if line.startswith("step ")]
    assert len(losses) >= 5 and losses[-1] < 0.9 * losses[0], log
    assert any("validation" in line and "span_accuracy" in line for line in log), log
    validation = metrics["validation"]
    assert validation["questions"] == 110
    assert 0 <= validation["exact_match"] <= validation["f1"] <= 100
    baseline = metrics["baseline"]  # on dev: the better of first words / best-overlap sentence
    assert baseline["questions"] == 110 and baseline["first_words_n"] >= 1
    assert baseline["f1"] == max(baseline["first_words"]["f1"], baseline["sentence"]["f1"]) > 0
    # the tiny model trained from scratch on 552 questions does not generalise to dev, but it
    # fits its training questions better than both trivial baselines do on them (exact match)
    train = SquadFiles(paths=[SQUAD_TRAIN])
    fitted = FinetunedRun(run_dir).evaluate(train)
    train_baseline = QuestionAnsweringHead().baseline(train, train)
    assert fitted["questions"] == train_baseline["questions"] == 552
    # Measured: F1 22.9 / EM 15.0 against 18.6 / 0.7. EM carries the wide margin (F1's, 4
    # points, is too narrow for a model that another CPU's float sums train differently).
    assert fitted["exact_match"] > train_baseline["exact_match"] + 5, (fitted, train_baseline)
    context = ("The Rhine is a European river that begins in the Swiss canton of Graubünden and "
               "flows into the North Sea.")
    run = FinetunedRun(run_dir)
    [prediction] = run.predict([{"question": "Where does the Rhine begin?", "context": context}])
    assert prediction["answer"] and prediction["answer"] in context
    assert context[prediction["start"]:prediction["end"]] == prediction["answer"]
    assert 0 < prediction["score"] <= 1


def _span_score(run, example, start, end):
    """log P(start) + log P(end) of the character span ``[start, end)`` under ``predict``'s own
    logits (as ``QuestionAnsweringHead.postprocess`` scores spans: the best over the windows
    holding it), or None if no window holds it as a valid span."""
    head = run.head
    windows = head.encode([example], run.tokenizer, run.sequence_length)
    x = {k: np.asarray(windows[k], np.int32).reshape(-1, run.sequence_length)
         for k in ("token_ids", "segment_ids", "padding_mask")}
    logits = np.asarray(run.model.predict_on_batch(x), np.float64)
    best = None
    for w, spans in enumerate(windows["spans"]):
        top = logits[w].max(axis=0)
        log_p = logits[w] - top - np.log(np.exp(logits[w] - top).sum(axis=0))
        firsts = [i for i, s in enumerate(spans) if s is not None and s[0] == start]
        lasts = [j for j, s in enumerate(spans) if s is not None and s[1] == end]
        for i in firsts:
            for j in lasts:
                if 0 <= j - i < head.max_answer_length:
                    score = log_p[i, 0] + log_p[j, 1]
                    best = score if best is None else max(best, score)
    return best


def test_exported_saved_model_answers_raw_questions_like_predict(qa_run, tmp_path):
    """Windows, word-piece spans and the best-span search run in the graph; the answers equal
    `predict`'s over real contexts longer than one window, and odd inputs."""
    from kplm.serving import export_saved_model
    from kplm.testing import serve_in_fresh_process
    from kplm.runs import FinetunedRun
    run_dir = qa_run[0]
    exported = str(tmp_path / "served")
    assert export_saved_model(run_dir, exported, echo=None) == ["question", "context"]
    examples = [{"question": ex["question"].numpy().decode(),
                 "context": ex["context"].numpy().decode()}
                for ex in SquadFiles(paths=[SQUAD_DEV]).build().take(40)]
    examples += [{"question": "Who?", "context": ""},
                 {"question": "Où est le café?", "context": "Le café — très bon — est à 東京."}]
    served = serve_in_fresh_process(exported, {k: [ex[k] for ex in examples]
                                               for k in ("question", "context")})
    run = FinetunedRun(run_dir)
    expected = run.predict(examples)
    for i, p in enumerate(expected):
        got = (served["answer"][i], served["start"][i], served["end"][i])
        if got != (p["answer"], p["start"], p["end"]):
            # The best span is an argmax over thousands: another span within NEAR_TIE of
            # predict's (scored with predict's logits) may win in the served graph, on another
            # CPU. Any other difference is a bug.
            tie = [_span_score(run, examples[i], s, e)
                   for s, e in ((got[1], got[2]), (p["start"], p["end"]))]
            assert None not in tie and abs(tie[0] - tie[1]) < NEAR_TIE, (i, got, p)
            assert got[0] == examples[i]["context"][got[1]:got[2]], (i, got)
        assert abs(served["score"][i] - p["score"]) < 1e-4
    assert sum(bool(p["answer"]) for p in expected) > 30
    assert max(len(ex["context"]) for ex in examples) > 1000  # several windows per context
    # a batch whose every context is empty (a gather over no context tokens failed)
    served = serve_in_fresh_process(exported, {"question": ["Who?", "What?"],
                                               "context": ["", "   "]})
    assert list(served["answer"]) == ["", ""] and list(served["score"]) == [0.0, 0.0]
