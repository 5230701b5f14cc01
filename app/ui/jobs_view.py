"""How the 文件任务 tab shows file jobs, from the view dict every surface shows (`Jobs.view`): the state in
Chinese, the progress of the current job, the job list and the job picker's choices."""

from __future__ import annotations

import datetime

from app.gate import dropped_words

STATE_WORDS = {"queued": "排队中", "running": "运行中", "done": "已完成", "failed": "失败", "cancelled": "已取消"}
KIND_WORDS = {"augment": "增强", "classify": "分类"}
LIST_HEADERS = ["编号", "文件", "类型", "状态", "进度", "创建时间"]
BAR_CELLS = 20
NO_JOB = "还没有选择任务：上传文件、选好列后点击「开始」，或在「当前任务」里选一个已有的任务。"


def duration_words(seconds: float | None) -> str:
    """"约 42 秒", "约 3 分 5 秒", "约 2 小时 10 分"; "计算中" before the first chunk has finished."""
    if seconds is None:
        return "计算中"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"约 {seconds} 秒"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"约 {minutes} 分 {seconds} 秒"
    hours, minutes = divmod(minutes, 60)
    return f"约 {hours} 小时 {minutes} 分"


def progress_bar(done: int, total: int) -> str:
    """`████████░░░░░░░░░░░░ 40%`: rows done of all, in BAR_CELLS cells."""
    share = done / total if total else 1.0
    filled = int(share * BAR_CELLS)
    return f"`{'█' * filled}{'░' * (BAR_CELLS - filled)}` {int(share * 100)}%"


def _counts_words(view: dict) -> str:
    counts = view.get("counts") or {}
    parts = []
    if view["kind"] == "augment" and "variants" in counts:
        parts.append(f"生成 {counts['variants']} 条变体")
        if counts.get("rows_short"):
            parts.append(f"{counts['rows_short']} 行的变体少于所需")
        if dropped := dropped_words(counts.get("dropped") or {}):
            parts.append(dropped)
    elif counts.get("labels"):
        parts.append("预测结果：" + "，".join(f"{label} {n}" for label, n in counts["labels"].items()))
    if counts.get("rows_skipped"):
        parts.append(f"跳过 {counts['rows_skipped']} 行（文本为空）")
    return "；".join(parts)


def progress_markdown(view: dict | None) -> str:
    """The current job: its file, state, rows done of all, pace and time left, counts, notes and error."""
    if view is None:
        return NO_JOB
    state = view["state"]
    lines = [f"**{view['filename']}** · {KIND_WORDS.get(view['kind'], view['kind'])} · 编号 `{view['id']}`",
             progress_bar(view["rows_done"], view["rows_total"]),
             f"状态：**{STATE_WORDS.get(state, state)}** · 已完成 {view['rows_done']} / {view['rows_total']} 行"]
    if state == "running":
        rate = "计算中" if view.get("rows_per_second") is None else f"{view['rows_per_second']:g}"
        lines[-1] += f" · {rate} 行/秒 · 剩余时间 {duration_words(view.get('eta_seconds'))}"
    if counts := _counts_words(view):
        lines.append(counts)
    lines += [f"说明：{note}" for note in view.get("notes") or []]
    if view.get("error"):
        lines.append(f"原因：{view['error']}")
    if state != "done" and view["rows_done"] < view["rows_total"]:
        lines.append("导出的文件只含已完成的行。")
    return "\n\n".join(lines)


def _local_time(stamp: str | None) -> str:
    if not stamp:
        return ""
    return datetime.datetime.fromisoformat(stamp).astimezone().strftime("%m-%d %H:%M:%S")


def list_rows(views: list[dict]) -> list[list[str]]:
    """The job list, newest first, one row per job under LIST_HEADERS."""
    return [[view["id"], view["filename"], KIND_WORDS.get(view["kind"], view["kind"]),
             STATE_WORDS.get(view["state"], view["state"]), f"{view['rows_done']} / {view['rows_total']}",
             _local_time(view.get("created_at"))] for view in views]


def picker_choices(views: list[dict]) -> list[tuple[str, str]]:
    """The 当前任务 picker: "评论.csv · 增强 · 05-01 12:00:03 · <id>" per job, newest first."""
    return [(f"{view['filename']} · {KIND_WORDS.get(view['kind'], view['kind'])} · "
             f"{_local_time(view.get('created_at'))} · {view['id']}", view["id"]) for view in views]
