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


# --- number forms: 三天 <-> 3天, 百分之二十 <-> 20% (an amount's value never changes, only how it is written) ---

_DIGITS = "零一二三四五六七八九"
# Units after which an amount may change its written form: counts, durations, money, weights and lengths. Never a
# date, a time of day, an ordinal or a score (3月, 5日, 3点, 2楼, 第3期, 3分), whose two forms differ in use.
_FORM_UNITS = _words(
    "个 件 台 条 张 份 位 名 次 遍 倍 元 块 岁 天 周 小时 分钟 秒钟 斤 公斤 克 千克 吨 公里 千米 米 厘米 毫米 升 毫升 "
    "瓶 盒 箱 包 袋 杯 碗 家 辆 人 万 亿".split())
_AMOUNT = re.compile(r"(?P<number>\d{1,2}|[零一二两三四五六七八九十]{1,3})(?P<unit>" + _FORM_UNITS + r"(?:"
                     + _words(_SECOND_UNITS + ["个"]) + r")*)(?P<tail>[^\w]*)")
_PERCENT = re.compile(r"(?:(?P<arabic>\d{1,2})%|百分之(?P<chinese>[一二三四五六七八九十]{1,3}))(?P<tail>[^\w]*)")
_CHINESE_NUMBER = re.compile(r"(?:(?P<tens>[二三四五六七八九])?(?P<ten>十))?(?P<ones>[一二三四五六七八九])?")


def chinese_number(value: int, counting: bool = True) -> str:
    """1..99 in Chinese numerals; 2 before a measure word is 两 (两天, not 二天)."""
    if value == 2 and counting:
        return "两"
    tens, ones = divmod(value, 10)
    return (_DIGITS[tens] if tens > 1 else "") + ("十" if tens else "") + (_DIGITS[ones] if ones else "")


def number_value(text: str) -> int | None:
    """The value of 1..99 written in Arabic or Chinese numerals (两 for 2), or None."""
    if text.isascii() and text.isdigit():
        return int(text)
    if text == "两":
        return 2
    match = _CHINESE_NUMBER.fullmatch(text)
    if not text or match is None:
        return None
    tens = _DIGITS.index(match["tens"]) if match["tens"] else (1 if match["ten"] else 0)
    return tens * 10 + (_DIGITS.index(match["ones"]) if match["ones"] else 0)


def other_number_form(text: str) -> str | None:
    """`text` (an amount with its unit, or a percentage, and trailing punctuation) with its number written the
    other way, or None: 三天 -> 3天, 15元 -> 十五元, 2个小时 -> 两个小时, 20% -> 百分之二十. Only 1..99, and
    never 一 -> 1 (一个 is often an article, not a count)."""
    if match := _PERCENT.fullmatch(text):
        if match["arabic"]:
            value = int(match["arabic"])
            return None if not 1 <= value <= 99 else f"百分之{chinese_number(value, counting=False)}{match['tail']}"
        value = number_value(match["chinese"])
        return None if value is None or not 1 <= value <= 99 else f"{value}%{match['tail']}"
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return None
    value, number = number_value(match["number"]), match["number"]
    if value is None or not 1 <= value <= 99 or (number.isascii() and number.startswith("0")):
        return None
    if number.isascii():
        written = chinese_number(value)
    elif value < 2:
        return None
    else:
        written = str(value)
    return f"{written}{match['unit']}{match['tail']}"


def number_forms(span: str) -> tuple[str, ...]:
    """The ways `span` may be written with the same value: itself, and its other number form if it has one."""
    other = other_number_form(span)
    return (span,) if other is None else (span, other)
