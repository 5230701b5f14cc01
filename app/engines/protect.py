"""Spans of a text that augmentation never changes: numbers, dates, Latin, links, quotes, emoji."""

from __future__ import annotations

import re

_CN_DIGITS = "零〇一二两三四五六七八九十百千万亿半几"
# Measure words and units, as whole words (a character class would take 公 of 15日公开 for 公里's).
_UNIT_WORDS = (
    "个 只 件 台 条 张 份 位 名 次 回 遍 倍 成 折 度 元 块 角 毛 分 钱 万 亿 岁 年 月 日 号 天 周 星期 小时 分钟 秒 点 "
    "刻 时 斤 两 公斤 克 千克 吨 米 公里 厘米 毫米 千米 升 毫升 平方米 平方 亩 层 楼 期 届 版 代 款 瓶 盒 箱 包 袋 杯 "
    "碗 家 所 间 部 辆 架 人 口"
).split()
# A second unit that joins the first as one amount: 3个月, 5万元, 2个小时, 10万公里.
_SECOND_UNITS = "元 月 小时 分钟 钟 天 年 万 亿 米 公里 千米 平方米 斤 克 人 次".split()


def _words(words: list[str]) -> str:
    return "(?:" + "|".join(sorted(words, key=len, reverse=True)) + ")"


_UNIT = _words(_UNIT_WORDS) + _words(_SECOND_UNITS) + "?"
_PATTERNS = [
    r"(?:https?|ftp)://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    r"www\.[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",
    r"@[^\s@#，。！？、；：,.!?;:（）()【】\[\]“”\"']+",
    r"#[^#\n]{1,60}#",
    # Quotes and brackets, with what is inside them.
    r"“[^”]*”", r"\"[^\"]*\"", r"‘[^’]*’", r"「[^」]*」", r"『[^』]*』", r"《[^》]*》", r"〈[^〉]*〉",
    r"（[^）]*）", r"\([^)]*\)", r"\[[^\]]*\]", r"【[^】]*】", r"〔[^〕]*〕",
    # Dates and times, then numbers with their units, in Arabic or Chinese numerals.
    r"\d{1,4}[-/.年]\d{1,2}[-/.月](?:\d{1,2}[日号]?)?",
    r"\d{1,2}[:：]\d{2}(?::\d{2})?",
    r"(?:\+?86[\- ]?)?1[3-9]\d{9}",
    r"\d+(?:[.,]\d+)*\s*(?:%|‰|℃|°C?|" + _UNIT + r"|[A-Za-z]+)?",
    r"百分之[" + _CN_DIGITS + r"点]+",
    r"[" + _CN_DIGITS + r"]+" + _UNIT,
    # Latin-script tokens, joined by single spaces: iPhone 15 Pro, iOS, API, 5G.
    r"[A-Za-z0-9][A-Za-z0-9+\-_.'/]*(?: [A-Za-z0-9][A-Za-z0-9+\-_.'/]*)*",
    # Emoji with their joiners, variation selectors and skin tones.
    r"[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200D\U0001F3FB-\U0001F3FF]+",
]
# Punctuation, symbols and white space: never changed by the lexical engine, but free to change in a
# paraphrase.
_PUNCTUATION = r"[^\w\u4e00-\u9fff@#]+"
PROTECTED = re.compile("|".join(f"(?:{p})" for p in [*_PATTERNS, _PUNCTUATION]))
KEPT = re.compile("|".join(f"(?:{p})" for p in _PATTERNS))
# Words the number pattern would take that are degree adverbs, not amounts: 十分满意, 万分感谢, 一度, 一时.
# 一点 is an amount only as a time of day (下午一点); 有一点贵 is a degree.
NOT_AMOUNTS = frozenset({"十分", "万分", "一度", "一时"})
TIME_OF_DAY_BEFORE = "午晨晚早夜"


def _is_amount(text: str, start: int, end: int) -> bool:
    word = text[start:end]
    if word == "一点":
        return start > 0 and text[start - 1] in TIME_OF_DAY_BEFORE
    return word not in NOT_AMOUNTS


def _matches(pattern: re.Pattern, text: str):
    for match in pattern.finditer(text):
        start, end = match.span()
        if start != end and _is_amount(text, start, end):
            yield start, end


def kept_spans(text: str) -> list[str]:
    """What a faithful paraphrase of `text` keeps character for character (once normalised): numbers with
    their units, dates, times, money, percentages, links, e-mail, phone and order numbers, @mentions,
    #topics#, emoji, Latin words, quoted and bracketed text. Punctuation is not among them."""
    return [text[start:end] for start, end in _matches(KEPT, text) if text[start:end].strip()]


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Start and end of every protected span, merged where they touch or overlap."""
    merged: list[list[int]] = []
    for start, end in _matches(PROTECTED, text):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def split_protected(text: str) -> list[tuple[str, bool]]:
    """The text as consecutive pieces, each marked protected or free to change."""
    pieces, cursor = [], 0
    for start, end in protected_spans(text):
        if start > cursor:
            pieces.append((text[cursor:start], False))
        pieces.append((text[start:end], True))
        cursor = end
    if cursor < len(text):
        pieces.append((text[cursor:], False))
    return pieces
