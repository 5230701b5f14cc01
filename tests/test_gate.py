"""The quality gate: what it drops, why, and that what it keeps passes every check.

The property test drives `Service.augment` with a fake engine that returns mutations of its input
(spans dropped, digits changed, particles added, width changed, truncation, noise, repeats, copies,
rewordings) and checks every outcome against re-implementations of the checks written here from the
module's docstring, not from its code.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st
from rapidfuzz.distance import Indel

from app.engines.lexical import LexicalEngine
from app.engines.protect import kept_spans
from app.errors import InvalidParameter
from app.gate import REASONS, GateParams, TextGate, defaults
from app.params import GenerationParams
from app.settings import Settings
from app.tasks import load_templates
from bench.gate_calibration import CALIBRATION, calibrated, pairs
from tests.conftest import run
from tests.test_service import ScriptedEngine, make_service

DATA = Path(__file__).parent / "data"
DEFAULTS = defaults(Settings())
LABELS = ["正面", "负面"]
NEGATIVE_MARK = "差"  # the fake scorer's rule: a text with it is 负面, any other 正面
SURE = 3.0  # the fake scorer's log-probability margin for the label it picks

# --- the checks, written again from the module docstring ----------------------------------------------

ORACLE_PARTICLES = set("的地得了着过吧啊呢吗嘛呀哦啦喔噢哇嗯哟咯呗")


def o_norm(text: str) -> str:
    """NFKC, case folded, without white space."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if not ch.isspace())


def o_content(text: str) -> str:
    return "".join(ch for ch in o_norm(text) if not unicodedata.category(ch).startswith("P"))


def o_similarity(a: str, b: str) -> float:
    ca, cb = o_content(a), o_content(b)
    if not ca and not cb:
        return 1.0
    return Indel.normalized_similarity(ca, cb)


def o_bare(text: str) -> str:
    return "".join(ch for ch in o_content(text) if ch not in ORACLE_PARTICLES)


def o_failed_checks(source: str, variant: str, params: GateParams) -> list[str]:
    """The content checks `variant` fails, in the gate's order (repeats and emptiness aside)."""
    failed = []
    normal = o_norm(variant)
    if any(o_norm(span) not in normal for span in kept_spans(source)):
        failed.append("protected_lost")
    score = o_similarity(source, variant)
    if o_bare(variant) == o_bare(source) or score > params.max_similarity:
        failed.append("too_close")
    too_far = score < params.min_similarity
    if o_content(source):
        ratio = len(o_content(variant)) / len(o_content(source))
        too_far = too_far or not params.min_length_ratio <= ratio <= params.max_length_ratio
    if too_far:
        failed.append("too_far")
    return failed


def o_key(text: str, params: GateParams) -> str:
    return o_norm(text) if params.quality == "on" else "".join(ch for ch in text if not ch.isspace())


def o_first_failure(source: str, candidate: str, seen: set[str], params: GateParams) -> str | None:
    """The reason the gate must give `candidate`, `seen` holding the keys of the input and earlier candidates."""
    if not candidate.strip():
        return "empty"
    key = o_key(candidate, params)
    repeat = key in seen
    seen.add(key)
    if repeat:
        return "duplicate"
    if params.quality == "off":
        return None
    failed = o_failed_checks(source, candidate, params)
    return failed[0] if failed else None


def o_label(text: str) -> str:
    return "负面" if NEGATIVE_MARK in text else "正面"


def o_label_probability(text: str, label: str) -> float:
    win = 1 / (1 + math.exp(-SURE))
    return win if o_label(text) == label else 1 - win


def clean(text: str) -> str:
    return " ".join(text.split())


# --- inputs with protected spans, and a fake engine that mutates them ----------------------------------

CHINESE = ["这款耳机", "音质很好", "物流很快", "我们", "已经收到了", "客服态度不错", "价格有点贵", "包装很结实",
           "下次还会再来", "非常满意", "质量很差", "效果一般", "今天", "推荐购买", "说明书写得很清楚", "医生建议多喝水",
           "的", "了", "吧", "啊", "呢"]
