"""benchmarks/teacher_grounding.py's reading of a teacher's answers: which facts they state, and whether
those are true of the screen asked about more often than of the others."""

import importlib.util
import math
from pathlib import Path

from vlmflow.demo.pretrain import ScreenFacts

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_grounding.py"
spec = importlib.util.spec_from_file_location("teacher_grounding", SCRIPT)
grounding_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grounding_script)


def screen(dialog: bool, dark: bool) -> ScreenFacts:
    return ScreenFacts("订单", "蓝", "卡片", 3, dialog, False, False, dark)


def test_stated_facts_reads_each_questions_first_statement_in_either_colon():
    stated = grounding_script.stated_facts("弹窗:是 深色：否 弹窗:否 大图 顶栏:蓝")
    assert stated == {"dialog": "是", "dark": "否", "header_colour": "蓝"}
    assert grounding_script.stated_facts("广州市 纯棉短袖T恤") == {}


def test_a_fact_true_of_its_own_screen_only_beats_any_other_screen():
    facts = [screen(dialog=True, dark=False), screen(dialog=False, dark=False), screen(dialog=False, dark=True)]
    table = grounding_script.grounding(["弹窗:是 深色:否", "弹窗:否", "noise"], facts)
    # Two dialog statements, both right about their screen; against the others: 0 of 2, then 1 of 2.
    assert table["dialog"] == (2, 1.0, 0.25)
    # One dark-mode statement, right about its screen and about one of the two others.
    assert table["dark"] == (1, 1.0, 0.5)
    count, own, other = table["title"]
    assert count == 0 and math.isnan(own) and math.isnan(other)
