"""The quality gate on every surface, against real servers: REST, the Gradio API, the page's handlers.

The tiny model's outputs are noise: with the gate on they must be dropped (and counted by reason), and
whatever passes must keep every protected span; the label check runs through the real scoring path, so
each kept variant's own /classify gives the requested label. The servers start with the gate off
(tests/conftest.py); these requests turn it on.
"""

from __future__ import annotations

import pytest
import requests
from gradio_client import Client

from app.engines.protect import kept_spans
from app.gate import REASONS, normalized, similarity
from app.params import GenerationParams
from app.service import Service
from app.settings import Settings
from app.tasks import load_templates
from app.ui import augment_tab
from tests.conftest import run

SPANNED = "订单号20240518的iPhone 15在3天内发货，运费12元，详情见《售后说明》。"
PLAIN = "这家餐厅的服务态度很好，菜的味道也不错。"
LABELS = ["物流", "价格很贵的问题"]  # different lengths: the tiny model scores them apart


def _post(server, path: str, **body) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=120)


def _dropped_total(body: dict) -> int:
    return sum(body["dropped"].values())


def test_with_the_default_gate_no_variant_lacks_a_protected_span(live_server):
    body = _post(live_server, "/augment", text=SPANNED, quality="on", num_return_sequences=5, max_length=24,
                 seed=3, return_rejected=True).json()
    spans = [normalized(span) for span in kept_spans(SPANNED)]
    assert {"20240518", "iphone15", "3天", "12元", "《售后说明》"} <= set(spans)
    for variant in body["augmented_texts"]:
        assert all(span in normalized(variant) for span in spans), variant
    assert set(body["dropped"]) == set(REASONS)
    # Every candidate that was dropped is listed once, under its reason, and the counts agree.
    assert _dropped_total(body) == len(body["rejected"]) > 0
    for reason in REASONS:
        assert body["dropped"][reason] == sum(r["reason"] == reason for r in body["rejected"])
    noise = [r for r in body["rejected"] if r["reason"] == "protected_lost"]
    assert noise and all(not all(span in normalized(r["text"]) for span in spans) for r in noise)


def test_with_min_similarity_set_noise_is_dropped_as_too_far(live_server):
    body = _post(live_server, "/augment", text=PLAIN, quality="on", min_similarity=0.5, max_length=16,
                 seed=4, return_rejected=True).json()
    assert body["dropped"]["too_far"] >= 3
    for rejected in body["rejected"]:
        if rejected["reason"] == "too_far":
            assert rejected["similarity"] < 0.5
            assert rejected["similarity"] == pytest.approx(similarity(PLAIN, rejected["text"]), abs=1e-4)
    for variant in body["variants"]:
        assert variant["similarity"] >= 0.5


def test_the_same_request_with_the_gate_off_keeps_the_noise(live_server):
    off = _post(live_server, "/augment", text=PLAIN, quality="off", max_length=16, seed=4).json()
    assert len(off["augmented_texts"]) == 3
    assert [v["text"] for v in off["variants"]] == off["augmented_texts"]
    assert all(0 <= v["similarity"] <= 1 for v in off["variants"])
    assert "rejected" not in off


def test_each_kept_variant_classifies_as_the_requested_label(live_server):
    kept = changed = 0
    for label in LABELS:
        body = _post(live_server, "/augment", text=PLAIN, quality="on", min_similarity=0.0, max_length_ratio=100.0,
                     num_return_sequences=4, max_length=12, seed=7, labels=LABELS, label=label,
                     return_rejected=True).json()
        assert 0 <= body["label_probability"] <= 1
        for variant in body["variants"]:
            answer = _post(live_server, "/classify", text=variant["text"], labels=LABELS).json()
            assert answer["label"] == label, (variant, answer)
            assert variant["label_probability"] == pytest.approx(answer["scores"][label], abs=1e-3)
        for rejected in body["rejected"]:
            if rejected["reason"] == "label_changed":
                answer = _post(live_server, "/classify", text=rejected["text"], labels=LABELS).json()
                assert answer["label"] != label, (rejected, answer)
        kept, changed = kept + len(body["variants"]), changed + body["dropped"]["label_changed"]
    assert kept and changed  # both sides of the check were exercised