PUNCTUATION = ["，", "。", "！", "？", "、", "；", "…", ",", ".", "!", " "]
UNITS = ["天", "元", "个", "%", "公斤", "小时", "年", "次", "块", "岁", "件", "GB"]
SPANS = st.one_of(
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 9999), st.sampled_from(UNITS)),
    st.builds(lambda a, b: f"{a}.{b}%", st.integers(0, 99), st.integers(1, 99)),
    st.builds(lambda y, m, d: f"{y}-{m:02d}-{d:02d}", st.integers(1990, 2030), st.integers(1, 12), st.integers(1, 28)),
    st.builds(lambda h, m: f"{h}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    st.sampled_from(["https://example.com/item?id=42", "http://shop.test/a/b", "www.jd.com/123.html",
                     "service@example.com", "li.lei+shop@mail.cn", "@小明 ", "@客服小美，", "#双十一#", "#好物推荐#",
                     "iPhone 15", "iOS", "API", "5G", "MacBook Pro", "《活着》", "《三体》", "（赠品）", "（含税）",
                     "👍", "😂", "❤️", "订单号202405010001", "13812345678"]),
)
PIECES = st.one_of(st.sampled_from(CHINESE), st.sampled_from(CHINESE), st.sampled_from(PUNCTUATION), SPANS)
INPUT = st.builds(lambda first, rest: (first + "".join(rest)).strip(),
                  st.sampled_from(CHINESE[:16]), st.lists(PIECES, max_size=8))

REWORDS = {"很": "非常", "非常": "十分", "不错": "挺好", "我们": "咱们", "已经": "早已", "快": "迅速", "价格": "价钱",
           "满意": "满足", "推荐": "建议", "结实": "牢固", "今天": "今日", "耳机": "耳麦", "收到": "拿到", "下次": "以后",
           "医生": "大夫", "一般": "普通", "说明书": "使用手册", "清楚": "明白"}
NOISE = ["哈哈哈哈哈", "总之就是这样吧我也不知道该说什么好了真的", "ABC", "啦啦啦", "随便写写随便看看", "🔥🔥", "。。。", "差评"]
OTHERS = ["今天的会议改到明天下午三点。", "这本书讲的是一个关于成长的故事。", "请把文件发到我的邮箱。", "好"]
PARTICLE_LIST = sorted(ORACLE_PARTICLES)
OPS = ["drop_span", "change_digit", "add_particle", "remove_particle", "punctuation", "width", "case", "space",
       "truncate", "noise", "prefix_noise", "repeat", "empty", "same", "reword", "reword", "reword", "other",
       "drop_char", "swap_clauses", "negative", "respell", "spans_only", "long_noise"]
FILLER = "甲乙丙丁戊己庚辛壬癸"


def _outside_spans(text: str) -> list[int]:
    inside = set()
    for span in kept_spans(text):
        start = text.find(span)
        inside.update(range(start, start + len(span)))
    return [i for i, ch in enumerate(text) if i not in inside and "\u4e00" <= ch <= "\u9fff"]


def mutate(text: str, op: str, k: int, earlier: list[str]) -> str:
    """One mutation of `text`; `k` picks where and what."""
    if op == "drop_span":
        spans = kept_spans(text)
        return text.replace(spans[k % len(spans)], "", 1) if spans else text
    if op == "change_digit":
        places = [i for i, ch in enumerate(text) if ch.isascii() and ch.isdigit()]
        if not places:
            return text
        i = places[k % len(places)]
        return text[:i] + str((int(text[i]) + 1 + k % 9) % 10) + text[i + 1:]
    if op == "add_particle":
        i = k % (len(text) + 1)
        return text[:i] + PARTICLE_LIST[k % len(PARTICLE_LIST)] + text[i:]
    if op == "remove_particle":
        places = [i for i, ch in enumerate(text) if ch in ORACLE_PARTICLES]
        return text if not places else text[:places[k % len(places)]] + text[places[k % len(places)] + 1:]
    if op == "punctuation":
        places = [i for i, ch in enumerate(text) if unicodedata.category(ch).startswith("P")]
        mark = "，。！？；,.!?"[k % 9]
        if not places or k % 3 == 0:
            return text + mark
        i = places[k % len(places)]
        return text[:i] + mark + text[i + 1:] if k % 3 == 1 else text[:i] + text[i + 1:]
    if op == "width":
        return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)
    if op == "case":
        return text.swapcase() if k % 2 else text.upper()
    if op == "space":
        i = k % (len(text) + 1)
        return text[:i] + [" ", "  ", "\u3000", "\t"][k % 4] + text[i:]
    if op == "truncate":
        return text[:max(1, len(text) * (k % 10) // 10)]
    if op == "noise":
        return text + NOISE[k % len(NOISE)]
    if op == "prefix_noise":
        return NOISE[k % len(NOISE)] + text
    if op == "repeat":
        return earlier[k % len(earlier)] if earlier else text
    if op == "empty":
        return ["", " ", "\u3000", "\n"][k % 4]
    if op == "same":
        return text
    if op == "reword":
        changed = text
        for bit, (word, other) in enumerate(REWORDS.items()):
            if (k >> (bit % 16)) & 1 or bit == k % len(REWORDS):
                changed = changed.replace(word, other)
        return changed
    if op == "other":
        return OTHERS[k % len(OTHERS)]
    if op == "drop_char":
        i = k % max(1, len(text))
        return text[:i] + text[i + 1:]
    if op == "swap_clauses":
        parts = text.split("，")
        return "，".join(reversed(parts))
    if op == "negative":
        return text + "，质量很差"
    if op == "respell":  # the words outside the protected spans replaced, some or all
        chars = list(text)
        for n, i in enumerate(_outside_spans(text)):
            if (k >> (n % 16)) & 1 or k % 5 == 0:
                chars[i] = FILLER[(k + n) % len(FILLER)]
        return "".join(chars)
    if op == "spans_only":
        return "，".join(kept_spans(text)) + "。"
    if op == "long_noise":
        return text + "而且" + text[::-1] + NOISE[k % len(NOISE)]
    raise AssertionError(op)


CANDIDATE = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 2**16)), min_size=1, max_size=3)
ROUND = st.lists(CANDIDATE, max_size=8)


