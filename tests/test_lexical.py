"""The lexical engine: real Chinese augmentation with no model weights."""

import re
import subprocess
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from app.engines.lexical import NUMBER, REORDER, RULE, Edit, LexicalEngine, changed_share
from app.engines.lexicon import cilin_groups, load_lexicon, part_of_speech, tag_parts_of_speech
from app.engines.protect import other_number_form, split_protected
from app.engines.rules import RulesError, load_rules
from app.errors import NeedsMT5
from app.gate import TextGate, defaults
from app.params import GenerationParams
from app.settings import Settings
from tests.conftest import ROOT

DATA = Path(__file__).parent / "data"


def sentences(name: str) -> list[list[str]]:
    return [line.split("\t") for line in (DATA / name).read_text("utf-8").splitlines() if line]


SENTENCES = sentences("lexical_sentences.tsv")
HELD_OUT = sentences("lexical_heldout.tsv")  # written without seeing the lexicon; read blind in bench/
DEV = sentences("lexical_dev.tsv")  # written for the rules' development (the held-out sets are not tuned on)


@pytest.fixture(scope="module")
def engine():
    return LexicalEngine.from_settings()


@pytest.fixture(scope="module")
def tags():
    import jieba.posseg

    return jieba.posseg.dt.word_tag_tab


def punctuation(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c)[0] in "PS" and c not in "@#"]


# Chinese with words the lexicon knows, cut at punctuation so spans can sit between the pieces.
CHINESE = st.sampled_from(sorted({piece for _, sentence in SENTENCES
                                  for piece in re.split(r"[，。？！、]", sentence) if piece}))
SPANS = st.one_of(
    st.builds("{}{}".format, st.integers(0, 99999), st.sampled_from(["元", "小时", "%", "个", "GB", "天", "℃", ""])),
    st.builds("{}年{}月{}日".format, st.integers(1990, 2030), st.integers(1, 12), st.integers(1, 28)),
    st.builds("{}:{:02d}".format, st.integers(0, 23), st.integers(0, 59)),
    st.sampled_from(["iPhone 15 Pro", "iOS", "API", "5G", "Wi-Fi", "ChatGPT", "Python 3.11"]),
    st.builds("https://shop.example.com/item/{}?ref=app".format, st.integers(1, 10**6)),
    st.builds("kefu{}@example.cn".format, st.integers(1, 999)),
    st.builds("1{}{:08d}".format, st.sampled_from("3456789"), st.integers(0, 10**8 - 1)),
    st.builds("DD{:012d}".format, st.integers(0, 10**12 - 1)),
    st.builds("@{} ".format, st.sampled_from(["小明", "客服小美", "user_01"])),
    st.builds("#{}#".format, st.sampled_from(["双十一", "618大促", "新品上市"])),
    st.sampled_from(["😀", "👍🏻", "❤️", "🎉🎉", "👨‍👩‍👧"]),
    st.builds("“{}”".format, CHINESE),
    st.builds("《{}》".format, CHINESE),
    st.builds("（{}）".format, CHINESE),
    st.builds("【{}】".format, CHINESE),
    st.builds("\"{}\"".format, CHINESE),
    st.sampled_from(["三十八度", "六月三十日", "百分之十", "五个", "两天"]),
)
PUNCTUATION = st.sampled_from(["，", "。", "！", "？", "、", "；", "：", "…", " ", "——"])


@st.composite
def mixed_texts(draw):
    pieces, spans = [], []
    for _ in range(draw(st.integers(2, 6))):
        pieces.append(draw(CHINESE))
        if draw(st.booleans()):
            span = draw(SPANS)
            spans.append(span)
            pieces.append(span)
        pieces.append(draw(PUNCTUATION))
    return "".join(pieces), spans


@hypothesis_settings(max_examples=200, deadline=None)
@given(case=mixed_texts(), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 10),
       temperature=st.floats(0.1, 2.0))
def test_protected_spans_and_punctuation_survive_and_variants_are_distinct(engine, case, seed, n, temperature):
    text, spans = case
    params = GenerationParams(num_return_sequences=n, temperature=temperature, seed=seed)
    variants = [v.text for v in engine.propose(text, params)]
    assert len(variants) <= n
    assert len(set(variants)) == len(variants)
    assert text not in variants
    for variant in variants:
        for span in spans:
            assert variant.count(span) >= text.count(span), (span, variant)
        assert punctuation(variant) == punctuation(text)
    assert [v.text for v in engine.propose(text, params)] == variants


