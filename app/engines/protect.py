"""Spans of a text that augmentation never changes: numbers, dates, Latin, links, quotes, emoji."""

from __future__ import annotations

import re

_CN_DIGITS = "零〇一二两三四五六七八九十百千万亿半几"
_UNITS = (
    "个只件台条张份位名次回遍倍成折度元块角毛分钱万亿岁年月日号天周星期小时分钟秒点刻时"
    "斤两公斤克千克吨米公里厘米毫米升毫升平方亩层楼期届版代款瓶盒箱包袋杯碗份家所间部辆架"
)
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
    r"\d+(?:[.,]\d+)*\s*(?:%|‰|℃|°C?|[" + _UNITS + r"]+|[A-Za-z]+)?",
    r"百分之[" + _CN_DIGITS + r"点]+",
    r"[" + _CN_DIGITS + r"]+[" + _UNITS + r"]+",
    # Latin-script tokens, joined by single spaces: iPhone 15 Pro, iOS, API, 5G.
    r"[A-Za-z0-9][A-Za-z0-9+\-_.'/]*(?: [A-Za-z0-9][A-Za-z0-9+\-_.'/]*)*",
    # Emoji with their joiners, variation selectors and skin tones.
    r"[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200D\U0001F3FB-\U0001F3FF]+",
    # Punctuation, symbols and white space.
    r"[^\w\u4e00-\u9fff@#]+",
]
PROTECTED = re.compile("|".join(f"(?:{p})" for p in _PATTERNS))


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Start and end of every protected span, merged where they touch or overlap."""
    merged: list[list[int]] = []
    for match in PROTECTED.finditer(text):
        start, end = match.span()
        if start == end:
            continue
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
