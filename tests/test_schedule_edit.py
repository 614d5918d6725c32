"""core.schedules.edit: the editor's validation names the bad row, and a nudge keeps the levels
strictly descending (stopping halfway in log sigma before a neighbour)."""
import math

import pytest

from core.errors import ScheduleLabError
from core.schedules import make_schedule
from core.schedules.edit import check_levels, edited_schedule, nudge_level

LV = (80.0, 10.0, 1.0, 0.1)


@pytest.mark.parametrize("levels, problem", [
    ((80.0, 10.0, 10.0, 0.1), "row 2: sigma = 10 is not below row 1"),
    ((80.0, 10.0, 20.0, 0.1), "row 2: sigma = 20 is not below row 1"),
    ((80.0, 10.0, 1.0, 0.0), "row 3: sigma = 0 is not positive"),
    ((80.0, -1.0), "row 1: sigma = -1 is not positive"),
    ((80.0, float("nan"), 1.0), "row 1: nan is not a number"),
    ((80.0, None, 1.0), "row 1: None is not a number"),
    ((), "empty"),
])
def test_check_levels_names_the_bad_row(levels, problem):
    with pytest.raises(ScheduleLabError, match=problem.replace("(", r"\(")):
        check_levels(levels)


def test_edited_schedule_appends_zero_and_keeps_provenance():
    base = make_schedule("karras", 4, 0.1, 80.0).with_name("karras")
    s = edited_schedule((80.0, 9.0, 1.0, 0.1), base=base)
    assert s.sigmas == (80.0, 9.0, 1.0, 0.1, 0.0)
    assert s.name == "karras-edited" and s.params["edited_from"] == base.label()
    assert edited_schedule(LV, name="mine").name == "mine"


def test_nudge_multiplies_when_room_and_stops_halfway_in_log_sigma_otherwise():
    assert nudge_level(LV, 2, 1.1) == pytest.approx((80.0, 10.0, 1.1, 0.1))
    assert nudge_level(LV, 2, 0.9) == pytest.approx((80.0, 10.0, 0.9, 0.1))
    # a factor that would pass the upper neighbour (10) lands at the geometric mean sqrt(1 * 10)
    assert nudge_level(LV, 2, 50.0)[2] == pytest.approx(math.sqrt(10.0))
    # ... and one that would pass the lower neighbour (0.1) at sqrt(1 * 0.1)
    assert nudge_level(LV, 2, 0.01)[2] == pytest.approx(math.sqrt(0.1))
    # sigma_max has no upper neighbour; the lowest level's lower neighbour is the final 0
    assert nudge_level(LV, 0, 1.1)[0] == pytest.approx(88.0)
    assert nudge_level(LV, 3, 0.9)[3] == pytest.approx(0.09)
    # repeated nudges towards a neighbour approach it but never reach it: always a valid schedule
    lv = LV
    for _ in range(60):
        lv = nudge_level(lv, 2, 1.1)
        check_levels(lv)
    assert 1.0 < lv[2] < 10.0


@pytest.mark.parametrize("index, factor, problem", [(4, 1.1, "row 4 does not exist"), (0, 0.0, "factor"),
                                                    (0, float("nan"), "factor")])
def test_nudge_refuses_bad_input(index, factor, problem):
    with pytest.raises(ScheduleLabError, match=problem):
        nudge_level(LV, index, factor)