class MutatingEngine:
    """An mT5-like engine double: each call answers each prompt from that text's script of rounds (mutations
    of the text), then nothing; it scores labels by one rule (`o_label`). Every answer is recorded."""

    name, can_score, wants_raw_text, batch_size = "mt5", True, False, 16

    def __init__(self, scripts: dict[str, list[list[list[tuple[str, int]]]]], prompts: dict[str, str]):
        self.scripts = scripts
        self.text_of = prompts  # augment prompt -> text
        self.answers: dict[str, list[list[str]]] = {text: [] for text in scripts}
        self.scored: list[str] = []

    def info(self):
        return {"engine": self.name, "device": "cpu"}

    def generate(self, prompts, params):
        outputs = []
        for prompt in prompts:
            text = self.text_of[prompt]
            done = self.answers[text]
            script = self.scripts[text][len(done)] if len(done) < len(self.scripts[text]) else []
            earlier = [answer for answers in done for answer in answers]
            mine = []
            for ops in script:
                variant = text
                for op, k in ops:
                    variant = mutate(variant, op, k, earlier + mine)
                mine.append(variant)
            done.append(mine)
            outputs.append(mine)
        return outputs

    def score(self, prompt, candidates):
        text = prompt.rpartition("文本内容：")[2]
        self.scored.append(text)
        return [0.0 if label == o_label(text) else -SURE for label in candidates]

    def score_batch(self, items):
        return [self.score(prompt, candidates) for prompt, candidates in items]


@dataclass
class Replay:
    """One text's run through the service, as the oracle replays it."""

    seen: set[str]  # the keys the gate has seen: the text's, then each examined candidate's
    kept: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    judged: set[str] = field(default_factory=set)
    examined: int = 0
    offered: int = 0
    rounds: int = 0
    exhausted: bool = False

    def short_reason(self, want: int) -> str | None:
        if len(self.kept) >= want:
            return None
        if self.exhausted:
            return "few_rewritable_words" if self.offered else "no_rewritable_words"
        return "dropped_by_gate" if self.rejected else "fewer_outputs"


@st.composite
def gate_params(draw) -> GateParams:
    quality = draw(st.sampled_from(["on", "on", "on", "off"]))
    if draw(st.booleans()):
        return GateParams(**{**vars(DEFAULTS), "quality": quality,
                             "min_label_prob": draw(st.sampled_from([0.0, 0.5, 0.99]))})
    unit = st.floats(0.0, 1.0, allow_nan=False)
    low_sim, high_sim = sorted([draw(unit), draw(unit)])
    ratio = st.floats(0.0, 4.0, allow_nan=False)
    low_ratio, high_ratio = sorted([draw(ratio), draw(ratio)])
    return GateParams(quality=quality, min_similarity=low_sim, max_similarity=high_sim, min_length_ratio=low_ratio,
                      max_length_ratio=high_ratio, min_label_prob=draw(st.sampled_from([0.0, 0.5, 0.99])))


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(INPUT, min_size=1, max_size=3, unique=True), data=st.data(), params=gate_params(),
       want=st.integers(1, 10), rounds=st.integers(0, 2), with_labels=st.booleans())