def test_min_label_prob_drops_variants_below_it(live_server):
    body = _post(live_server, "/augment", text=PLAIN, quality="on", min_similarity=0.0, max_length_ratio=100.0,
                 max_length=12, seed=7, labels=LABELS, label=LABELS[0], min_label_prob=1.0).json()
    assert body["augmented_texts"] == [] and body["dropped"]["label_changed"] >= 3


def test_batch_answers_carry_the_gate_per_text_and_in_total(live_server):
    body = _post(live_server, "/augment_batch", texts=[PLAIN, SPANNED], quality="on", max_length=12, seed=5,
                 labels=LABELS, text_labels=[LABELS[0], None]).json()
    assert [result["original"] for result in body["results"]] == [PLAIN, SPANNED]
    for reason in REASONS:
        assert body["dropped"][reason] == sum(result["dropped"][reason] for result in body["results"])
    assert "label_probability" in body["results"][0] and "label_probability" not in body["results"][1]


@pytest.mark.parametrize("extra, field, code", [
    ({"min_similarity": 0.9, "max_similarity": 0.5}, "min_similarity", "invalid_parameter"),
    ({"min_length_ratio": 3.0, "max_length_ratio": 2.0}, "min_length_ratio", "invalid_parameter"),
    ({"quality": "maybe"}, "quality", "invalid_parameter"),
    ({"min_label_prob": 1.5}, "min_label_prob", "invalid_parameter"),
    ({"labels": LABELS}, "label", "invalid_parameter"),
    ({"label": "物流"}, "labels", "invalid_parameter"),
    ({"labels": LABELS, "label": "售后"}, "label", "labels_invalid"),
    ({"labels": ["物流"], "label": "物流"}, "labels", "labels_invalid"),
])
def test_bad_gate_fields_are_a_422_naming_the_field(live_server, extra, field, code):
    response = _post(live_server, "/augment", text=PLAIN, **extra)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field and response.json()["error"]["code"] == code


def test_text_labels_must_match_the_texts(live_server):
    response = _post(live_server, "/augment_batch", texts=[PLAIN, SPANNED], labels=LABELS, text_labels=["物流"])
    assert response.status_code == 422 and response.json()["error"]["field"] == "text_labels"
    response = _post(live_server, "/augment_batch", texts=[PLAIN, SPANNED], labels=LABELS,
                     text_labels=["物流", "售后"])
    assert response.status_code == 422 and response.json()["error"]["field"] == "text_labels[1]"


def test_without_weights_the_gate_passes_lexical_swaps_and_the_label_check_needs_mt5(server_without_weights):
    body = _post(server_without_weights, "/augment", text="医生建议患者每天按时服用药物。", quality="on",
                 num_return_sequences=3, seed=1).json()
    assert body["engine"] == "lexical" and body["augmented_texts"]
    assert all(v["similarity"] < 1 for v in body["variants"])
    response = _post(server_without_weights, "/augment", text="医生建议患者每天按时服用药物。", quality="on",
                     labels=["医疗", "金融"], label="医疗")
    assert response.status_code == 503 and response.json()["error"]["code"] == "needs_mt5"


