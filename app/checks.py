"""What every surface's input must satisfy before it costs the model anything: texts, labels, work."""

from __future__ import annotations

import re

from app.errors import BatchTooLarge, DppError, InvalidParameter, LabelsInvalid, TextEmpty, TextTooLong, WorkTooLarge
from app.params import GenerationParams
from app.settings import Settings

LABEL_SEPARATORS = re.compile(r"[,，、]")
# What str.strip() removes (str.isspace), spelled out: regex engines differ on \s (ECMA's, which
# /openapi.json's readers use, counts U+FEFF and not U+001C-U+001F), so the schema says exactly this.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_EDGE = rf"[^{SPACE},，、]"  # a label's first and last character
_INNER = r"[^\r\n,，、]"  # any other: no separator, no line break


def label_pattern(max_chars: int) -> str:
    """One label as a list item: 1 to `max_chars` characters, no separator or line break, no space at
    either end: what `InputChecks.labels` accepts, as /openapi.json states it."""
    inner = f"(?:{_INNER}{{0,{max_chars - 2}}}{_EDGE})?" if max_chars > 1 else ""
    return f"^{_EDGE}{inner}$"


def labels_string_pattern(max_chars: int, max_labels: int) -> str:
    """Labels as one string: 2 to `max_labels` parts separated by , ， or 、, each a label with space around
    it allowed (it is trimmed), not all the same (the lookahead refuses a string whose every part repeats
    the first)."""
    label = label_pattern(max_chars)[1:-1]
    space = f"[{SPACE}]*"
    all_the_same = rf"{space}({label}){space}(?:[,，、]{space}\1{space})+$"
    return rf"^(?!{all_the_same}){space}{label}{space}(?:[,，、]{space}{label}{space}){{1,{max_labels - 1}}}$"