def test_the_service_keeps_only_what_passes_and_drops_each_candidate_for_its_first_failed_check(
        texts, data, params, want, rounds, with_labels):
    templates = load_templates(Settings().templates_file)
    scripts = {text: data.draw(st.lists(ROUND, min_size=1, max_size=3), label=f"script of {text!r}") for text in texts}
    engine = MutatingEngine(scripts, {templates.render("augment", text=text): text for text in texts})
    text_labels = None
    if with_labels:
        text_labels = data.draw(st.lists(st.sampled_from([None, *LABELS]), min_size=len(texts), max_size=len(texts)),
                                label="text_labels")
    service = make_service(engine, resample_rounds=rounds)
    result = run(service.augment(texts, GenerationParams(num_return_sequences=want, seed=1), quality=params,
                                 labels=LABELS if with_labels else None, text_labels=text_labels))
    labelled = with_labels and params.quality == "on" and any(text_labels)
    scored: list[str] = []  # what the label check must have scored: labelled texts and their passed candidates

    # The service's run, replayed: each round examines each pending text's candidates until it has enough, passes
    # over those examined in an earlier round, and leaves a text whose engine gave fewer than asked (no more).
    replays = {text: Replay({o_key(text, params)}) for text in texts}
    pending, asked = list(texts), want
    for round_index in range(rounds + 1):
        for index, text in enumerate(texts):
            if text not in pending:
                continue
            replay, label = replays[text], text_labels[index] if labelled else None
            answers = engine.answers[text]
            assert round_index < len(answers), f"no call for round {round_index} of {text!r}"
            candidates = [clean(candidate) for candidate in answers[round_index]]
            replay.offered += len(candidates)
            replay.exhausted = len(candidates) < asked
            replay.rounds += 1
            room, earlier, passed = want - len(replay.kept), set(replay.judged), []
            for candidate in candidates:
                if not room:
                    break
                if candidate in earlier:
                    continue
                replay.judged.add(candidate)
                replay.examined += 1
                reason = o_first_failure(text, candidate, replay.seen, params)
                if reason is None:
                    passed.append(candidate)
                    room -= 1
                else:
                    replay.rejected.append((candidate, reason))
            if label is not None:
                scored += ([text] if round_index == 0 else []) + passed
            for candidate in passed:
                if label is None or (o_label(candidate) == label
                                     and o_label_probability(candidate, label) >= params.min_label_prob):
                    replay.kept.append(candidate)
                else:
                    replay.rejected.append((candidate, "label_changed"))
        pending = [text for text in pending if len(replays[text].kept) < want and not replays[text].exhausted]
        if not pending:
            break
        asked = max(want - len(replays[text].kept) for text in pending)

    for index, (text, outcome) in enumerate(zip(texts, result.outcomes)):
        label = text_labels[index] if labelled else None
        replay = replays[text]
        kept, rejected, examined = replay.kept, replay.rejected, replay.examined
        answers = engine.answers[text]
        assert len(answers) == replay.rounds, "the engine was asked again after the text had enough, or not"
        assert outcome.requested == want and outcome.short_reason == replay.short_reason(want)
        event(f"short: {outcome.short_reason}")
        for _, reason in rejected:
            event(f"dropped: {reason}")
        if kept:
            event("some kept")
        if examined < sum(map(len, answers)):
            event("candidates left unexamined")
        # (b) each candidate is kept, or dropped for the first check it fails, in the order examined.
        assert outcome.texts == kept
        assert [(r.text, r.reason) for r in outcome.rejected] == rejected
        # (c) the counts add up.
        assert set(outcome.dropped) <= set(REASONS)
        assert sum(outcome.dropped.values()) == len(outcome.rejected)
        assert len(outcome.kept) + sum(outcome.dropped.values()) == examined
        for reason in REASONS:
            assert outcome.dropped[reason] == sum(r == reason for _, r in rejected)
        assert len(outcome.kept) <= want

        # (a) no returned variant fails a check.
        keys = [o_key(variant, params) for variant in outcome.texts]
        assert len(set(keys)) == len(keys) and o_key(text, params) not in keys
        for variant in outcome.kept:
            assert variant.text.strip() and variant.text == clean(variant.text)
            assert variant.similarity == pytest.approx(o_similarity(text, variant.text))
            if params.quality == "on":
                assert o_failed_checks(text, variant.text, params) == [], variant.text
                assert params.min_similarity <= variant.similarity <= params.max_similarity
            if label is not None:
                assert o_label(variant.text) == label
                assert variant.label_probability == pytest.approx(o_label_probability(variant.text, label))
                assert variant.label_probability >= params.min_label_prob
            else:
                assert variant.label_probability is None
        for dropped in outcome.rejected:
            if dropped.reason == "empty":
                assert dropped.similarity is None
            else:
                assert dropped.similarity == pytest.approx(o_similarity(text, dropped.text))
        assert outcome.label_probability == (None if label is None else pytest.approx(o_label_probability(text, label)))
    assert result.dropped() == {reason: sum(o.dropped[reason] for o in result.outcomes) for reason in REASONS}
    # Each labelled text was scored once, and of its candidates only those that passed the gate.
    assert sorted(engine.scored) == sorted(scored)


