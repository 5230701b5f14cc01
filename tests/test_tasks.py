import json

import pytest

from app.settings import Settings
from app.tasks import TemplatesError, load_templates


def test_shipped_templates_hold_the_card_prompts():
    templates = load_templates(Settings().templates_file)
    assert templates.render("augment", text="今天天气很好") == "今天天气很好"
    assert templates.render("sentiment", text="很好") == "情感分析：很好"
    assert templates.render("classification", labels="积极,消极", text="好") == \
        "文本分类。\n候选标签：积极,消极。\n文本内容：好"
    assert templates.fields["question_generation"] == {"passage", "answer"}


def _write(tmp_path, content):
    path = tmp_path / "templates.json"
    path.write_text(content, "utf-8")
    return path


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('["augment"]', "one JSON object"),
    ('{"sentiment": "情感分析：{text}"}', "lack the task 'augment'"),
    ('{"augment": "改写：{txt}"}', "placeholders"),
    ('{"augment": "{text!r}"}', "plain name"),
    ('{"augment": "{text"}', "augment"),
])
def test_a_broken_template_file_is_reported_with_its_path(tmp_path, content, expected):
    path = _write(tmp_path, content)
    with pytest.raises(TemplatesError, match=expected) as caught:
        load_templates(path)
    assert str(path) in str(caught.value)


def test_a_missing_template_file_is_reported(tmp_path):
    with pytest.raises(TemplatesError, match="cannot read"):
        load_templates(tmp_path / "absent.json")


def test_the_augment_template_is_configurable(tmp_path):
    path = _write(tmp_path, json.dumps({"augment": "改写：{text}"}, ensure_ascii=False))
    assert load_templates(path).render("augment", text="你好") == "改写：你好"