@pytest.mark.parametrize("text, kept", [
    ("这款iPhone 15 Pro充满电可以用8小时，人均消费100元。", ["iPhone 15 Pro", "8小时", "100元"]),
    ("请访问https://example.com/a?b=1了解详情，或发邮件到kefu@shop.cn。", ["https://example.com/a?b=1", "kefu@shop.cn"]),
    ("订单号DD20240501123已发货，@小明 #双十一# 真好😀", ["DD20240501123", "@小明", "#双十一#", "😀"]),
    ("他说“这个价格太贵了”，我觉得《三体》（第二部）很好看。", ["“这个价格太贵了”", "《三体》（第二部）"]),
    ("2024年5月3日下午3:30开会，电话13812345678。", ["2024年5月3日", "3:30", "13812345678"]),
])
def test_each_kind_of_span_is_protected_whole(text, kept):
    protected = [piece for piece, is_protected in split_protected(text) if is_protected]
    for span in kept:
        assert any(span in piece for piece in protected), span


def test_on_both_sentence_sets_no_swap_changes_part_of_speech_or_brings_an_idiom(engine, tags):
    cilin_parts = defaultdict(set)  # the parts of speech of the Cilin classes a word is filed in
    for code, words in cilin_groups():
        for word in words:
            cilin_parts[word].add(part_of_speech(code))
    for _, sentence in SENTENCES + HELD_OUT:
        for variant in engine.propose(sentence, GenerationParams(num_return_sequences=10, temperature=2.0, seed=3)):
            for edit in variant.edits:
                if edit.tag == REORDER:
                    assert sorted(edit.replacement) == sorted(edit.word), (sentence, edit)
                    continue
                if edit.kind == RULE:
                    continue  # the next test's
                same_in_jieba = tags[edit.replacement][0] == edit.tag[0]
                same_in_cilin = set(tag_parts_of_speech(edit.tag)) & cilin_parts[edit.word] & cilin_parts[edit.replacement]
                assert same_in_jieba or same_in_cilin, (sentence, edit)
                assert tags[edit.replacement] not in ("i", "l"), (sentence, edit)
                assert not (len(edit.replacement) == 4 and len(edit.word) <= 2), (sentence, edit)
                assert len(edit.word) >= 2 and len(edit.replacement) >= 2


def test_every_rule_edit_is_a_reviewed_rule_of_that_word_applied_where_its_context_holds(engine):
    seen = 0
    for _, sentence in SENTENCES + DEV:
        tokens = engine.tokens(sentence)
        for variant in engine.propose(sentence, GenerationParams(num_return_sequences=10, temperature=2.0, seed=3)):
            for edit in (edit for edit in variant.edits if edit.kind == RULE):
                seen += 1
                places = [i for i, token in enumerate(tokens) if token.text == edit.word]
                assert any(edit.replacement in rule.replacements
                           for i in places for rule in engine.rules.applying(tokens, i)), (sentence, edit)
    assert seen > 100