# --- the lexical engine's own variants -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexical():
    return LexicalEngine.from_settings()


def lexical_texts() -> list[str]:
    lines = []
    for name in ("lexical_sentences.tsv", "lexical_heldout.tsv"):
        lines += [line.split("\t")[-1] for line in (DATA / name).read_text("utf-8").splitlines() if line.strip()]
    return lines


def test_the_default_gate_drops_none_of_the_lexical_engines_variants(lexical):
    texts = lexical_texts()
    assert len(texts) > 100
    checked = 0
    for text in texts:
        for seed in (0, 1, 2):
            gate = TextGate(text, DEFAULTS)
            for variant in lexical.propose(text, GenerationParams(num_return_sequences=10, seed=seed)):
                reason, score = gate.check(variant.text)
                assert reason is None, (text, variant.text, reason, score)
                checked += 1
    assert checked > 100


def test_a_one_word_synonym_swap_passes(lexical):
    assert TextGate("医生建议多喝水。", DEFAULTS).check("大夫建议多喝水。")[0] is None
    variants = [v.text for v in lexical.propose("医生建议多喝水。", GenerationParams(num_return_sequences=10, seed=0))]
    assert "大夫建议多喝水。" in variants
    # Through the service (no resampling: this engine would propose the same again, as duplicates).
    result = run(make_service(lexical, resample_rounds=0).augment(
        ["医生建议多喝水。"], GenerationParams(num_return_sequences=10, seed=0)))
    assert result.variants == [variants]
    assert sum(result.dropped().values()) == 0


class CountedLexical:
    """The lexical engine, counting the service's calls."""

    name, can_score, wants_raw_text, batch_size = "lexical", False, True, 16

    def __init__(self, engine: LexicalEngine) -> None:
        self.engine, self.calls = engine, 0

    def info(self):
        return self.engine.info()

    def generate(self, prompts, params):
        self.calls += 1
        return self.engine.generate(prompts, params)


def test_a_short_lexical_answer_says_why_and_the_engine_is_not_asked_again_for_what_it_has_not(lexical):
    engine = CountedLexical(lexical)
    texts = ["123 456 ABC！", "医生建议多喝水。", "衣服穿着很舒服，客服回复也很及时。"]
    result = run(make_service(engine, resample_rounds=2).augment(texts, GenerationParams(num_return_sequences=4,
                                                                                         seed=0)))
    nothing, few, enough = result.outcomes
    assert (nothing.texts, nothing.short_reason, nothing.requested) == ([], "no_rewritable_words", 4)
    assert 0 < len(few.texts) < 4 and few.short_reason == "few_rewritable_words"
    assert len(enough.texts) == 4 and enough.short_reason is None
    assert engine.calls == 1 and sum(result.dropped().values()) == 0
    assert few.report(False)["short_reason"] == "few_rewritable_words" and few.report(False)["requested"] == 4


# --- near copies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, variant", [
    ("今天天气很好。", "今天天气很好了。"),  # a particle added
    ("我们已经收到了货。", "我们已经收到货。"),  # a particle removed
    ("这个方案可以吧。", "这个方案可以啊。"),  # a particle swapped
    ("好的，我知道了。", "好的我知道了"),  # punctuation only
    ("今天天气很好。", "今天天气很好！！"),
    ("物流很快，包装结实。", "物流很快、包装结实…"),
    ("价格是38元，很划算。", "价格是３８元，很划算了！"),  # width, a particle and punctuation
])
def test_near_copies_are_too_close(source, variant):
    assert TextGate(source, DEFAULTS).check(variant)[0] == "too_close"