def check_encodable(text: str, name: str, error: type[DppError]) -> None:
    """Refuse a lone surrogate (JSON allows "\\ud800" with no pair, UTF-8 and the tokenizer do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{name} 第 {exc.start + 1} 个字符 U+{ord(text[exc.start]):04X} 是不成对的代理码位，"
                    "不是有效的 Unicode 字符（请检查 JSON 里的 \\u 转义）", field=name) from None


class InputChecks:
    """The limits of `settings`, applied to what a client sent; each refusal names the field."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def texts(self, texts: list[str], field_name: str) -> list[str]:
        """Refuse an empty or oversized batch and empty or over-long texts; return them stripped."""
        limit = self.settings.max_batch_texts
        if not texts:
            raise InvalidParameter(f"{field_name} 至少需要一条文本", field=field_name)
        if len(texts) > limit:
            raise BatchTooLarge(f"一次最多 {limit} 条文本（收到 {len(texts)} 条）", field=field_name)
        return [self.text(text, field_name if field_name == "text" else f"{field_name}[{index}]")
                for index, text in enumerate(texts)]

    def text(self, text: str, name: str) -> str:
        """The text stripped; its length is counted as sent (what /openapi.json's maxLength says)."""
        clean = text.strip()
        check_encodable(clean, name, InvalidParameter)
        if not clean:
            raise TextEmpty(f"{name} 为空或只有空白", field=name)
        if len(text) > self.settings.max_text_chars:
            raise TextTooLong(f"{name} 共 {len(text)} 字，超过上限 {self.settings.max_text_chars} 字", field=name)
        return clean

    def work(self, texts: int, params: GenerationParams) -> None:
        """Refuse a request whose texts x variants x max_length is over the budget: one such request
        would hold the engine for minutes, however fairly the calls are shared."""
        variants = params.num_return_sequences if params.do_sample else 1
        work, budget = texts * params.tokens_per_prompt, self.settings.max_request_tokens
        if work > budget:
            raise WorkTooLarge(
                f"请求的生成量为 {texts} 条文本 × {variants} 条结果 × {params.max_length} token = {work}，"
                f"超过每个请求的上限 {budget}（--max-request-tokens）；请减少文本条数、生成数量或最大长度")

    def labels(self, raw: str | list[str]) -> list[str]:
        """Labels from a list (exact: each as sent, no repeats) or from one string split on , ， 、
        (as people type them: each part trimmed, repeats counted once); checked, in order."""
        if isinstance(raw, str):
            return self._labels_from_string(raw)
        if not (isinstance(raw, list) and all(isinstance(label, str) for label in raw)):
            raise LabelsInvalid("labels 应为标签列表，或用逗号、顿号分隔的一个字符串", field="labels")
        self._count(len(raw))
        for index, label in enumerate(raw):
            name, where = f"labels[{index}]", f"第 {index + 1} 个标签"
            self._label(label, name, where)
            if label != label.strip():
                raise LabelsInvalid(f"{where}“{label.strip()[:30]}”首尾有空白", field=name)
            if label in raw[:index]:
                raise LabelsInvalid(f"{where}“{label[:30]}”与第 {raw.index(label) + 1} 个重复", field=name)
        return list(raw)

    def text_labels(self, labels: str | list[str] | None, text_labels: list[str | None] | None, field_name: str,
                    count: int) -> tuple[list[str], list[str | None]] | None:
        """The quality gate's label check, if asked: the candidate labels and each text's label among them
        (None: that text is not checked). One text names its label `label`; a batch, `text_labels`."""
        single = field_name == "text"
        label_field = "label" if single else "text_labels"
        if labels is None and text_labels is None:
            return None
        if labels is None:
            raise InvalidParameter(f"给出了原文的标签 {label_field}，还需要候选标签 labels", field="labels")
        if text_labels is None:
            raise InvalidParameter(f"标签检查需要原文的标签：请同时给出 {label_field}（每条文本所属的标签）",
                                   field=label_field)
        candidates = self.labels(labels)
        if not isinstance(text_labels, list) or len(text_labels) != count:
            raise InvalidParameter(f"{label_field} 应与文本一一对应（{count} 条文本）", field=label_field)
        of_text: list[str | None] = []
        for index, label in enumerate(text_labels):
            name = label_field if single else f"text_labels[{index}]"
            if label is not None and not isinstance(label, str):
                raise LabelsInvalid(f"{name} 应为字符串（收到 {repr(label)[:40]}）", field=name)
            label = label.strip() if label is not None else None
            if label and label not in candidates:
                raise LabelsInvalid(f"{name}“{label[:30]}”不在候选标签 labels 里（{'、'.join(candidates)[:200]}）",
                                    field=name)
            of_text.append(label or None)
        if single and of_text == [None]:
            raise InvalidParameter("标签检查需要原文的标签 label（它应是候选标签之一）", field="label")
        return candidates, of_text

    def _labels_from_string(self, raw: str) -> list[str]:
        if not raw.strip():
            raise LabelsInvalid("labels 为空：至少需要 2 个标签", field="labels")
        parts = [part.strip() for part in LABEL_SEPARATORS.split(raw)]
        self._count(len(parts))
        for index, label in enumerate(parts):
            self._label(label, "labels", f"第 {index + 1} 个标签")
        labels = list(dict.fromkeys(parts))
        if len(labels) < 2:
            raise LabelsInvalid(f"需要至少 2 个不同的标签（收到 {len(labels)} 个）", field="labels")
        return labels

    def _count(self, count: int) -> None:
        if not 2 <= count <= self.settings.max_labels:
            raise LabelsInvalid(f"需要 2 到 {self.settings.max_labels} 个标签（收到 {count} 个）", field="labels")

    def _label(self, label: str, name: str, where: str) -> None:
        if not label.strip():
            raise LabelsInvalid(f"{where}为空", field=name)
        check_encodable(label, name, LabelsInvalid)
        if LABEL_SEPARATORS.search(label):
            raise LabelsInvalid(f"{where}“{label[:30]}”含有逗号或顿号：每个标签请单独作为一项", field=name)
        if "\n" in label or "\r" in label:
            raise LabelsInvalid(f"{where}含有换行", field=name)
        if len(label) > self.settings.max_label_chars:
            raise LabelsInvalid(f"{where}共 {len(label)} 字，超过上限 {self.settings.max_label_chars} 字", field=name)