@pytest.mark.parametrize("sentence, word, rewrites", [
    ("快递员把包裹放在门口就走了，也没有打电话通知。", "把", {"将"}),
    ("快递员把包裹放在门口就走了，也没有打电话通知。", "没有", {"没"}),
    ("衣服穿着很舒服，客服回复也很及时。", "很", {"非常", "特别", "十分"}),
    ("请问可以开发票吗？", "可以", {"能"}),  # 能够 is ability, not permission
    ("付款前请确认收货地址。", "前", {"之前", "以前"}),
    ("该活动已于昨天结束。", "该", {"此"}),
    ("耳机音质还可以，就是降噪一般。", "可以", {"行"}),  # 还可以 is "OK" (还行), never "can" (能, 可)
    ("发货了吗？还没有。", "没有", set()),  # a final 没有 stays
    ("特别是老人和孩子要注意保暖。", "特别", {"尤其"}),  # 特别是 is "especially" (尤其是), not a degree (非常)
    ("该活动已于昨天结束。", "已", set()),  # 已于 is a set formal phrase
    ("门前停着一辆车。", "前", set()),  # a place, not a time
    ("您的快递已到驿站，请及时取件。", "已", {"已经"}),  # before a one-character verb too
    ("该活动将于3月1日结束。", "于", {"在"}),  # a time before the verb
    ("他毕业于2010年。", "于", set()),  # never after the verb
    ("请提供一下您的订单号。", "一下", {""}),  # a tone word that may go
    ("提前还款会影响征信吗？", "会", set()),  # 将 in a question is not Chinese
])
def test_rules_apply_in_their_contexts_and_never_outside_them(engine, sentence, word, rewrites):
    tokens = engine.tokens(sentence)
    index = next((i for i, token in enumerate(tokens) if token.text == word), None)  # the first
    found = set() if index is None else set(engine.rules.replacements(tokens, index))
    assert found == rewrites, (word, [f"{t.text}/{t.tag}" for t in tokens])
    if rewrites:
        texts = [v.text for v in engine.propose(sentence, GenerationParams(num_return_sequences=10, seed=1))]
        assert texts and all(text != sentence for text in texts)


def test_a_synonym_with_a_context_is_not_used_in_the_collocation_it_names(tmp_path):
    reviewed = tmp_path / "reviewed.tsv"
    reviewed.write_text("提高\tv\t+提升\tnot_next=警惕\n", encoding="utf-8")
    engine = LexicalEngine(reviewed)
    params = GenerationParams(num_return_sequences=3, seed=1)
    assert [v.text for v in engine.propose("我们要提高效率。", params)] == ["我们要提升效率。"]
    assert engine.propose("我们要提高警惕。", params) == []


@pytest.mark.parametrize("sentence, word", [
    ("多喝水，注意休息。", "注意"),  # 留意休息 is not Chinese
    ("居民消费价格同比上涨2%。", "价格"),  # CPI is 消费价格, never 消费价钱
    ("请到处置室换药。", "处置"),  # a treatment room, not 处理室
    ("国家统计局公布，居民人均可支配收入同比增长6.3%。", "增长"),  # the statistics' own word
])
def test_shipped_synonyms_keep_out_of_the_terms_they_would_break(engine, sentence, word):
    variants = engine.propose(sentence, GenerationParams(num_return_sequences=10, temperature=2.0, seed=1))
    assert all(edit.word != word for variant in variants for edit in variant.edits), [v.text for v in variants]


def test_a_rule_may_delete_a_word_that_only_sets_the_tone(tmp_path):
    rules = tmp_path / "rules.tsv"
    rules.write_text("一下\tm\t∅\tprev_tag=v\n", encoding="utf-8")
    (no_synonyms := tmp_path / "synonyms.tsv").write_text("", encoding="utf-8")
    engine = LexicalEngine(no_synonyms, rules)
    [variant] = engine.propose("请提供一下订单号。", GenerationParams(num_return_sequences=3, seed=1))
    assert variant.text == "请提供订单号。"
    assert variant.edits == (Edit("一下", "", "m", RULE),)
    assert engine.propose("一下子就到了。", GenerationParams(num_return_sequences=3, seed=1)) == []


@pytest.mark.parametrize("line, problem", [
    ("很\t*\t非常\tnext_colour=a", "unknown condition"),
    ("很\t*\t非常\tnext_len=two", "a length is a number"),
    ("很\t*\t很", "other than the word"),
    ("很\t*", "expected word"),
])
def test_a_rules_file_that_cannot_be_read_names_the_line(tmp_path, line, problem):
    rules = tmp_path / "rules.tsv"
    rules.write_text(f"# a comment\n{line}\n", encoding="utf-8")
    with pytest.raises(RulesError, match=f"rules.tsv:2: .*{problem}"):
        load_rules(rules)