@pytest.mark.parametrize("source, variant", [
    ("价格是38元，很划算。", "价格是３８元，很划算。"),  # width only
    ("我用的是iPhone 15。", "我用的是IPHONE 15。"),  # case only
    ("今天天气很好。", "今天 天气 很好。"),  # white space only
    ("价格是38元,很划算!", "价格是38元，很划算！"),  # half- and full-width punctuation
])
def test_width_case_or_white_space_changes_only_are_duplicates_as_the_docstring_says(source, variant):
    assert TextGate(source, DEFAULTS).check(variant)[0] == "duplicate"


def test_max_similarity_drops_a_one_character_change_of_a_long_text_as_too_close():
    source = "这款耳机的音质非常好，戴久了耳朵也不疼，续航也很长，性价比很高，推荐大家购买。"
    variant = source.replace("推荐", "建议")
    reason, score = TextGate(source, DEFAULTS).check(variant)
    assert reason is None and score < DEFAULTS.max_similarity
    strict = GateParams(**{**vars(DEFAULTS), "max_similarity": score - 0.01})
    assert TextGate(source, strict).check(variant)[0] == "too_close"


# --- protected spans --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, variant", [
    ("快递3天就到了，很满意。", "快递4天就到了，非常满意。"),  # a changed number
    ("这个月销量涨了12.5%，超出预期。", "这个月销量涨了12%，超出了预期。"),
    ("详情请见https://example.com/item?id=42，谢谢。", "详情请看官网，谢谢。"),  # a dropped link
    ("订单号202405010001还没有发货。", "订单号202405010007还未发货。"),  # a changed order number
    ("我最近在读《活着》这本书，很感人。", "我最近在读这本书，非常感人。"),  # a dropped title
    ("会议定在2024-05-01下午举行。", "会议定在2024-05-02下午举办。"),  # a changed date
    ("我们14:30在门口集合吧。", "咱们15:30在门口会合。"),  # a changed time
    ("有问题请发邮件到service@example.com。", "有问题请发邮件给客服。"),  # a dropped e-mail
    ("谢谢@小明 的推荐，东西很好用。", "谢谢你的推荐，东西挺好用。"),  # a dropped mention
    ("我用的是iPhone 15，拍照很清楚。", "我用的是iPhone 14，拍照很清晰。"),  # a changed model
    ("#双十一#买的耳机到了。", "双十一买的耳机送到了。"),  # a topic's marks dropped
    ("价格有点贵（含税），但是值得。", "价格有点贵，不过值得。"),  # a dropped bracket
    ("收到礼物太开心了👍", "收到礼物非常高兴"),  # a dropped emoji
])
def test_a_lost_or_changed_protected_span_is_protected_lost(source, variant):
    assert kept_spans(source)
    assert TextGate(source, DEFAULTS).check(variant)[0] == "protected_lost"


@pytest.mark.parametrize("source, variant, spans", [
    ("这次服务十分满意。", "这次服务非常满意。", []),
    ("价格有一点贵。", "价格有点贵。", []),
    ("收到后第一时间联系了客服。", "收到后马上联系了客服。", []),
    ("这部电影15日公开上映。", "这部电影15日正式上映。", ["15日"]),
    ("价格是38元，很划算。", "价钱是３８元，挺划算。", ["38元"]),  # a span kept in another width
    ("我们下午一点见面吧。", "咱们下午一点碰面。", ["一点"]),
])
def test_degree_words_are_not_protected_and_kept_spans_pass(source, variant, spans):
    assert kept_spans(source) == spans
    assert TextGate(source, DEFAULTS).check(variant)[0] is None


# --- quality="off" ----------------------------------------------------------------------------------------


