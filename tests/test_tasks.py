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
    assert templates.tasks["question_generation"].fields == ("passage", "answer")
    assert templates.tasks["sentiment"].labels == ("积极", "消极")
    assert [task.name for task in templates.generation_tasks()] == [
        "sentiment", "keywords", "title", "summary", "aspect", "translation", "question_generation"]


def _write(tmp_path, content):
    path = tmp_path / "templates.json"
    path.write_text(content, "utf-8")
    return path


CLASSIFICATION = '"classification": "文本分类。\\n候选标签：{labels}。\\n文本内容：{text}"'


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ('["augment"]', "one JSON object"),
    ('{"sentiment": "情感分析：{text}", %s}' % CLASSIFICATION, "lack the task 'augment'"),
    ('{"augment": "{text}"}', "lack the task 'classification'"),
    ('{"augment": "改写：{txt}", %s}' % CLASSIFICATION, "placeholders"),
    ('{"augment": "{text!r}", %s}' % CLASSIFICATION, "plain name"),
    ('{"augment": "{text", %s}' % CLASSIFICATION, "augment"),
    ('{"augment": "{text}", "classification": "分类：{text}"}', "classification"),
    ('{"augment": "{text}", %s, "sentiment": {"template": "情感：{text}", "labels": ["积极"]}}' % CLASSIFICATION,
     "at least two different labels"),
    ('{"augment": "{text}", %s, "sentiment": {"template": "情感：{text}", "lables": []}}' % CLASSIFICATION,
     "unknown keys"),
    ('{"augment": "{text}", %s, "title": {"title": "标题"}}' % CLASSIFICATION, "template"),
    ('{"augment": "{text}", %s, "title": "标题"}' % CLASSIFICATION, "no placeholder"),
    ('{"augment": "{text}", %s, "my task": "{text}"}' % CLASSIFICATION, "plain name"),
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
    shipped = json.loads(Settings().templates_file.read_text("utf-8"))
    path = _write(tmp_path, json.dumps({**shipped, "augment": "改写：{text}"}, ensure_ascii=False))
    assert load_templates(path).render("augment", text="你好") == "改写：你好"