@pytest.mark.parametrize("written, other", [
    ("三天", "3天"), ("3天", "三天"), ("15元", "十五元"), ("十五元", "15元"), ("2个小时", "两个小时"),
    ("两个小时", "2个小时"), ("30分钟，", "三十分钟，"), ("10万元", "十万元"), ("1个", "一个"), ("20%", "百分之二十"),
    ("百分之二十", "20%"), ("5%。", "百分之五。"),
    # Never: an article (一个), a date or time (3月, 2024年, 3点), an ordinal (2楼, 第3期), decimals, 100 and more.
    ("一个", None), ("3月", None), ("2024年", None), ("3点", None), ("2楼", None), ("第3期", None),
    ("12.5元", None), ("100元", None), ("百分之百", None), ("05天", None),
])
def test_an_amount_is_written_the_other_way_with_the_same_value(written, other):
    assert other_number_form(written) == other


def test_number_forms_are_edits_only_when_asked_and_the_gate_takes_either_form(engine):
    text = "快递三天就到了，比预计快了2天。"
    asked = GenerationParams(num_return_sequences=10, seed=1, number_forms=True)
    texts = [v.text for v in engine.propose(text, asked)]
    assert "快递3天就到了，比预计快了2天。" in texts and "快递三天就到了，比预计快了两天。" in texts
    plain = engine.propose(text, GenerationParams(num_return_sequences=10, seed=1))
    assert len(plain) < len(texts) and all(edit.kind != NUMBER for variant in plain for edit in variant.edits)
    assert any(edit.kind == NUMBER for variant in engine.propose(text, asked) for edit in variant.edits)
    assert TextGate(text, defaults(Settings()), number_forms=True).check("快递3天就到了，比预计快了两天。")[0] is None
    assert TextGate(text, defaults(Settings())).check("快递3天就到了，比预计快了两天。")[0] == "protected_lost"
    assert TextGate(text, defaults(Settings()), number_forms=True).check("快递4天就到了，比预计快了两天。")[0] == \
        "protected_lost"


def test_the_shipped_rules_load_whole(engine):
    assert len(engine.rules) >= 100 and "reviewed rules" in engine.info()["model"]


def test_the_fixed_set_covers_every_domain_with_at_least_40_sentences():
    assert len(SENTENCES) >= 40
    assert {domain for domain, _ in SENTENCES} == {"电商评价", "客服对话", "金融", "医疗", "政务", "新闻"}


def test_share_of_sentences_with_three_distinct_variants_is_reported(engine, capsys):
    counts = [len(engine.propose(s, GenerationParams(num_return_sequences=3, seed=1))) for _, s in SENTENCES]
    share = sum(c >= 3 for c in counts) / len(counts)
    with capsys.disabled():
        print(f"\nlexical engine: {share:.0%} of {len(counts)} sentences get >= 3 distinct variants; "
              f"{sum(c >= 1 for c in counts) / len(counts):.0%} get at least one")
    assert sum(c >= 1 for c in counts) > 0


def test_a_text_with_nothing_replaceable_gets_no_variants_rather_than_padding(engine):
    assert engine.generate(["123 456 ABC！"], GenerationParams()) == [[]]


def test_fewer_variants_than_asked_when_fewer_exist(engine):
    variants = engine.propose("价格", GenerationParams(num_return_sequences=10, seed=1))
    assert [v.text for v in variants] == ["价钱"]


def test_temperature_sets_the_share_of_words_changed(engine):
    assert changed_share(0.8) == pytest.approx(0.4)
    assert changed_share(2.0) == 1.0
    sentence = "医生建议患者每天按时服用药物，如果症状没有缓解，请立即到医院就诊。"
    low = engine.propose(sentence, GenerationParams(num_return_sequences=1, temperature=0.1, seed=2))
    high = engine.propose(sentence, GenerationParams(num_return_sequences=1, temperature=2.0, seed=2))
    assert low and high
    assert len(low[0].edits) <= len(high[0].edits)


def test_a_seed_fixes_a_texts_variants_whatever_the_batch(engine):
    params = GenerationParams(num_return_sequences=3, seed=9)
    texts = [s for _, s in SENTENCES[:6]]
    alone = [engine.generate([t], params)[0] for t in texts]
    assert engine.generate(texts, params) == alone
    assert engine.generate(list(reversed(texts)), params) == list(reversed(alone))


def test_the_lexical_engine_cannot_score(engine):
    with pytest.raises(NeedsMT5) as caught:
        engine.score("文本分类", ["积极", "消极"])
    assert caught.value.status == 503 and "mT5" in caught.value.message