def test_quality_off_removes_only_empty_outputs_and_exact_repeats():
    off = GateParams(quality="off")
    source = "快递3天就到了，很满意。"
    gate = TextGate(source, off)
    assert gate.check("完全不相干的一句话，随便写写。")[0] is None  # noise
    assert gate.check("快递3天就到了，很满意了。")[0] is None  # near copy
    assert gate.check("快递４天就到了，很满意。")[0] is None  # width (and the number) changed
    assert gate.check("快递就到了")[0] is None  # protected span lost, truncated
    assert gate.check("完全不相干的一句话，随便写写。")[0] == "duplicate"  # exact repeat
    assert gate.check("完全 不相干的一句话，随便写写。")[0] == "duplicate"  # repeat but for white space
    assert gate.check(source)[0] == "duplicate"
    assert gate.check("  ")[0] == "empty"

    engine = ScriptedEngine([["完全不相干的一句话。", "", "快递3天就到了，很满意了。", "完全不相干的一句话。",
                              "快递3天就到了，很满意。"]])
    result = run(make_service(engine, resample_rounds=0).augment(
        [source], GenerationParams(num_return_sequences=5), quality=off))
    assert result.variants == [["完全不相干的一句话。", "快递3天就到了，很满意了。"]]
    assert result.dropped() == {**{reason: 0 for reason in REASONS}, "empty": 1, "duplicate": 2}


# --- GateParams validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("values, field", [
    ({"min_similarity": 0.8, "max_similarity": 0.5}, "min_similarity"),
    ({"min_length_ratio": 3.0, "max_length_ratio": 2.0}, "min_length_ratio"),
    ({"min_similarity": 1.5}, "min_similarity"),
    ({"min_similarity": -0.1}, "min_similarity"),
    ({"max_similarity": 1.01}, "max_similarity"),
    ({"min_similarity": float("nan")}, "min_similarity"),
    ({"max_length_ratio": 101}, "max_length_ratio"),
    ({"min_length_ratio": -1}, "min_length_ratio"),
    ({"max_length_ratio": float("inf")}, "max_length_ratio"),
    ({"min_label_prob": 2}, "min_label_prob"),
    ({"min_similarity": True}, "min_similarity"),
    ({"max_similarity": False}, "max_similarity"),
    ({"min_length_ratio": "0.5"}, "min_length_ratio"),
    ({"min_label_prob": None}, "min_label_prob"),
    ({"quality": "maybe"}, "quality"),
    ({"quality": True}, "quality"),
    ({"return_rejected": "yes"}, "return_rejected"),
])
def test_invalid_gate_params_name_their_field(values, field):
    with pytest.raises(InvalidParameter) as raised:
        GateParams(**values)
    assert raised.value.field == field
    if all(value is not None for value in values.values()):
        with pytest.raises(InvalidParameter) as raised:
            DEFAULTS.with_sent(values)  # what a request sends, over the settings' defaults
        assert raised.value.field == field


def test_valid_gate_params_are_accepted_and_defaults_come_from_settings():
    assert GateParams(min_similarity=0.5, max_similarity=0.5, min_length_ratio=1, max_length_ratio=1).on
    assert not GateParams(quality="off").on
    settings = Settings()
    assert (DEFAULTS.min_similarity, DEFAULTS.max_similarity, DEFAULTS.min_length_ratio, DEFAULTS.max_length_ratio,
            DEFAULTS.quality) == (settings.min_similarity, settings.max_similarity, settings.min_length_ratio,
                                  settings.max_length_ratio, settings.quality)
    assert DEFAULTS.with_sent({"min_similarity": None, "max_similarity": 0.9}).max_similarity == 0.9
    assert DEFAULTS.with_sent({"min_similarity": None}).min_similarity == settings.min_similarity


# --- the calibration default ------------------------------------------------------------------------------


def test_the_default_min_similarity_is_what_the_calibration_rule_picks():
    assert calibrated(pairs(CALIBRATION)) == Settings().min_similarity


@pytest.mark.parametrize("name", ["calibration", "heldout", "heldout2"])
def test_no_faithful_pair_falls_outside_the_length_guards_or_above_max_similarity(name):
    path = DATA / f"paraphrase_pairs_{name}.tsv"
    if not path.exists():
        pytest.skip(f"{path.name} is not written yet")
    faithful = [row for row in pairs(path) if row["kind"] == "faithful"]
    assert len(faithful) > 50
    for row in faithful:
        source, paraphrase = row["source"], row["paraphrase"]
        ratio = len(o_content(paraphrase)) / len(o_content(source))
        assert DEFAULTS.min_length_ratio <= ratio <= DEFAULTS.max_length_ratio, (source, paraphrase, ratio)
        assert o_similarity(source, paraphrase) <= DEFAULTS.max_similarity, (source, paraphrase)