def test_without_weights_number_forms_are_opt_in_and_short_answers_say_why(server_without_weights):
    text = "快递三天就到了，比预计快了2天，运费便宜了20%。"
    plain = _post(server_without_weights, "/augment", text=text, quality="on", num_return_sequences=10, seed=1).json()
    forms = _post(server_without_weights, "/augment", text=text, quality="on", num_return_sequences=10, seed=1,
                  number_forms=True).json()
    assert not any(span in variant for variant in plain["augmented_texts"] for span in ("3天", "两天", "百分之二十"))
    changed = [v for v in forms["augmented_texts"] if any(span in v for span in ("3天", "两天", "百分之二十"))]
    assert changed and len(forms["augmented_texts"]) > len(plain["augmented_texts"])
    assert all("4天" not in v and ("三天" in v or "3天" in v) for v in forms["augmented_texts"])
    # Ten are more than this sentence has: the answer says the engine ran out, not that the gate dropped them.
    assert plain["requested"] == 10 and plain["short_reason"] in ("no_rewritable_words", "few_rewritable_words")
    assert (plain["short_reason"] == "no_rewritable_words") == (plain["augmented_texts"] == [])
    nothing = _post(server_without_weights, "/augment_batch", texts=["OK 123 ABC！", "衣服穿着很舒服，客服回复也很及时。"],
                    quality="on").json()
    assert [(r["requested"], r["short_reason"]) for r in nothing["results"]] == [(3, "no_rewritable_words"), (3, None)]
    refused = _post(server_without_weights, "/augment", text=text, number_forms="yes")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "number_forms"
    client = Client(server_without_weights.url, verbose=False)
    report = client.predict(text, num_return_sequences=10, seed=1, number_forms=True, api_name="/augment_report")
    assert report["augmented_texts"] == forms["augmented_texts"] and report["short_reason"] == forms["short_reason"]


def test_the_gradio_api_takes_the_gate_and_reports_it(live_server):
    client = Client(live_server.url, verbose=False)
    report = client.predict(PLAIN, max_length=16, seed=4, quality="on", min_similarity=0.5, return_rejected=True,
                            api_name="/augment_report")
    assert report["dropped"]["too_far"] >= 3 and len(report["rejected"]) == sum(report["dropped"].values())
    assert all(v["similarity"] >= 0.5 for v in report["variants"])
    variants = client.predict(PLAIN, max_length=16, seed=4, quality="on", min_similarity=0.5, api_name="/augment")
    assert variants == report["augmented_texts"]
    kept = client.predict([PLAIN, SPANNED], max_length=16, seed=4, quality="off", api_name="/augment_batch")
    assert [len(each) for each in kept] == [3, 3]


class _NothingForSome:
    """Answers the first text with real-looking rewordings and the second with copies of itself."""

    name, can_score, wants_raw_text, batch_size = "mt5", True, False, 16

    def info(self) -> dict:
        return {"engine": self.name, "device": "cpu"}

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[str]]:
        first = ["这家餐馆服务态度很好，菜味道也不错。", "这家餐厅服务很好，菜的口味也不错。", "这家餐厅态度很好，菜也挺好吃。"]
        return [first if i == 0 else [prompt + "。"] * params.num_return_sequences for i, prompt in enumerate(prompts)]

    def score_batch(self, items):
        return [[0.0] * len(candidates) for _, candidates in items]


def test_the_batch_tab_keeps_a_row_for_an_input_that_got_nothing_and_says_why():
    settings = Settings(resample_rounds=0)
    service = Service(settings, load_templates(settings.templates_file))
    service.load({"mt5": lambda: _NothingForSome()})
    rows, _, plain, status, _ = run(augment_tab.on_augment_batch(service, f"{PLAIN}\n只会照抄的一句话", None,
                                                                   3, 0.8, 16, 50, 0.95, ""))
    assert [row[0] for row in rows] == [PLAIN] * 3 + ["只会照抄的一句话"]
    # The first copy is a near copy; the next two repeat it.
    assert rows[-1][2] == "" and rows[-1][4] == ("只生成 0 条（要 3 条）：其余候选没有通过质量过滤；"
                                                 "过滤 3 条：重复 2，与原文过于相似 1")
    assert "过滤 3 条：重复 2，与原文过于相似 1" in status and "1 条文本没有结果" in status
    assert all(0 < float(row[3]) < 1 for row in rows[:3])