def test_reviewed_swaps_outside_cilin_groups_need_the_added_mark_and_all_pass_the_plain_swap_rules(tmp_path):
    reviewed = tmp_path / "reviewed.tsv"
    reviewed.write_text("价格\tn\t价钱 质量 +贵 +价位\n# comment\n提高\tv\t提升 +提升\n", "utf-8")
    lexicon = load_lexicon(reviewed)
    assert lexicon.candidates("价格", "n") == ("价钱",)  # 质量: not grouped by Cilin; 贵, 价位: too short, too rare
    assert lexicon.candidates("价格", "v") == ()
    assert lexicon.candidates("提高", "v") == ("提升",)
    dropped = subprocess.run([sys.executable, "-m", "app.engines.lexicon", "check", str(reviewed)],
                             capture_output=True, text=True, check=True)
    reasons = {tuple(line.split("\t")[1:3]): line.split("\t")[3] for line in dropped.stdout.splitlines()}
    assert reasons == {("价格", "质量"): "Cilin does not group them (mark our own additions with +)",
                       ("价格", "贵"): "same word or a single character",
                       ("价格", "价位"): "too rare (jieba count 214)",
                       ("提高", "提升"): "Cilin does not group them (mark our own additions with +)"}


@pytest.fixture(scope="module")
def engine_knowing(tmp_path_factory):
    """An engine whose only swaps are the given reviewed lines."""
    def build(lines: str) -> LexicalEngine:
        reviewed = tmp_path_factory.mktemp("lexicon") / "reviewed.tsv"
        reviewed.write_text(lines, "utf-8")
        return LexicalEngine(reviewed)
    return build


def test_phrases_in_jiebas_dictionary_are_cut_so_their_words_can_change(engine_knowing):
    engine = engine_knowing("提高\tv\t+提升\n")
    # jieba cuts 提高效率 as one dictionary entry (count 3); the engine reads it as 提高 + 效率.
    variants = engine.generate(["公司决定采用新的财务系统来提高效率。"], GenerationParams(seed=1))
    assert variants == [["公司决定采用新的财务系统来提升效率。"]]


@pytest.mark.parametrize("text, reordered", [
    ("办理居住证需要携带身份证和户口本。", "办理居住证需要携带户口本和身份证。"),
    ("医生和护士都很耐心。", "护士和医生都很耐心。"),
    ("请提供身份证、户口本以及结婚证。", "请提供户口本、身份证以及结婚证。"),
])
def test_coordinated_nouns_may_swap_places(engine_knowing, text, reordered):
    engine = engine_knowing("")
    variants = engine.propose(text, GenerationParams(num_return_sequences=10, seed=1))
    assert reordered in [v.text for v in variants]
    for variant in variants:
        assert all(edit.tag == REORDER for edit in variant.edits)
        assert sorted(variant.text) == sorted(text)


@pytest.mark.parametrize("text", [
    "衣服的颜色和图片一样。",  # a comparison: 图片和颜色一样 says something else
    "这款手机与电脑相比更轻。",
    "苹果和梨之间的差别不大。",
    "买了3个苹果和香蕉。",  # the number would move to the other fruit
    "新的产品和服务都上线了。",  # a modifier's scope would move
    "客服和客服都在。",
    "身份证和户口本复印件。",  # the second noun is part of a longer phrase
])
def test_nouns_whose_order_carries_meaning_stay_in_place(engine_knowing, text):
    assert engine_knowing("").generate([text], GenerationParams(num_return_sequences=10, seed=1)) == [[]]


def test_the_rules_check_tool_counts_where_each_rule_fires(tmp_path, engine):
    sentences_file = tmp_path / "sentences.tsv"
    sentences_file.write_text("客服\t衣服穿着很舒服，客服回复也很及时。\n客服\t快递员把包裹放在门口就走了。\n", "utf-8")
    done = subprocess.run([sys.executable, "-m", "app.engines.rules", "check", str(sentences_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert len(rows) == len(engine.rules)
    fired = {(row[1], row[3]): int(row[-1]) for row in rows}
    assert fired[("很", "非常 特别")] == 2 and fired[("把", "将")] == 1 and fired[("但是", "但 不过 可是")] == 0
