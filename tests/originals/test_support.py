"""The marker of deliberate differences must lead to a section of docs/compatibility.md."""

import pytest

from tests.originals.support import ORIGINALS_DISAGREE, deliberate


def test_a_deliberate_difference_names_its_section():
    mark = deliberate(ORIGINALS_DISAGREE)
    assert mark.kwargs == {"strict": True, "reason": f"docs/compatibility.md#{ORIGINALS_DISAGREE}"}


def test_a_section_that_does_not_exist_is_refused():
    with pytest.raises(AssertionError, match="no section #no-such-section"):
        deliberate("no-such-section")
